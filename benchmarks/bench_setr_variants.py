"""Forward time and FLOPs of SETR's variants at one input size: the Hybrid (ResNet-50 + ViT-B) beside ViT-B and ViT-L.

    python benchmarks/bench_setr_variants.py [--size 512] [--runs 5] [--warmup 1] [--threads N] [--plain]
                                             [--presets NAME ...] [--json FILE]

For each preset (default: the Hybrid, ViT-B Naive and ViT-L Naive / PUP), in one process:

1. FLOPs of one batch-1 forward, counted on the meta device (no compute) with `torch.utils.flop_counter`, plus the
   attention products it cannot see (torch 2.13 counts no FLOPs for CPU scaled-dot-product attention): per layer
   4 * N^2 * hidden_size (Q K^T and the weighted sum of V, N tokens with the class token). Multiply-adds count 2.
2. Time: seeded random weights (random BatchNorm statistics), eval mode, fp32, batch 1, `torch.inference_mode()`,
   `hf_seg.optimize_for_inference` applied (`--plain`: not). After `--warmup` forwards of each model, `--runs` rounds
   run every model once, in an order that rotates from round to round; the median per model is reported.
3. The rate of a 2048^3 fp32 matmul before and after, so that "matmul-GFLOP" = time x matmul rate (the forward's
   cost in GFLOPs of matmul on this machine) stays comparable across machines and loads.

The input is square (`--size`), whatever size a preset was trained at: the position embeddings are resized at run
time (the Hybrid and ViT-B presets are Cityscapes 768 ones; at 512 they run a 32x32 token grid like the ADE20K ones).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_mpvit_forward import build, matmul_gflops_per_second  # noqa: E402


DEFAULT_PRESETS = [
    "setr-naive-r50-vit-base-cityscapes-768",
    "setr-naive-vit-base-cityscapes-768",
    "setr-naive-vit-large-ade20k-512",
    "setr-pup-vit-large-ade20k-512",
]


def count_flops(preset: str, size: int) -> tuple[int, int]:
    """(FLOPs the counter sees, attention-product FLOPs it does not) of one plain forward at `size` x `size`."""
    import hf_seg

    with torch.device("meta"):
        model = hf_seg.create_model(preset).eval()
        pixel_values = torch.randn(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(pixel_values)
    config = model.config
    tokens = (size // config.patch_size) ** 2 + (0 if config.decoder_type == "mla" else 1)
    attention = config.num_hidden_layers * 4 * tokens**2 * config.hidden_size
    return counter.get_total_flops(), attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--plain", action="store_true", help="time the plain models (no optimize_for_inference)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from hf_seg.optimize import optimize_for_inference

    flops = {preset: count_flops(preset, args.size) for preset in args.presets}
    models = {}
    for preset in args.presets:
        model = build(preset)
        models[preset] = model if args.plain else optimize_for_inference(model)
    pixel_values = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    rate_before = matmul_gflops_per_second()
    times = {preset: [] for preset in args.presets}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(args.warmup):
                model(pixel_values)
        for round_index in range(args.runs):
            shift = round_index % len(args.presets)
            for preset in args.presets[shift:] + args.presets[:shift]:
                start = time.perf_counter()
                models[preset](pixel_values)
                times[preset].append(time.perf_counter() - start)
    rate_after = matmul_gflops_per_second()
    rate = (rate_before + rate_after) / 2

    print(f"SETR forward at {args.size}x{args.size}, batch 1, fp32, {torch.get_num_threads()} threads, "
          f"{'plain' if args.plain else 'optimize_for_inference'}; median of {args.runs} rounds; matmul "
          f"{rate_before:.0f} / {rate_after:.0f} GFLOP/s before / after")
    print(f"{'preset':42s} {'params':>8s} {'GFLOPs':>8s} {'of it attn':>10s} {'time s':>8s} {'GFLOP/s':>8s} "
          f"{'matmul-GFLOP':>12s}")
    results = {}
    for preset in args.presets:
        counted, attention = flops[preset]
        total = counted + attention
        median = statistics.median(times[preset])
        parameters = sum(p.numel() for p in models[preset].parameters())
        results[preset] = dict(parameters=parameters, flops=total, attention_flops=attention, times=times[preset],
                               median_s=median, matmul_gflop=median * rate)
        print(f"{preset:42s} {parameters / 1e6:7.1f}M {total / 1e9:8.1f} {attention / 1e9:10.1f} {median:8.3f} "
              f"{total / median / 1e9:8.1f} {median * rate:12.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(size=args.size, threads=torch.get_num_threads(),
                                                   matmul_gflops=[rate_before, rate_after], results=results),
                                              indent=2))


if __name__ == "__main__":
    main()
