"""SegFormer forward speed: `hf_seg.optimize_for_inference` against the plain transformers model and mmsegmentation.

For each MiT variant (B0, B2 by default) at 512x512, fp32, batch 1, eval mode, `torch.inference_mode()`:

- **transformers**: `SegformerForSemanticSegmentation` (the `segformer-bX-ade20k-512` preset: the authors' decoder
  width, 256 for B0/B1 and 768 for B2-B5), plain, against a copy of it with `optimize_for_inference` applied.
- **mmseg**: mmsegmentation 1.x's own `segformer_mit-bX_8xb2-160k_ade20k-512x512` config, its decode head widened to
  the authors' width, built through mmengine's `Config` (SyncBN -> BN, no data preprocessor, no pretrained file),
  every tensor seeded random (`bench_setr_forward.randomize`); its state dict converted by
  `hf_seg.convert.segformer` into hf_seg's `SegformerMmsegForSemanticSegmentation` and optimized. mmseg's call is
  `EncoderDecoder.encode_decode` (backbone, head, resize to the input); hf_seg's is `model(x).logits` resized
  likewise.

Before timing, each optimized model's logits must equal its reference's to 1e-4 (max abs). The four functions then
run in turn, the order reversed every round, and the medians of `--runs` rounds are reported as wall seconds and as
this process's CPU seconds (`time.process_time`, less disturbed by other load on a shared machine). FLOPs: the plain
model's (what the function costs; `torch.utils.flop_counter` for GEMMs and convolutions, attention counted here
since the counter sees no CPU SDPA) and the optimized model's executed ones, as rates against oneDNN's fp32 GEMM
rate measured in the same run (a 2048^3 product).

    python benchmarks/bench_segformer_forward.py [--variants b0 b2] [--runs 5] [--threads N] [--json FILE]
"""

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_setr_forward import randomize  # noqa: E402

import hf_seg  # noqa: E402
from hf_seg.optimize import optimize_for_inference  # noqa: E402


SIZE = 512
TOLERANCE = 1e-4


def authors_width(variant: str) -> int:
    return 256 if variant in ("b0", "b1") else 768


def build_mmseg(variant: str):
    from mmseg_reference import import_mmseg

    mmseg = import_mmseg()
    from mmengine.config import Config
    from mmseg.registry import MODELS

    path = Path(mmseg.__file__).parent / ".mim" / "configs" / "segformer" / f"segformer_mit-{variant}_8xb2-160k_ade20k-512x512.py"
    config = Config.fromfile(str(path)).model.to_dict()
    config.pop("data_preprocessor", None)
    config["pretrained"] = None
    config["backbone"]["init_cfg"] = None
    config["decode_head"]["channels"] = authors_width(variant)
    config["decode_head"]["norm_cfg"] = dict(type="BN", requires_grad=True)
    model = MODELS.build(config).eval()
    randomize(model)
    return model


def build_models(variant: str):
    from hf_seg.convert.segformer import convert_segformer_checkpoint
    from hf_seg.presets import get_preset

    preset_name = f"segformer-{variant}-ade20k-512"
    plain = hf_seg.create_model(preset_name).eval()
    randomize(plain, seed=1)
    optimized = optimize_for_inference(copy.deepcopy(plain))

    mmseg_model = build_mmseg(variant)
    converted = convert_segformer_checkpoint(mmseg_model.state_dict(), get_preset(preset_name).config,
                                             preset_name=preset_name, id2label=plain.config.id2label)
    mmseg_head = converted.model_class(converted.config).eval()
    mmseg_head.load_state_dict(converted.state_dict, strict=True)
    optimize_for_inference(mmseg_head)
    return plain, optimized, mmseg_model, mmseg_head


