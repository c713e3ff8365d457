# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""The quickstart data set: textured shapes on textured backgrounds, generated deterministically (no download).

Six classes: background, disc, square, triangle, ring, cross. Every image draws 2-4 shapes of random size, position
and rotation (later shapes occlude earlier ones); each shape class has its own texture (stripes, checkerboard, dots,
diagonal stripes, grid) in colours from its own hue range, and the background is a smooth low-saturation colour field
with grain. Example `i` of a split is drawn from `numpy.random.default_rng([seed, split id, i])`, so the same
arguments always give the same pixels on every machine.
"""

from __future__ import annotations

import colorsys

import numpy as np

QUICKSTART_LABELS = ["background", "disc", "square", "triangle", "ring", "cross"]
_HUES = {1: 0.0, 2: 0.18, 3: 0.36, 4: 0.58, 5: 0.78}  # hue centre of each shape class (fraction of the circle)
_SPLITS = {"train": 0, "validation": 1, "test": 2}


def _colour(rng, hue: float, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(*saturation), rng.uniform(*value))
    return np.asarray(rgb, dtype=np.float32) * 255


def _background(rng, size: int) -> np.ndarray:
    """A smooth colour field (bilinear upsampling of a coarse random grid) plus grain, muted colours."""
    coarse = rng.uniform(60, 200, (5, 5, 1)) + rng.uniform(-25, 25, (5, 5, 3))
    positions = np.linspace(0, 4, size)
    low = np.floor(positions).astype(int).clip(0, 3)
    frac = (positions - low)[:, None]
    rows = coarse[low] * (1 - frac[:, :, None]) + coarse[low + 1] * frac[:, :, None]  # (size, 5, 3)
    field = rows[:, low] * (1 - frac[None, :, :]) + rows[:, low + 1] * frac[None, :, :]
    return field + rng.normal(0, 10, (size, size, 3))


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of shape `kind` in coordinates (u, v) centred on the shape and rotated with it."""
    distance = np.hypot(u, v)
    if kind == 1:  # disc
        return distance <= radius
    if kind == 2:  # square
        return (np.abs(u) <= radius * 0.85) & (np.abs(v) <= radius * 0.85)
    if kind == 3:  # triangle (pointing up in its own frame)
        return (v <= radius * 0.6) & (v >= 1.732 * np.abs(u) - radius * 1.1)
    if kind == 4:  # ring
        return (distance <= radius) & (distance >= radius * 0.55)
    if kind == 5:  # cross
        arm = radius * 0.32
        return ((np.abs(u) <= radius) & (np.abs(v) <= arm)) | ((np.abs(v) <= radius) & (np.abs(u) <= arm))
    raise ValueError(f"unknown shape class {kind}")


def _texture(kind: int, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """A {0, 1} pattern per shape class, in the shape's own frame."""
    if kind == 1:  # stripes
        return (np.floor(v / period) % 2).astype(bool)
    if kind == 2:  # checkerboard
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(bool)
    if kind == 3:  # dots
        return np.hypot(u % period - period / 2, v % period - period / 2) < period / 3
    if kind == 4:  # diagonal stripes
        return (np.floor((u + v) / (period * 1.2)) % 2).astype(bool)
    return (u % period < period / 3) | (v % period < period / 3)  # grid


def make_example(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 image and its (size, size) uint8 label map."""
    image = _background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(2, 5))):
        kind = int(rng.integers(1, 6))
        radius = rng.uniform(0.13, 0.25) * size
        cy, cx = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
        angle = rng.uniform(0, 2 * np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        u = (xx - cx) * cos + (yy - cy) * sin
        v = -(xx - cx) * sin + (yy - cy) * cos
        mask = _shape_mask(kind, u, v, radius)
        hue = _HUES[kind] + rng.uniform(-0.04, 0.04)
        bright = _colour(rng, hue, (0.6, 0.95), (0.75, 1.0))
        dark = _colour(rng, hue, (0.6, 0.95), (0.35, 0.55))
        pattern = _texture(kind, u, v, rng.uniform(0.045, 0.07) * size)
        painted = np.where(pattern[..., None], bright, dark) + rng.normal(0, 8, (size, size, 3))
        image[mask] = painted[mask]
        label[mask] = kind
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def make_quickstart_dataset(
    num_train: int = 160, num_validation: int = 40, size: int = 128, seed: int = 0
):
    """A `datasets.DatasetDict` with `train` / `validation` splits of `image` (RGB) and `label` (PNG class ids,
    `QUICKSTART_LABELS`) columns, identical for identical arguments."""
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    if num_train < 1 or num_validation < 1:
        raise ValueError(f"need at least one image per split, got num_train={num_train}, num_validation={num_validation}")
    if size < 32:
        raise ValueError(f"image size must be at least 32 pixels, got {size}")
    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    splits = {}
    for split, count in (("train", num_train), ("validation", num_validation)):
        images, labels = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLITS[split], index])
            image, label = make_example(rng, size)
            images.append(Image.fromarray(image, mode="RGB"))
            labels.append(Image.fromarray(label, mode="L"))
        splits[split] = Dataset.from_dict({"image": images, "label": labels}, features=features)
    return DatasetDict(splits)


__all__ = ["QUICKSTART_LABELS", "make_example", "make_quickstart_dataset"]
