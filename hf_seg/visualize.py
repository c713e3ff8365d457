"""Label maps as pictures: palette PNGs and overlays of the prediction on the image."""

import numpy as np
from PIL import Image


def default_palette(num_labels: int) -> list[tuple[int, int, int]]:
    """Distinct, deterministic colours for label sets that bring no palette of their own."""
    rng = np.random.default_rng(0)
    return [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(num_labels)]


def _palette_table(palette, ignore_color=(0, 0, 0)) -> np.ndarray:
    """256-entry lookup table: class ids beyond the palette (255 = ignore included) get `ignore_color`."""
    if len(palette) > 255:
        raise ValueError(f"a palette PNG holds at most 255 classes (id 255 is the ignore index), got {len(palette)}")
    table = np.tile(np.asarray(ignore_color, dtype=np.uint8), (256, 1))
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return table


def _as_label_array(label_map) -> np.ndarray:
    label_map = np.asarray(label_map.cpu() if hasattr(label_map, "cpu") else label_map)
    if label_map.ndim != 2:
        raise ValueError(f"a label map must be 2-D (height, width), got shape {label_map.shape}")
    if label_map.size and (label_map.min() < 0 or label_map.max() > 255):
        raise ValueError(f"label ids must lie in 0..255 to be drawn, got {label_map.min()}..{label_map.max()}")
    return label_map.astype(np.uint8)


def colorize(label_map, palette) -> Image.Image:
    """A palette ("P" mode) PNG-ready image: pixel values are the class ids, colours come from `palette`."""
    image = Image.fromarray(_as_label_array(label_map), mode="P")
    image.putpalette(_palette_table(palette).reshape(-1).tolist())
    return image


def overlay(image, label_map, palette, alpha: float = 0.5) -> Image.Image:
    """The RGB image blended with the coloured label map (`alpha` is the label map's weight)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    labels = _as_label_array(label_map)
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image size {rgb.shape[:2]} and label map size {labels.shape} differ")
    colours = _palette_table(palette)[labels].astype(np.float32)
    return Image.fromarray(np.round(rgb * (1.0 - alpha) + colours * alpha).astype(np.uint8), mode="RGB")
