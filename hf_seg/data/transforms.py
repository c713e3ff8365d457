"""
Training / evaluation transforms for semantic segmentation, equal to mmsegmentation's training pipeline.

Training (``SegmentationTrainTransform``), in mmsegmentation's order (``configs/_base_/datasets/ade20k.py`` etc.):
reduce-labels (at load time, as ``LoadAnnotations(reduce_zero_label=True)``), ``RandomResize`` (ratio range, keep
ratio), ``RandomCrop`` (``cat_max_ratio``), ``RandomFlip`` (horizontal, p = 0.5), ``PhotoMetricDistortion``,
normalise, pad to the crop size (image 0 after normalising, label 255). Images are handled in RGB; mmsegmentation works
in BGR and converts in its data preprocessor, which gives the same numbers because every step here is per-channel or
colour-space aware.

Every random draw comes from a ``numpy.random.Generator`` seeded from ``(seed, epoch, example index)``, so results do
not depend on DataLoader worker count or order.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .datasets import apply_label_ids, read_mat_label_map

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
IGNORE_INDEX = 255

__all__ = [
    "SegmentationTrainTransform",
    "SegmentationEvalTransform",
    "collate_segmentation",
    "random_resize",
    "rescale_size",
    "resize_image",
    "resize_image_window",
    "resize_label",
    "random_crop_bbox",
    "photometric_distortion",
    "rgb_to_hsv_uint8",
    "hsv_to_rgb_uint8",
    "example_rng",
    "content_key",
]


# ------------------------------------------------------------------------------------------------ random numbers


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one example: independent streams for every ``(seed, epoch, index)``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]))


def content_key(*values) -> int:
    """A 64-bit key of an example's encoded files (their bytes, else their paths, else the arrays): the same wherever
    and whenever the example is read, so that a streamed example (whose position changes with the shuffle buffer,
    the shards and the processes) always draws the same augmentations in the same epoch."""
    digest = hashlib.blake2b(digest_size=8)
    for value in values:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path") or b""
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, (bytes, bytearray)):
            value = np.ascontiguousarray(np.asarray(value)).tobytes()
        digest.update(len(value).to_bytes(8, "little"))
        digest.update(value)
    return int.from_bytes(digest.digest(), "little")


# ------------------------------------------------------------------------------------------------ resize


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size``: the keep-ratio (height, width) fitting inside ``scale`` (long edge, short edge)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """OpenCV ``INTER_NEAREST`` source index: ``floor(dst * (1 / (out / in)))`` in double precision."""
    inverse_scale = 1.0 / (out_size / in_size)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float64) * inverse_scale).astype(np.int64), in_size - 1)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image (half-pixel centres, no antialiasing), rounded back to uint8."""
    if image.shape[:2] == (height, width):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    out = out[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8)
    return out.numpy()


