"""Corrupted images per second per DataLoader worker, for each corruption of `hf-seg robustness`, on 1024x2048 images.

One process with one thread (`torch.set_num_threads(1)`, `cv2.setNumThreads(1)`: what a worker of `hf-seg robustness`
has) corrupts a Cityscapes-size RGB image (smooth gradients plus texture, seeded) at each severity; the median over
the severities of `--runs` timed calls each (after one untimed call) is reported per corruption. With W workers the
throughput is about W times the rate, as long as the model keeps up and the machine has W cores.

    python benchmarks/bench_corruptions.py                      # all 16, severities 1..5 (noise 1..3)
    python benchmarks/bench_corruptions.py --corruptions glass_blur fog --runs 3 --json corruptions.json

Measured on this project's 2-core x86_64 machine (shared with other work), one thread, imagecorruptions-imaug 1.1.5,
the median over severities 1-5 (noise 1-3), seconds per 1024x2048 image and images per second per worker:

    motion_blur 1.29 s (0.77/s)   defocus_blur 0.42 s (2.39/s)   glass_blur 1.27 s (0.79/s)   gaussian_blur 0.47 s (2.14/s)
    gaussian_noise 0.39 s (2.56/s) impulse_noise 0.27 s (3.66/s) shot_noise 1.14 s (0.88/s)   speckle_noise 0.45 s (2.21/s)
    brightness 2.13 s (0.47/s)    contrast 0.16 s (6.27/s)       saturate 2.63 s (0.38/s)     jpeg_compression 0.03 s (33/s)
    snow 1.36 s (0.73/s)          spatter 0.61 s (1.63/s)        fog 0.21 s (4.68/s)          frost 0.09 s (11.2/s)

All 72 corrupted versions of one image: 60 s in one worker, so Cityscapes' 500 validation images take about
8 hours of one core's time (1 hour with 8 workers), before the model's own time. Brightness and saturate spend it
in scikit-image's RGB <-> HSV conversions; glass blur (vectorised here, equal to the package's numba loop) and
motion blur in their blurs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from hf_seg import robustness


def test_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([40 + 150 * x / width, 60 + 120 * y / height, 100 + 60 * np.sin(x / 25.0)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corruptions", nargs="+", help="names or categories (default: all 16)")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=1, help="timed calls per severity")
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    image = test_image(args.height, args.width)
    runs = robustness.plan_runs(args.corruptions, clean=False)
    by_corruption: dict[str, list[float]] = {}
    for name, severity in runs:
        robustness.corrupt_image(image, name, severity, key="warmup")
        for run in range(args.runs):
            start = time.perf_counter()
            robustness.corrupt_image(image, name, severity, key=f"image {run}")
            by_corruption.setdefault(name, []).append(time.perf_counter() - start)
    print(f"{platform.processor() or platform.machine()}, 1 thread, {args.height}x{args.width} RGB, "
          f"{args.runs} timed call(s) per severity")
    print(f"| corruption | category | median s / image | images / s / worker |")
    print("|---|---|---|---|")
    report = {"height": args.height, "width": args.width, "runs": args.runs, "corruptions": {}}
    for name, seconds in by_corruption.items():
        median = statistics.median(seconds)
        category = next(c.category for c in robustness.CORRUPTIONS if c.name == name)
        print(f"| {name} | {category} | {median:.3f} | {1 / median:.2f} |")
        report["corruptions"][name] = {"seconds": seconds, "median_seconds": median, "images_per_second": 1 / median}
    total = sum(statistics.median(s) * len([r for r in runs if r[0] == n]) for n, s in by_corruption.items())
    print(f"all {len(runs)} corrupted versions of one image: {total:.1f} s in one worker")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
