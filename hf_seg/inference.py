# Copyright 2025 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Whole-image, sliding-window and multi-scale / flip inference, as the papers' code bases evaluate.

`segment(model, processor, images, ...)` returns one int64 label map per image at the image's **original** size.
It works with any semantic-segmentation model whose output has `.logits` of shape `(N, num_labels, h, w)` at the
input resolution or a fraction of it (SETR: the input size; transformers' SegFormer: 1/4), and with any image
processor that takes `size=` / `do_pad=` keyword arguments (`SetrImageProcessor`: mmsegmentation's keep-ratio test
resize).

Protocol (mmsegmentation 1.x, `EncoderDecoder` + `BaseDecodeHead.predict_by_feat` + `postprocess_result`):

- every image is resized by `processor` (with `do_pad=False`, so the sliding-window rule sees the unpadded resized
  image); logits are always brought to the network input size bilinearly (`align_corners=False`) first, then any
  padding is cropped off, then they are resized bilinearly to the original image size;
- **whole**: the resized image is padded bottom/right with 0 to the model's multiple (SETR: `patch_size`; also the
  processor's `size_divisor` when its `do_pad` is on, as the processor itself would pad) and run once;
- **slide**: the windows of mmsegmentation's `EncoderDecoder.slide_inference` (`n = max(H - hc + hs - 1, 0) // hs + 1`,
  `y1 = i * hs`, `y2 = min(y1 + hc, H)`, `y1 = max(y2 - hc, 0)`, the same along x; a window is smaller than the crop
  when the image is), the logits of each window summed into a canvas in the same order and divided by the per-pixel
  window count. Unlike mmsegmentation, windows are stacked and run `batch_size` at a time (all windows of one image
  have the same size, and so do those of its flipped copy). Windows whose sides are not multiples of SETR's patch
  size (only when an image side is smaller than the crop, or the crop itself is not a multiple) are padded
  bottom/right with 0 to the multiple and the logits cropped back to the window. mmsegmentation's ViT pads such
  inputs internally the same way ("corner" padding) but then *resizes* the head's padded logits to the window; hf_seg
  crops, as in whole mode, so that no pixel's prediction is stretched. For window sizes that are multiples of the
  patch size (every preset's crop) both are the same.
- **scales / flip** (test-time augmentation, as the authors' `aug_test`): for every scale `r` the processor's resize
  target is scaled (`{"shortest_edge": s, "longest_edge": L}` -> `int(s * r)`, `int(L * r)`, as mmseg's
  `MultiScaleFlipAug(img_ratios=...)` scales `img_scale`; without a processor resize the original size times `r`), the
  image is optionally also flipped horizontally, every variant's logits are resized to the original size,
  soft-maxed and (flipped back and) averaged; the label map is the argmax of the average. The SETR authors' special
  `setr_multi_scale` resize (short side at least the crop) is not reproduced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .models.setr import SetrConfig


__all__ = ["segment", "slide_windows"]

_MODES = ("whole", "slide")


# ---------------------------------------------------------------------------------------------------------- helpers


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a (height, width) pair of ints, got {value!r}.")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}.")
    return pair


def slide_windows(
    height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """The `(y1, y2, x1, x2)` windows of mmsegmentation's `slide_inference`, in its (row-major) order."""
    (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def _window_counts(height: int, width: int, windows) -> torch.Tensor:
    """Per-pixel number of windows covering it: the windows form a grid, so the count is an outer product."""
    rows = torch.zeros(height, dtype=torch.float32)
    cols = torch.zeros(width, dtype=torch.float32)
    for y1, y2 in sorted({(w[0], w[1]) for w in windows}):
        rows[y1:y2] += 1
    for x1, x2 in sorted({(w[2], w[3]) for w in windows}):
        cols[x1:x2] += 1
    return rows[:, None] * cols[None, :]


def _model_multiple(model) -> int:
    """The side multiple the model's input needs (SETR: its patch size; others accept any size)."""
    config = getattr(model, "config", None)
    if isinstance(config, SetrConfig):
        return int(config.patch_size)
    return 1


def _processor_pad_multiple(processor) -> int:
    if getattr(processor, "do_pad", False):
        divisor = getattr(processor, "size_divisor", None)
        if divisor:
            return int(divisor)
    return 1


def _pad_to_multiple(pixel_values: torch.Tensor, multiple: int) -> torch.Tensor:
    if multiple <= 1:
        return pixel_values
    height, width = pixel_values.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return pixel_values
    return F.pad(pixel_values, (0, pad_w, 0, pad_h), value=0.0)


def _size_as_dict(size) -> dict:
    if size is None:
        return {}
    if isinstance(size, dict):
        items = size.items()
    else:  # transformers' SizeDict
        items = ((key, getattr(size, key, None)) for key in ("height", "width", "shortest_edge", "longest_edge"))
    return {key: value for key, value in items if value is not None}


def _saved_protocol(model) -> dict:
    """The test protocol saved with the model (`config.test_protocol`: mode, crop_size, stride), or {}."""
    return dict(getattr(getattr(model, "config", None), "test_protocol", None) or {})


def _default_slide_settings(model, crop_size, stride, preset):
    """Crop / stride: explicit values, else the preset's `inference`, else the model's saved test protocol, else
    SETR's `image_size` and 2/3 of it."""
    if crop_size is None or stride is None:
        if preset is not None:
            from .presets import get_preset

            settings = get_preset(preset).inference
        else:
            settings = _saved_protocol(model)
        crop_size = settings.get("crop_size") if crop_size is None else crop_size
        stride = settings.get("stride") if stride is None else stride
    if crop_size is None:
        config = getattr(model, "config", None)
        if isinstance(config, SetrConfig):
            crop_size = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
        else:
            raise ValueError(
                "mode='slide' needs crop_size (and stride) for a model that is not SETR: pass crop_size=..., "
                "or preset=... to use a preset's test settings."
            )
    crop = _pair(crop_size, "crop_size")
    if stride is None:
        stride = tuple(side * 2 // 3 for side in crop)  # the SETR presets' 512 -> 341, 768 -> 512, 480 -> 320
    stride = _pair(stride, "stride")
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise ValueError(
            f"stride {stride} is larger than crop_size {crop}: some pixels would be covered by no window."
        )
    return crop, stride


def _as_image_list(images) -> list:
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("`images` is an empty list.")
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        if images.shape[0] == 0:
            raise ValueError(f"`images` is an empty batch of shape {tuple(images.shape)}.")
        return list(images)
    return [images]


def _process(processor, image, index: int, **kwargs):
    """`processor(images=[image], **kwargs)`, with the image's index in the caller's list in any error (the processor
    sees a list of one, so its own messages say "image 0")."""
    try:
        return processor(images=[image], **kwargs)
    except (ValueError, TypeError, OSError) as error:
        message = str(error)
        if message.startswith("image 0"):
            message = f"image {index}" + message[len("image 0"):]
        elif not message.startswith(f"image {index}"):
            message = f"image {index}: {message}"
        try:
            reindexed = type(error)(message)
        except Exception:  # noqa: BLE001 - an error class with another signature: keep the message
            reindexed = ValueError(message)
        raise reindexed from error


class _Runner:
    """Calls the model on stacked inputs and returns float32 logits resized (bilinear) to the input size."""

    def __init__(self, model, autocast_dtype):
        self.model = model
        try:
            self.device = next(model.parameters()).device
        except (StopIteration, AttributeError):
            self.device = torch.device("cpu")
        self.autocast_dtype = autocast_dtype

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.device)
        with torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                    outputs = self.model(pixel_values=pixel_values)
            else:
                outputs = self.model(pixel_values=pixel_values)
        logits = getattr(outputs, "logits", None)
        if logits is None and isinstance(outputs, dict):
            logits = outputs.get("logits")
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or logits.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"The model's output must have `.logits` of shape (batch, num_labels, h, w) for the input of shape "
                f"{tuple(pixel_values.shape)}; got {type(outputs).__name__} with logits "
                f"{None if not isinstance(logits, torch.Tensor) else tuple(logits.shape)}."
            )
        logits = logits.float()
        if logits.shape[1] == 1:  # one output channel (num_labels=1, binary masks): the foreground's sigmoid is
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)  # the softmax over (0, logit): 2 classes
        size = tuple(pixel_values.shape[-2:])
        if tuple(logits.shape[-2:]) != size:
            (lh, lw), (h, w) = logits.shape[-2:], size
            if lh > h or lw > w or abs(lh / h - lw / w) > 1.0 / h + 1.0 / w + 1e-9:
                raise ValueError(
                    f"The model's logits {(lh, lw)} are not the input size {size} or a fraction of it."
                )
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


# ------------------------------------------------------------------------------------------------------ inference


def _whole_logits(runner: _Runner, pixel_values: torch.Tensor, multiple: int) -> torch.Tensor:
    """Logits `(N, C, H, W)` of same-size images `(N, 3, H, W)` run in one call, padding cropped off."""
    height, width = pixel_values.shape[-2:]
    logits = runner(_pad_to_multiple(pixel_values, multiple))
    return logits[:, :, :height, :width]


def _run_windows(runner: _Runner, crops: list[torch.Tensor], multiple: int, batch_size: int) -> list[torch.Tensor]:
    """Logits of same-size windows `(3, h, w)`, `batch_size` windows per model call."""
    outputs = []
    for start in range(0, len(crops), batch_size):
        batch = torch.stack(crops[start : start + batch_size])
        outputs.extend(_whole_logits(runner, batch, multiple).unbind(0))
    return outputs


def _slide_logits(
    runner: _Runner,
    inputs: list[torch.Tensor],
    crop: tuple[int, int],
    stride: tuple[int, int],
    multiple: int,
    batch_size: int,
) -> list[torch.Tensor]:
    """mmsegmentation's slide inference of each `(3, H, W)` input (the scale / flip variants of one image); windows
    of equal size, across these inputs, share model calls."""
    plans, jobs = [], {}
    for index, image in enumerate(inputs):
        height, width = image.shape[-2:]
        windows = slide_windows(height, width, crop, stride)
        plans.append(windows)
        for order, (y1, y2, x1, x2) in enumerate(windows):
            jobs.setdefault((y2 - y1, x2 - x1), []).append((index, order, image[:, y1:y2, x1:x2]))

    window_logits = [[None] * len(windows) for windows in plans]
    for group in jobs.values():
        results = _run_windows(runner, [crop_ for _, _, crop_ in group], multiple, batch_size)
        for (index, order, _), logits in zip(group, results, strict=True):
            window_logits[index][order] = logits

    outputs = []
    for image, windows, logits_list in zip(inputs, plans, window_logits, strict=True):
        height, width = image.shape[-2:]
        canvas = logits_list[0].new_zeros((logits_list[0].shape[0], height, width))
        for (y1, y2, x1, x2), logits in zip(windows, logits_list, strict=True):  # mmseg's summation order
            canvas[:, y1:y2, x1:x2] += logits
        outputs.append(canvas / _window_counts(height, width, windows).to(canvas.device))
    return outputs


def segment(
    model,
    processor,
    images,
    mode: str | None = None,
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] | None = None,
    flip: bool = False,
    batch_size: int = 4,
    return_probabilities: bool = False,
    autocast_dtype: torch.dtype | None = None,
    preset: str | None = None,
    min_short_side: int | None = None,
):
    """
    Semantic segmentation of `images` at their original size, with mmsegmentation's test protocol.

    Args:
        model: a semantic-segmentation model (e.g. `SetrForSemanticSegmentation`, transformers'
            `SegformerForSemanticSegmentation`), called as `model(pixel_values=...)`; its output's `.logits` must be
            at the input resolution or a fraction of it. Put it in eval mode and on its device first.
        processor: the model's image processor (`SetrImageProcessor`); it converts and resizes every image. It is
            called with `do_pad=False`; padding to the model's multiple is done here.
        images: one image or a list of images in any form the processor accepts (PIL, NumPy, torch, paths).
        mode (`"whole"` or `"slide"`, *optional*): one forward pass on the whole resized image, or overlapping
            windows. Default: the model's saved test protocol (`config.test_protocol`, written by `hf-seg train` and
            the presets), else `"whole"`.
        crop_size, stride (`int` or `(height, width)`): the sliding windows (slide mode only). When left out they
            come from `preset` (its `inference` settings) if given, else, for a SETR model, the crop is
            `config.image_size`; the stride defaults to `2/3` of the crop (the SETR presets' 341 / 512 / 320).
        scales (sequence of `float`, *optional*): test-time scales (multiplying the processor's resize target).
        flip (`bool`): also run horizontally flipped copies. With several scales or `flip`, the softmax
            probabilities of all variants are averaged.
        batch_size (`int`): inputs per model call. Images are processed one after the other (so memory stays
            bounded by one image's canvases); within an image, its sliding windows (slide) or its same-size scale /
            flip variants (whole) are stacked, `batch_size` at a time.
        return_probabilities (`bool`): also return the per-image probabilities `(num_labels, H, W)` (float32).
            A model with one output channel (`num_labels=1`, binary masks) segments two classes, background 0 and
            foreground 1 where the sigmoid is above 0.5, and its probabilities are `(2, H, W)`.
        autocast_dtype (`torch.float16` / `torch.bfloat16`, *optional*): run the model under `torch.autocast` on its
            device with this dtype; logits are accumulated in float32.
        preset (`str`, *optional*): an `hf_seg` preset name whose `inference` settings fill crop_size / stride.
        min_short_side (`int`, *optional*): SETR's multi-scale rule (`setr_multi_scale` of the authors' `_MS`
            configs): each scale resizes the short side to `max(min_short_side, int(short * scale))`, keeping the
            ratio, with no long-side limit. Default: mmseg's rule, the processor's `size` times the scale.

    Returns:
        `list[torch.Tensor]` of int64 `(H, W)` label maps on the CPU, or with `return_probabilities` a tuple
        `(label_maps, probabilities)`.
    """
    if mode is None:
        mode = _saved_protocol(model).get("mode", "whole")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if autocast_dtype is not None and autocast_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"autocast_dtype must be None, torch.float16 or torch.bfloat16, got {autocast_dtype!r}.")
    if scales is None:
        scales = [1.0]
    if isinstance(scales, (int, float)):
        scales = [scales]
    scales = list(scales)
    if not scales or any(not isinstance(s, (int, float)) or isinstance(s, bool) or not s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales!r}.")
    if mode == "slide":
        crop, stride_ = _default_slide_settings(model, crop_size, stride, preset)
    else:
        if crop_size is not None or stride is not None:
            raise ValueError("crop_size and stride apply to mode='slide' only; mode='whole' runs the whole image.")
        crop = stride_ = None
    model_multiple = _model_multiple(model)
    whole_multiple = math.lcm(model_multiple, _processor_pad_multiple(processor))

    image_list = _as_image_list(images)
    runner = _Runner(model, autocast_dtype)
    flips = [False, True] if flip else [False]
    augmented = len(scales) > 1 or flip
    base_size = _size_as_dict(getattr(processor, "size", None)) if getattr(processor, "do_resize", True) else {}

    label_maps, probabilities = [], []
    for index, image in enumerate(image_list):
        # The original size, as the processor converts the image (orientation, layout, batch-of-one handling).
        raw = _process(processor, image, index, do_resize=False, do_rescale=False, do_normalize=False, do_pad=False)
        original = tuple(int(side) for side in np.asarray(raw["pixel_values"][0]).shape[-2:])

        variants = []  # (pixel_values (3, h, w), flipped)
        for scale in scales:
            if base_size and min_short_side is not None:
                short = min(base_size.values()) if "shortest_edge" not in base_size else base_size["shortest_edge"]
                kwargs = {"size": {"shortest_edge": max(int(min_short_side), int(short * scale))}}
            elif base_size:
                size = base_size if scale == 1 else {key: int(value * scale) for key, value in base_size.items()}
                kwargs = {"size": size}
            elif scale != 1:
                kwargs = {"do_resize": True, "size": {"height": max(1, int(original[0] * scale + 0.5)),
                                                      "width": max(1, int(original[1] * scale + 0.5))}}
            else:
                kwargs = {}
            processed = _process(processor, image, index, do_pad=False, return_tensors="pt", **kwargs)
            pixel_values = processed["pixel_values"][0]
            for flipped in flips:
                variants.append((pixel_values.flip(-1) if flipped else pixel_values, flipped))

        if mode == "slide":
            variant_logits = _slide_logits(runner, [v for v, _ in variants], crop, stride_, model_multiple, batch_size)
        else:
            variant_logits = [None] * len(variants)
            groups = {}
            for index, (pixel_values, _) in enumerate(variants):
                groups.setdefault(tuple(pixel_values.shape), []).append(index)
            for indices in groups.values():
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start : start + batch_size]
                    logits = _whole_logits(runner, torch.stack([variants[i][0] for i in chunk]), whole_multiple)
                    for i, item in zip(chunk, logits.unbind(0), strict=True):
                        variant_logits[i] = item

        total = None
        for logits, (_, flipped) in zip(variant_logits, variants, strict=True):
            if tuple(logits.shape[-2:]) != original:  # a same-size bilinear resize is an exact copy: skip it
                logits = F.interpolate(logits[None], size=original, mode="bilinear", align_corners=False)[0]
            if not augmented:
                total = logits  # mmseg: argmax of the logits (softmax only for the returned probabilities)
                break
            probs = logits.softmax(dim=0)
            if flipped:
                probs = probs.flip(-1)
            total = probs if total is None else total + probs
        if augmented:
            total = total / len(variants)
        label_maps.append(total.argmax(dim=0).cpu())
        if return_probabilities:
            probabilities.append((total if augmented else total.softmax(dim=0)).cpu())

    if return_probabilities:
        return label_maps, probabilities
    return label_maps
