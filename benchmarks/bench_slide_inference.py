"""Batched slide inference (`hf_seg.segment(mode="slide")`) against mmsegmentation 1.x's `slide_inference`.

Setting: one 1024x2048 image, Cityscapes SegFormer protocol (crop 1024, stride 768: three windows), SegFormer-B0
(transformers' `SegformerForSemanticSegmentation`, B0 hyper-parameters, 19 labels, random weights, eval mode).

mmseg's `EncoderDecoder.slide_inference` is called unbound on a stand-in segmentor that has `test_cfg`,
`out_channels` and `encode_decode(inputs, batch_img_metas)` returning the same HF model's logits resized to the
window, so both sides run the same weights. Timed (medians of --runs):

- mmseg: `slide_inference` on the processed image + resize to the original size + argmax (its postprocess);
- hf_seg: `segment(model, processor, image, mode="slide", crop_size=1024, stride=768, batch_size=B)` for
  B = --batch-size and B = 1 (one window at a time), image processing included.

Checks that the outputs agree (max abs diff of the probabilities, label-map equality).

    python benchmarks/bench_slide_inference.py --runs 3 [--batch-size 3] [--threads N] [--device cpu|cuda]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from transformers import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402

import hf_seg  # noqa: E402
from hf_seg.inference import segment  # noqa: E402
from mmseg_reference import import_mmseg  # noqa: E402


CROP, STRIDE = (1024, 1024), (768, 768)


def segformer_b0(num_labels=19):
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[32, 64, 160, 256], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
        num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=256, num_labels=num_labels,
    )
    torch.manual_seed(0)
    return SegformerForSemanticSegmentation(config).eval()


class MmsegStandIn:
    """What mmseg's `EncoderDecoder.slide_inference` reads from `self`."""

    def __init__(self, model):
        self.model = model
        self.out_channels = model.config.num_labels
        self.test_cfg = SimpleNamespace(crop_size=CROP, stride=STRIDE)

    def encode_decode(self, inputs, batch_img_metas):
        logits = self.model(pixel_values=inputs).logits
        # mmseg's BaseDecodeHead.predict_by_feat: bilinear resize to the window (img_shape), align_corners=False
        return F.interpolate(logits, size=batch_img_metas[0]["img_shape"], mode="bilinear", align_corners=False)


def timed(fn, runs):
    """Wall-clock seconds of each run, and the process's CPU seconds (less sensitive to other load on the machine)."""
    times, cpu_times, result = [], [], None
    for _ in range(runs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the medians to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import_mmseg()
    from mmseg.models.segmentors import EncoderDecoder

    device = torch.device(args.device)
    model = segformer_b0().to(device)
    processor = hf_seg.SetrImageProcessor(size={"shortest_edge": 1024, "longest_edge": 2048})  # Cityscapes test
    image = np.random.RandomState(0).randint(0, 256, (1024, 2048, 3), dtype=np.uint8)
    original = image.shape[:2]
    stand_in = MmsegStandIn(model)

    def run_mmseg():
        inputs = processor(images=image, do_pad=False, return_tensors="pt")["pixel_values"].to(device)
        metas = [dict(img_shape=tuple(inputs.shape[-2:]), ori_shape=original)]
        with torch.inference_mode():
            seg_logits = EncoderDecoder.slide_inference(stand_in, inputs, metas)
            logits = F.interpolate(seg_logits, size=original, mode="bilinear", align_corners=False)[0]
        return logits.argmax(0).cpu(), logits

    def run_hf(batch_size):
        return lambda: segment(model, processor, image, mode="slide", crop_size=CROP, stride=STRIDE,
                               batch_size=batch_size)

    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, image {original}, "
          f"crop {CROP}, stride {STRIDE}, SegFormer-B0 19 labels (random weights), runs {args.runs}")
    for _ in range(args.warmup):
        run_mmseg()
        run_hf(args.batch_size)()

    # interleaved (mmseg, batched, one-at-a-time per round) so that machine-load drift hits all three alike
    all_mm, all_b, all_1, cpu_mm, cpu_b, cpu_1 = [], [], [], [], [], []
    for _ in range(args.runs):
        times, cpu, (labels_mm, logits_mm) = timed(run_mmseg, 1)
        all_mm += times
        cpu_mm += cpu
        times, cpu, _ = timed(run_hf(args.batch_size), 1)
        all_b += times
        cpu_b += cpu
        times, cpu, _ = timed(run_hf(1), 1)
        all_1 += times
        cpu_1 += cpu
    t_mm, t_b, t_1, c_mm, c_b, c_1 = (statistics.median(ts) for ts in (all_mm, all_b, all_1, cpu_mm, cpu_b, cpu_1))

    # parity (not timed): probabilities and labels of hf_seg batched / one-at-a-time vs mmseg
    (labels_b,), (probs_b,) = segment(model, processor, image, mode="slide", crop_size=CROP, stride=STRIDE,
                                      batch_size=args.batch_size, return_probabilities=True)
    (labels_1,), (probs_1,) = segment(model, processor, image, mode="slide", crop_size=CROP, stride=STRIDE,
                                      batch_size=1, return_probabilities=True)
    probs_mm = logits_mm.softmax(0).cpu()
    print(f"max |p_hf(batch={args.batch_size}) - p_mmseg| = {(probs_b - probs_mm).abs().max().item():.3g}, "
          f"labels equal: {torch.equal(labels_b, labels_mm)} "
          f"(differing pixels: {(labels_b != labels_mm).sum().item()})")
    print(f"max |p_hf(batch=1) - p_mmseg| = {(probs_1 - probs_mm).abs().max().item():.3g}, "
          f"labels equal: {torch.equal(labels_1, labels_mm)}")
    print(f"max |p_hf(batch={args.batch_size}) - p_hf(batch=1)| = {(probs_b - probs_1).abs().max().item():.3g}, "
          f"labels equal: {torch.equal(labels_b, labels_1)}")

    fmt = lambda ts: ", ".join(f"{t:.3f}" for t in ts)  # noqa: E731
    print(f"mmseg slide_inference        median {t_mm:.3f} s  [{fmt(all_mm)}]")
    print(f"hf_seg segment batch={args.batch_size}      median {t_b:.3f} s  [{fmt(all_b)}]  "
          f"ratio vs mmseg {t_b / t_mm:.3f}x")
    print(f"hf_seg segment batch=1       median {t_1:.3f} s  [{fmt(all_1)}]  ratio vs mmseg {t_1 / t_mm:.3f}x")
    print(f"batched vs one window at a time: {t_b / t_1:.3f}x")
    if device.type == "cpu":
        print(f"CPU seconds (process_time) medians: mmseg {c_mm:.3f}, hf_seg batch={args.batch_size} {c_b:.3f} "
              f"({c_b / c_mm:.3f}x), hf_seg batch=1 {c_1:.3f} ({c_1 / c_mm:.3f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            device=str(device), threads=torch.get_num_threads(), batch_size=args.batch_size, runs=args.runs,
            mmseg_s=t_mm, hf_seg_batched_s=t_b, hf_seg_one_window_s=t_1, mmseg_cpu_s=c_mm, hf_seg_batched_cpu_s=c_b,
            hf_seg_one_window_cpu_s=c_1, labels_equal=bool(torch.equal(labels_b, labels_mm)),
        ), indent=2))


if __name__ == "__main__":
    main()