def attention_flops(model, size: int) -> int:
    """Multiply-adds x 2 of the attention products (Q K^T and A V) the flop counter does not see on a CPU."""
    config = model.config
    height = width = size
    total = 0
    for stage, (patch, stride) in enumerate(zip(config.patch_sizes, config.strides)):
        height = (height + 2 * (patch // 2) - patch) // stride + 1
        width = (width + 2 * (patch // 2) - patch) // stride + 1
        ratio = config.sr_ratios[stage]
        queries, keys = height * width, (height // ratio) * (width // ratio)
        total += config.depths[stage] * 2 * 2 * queries * keys * config.hidden_sizes[stage]
    return total


def counted_flops(function, pixel_values) -> int:
    """GEMM and convolution FLOPs of one call; oneDNN's private linear op is invisible to the counter, so the call
    runs with `torch.backends.mkldnn` off (the optimized forwards then take `F.linear`, their other rewrites stay)."""
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
        function(pixel_values)
    return counter.get_total_flops()


def gemm_rate(runs: int = 5, size: int = 2048) -> float:
    """oneDNN fp32 GEMM FLOP/s (the op `optimize_for_inference` uses for linear layers), median of `runs`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    op = torch.ops.mkldnn._linear_pointwise if hasattr(torch.ops.mkldnn, "_linear_pointwise") else None
    call = (lambda: op(a, b, None, "none", [], "")) if op is not None else (lambda: a @ b.T)
    call()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds)


def time_in_turn(functions: dict, pixel_values, runs: int, warmup: int) -> dict:
    wall = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    with torch.inference_mode():
        for _ in range(warmup):
            for function in functions.values():
                function(pixel_values)
        for index in range(runs):
            items = list(functions.items())
            for name, function in items if index % 2 == 0 else items[::-1]:
                start, cpu_start = time.perf_counter(), time.process_time()
                function(pixel_values)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
    return {name: dict(wall=statistics.median(wall[name]), cpu=statistics.median(cpu[name]),
                       wall_runs=wall[name], cpu_runs=cpu[name]) for name in functions}


def run_variant(variant: str, runs: int, warmup: int) -> dict:
    plain, optimized, mmseg_model, mmseg_head = build_models(variant)
    pixel_values = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    metas = [dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE), pad_shape=(SIZE, SIZE))]

    def resized(model):
        return lambda x: F.interpolate(model(pixel_values=x).logits, size=x.shape[-2:], mode="bilinear",
                                       align_corners=False)

    functions = {
        "transformers plain": lambda x: plain(pixel_values=x).logits,
        "transformers optimized": lambda x: optimized(pixel_values=x).logits,
        "mmseg": lambda x: mmseg_model.encode_decode(x, metas),
        "hf_seg mmseg-head optimized": resized(mmseg_head),
    }
    with torch.inference_mode():
        outputs = {name: function(pixel_values) for name, function in functions.items()}
    diffs = {
        "transformers optimized vs plain": (outputs["transformers optimized"] - outputs["transformers plain"]).abs().max().item(),
        "hf_seg mmseg-head optimized vs mmseg": (outputs["hf_seg mmseg-head optimized"] - outputs["mmseg"]).abs().max().item(),
    }
    for what, diff in diffs.items():
        print(f"  {variant} logits {what}: max abs diff {diff:.3g}")
        if diff > TOLERANCE:
            raise SystemExit(f"{variant}: {what} differ by {diff:.3g} > {TOLERANCE}; not timing different functions")
    timings = time_in_turn(functions, pixel_values, runs, warmup)
    flops_plain = counted_flops(functions["transformers plain"], pixel_values) + attention_flops(plain, SIZE)
    flops_optimized = counted_flops(functions["transformers optimized"], pixel_values) + attention_flops(plain, SIZE)
    return dict(variant=variant, decoder_width=authors_width(variant), logits_diffs=diffs, timings=timings,
                flops_plain=flops_plain, flops_optimized=flops_optimized)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["b0", "b2"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {SIZE}x{SIZE}, batch 1, fp32")
    results = []
    for variant in args.variants:
        result = run_variant(variant, args.runs, args.warmup)
        results.append(result)
    rate = gemm_rate()
    print(f"oneDNN fp32 GEMM rate (2048^3, same run): {rate / 1e9:.0f} GFLOP/s")
    for result in results:
        t = result["timings"]
        for clock in ("wall", "cpu"):
            plain_s, optimized_s = t["transformers plain"][clock], t["transformers optimized"][clock]
            mmseg_s, head_s = t["mmseg"][clock], t["hf_seg mmseg-head optimized"][clock]
            print(f"{result['variant']} ({clock}): transformers plain {plain_s:.3f} s, optimized {optimized_s:.3f} s "
                  f"-> {optimized_s / plain_s:.3f}x; mmseg {mmseg_s:.3f} s, hf_seg mmseg-head optimized "
                  f"{head_s:.3f} s -> {head_s / mmseg_s:.3f}x")
        optimized_s = t["transformers optimized"]["wall"]
        result.update(
            gemm_flops_per_second=rate,
            ratio_vs_plain=t["transformers optimized"]["wall"] / t["transformers plain"]["wall"],
            ratio_vs_mmseg=t["hf_seg mmseg-head optimized"]["wall"] / t["mmseg"]["wall"],
            ratio_vs_plain_cpu=t["transformers optimized"]["cpu"] / t["transformers plain"]["cpu"],
            ratio_vs_mmseg_cpu=t["hf_seg mmseg-head optimized"]["cpu"] / t["mmseg"]["cpu"],
            model_flop_rate_fraction=result["flops_plain"] / optimized_s / rate,
            executed_flop_rate_fraction=result["flops_optimized"] / optimized_s / rate,
        )
        print(f"{result['variant']}: FLOPs plain {result['flops_plain'] / 1e9:.1f} G, executed after optimizing "
              f"{result['flops_optimized'] / 1e9:.1f} G; optimized wall time as a share of the GEMM rate: "
              f"{100 * result['model_flop_rate_fraction']:.0f}% (the model's FLOPs), "
              f"{100 * result['executed_flop_rate_fraction']:.0f}% (executed)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(threads=torch.get_num_threads(), results=results), indent=2))


if __name__ == "__main__":
    main()
