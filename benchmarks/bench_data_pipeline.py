"""Throughput of the full hf_seg training transform (ADE20K recipe) in one process: crops per second per worker.

Generates ~20 ADE20K-sized JPEGs (683×512 and 512×683, textured) + label PNGs in a temporary folder, loads them with
``load_segmentation_dataset`` and times ``SegmentationTrainTransform`` (decode + RandomResize(2048×512, 0.5–2.0) +
RandomCrop 512 (cat_max_ratio 0.75) + flip + PhotoMetricDistortion + reduce-labels + normalise + pad) per example.
Issue target: ≥ 20 crops/s per DataLoader worker.

    python benchmarks/bench_data_pipeline.py [--count 20] [--epochs 3] [--threads 1]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_seg.data import SegmentationTrainTransform, add_index_column, load_segmentation_dataset


def make_data(root: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "images" / "training").mkdir(parents=True)
    (root / "annotations" / "training").mkdir(parents=True)
    for index in range(count):
        height, width = (512, 683) if index % 2 == 0 else (683, 512)
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([np.sin(xx / 37.0) * 100 + 128, np.cos(yy / 23.0) * 100 + 128, (xx + yy) % 256], -1)
        image = np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
        label = ((xx // 97 + yy // 61 * 3) % 151).astype(np.uint8)  # ADE20K on-disk ids 0..150
        Image.fromarray(image).save(root / "images" / "training" / f"img_{index:03d}.jpg", quality=90)
        Image.fromarray(label).save(root / "annotations" / "training" / f"img_{index:03d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a DataLoader worker has 1)")
    parser.add_argument("--json", default=None, help="also write the timings to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_data(root, args.count)
        dataset, info = load_segmentation_dataset(root, split="training", decode=False)
        dataset = add_index_column(dataset)
        transform = SegmentationTrainTransform(
            crop_size=512, scale=(2048, 512), ratio_range=(0.5, 2.0), reduce_labels=True, num_labels=150, seed=0
        )
        dataset.set_transform(transform)
        dataset[0]  # warm-up
        times = []
        for epoch in range(args.epochs):
            transform.set_epoch(epoch)
            for index in range(len(dataset)):
                start = time.perf_counter()
                example = dataset[index]
                times.append(time.perf_counter() - start)
                assert example["pixel_values"].shape == (3, 512, 512)
        times = np.array(times)
        print(
            f"hf_seg train transform (ADE20K recipe, crop 512, {args.count} images 683x512/512x683, "
            f"{args.epochs} epochs, torch threads={args.threads}): {len(times)} crops, "
            f"mean {times.mean() * 1e3:.1f} ms, median {np.median(times) * 1e3:.1f} ms, "
            f"p90 {np.percentile(times, 90) * 1e3:.1f} ms -> {1.0 / times.mean():.1f} crops/s per worker "
            f"(target >= 20)"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(dict(
                count=args.count, epochs=args.epochs, threads=args.threads, crops=len(times),
                mean_s=float(times.mean()), median_s=float(np.median(times)), crops_per_second=float(1.0 / times.mean()),
            ), indent=2))


if __name__ == "__main__":
    main()