def resize_label(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map with OpenCV's ``INTER_NEAREST`` index rule."""
    if label.shape[:2] == (height, width):
        return label
    rows = _nearest_indices(label.shape[0], height)
    cols = _nearest_indices(label.shape[1], width)
    return label[rows[:, None], cols[None, :]]


class LazyNearestResize:
    """A label map's nearest-neighbour resize (`resize_label`) computed only where it is sliced: the crop draws of
    `random_crop_bbox` read a few crop windows of the resized map, never the whole of it."""

    def __init__(self, label: np.ndarray, height: int, width: int):
        self.label, self.shape = label, (height, width)
        self.rows, self.columns = _nearest_indices(label.shape[0], height), _nearest_indices(label.shape[1], width)

    def __getitem__(self, window: tuple[slice, slice]) -> np.ndarray:
        rows, columns = window
        return self.label[self.rows[rows][:, None], self.columns[columns][None, :]]


def sample_resize_scale(rng: np.random.Generator, scale: tuple[int, int], ratio_range: tuple[float, float]):
    """mmcv ``RandomResize._random_sample_ratio``: ``scale * U(ratio_range)``, truncated to int."""
    low, high = ratio_range
    ratio = rng.random() * (high - low) + low
    return int(scale[0] * ratio), int(scale[1] * ratio)


def _bilinear_taps(in_size: int, out_size: int, start: int, stop: int):
    """Source rows (or columns) and weights of output positions `start..stop-1` of a bilinear resize from `in_size` to
    `out_size` (half-pixel centres, no antialiasing: PyTorch's and OpenCV's rule, in float32)."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.arange(start, stop, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    position = np.maximum(position, np.float32(0.0))
    low = np.minimum(position.astype(np.int64), in_size - 1)
    return low, np.minimum(low + 1, in_size - 1), (position - low).astype(np.float32)


def resize_image_window(image: np.ndarray, height: int, width: int, rows: slice, columns: slice) -> np.ndarray:
    """`resize_image(image, height, width)[rows, columns]`, computed from only the source pixels that window reads:
    the training crop is a fraction of the resized image (a fifth at ratio 2), so this does a fraction of the work.
    Separable: the rows are interpolated first, then the columns, in float32, rounded to uint8 (the same values as
    `resize_image` in the tests, which is within one grey level of OpenCV's fixed-point bilinear)."""
    if image.shape[:2] == (height, width):
        return image[rows, columns]
    y1, y2, _ = rows.indices(height)
    x1, x2, _ = columns.indices(width)
    top, bottom, row_weight = _bilinear_taps(image.shape[0], height, y1, y2)
    left, right, column_weight = _bilinear_taps(image.shape[1], width, x1, x2)
    first, last = int(left[0]), int(right[-1]) + 1
    source = torch.from_numpy(np.ascontiguousarray(image[:, first:last]))
    upper = source.index_select(0, torch.from_numpy(top)).float()
    lower = source.index_select(0, torch.from_numpy(bottom)).float()
    vertical = upper.add_(lower.sub_(upper).mul_(torch.from_numpy(row_weight)[:, None, None]))
    west = vertical.index_select(1, torch.from_numpy(left - first))
    east = vertical.index_select(1, torch.from_numpy(right - first))
    out = west.add_(east.sub_(west).mul_(torch.from_numpy(column_weight)[None, :, None]))
    return out.round_().clamp_(0, 255).to(torch.uint8).numpy()


def random_resize(image, label, target_scale: tuple[int, int]):
    """Keep-ratio resize of image (bilinear) and label (nearest) to fit inside ``target_scale``."""
    height, width = rescale_size(image.shape[0], image.shape[1], target_scale)
    return resize_image(image, height, width), resize_label(label, height, width)


# ------------------------------------------------------------------------------------------------ crop


def random_crop_bbox(
    rng: np.random.Generator,
    label: np.ndarray,
    crop_size: tuple[int, int],
    cat_max_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
    retries: int = 10,
) -> tuple[int, int, int, int]:
    """mmseg ``RandomCrop.crop_bbox``: ``(y1, y2, x1, x2)``; up to ``retries`` redraws while one class dominates.
    ``label`` is an array or anything with ``shape`` and 2-D slicing (`LazyNearestResize`)."""
    margin_h = max(label.shape[0] - crop_size[0], 0)
    margin_w = max(label.shape[1] - crop_size[1], 0)

    def draw():
        y = int(rng.integers(0, margin_h + 1))
        x = int(rng.integers(0, margin_w + 1))
        return y, y + crop_size[0], x, x + crop_size[1]

    bbox = draw()
    if cat_max_ratio < 1.0:
        for _ in range(retries):
            y1, y2, x1, x2 = bbox
            counts = np.bincount(label[y1:y2, x1:x2].ravel())
            if ignore_index < len(counts):
                counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            bbox = draw()
    return bbox


# ------------------------------------------------------------------------------------------------ colour


def _convert(array: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion.convert``: float32 ``x * alpha + beta``, clipped to 0..255, truncated to uint8."""
    out = array.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


_HSV_SHIFT = 12
_SDIV = np.zeros(256, dtype=np.int64)
_HDIV = np.zeros(256, dtype=np.int64)
_SDIV[1:] = np.rint((255 << _HSV_SHIFT) / np.arange(1, 256, dtype=np.float64)).astype(np.int64)
_HDIV[1:] = np.rint((180 << _HSV_SHIFT) / (6.0 * np.arange(1, 256, dtype=np.float64))).astype(np.int64)


def rgb_to_hsv_uint8(image: np.ndarray) -> np.ndarray:
    """OpenCV ``COLOR_RGB2HSV`` on uint8 (H in 0..179, S and V in 0..255), with its fixed-point tables."""
    rgb = image.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    vmin = np.minimum(np.minimum(r, g), b)
    diff = v - vmin
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


# (b, g, r) taken from tab = [v, p, q, t] per hue sector, as in OpenCV's HSV -> RGB conversion.
_SECTOR = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]], dtype=np.int64)
_HSCALE = np.float32(6.0) / np.float32(180.0)
_INV255 = np.float32(1.0) / np.float32(255.0)


def _hsv_to_rgb_factors() -> np.ndarray:
    """`(256, 256, 3)` float32: for each (hue, saturation) the factor of V in R, G and B, as OpenCV's float path
    forms it: 1, ``1 - s``, or ``1 - s*frac`` / ``1 - s*(1 - frac)`` fused (one rounding: the float64 product of two
    float32 values is exact), picked per hue sector. A table of 64k entries, so that a conversion is one lookup and
    two multiplications per pixel instead of the per-pixel sector arithmetic."""
    h = np.arange(256, dtype=np.float32)[:, None] * _HSCALE
    s = np.arange(256, dtype=np.float32)[None, :] * _INV255
    pre = np.trunc(h)
    frac = h - pre
    sector = pre.astype(np.int64)[:, 0] % 6
    one = np.float32(1.0)
    s64 = s.astype(np.float64)
    q = (1.0 - s64 * frac).astype(np.float32)
    t = (1.0 - s64 * (one - frac)).astype(np.float32)
    table = np.stack(np.broadcast_arrays(np.ones_like(q), one - s, q, t), axis=-1)  # [v, p, q, t] / v
    bgr = np.take_along_axis(table, _SECTOR[sector][:, None, :], axis=-1)
    return np.ascontiguousarray(bgr[..., ::-1])  # b, g, r -> r, g, b


_HSV_TO_RGB_FACTORS = _hsv_to_rgb_factors()


def hsv_to_rgb_uint8(hsv: np.ndarray, tail_block: int = 32) -> np.ndarray:
    """
    OpenCV ``COLOR_HSV2RGB`` on uint8 (hue range 180) as its vectorised x86 path (AVX2 + FMA builds, e.g. the
    opencv-python wheels) computes it: float32 arithmetic, S and V scaled by 1/255, sector from the truncated hue,
    ``1 - s*h`` fused (one rounding), V times that factor, times 255 *truncated* to uint8.

    OpenCV converts row by row, and the last ``width % tail_block`` pixels of every row go through its scalar loop,
    which rounds instead of truncating. ``tail_block=32`` (4 AVX2 widths, the default) reproduces that; 0 truncates
    everywhere (the difference is at most 1 grey level on those few pixels).
    """
    v = hsv[..., 2].astype(np.float32) * _INV255
    rgb = (v[..., None] * _HSV_TO_RGB_FACTORS[hsv[..., 0], hsv[..., 1]]) * np.float32(255.0)
    out = np.clip(np.trunc(rgb), 0, 255).astype(np.uint8)
    if tail_block and hsv.ndim == 3:
        tail = hsv.shape[1] % tail_block
        if tail:
            out[:, -tail:] = np.clip(np.rint(rgb[:, -tail:]), 0, 255).astype(np.uint8)
    return out


def photometric_distortion(
    rng: np.random.Generator,
    image: np.ndarray,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
    record: list | None = None,
) -> np.ndarray:
    """
    mmseg ``PhotoMetricDistortion`` on an RGB uint8 image, drawing in mmseg's order: brightness, mode, contrast (if
    mode == 1), saturation, hue, contrast (if mode == 0). Every draw is appended to ``record`` when given (tests
    replay them into mmseg).
    """

    def randint(low, high=None):
        value = int(rng.integers(low, high)) if high is not None else int(rng.integers(0, low))
        if record is not None:
            record.append(("randint", value))
        return value

    def uniform(low, high):
        value = float(rng.uniform(low, high))
        if record is not None:
            record.append(("uniform", value))
        return value

    def contrast(img):
        if randint(2):
            return _convert(img, alpha=uniform(*contrast_range))
        return img

    if randint(2):
        image = _convert(image, beta=uniform(-brightness_delta, brightness_delta))
    mode = randint(2)
    if mode == 1:
        image = contrast(image)
    if randint(2):
        hsv = rgb_to_hsv_uint8(image)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=uniform(*saturation_range))
        image = hsv_to_rgb_uint8(hsv)
    if randint(2):
        hsv = rgb_to_hsv_uint8(image)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + randint(-hue_delta, hue_delta)) % 180
        image = hsv_to_rgb_uint8(hsv)
    if mode == 0:
        image = contrast(image)
    return image


# ------------------------------------------------------------------------------------------------ input decoding


def _processor():
    from ..models.setr.image_processing_setr import SetrImageProcessor

    global _PROCESSOR
    if _PROCESSOR is None:
        _PROCESSOR = SetrImageProcessor()
    return _PROCESSOR


_PROCESSOR = None


def _source_name(value) -> str | None:
    if isinstance(value, dict):
        return value.get("path")
    if isinstance(value, str):
        return value
    return getattr(value, "filename", None) or None


def _open(value):
    """Datasets ``Image(decode=False)`` dicts, file paths and raw bytes → PIL; nested lists and MATLAB ``.mat`` label
    files (`hf_seg.data.datasets.read_mat_label_map`) → an array; PIL / arrays pass through."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise ValueError("empty image entry (no bytes and no path)")
    if isinstance(value, (list, tuple)):  # a Sequence(Sequence(...)) column, e.g. of ClassLabel ids
        return np.asarray(value)
    if isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
        image.load()
        return image
    if isinstance(value, str):
        if value.lower().endswith(".mat"):  # COCO-Stuff 10k, the PASCAL-Context 459-class release
            return read_mat_label_map(value)
        image = Image.open(value)
        image.load()
        return image
    if isinstance(value, Image.Image):
        value.load()
    return value


def _where(index) -> str:
    if isinstance(index, str):
        return index
    return f"example {index}"


def decode_example(image, label, index, label_ids: str | None = None):
    """Decode one example to an (H, W, 3) uint8 RGB image and an (H, W) int64 label map (ValueError on bad data).

    ``index`` is the dataset index (int) or a description of the example (str) used in error messages. ``label_ids``
    names the data set's label-id table (`hf_seg.data.datasets.LABEL_ID_TABLES`, e.g. ``"cityscapes"`` for
    ``*_gtFine_labelIds.png``): the map is looked up in it once, here, and comes out in training ids.
    """
    where = _where(index)
    position = index if isinstance(index, int) else 0
    name = _source_name(image)
    try:
        pil_or_array = _open(image)
        chw = _processor().convert_image(pil_or_array, position, True, None)
    except Exception as error:  # noqa: BLE001 - re-raised with the example and file
        raise ValueError(f"{where}{f' ({name})' if name else ''}: cannot read image: {error}") from error
    if chw.dtype != np.uint8:
        chw = np.clip(np.rint(chw), 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(np.moveaxis(chw, 0, -1))
    label_name = _source_name(label)
    try:
        seg = _processor().convert_segmentation_map(_open(label), position)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{where}{f' ({label_name})' if label_name else ''}: cannot read label map: {error}") from error
    seg = apply_label_ids(seg, label_ids, where, label_name)
    if seg.shape != rgb.shape[:2]:
        raise ValueError(
            f"{where}{f' ({label_name})' if label_name else ''}: label map size (height, width) {seg.shape} differs "
            f"from the image size {rgb.shape[:2]}{f' ({name})' if name else ''}."
        )
    return rgb, seg, (name or label_name)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg ``reduce_zero_label``: 0 → 255, 255 stays 255, k → k − 1."""
    return np.where((label == 0) | (label == IGNORE_INDEX), IGNORE_INDEX, label - 1)


def check_label_values(label: np.ndarray, num_labels: int | None, index, name: str | None, reduced: bool):
    if num_labels is None:
        return
    num_labels = max(num_labels, 2)  # one class: a binary foreground mask (one output channel), values 0 and 1
    bad = (label >= num_labels) & (label != IGNORE_INDEX)
    if bad.any():
        values = np.unique(label[bad])
        raise ValueError(
            f"{_where(index)}{f' ({name})' if name else ''}: label values {values[:10].tolist()} are outside the label "
            f"set 0..{num_labels - 1} (and ignore index {IGNORE_INDEX}){' after reduce_labels' if reduced else ''}."
        )


# ------------------------------------------------------------------------------------------------ transforms


class _BadExampleMixin:
    def _init_bad(self, on_bad_example: str):
        if on_bad_example not in ("raise", "skip"):
            raise ValueError(f"on_bad_example must be 'raise' or 'skip', got {on_bad_example!r}.")
        self.on_bad_example = on_bad_example
        self.skipped: list[str] = []

    def report(self, warn: bool = True) -> list[str]:
        """Messages of the examples skipped since the last report (warns once, then clears)."""
        skipped, self.skipped = self.skipped, []
        if skipped and warn:
            warnings.warn(
                f"{type(self).__name__}: skipped {len(skipped)} bad example(s), e.g. {skipped[0]}", stacklevel=2
            )
        return skipped

    def _run(self, function, index, *args):
        try:
            return function(index, *args)
        except ValueError as error:
            if self.on_bad_example == "raise":
                raise
            self.skipped.append(str(error))
            return None


def _columns(batch: dict, image_column, label_column):
    for column in (image_column, label_column):
        if column not in batch:
            raise ValueError(f"column {column!r} not in the batch (columns: {list(batch)}).")
    return batch[image_column], batch[label_column]


class SegmentationTrainTransform(_BadExampleMixin):
    """
    mmsegmentation's training pipeline as a ``Dataset.set_transform`` callable (batched dict in, dict out).

    Output: ``pixel_values`` float32 (3, crop_h, crop_w) tensors and ``labels`` int64 (crop_h, crop_w) tensors.
    Example indices come from ``index_column`` when the batch has it (``add_index_column`` adds one); otherwise from
    the example's files (``seed_by_content=True``: `content_key`, for streams, whose order changes) or a per-worker
    call counter (deterministic for a fixed DataLoader setup). ``set_epoch`` changes every draw.
    Skipped examples (``on_bad_example="skip"``) yield ``None`` entries, which ``collate_segmentation`` drops; the
    count is warned about once by ``set_epoch`` / ``report()`` (per process: each DataLoader worker counts its own).
    ``mean`` / ``std`` are on the 0..255 scale (mmseg); values all ≤ 1 are taken as 0..1-scale and multiplied by 255.
    ``num_labels`` enables the label-value check (values ≥ num_labels other than 255, after reduce-labels, raise).
    ``label_ids`` names the data set's label-id table (e.g. ``"cityscapes"``), applied as each map is decoded.
    Input images may be PIL images, arrays, file paths or ``Image(decode=False)`` dicts (any mode
    ``SetrImageProcessor`` accepts; converted to RGB uint8 by its rules).
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = 512,
        scale: Sequence[int] = (2048, 512),
        ratio_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        reduce_labels: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        num_labels: int | None = None,
        flip_prob: float = 0.5,
        photometric: bool = True,
        image_column: str = "image",
        label_column: str = "label",
        index_column: str = "__index__",
        on_bad_example: str = "raise",
        label_ids: str | None = None,
        seed_by_content: bool = False,
    ):
        self.label_ids = label_ids
        self.seed_by_content = seed_by_content
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(int(c) for c in crop_size)
        self.scale = tuple(int(s) for s in scale)
        self.ratio_range = tuple(float(r) for r in ratio_range)
        self.cat_max_ratio = float(cat_max_ratio)
        self.reduce_labels = bool(reduce_labels)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if self.mean.max() <= 1.0 and self.std.max() <= 1.0:  # 0..1-scale (HF style) → 0..255
            self.mean, self.std = self.mean * 255, self.std * 255
        self.seed = int(seed)
        self.epoch = 0
        self.num_labels = num_labels
        self.flip_prob = float(flip_prob)
        self.photometric = photometric
        self.image_column, self.label_column, self.index_column = image_column, label_column, index_column
        self._calls = 0
        self._init_bad(on_bad_example)

    def set_epoch(self, epoch: int) -> None:
        """Start a new epoch (different draws); warns about the examples skipped during the previous one."""
        self.report()
        self.epoch = int(epoch)

    def apply(self, image, label, rng: np.random.Generator, index: int = 0, name: str | None = None):
        """Augment one decoded example (RGB uint8 HWC image, int label map) → (pixel_values, labels) tensors."""
        if self.reduce_labels:
            label = reduce_zero_label(label)
        check_label_values(label, self.num_labels, index, name, self.reduce_labels)
        # RandomResize + RandomCrop: the crop is drawn on the resized label map, and only that window of the image is
        # resized (the result is the crop of the resized image)
        height, width = rescale_size(*label.shape[:2], sample_resize_scale(rng, self.scale, self.ratio_range))
        resized_label = LazyNearestResize(label, height, width)
        y1, y2, x1, x2 = random_crop_bbox(rng, resized_label, self.crop_size, self.cat_max_ratio)
        image = resize_image_window(image, height, width, slice(y1, y2), slice(x1, x2))
        label = resized_label[y1:y2, x1:x2]
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photometric_distortion(rng, np.ascontiguousarray(image))
        pixels = (torch.from_numpy(np.ascontiguousarray(image)).float() - torch.from_numpy(self.mean)) / torch.from_numpy(
            self.std
        )
        pixels = pixels.permute(2, 0, 1)
        labels = torch.from_numpy(np.ascontiguousarray(label)).long()
        pad_h, pad_w = self.crop_size[0] - labels.shape[0], self.crop_size[1] - labels.shape[1]
        if pad_h > 0 or pad_w > 0:
            pixels = F.pad(pixels, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=0.0)
            labels = F.pad(labels, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=IGNORE_INDEX)
        return pixels.contiguous(), labels.contiguous()

    def _one(self, index, image, label, fallback):
        rgb, seg, name = decode_example(image, label, index, self.label_ids)
        rng = example_rng(self.seed, self.epoch, index if fallback is None else fallback)
        return self.apply(rgb, seg, rng, index, name)

    def __call__(self, batch: dict) -> dict:
        images, labels = _columns(batch, self.image_column, self.label_column)
        indices = batch.get(self.index_column)
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        out_pixels, out_labels = [], []
        for position, (image, label) in enumerate(zip(images, labels, strict=True)):
            if indices is not None:
                index = int(indices[position])
                fallback = None
            elif self.seed_by_content:
                index = f"streamed example (no {self.index_column!r} column for dataset indices)"
                fallback = content_key(image, label)
            else:
                index = f"example at batch position {position} (no {self.index_column!r} column for dataset indices)"
                fallback = (1 << 40) + (worker << 32) + self._calls
                self._calls += 1
            result = self._run(self._one, index, image, label, fallback)
            out_pixels.append(None if result is None else result[0])
            out_labels.append(None if result is None else result[1])
        return {"pixel_values": out_pixels, "labels": out_labels}


class SegmentationEvalTransform(_BadExampleMixin):
    """
    Evaluation transform: decodes and checks each example, then defers to an image processor (e.g. the model's
    ``SetrImageProcessor`` / ``SegformerImageProcessor``) for the test-time resize, normalisation and padding.
    Labels are reduced here when ``reduce_labels`` (the processor's own ``do_reduce_labels`` is switched off), after
    the data set's label-id table ``label_ids`` (e.g. ``"cityscapes"``) when one is named.
    """

    def __init__(
        self,
        image_processor,
        reduce_labels: bool = False,
        num_labels: int | None = None,
        image_column: str = "image",
        label_column: str = "label",
        index_column: str = "__index__",
        on_bad_example: str = "raise",
        label_ids: str | None = None,
        **processor_kwargs,
    ):
        self.label_ids = label_ids
        self.image_processor = image_processor
        self.reduce_labels = bool(reduce_labels)
        self.num_labels = num_labels
        self.image_column, self.label_column, self.index_column = image_column, label_column, index_column
        self.processor_kwargs = processor_kwargs
        self._init_bad(on_bad_example)

    def _one(self, index, image, label):
        rgb, seg, name = decode_example(image, label, index, self.label_ids)
        if self.reduce_labels:
            seg = reduce_zero_label(seg)
        check_label_values(seg, self.num_labels, index, name, self.reduce_labels)
        out = self.image_processor(
            images=rgb,
            segmentation_maps=seg,
            do_reduce_labels=False,
            return_tensors="pt",
            **self.processor_kwargs,
        )
        return out["pixel_values"][0], out["labels"][0].long()

    def __call__(self, batch: dict) -> dict:
        images, labels = _columns(batch, self.image_column, self.label_column)
        indices = batch.get(self.index_column)
        out_pixels, out_labels = [], []
        for position, (image, label) in enumerate(zip(images, labels, strict=True)):
            index = (
                int(indices[position])
                if indices is not None
                else f"example at batch position {position} (no {self.index_column!r} column for dataset indices)"
            )
            result = self._run(self._one, index, image, label)
            out_pixels.append(None if result is None else result[0])
            out_labels.append(None if result is None else result[1])
        return {"pixel_values": out_pixels, "labels": out_labels}


def add_index_column(dataset, name: str = "__index__"):
    """Add the example-index column the transforms use for per-example seeds and error messages."""
    return dataset.add_column(name, list(range(len(dataset))))


def collate_segmentation(batch: list[dict]) -> dict:
    """Stack ``pixel_values`` / ``labels``; examples skipped as bad (``None``) are dropped; sizes are padded."""
    kept = [example for example in batch if example.get("pixel_values") is not None]
    if not kept:
        return {"pixel_values": torch.zeros(0, 3, 1, 1), "labels": torch.zeros(0, 1, 1, dtype=torch.long)}
    pixels = [torch.as_tensor(example["pixel_values"], dtype=torch.float32) for example in kept]
    height = max(p.shape[-2] for p in pixels)
    width = max(p.shape[-1] for p in pixels)
    pixels = [F.pad(p, (0, width - p.shape[-1], 0, height - p.shape[-2]), value=0.0) for p in pixels]
    out = {"pixel_values": torch.stack(pixels)}
    if "labels" in kept[0] and kept[0]["labels"] is not None:
        labels = [torch.as_tensor(example["labels"], dtype=torch.long) for example in kept]
        labels = [F.pad(l, (0, width - l.shape[-1], 0, height - l.shape[-2]), value=IGNORE_INDEX) for l in labels]
        out["labels"] = torch.stack(labels)
    return out
