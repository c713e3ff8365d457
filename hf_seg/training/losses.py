# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Segmentation losses with mmsegmentation 1.x's semantics, the loss specifications that combine them, and the
per-head wiring the Trainer uses.

Every loss takes a head's logits `(batch, num_labels, H, W)` already at the label size and integer labels
`(batch, H, W)` holding class indices or the ignore index, and returns a scalar. Each equals mmsegmentation 1.x's
implementation on the same inputs, values and gradients (`tests/test_losses.py`), except where noted:

- `cross_entropy`: mmseg `CrossEntropyLoss`. `avg_non_ignore=False` (mmseg's default, and what the SETR and MPViT
  models compute themselves) averages over all pixels with ignored ones counting 0; `True` over the labelled pixels
  only (PyTorch's and transformers' Segformer mean). With `class_weight` the mean is weighted by the labels' class
  weights (mmseg 1.x); an ignored pixel counts as weight 1 when `avg_non_ignore=False` (mmseg 1.x fails on such
  pixels). `label_smoothing` is PyTorch's (mmseg has none).
- `ohem_cross_entropy`: that cross-entropy with mmseg's `OHEMPixelSampler` pixel weights: with `thresh`, the pixels
  whose probability of their label is below `max(thresh, the (min_kept * batch)-th smallest such probability)`;
  without, the `min_kept * batch` pixels of largest loss. The mean still runs over all (or all labelled) pixels.
- `dice_loss`: mmseg 1.x `DiceLoss`: sigmoid (default) or softmax probabilities, one V-Net (or naive) Dice per
  image over all classes and pixels together, mean over the batch. As in mmseg, an ignored pixel has no target class
  but its probabilities still count (`mask_ignored=True` leaves them out).
- `lovasz_loss`: mmseg `LovaszLoss(loss_type="multi_class")`, the Lovász-softmax over the labelled pixels of the
  batch (`per_image=False`) or of each image, averaged (`per_image=True`); classes "present", "all" or a list. With
  one output channel it is the binary Lovász hinge (`loss_type="binary"`). Sorted per (image,) class row at once.
- `focal_loss`: mmseg `FocalLoss` (sigmoid; mmseg has no softmax focal loss): per-class binary focal terms on the
  one-hot labels, `alpha` (a float or one per class), mean over pixels x classes, ignored pixels counting 0.
- `binary_cross_entropy`: mmseg `CrossEntropyLoss(use_sigmoid=True)`; with one output channel the foreground is
  label 1 and it equals transformers' Segformer loss for `num_labels=1`.

Where mmseg 1.x fails or has a slip, hf_seg does the evident intent instead: only ignored pixels give 0 (Lovász:
mmseg returns an empty tensor or cannot stack); the Dice never drops the class channel whose index equals the ignore
index (mmseg does, for models of more than 255 classes); one channel's Dice and focal targets are label 1 (mmseg's
one-hot makes Dice's label 0; its CPU focal path reads the wrong one-hot column).

One output channel (`num_labels=1`, binary foreground masks: labels 0 / 1 / ignore) works with `bce`, `dice`,
`lovasz` (hinge) and `focal`; `ce` and `ohem` need two or more classes.

Specifications (`parse_loss_spec`), as `hf-seg train --loss` and recipes take them::

    SPEC    := TERM ("+" TERM)*                     e.g. "ce:1.0+dice:3.0"
    TERM    := NAME ["(" OPTION ("," OPTION)* ")"] [":" WEIGHT]
    OPTION  := KEY "=" VALUE                        VALUE: number, true / false, none, a word, [n, n, ...]
    HEADS   := SPEC  |  HEAD "=" SPEC (";" HEAD "=" SPEC)*      HEAD: decode, aux (every auxiliary head), aux0, aux1 ...

e.g. ``ohem(thresh=0.7,min_kept=100000)+lovasz(per_image=true):0.5`` or
``decode=ce+dice:3;aux=ce:0.4``. A plain SPEC is the decode head's, and every auxiliary head gets the same terms times
the model's `auxiliary_loss_weight` (0.4 in the papers' recipes); a spec given for an auxiliary head is taken with its
own weights, as mmseg's per-head `loss_decode` is (`aux=none` drops the auxiliary losses).
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F


_EPS = torch.finfo(torch.float32).eps


def _as_class_vector(values, logits: torch.Tensor, what: str) -> torch.Tensor | None:
    """Per-class values (a list, tuple or tensor) as a tensor on the logits' device, checked against the classes."""
    if values is None:
        return None
    vector = torch.as_tensor(values, dtype=logits.dtype, device=logits.device).flatten()
    if vector.numel() != logits.shape[1]:
        raise ValueError(f"{what} has {vector.numel()} values but the logits have {logits.shape[1]} classes")
    return vector


def _one_hot(labels: torch.Tensor, num_classes: int, valid: torch.Tensor) -> torch.Tensor:
    """`(batch, num_classes, H, W)` float targets; ignored pixels have none. With one class it is the foreground,
    label 1 (binary masks), as mmseg's binary losses and transformers' Segformer read one output channel."""
    if num_classes == 1:
        return ((labels == 1) & valid).unsqueeze(1).float()
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    return ((labels.unsqueeze(1) == classes) & valid.unsqueeze(1)).float()


# --------------------------------------------------------------------------------------------------------- losses


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = 255,
    class_weight=None,
    label_smoothing: float = 0.0,
    avg_non_ignore: bool = False,
    pixel_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy (mmseg `CrossEntropyLoss`); see the module docstring for the mean. `pixel_weight`
    multiplies each pixel's loss without changing the mean's denominator (mmseg's sampler weights)."""
    weight = _as_class_vector(class_weight, logits, "class_weight")
    losses = F.cross_entropy(
        logits, labels, weight=weight, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
    )
    if pixel_weight is not None:
        losses = losses * pixel_weight
    valid = labels != ignore_index
    if weight is None:
        if not avg_non_ignore:
            return losses.mean()  # exactly the SETR / MPViT models' own loss
        return losses.sum() / valid.sum().clamp(min=1)
    label_weights = weight[labels.masked_fill(~valid, 0)] * valid
    denominator = label_weights.sum()
    if not avg_non_ignore:
        denominator = denominator + (~valid).sum()
    return losses.sum() / denominator.clamp(min=_EPS)


@torch.no_grad()
def ohem_pixel_weights(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = 255,
    thresh: float | None = None,
    min_kept: int = 100_000,
    class_weight=None,
) -> torch.Tensor:
    """mmseg `OHEMPixelSampler.sample`: 1.0 for the hard labelled pixels, 0.0 elsewhere (see the module docstring)."""
    valid = labels != ignore_index
    keep = min_kept * labels.shape[0]
    if thresh is not None:
        probabilities = logits.softmax(dim=1).gather(1, labels.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
        labelled = probabilities[valid]
        threshold = torch.as_tensor(thresh, dtype=probabilities.dtype, device=probabilities.device)
        if labelled.numel():
            kth = labelled.kthvalue(min(keep, labelled.numel() - 1) + 1).values
            threshold = torch.maximum(kth, threshold)
        hard = valid & (probabilities < threshold)
    else:
        weight = _as_class_vector(class_weight, logits, "class_weight")
        losses = F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index, reduction="none")
        labelled = losses[valid]
        chosen = torch.zeros_like(labelled, dtype=torch.bool)
        chosen[labelled.topk(min(keep, labelled.numel())).indices] = True
        hard = torch.zeros_like(valid)
        hard[valid] = chosen
    return hard.to(logits.dtype)


def ohem_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = 255,
    thresh: float | None = None,
    min_kept: int = 100_000,
    class_weight=None,
    label_smoothing: float = 0.0,
    avg_non_ignore: bool = False,
) -> torch.Tensor:
    """Cross-entropy over the hard pixels mmseg's `OHEMPixelSampler` picks (see the module docstring)."""
    weights = ohem_pixel_weights(
        logits, labels, ignore_index=ignore_index, thresh=thresh, min_kept=min_kept, class_weight=class_weight
    )
    return cross_entropy(
        logits, labels, ignore_index=ignore_index, class_weight=class_weight, label_smoothing=label_smoothing,
        avg_non_ignore=avg_non_ignore, pixel_weight=weights,
    )


def dice_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = 255,
    use_sigmoid: bool = True,
    naive_dice: bool = False,
    eps: float = 1e-3,
    mask_ignored: bool = False,
) -> torch.Tensor:
    """mmseg 1.x `DiceLoss` (see the module docstring). One output channel always uses the sigmoid.
    `mask_ignored=True` also leaves out the ignored pixels' probabilities (as if those pixels were cropped away;
    segmentation_models_pytorch's Dice does so), which mmseg counts."""
    valid = labels != ignore_index
    num_classes = logits.shape[1]
    probabilities = logits.sigmoid() if use_sigmoid or num_classes == 1 else logits.softmax(dim=1)
    if mask_ignored:
        probabilities = probabilities * valid.unsqueeze(1)
    target = _one_hot(labels, num_classes, valid)
    probabilities, target = probabilities.flatten(1), target.flatten(1)
    overlap = (probabilities * target).sum(1)
    if naive_dice:
        dice = (2 * overlap + eps) / (probabilities.sum(1) + target.sum(1) + eps)
    else:
        dice = 2 * overlap / ((probabilities * probabilities).sum(1) + eps + (target * target).sum(1) + eps)
    return (1 - dice).mean()


def _lovasz_gradient(foreground_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in decreasing order, for every row
    (Berman et al. 2018, Alg. 1). Rows may end in padding, which has no foreground and so leaves the prefix exact."""
    total = foreground_sorted.sum(-1, keepdim=True)
    intersection = total - foreground_sorted.cumsum(-1)
    union = total + (1 - foreground_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def _lovasz_rows(errors: torch.Tensor, foreground: torch.Tensor, valid: torch.Tensor, hinge: bool) -> torch.Tensor:
    """The Lovász loss of every row of `errors` `(rows, pixels)` at once: sort each row (ignored pixels last, with no
    foreground), dot the (ReLU'd, for the hinge) sorted errors with the Lovász gradient."""
    keys = errors.detach().masked_fill(~valid, -math.inf)
    order = keys.argsort(dim=-1, descending=True)
    errors_sorted = errors.gather(-1, order)
    if hinge:
        errors_sorted = F.relu(errors_sorted)
    gradient = _lovasz_gradient(foreground.gather(-1, order))
    errors_sorted = torch.where(valid.gather(-1, order), errors_sorted, torch.zeros_like(errors_sorted))
    return (errors_sorted * gradient).sum(-1)


def lovasz_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = 255,
    per_image: bool = False,
    classes: str | list[int] = "present",
    class_weight=None,
) -> torch.Tensor:
    """mmseg `LovaszLoss`: Lovász-softmax (`multi_class`), or the Lovász hinge for one output channel (`binary`)."""
    batch, num_classes = logits.shape[:2]
    valid = labels != ignore_index
    rows = batch if per_image else 1
    if num_classes == 1:
        signs = 2.0 * (labels == 1).to(logits.dtype) - 1.0
        errors = (1.0 - logits.squeeze(1) * signs).reshape(rows, -1)
        foreground = ((labels == 1) & valid).to(logits.dtype).reshape(rows, -1)
        losses = _lovasz_rows(errors, foreground, valid.reshape(rows, -1), hinge=True)
        return losses.mean()
    probabilities = logits.softmax(dim=1)
    target = _one_hot(labels, num_classes, valid)
    # rows: (image, class) with per_image, else class over the whole batch
    if per_image:
        probabilities, target = probabilities.flatten(2), target.flatten(2)
        valid_rows = valid.flatten(1).unsqueeze(1).expand(-1, num_classes, -1)
    else:
        probabilities = probabilities.transpose(0, 1).reshape(1, num_classes, -1)
        target = target.transpose(0, 1).reshape(1, num_classes, -1)
        valid_rows = valid.reshape(1, 1, -1).expand(-1, num_classes, -1)
    errors = (target - probabilities).abs()
    losses = _lovasz_rows(errors.flatten(0, 1), target.flatten(0, 1), valid_rows.flatten(0, 1), hinge=False)
    losses = losses.view(rows, num_classes)
    weight = _as_class_vector(class_weight, logits, "class_weight")
    if weight is not None:
        losses = losses * weight
    if classes == "present":
        chosen = target.sum(-1) > 0
    elif classes == "all":
        chosen = torch.ones_like(losses, dtype=torch.bool)
    else:
        chosen = torch.zeros(num_classes, dtype=torch.bool, device=logits.device)
        chosen[torch.as_tensor(list(classes), device=logits.device)] = True
        chosen = chosen.expand(rows, -1)
    # mean over the chosen classes of each row (0 for a row with none: only ignored pixels), then over the rows
    per_row = (losses * chosen).sum(-1) / chosen.sum(-1).clamp(min=1)
    return per_row.mean()


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = 255,
    gamma: float = 2.0,
    alpha: float | list[float] = 0.5,
    class_weight=None,
) -> torch.Tensor:
    """mmseg `FocalLoss` (sigmoid, the CUDA op's semantics; see the module docstring)."""
    valid = labels != ignore_index
    num_classes = logits.shape[1]
    target = _one_hot(labels, num_classes, valid)
    if isinstance(alpha, (list, tuple)):
        alpha = _as_class_vector(alpha, logits, "alpha").view(1, -1, 1, 1)
    probabilities = logits.sigmoid()
    one_minus_pt = (1 - probabilities) * target + probabilities * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * one_minus_pt.pow(gamma)
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * focal_weight
    weight = valid.unsqueeze(1).to(logits.dtype)
    class_vector = _as_class_vector(class_weight, logits, "class_weight")
    if class_vector is not None:
        weight = weight * class_vector.view(1, -1, 1, 1)
    return (losses * weight).mean()


def binary_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = 255,
    pos_weight=None,
    avg_non_ignore: bool = False,
) -> torch.Tensor:
    """Sigmoid cross-entropy on one-hot labels (mmseg `CrossEntropyLoss(use_sigmoid=True)`); one output channel:
    the foreground (label 1), as transformers' Segformer computes it for `num_labels=1`."""
    valid = labels != ignore_index
    num_classes = logits.shape[1]
    target = _one_hot(labels, num_classes, valid)
    positive = None
    if pos_weight is not None:
        positive = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device).flatten()
        if positive.numel() not in (1, num_classes):
            raise ValueError(f"pos_weight has {positive.numel()} values; give 1 or one per class ({num_classes})")
        positive = positive.view(1, -1, 1, 1)
    losses = F.binary_cross_entropy_with_logits(logits, target, pos_weight=positive, reduction="none")
    mask = valid.unsqueeze(1).to(logits.dtype)
    losses = losses * mask
    if not avg_non_ignore:
        return losses.mean()
    return losses.sum() / (mask.sum() * num_classes).clamp(min=1)


# --------------------------------------------------------------------------------------------------------- specs


def _boolean(value, key):
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key} must be true or false, got {value!r}")


def _number(low=None, high=None, low_open=False, high_open=False, integer=False):
    def check(value, key):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        if integer and int(value) != value:
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if low is not None and (value < low or (low_open and value == low)):
            raise ValueError(f"{key} must be {'>' if low_open else '>='} {low}, got {value!r}")
        if high is not None and (value > high or (high_open and value == high)):
            raise ValueError(f"{key} must be {'<' if high_open else '<='} {high}, got {value!r}")
        return int(value) if integer else float(value)

    return check


def _numbers(element):
    def check(value, key):
        if not isinstance(value, list) or not value:
            raise ValueError(f"{key} must be a list of numbers like [1.0, 2.0], got {value!r}")
        return tuple(element(item, key) for item in value)

    return check


def _either(single, many):
    def check(value, key):
        return many(value, key) if isinstance(value, list) else single(value, key)

    return check


def _optional(check):
    def wrapped(value, key):
        return None if value is None else check(value, key)

    return wrapped


def _lovasz_classes(value, key):
    if value in ("present", "all"):
        return value
    if isinstance(value, list):
        return _numbers(_number(low=0, integer=True))(value, key)
    raise ValueError(f"{key} must be present, all or a list of class indices, got {value!r}")


_NON_NEGATIVE = _number(low=0)
_CLASS_WEIGHT = _numbers(_NON_NEGATIVE)
_CE_OPTIONS = {
    "class_weight": _CLASS_WEIGHT,
    "label_smoothing": _number(low=0, high=1, high_open=True),
    "avg_non_ignore": _boolean,
}


@dataclass(frozen=True)
class LossKind:
    """One loss a specification can name: its function, its options' checks and whether one channel suits it."""

    function: Callable
    options: dict
    binary: bool  # works with one output channel (num_labels=1)
    multi_class: bool = True  # works with two or more channels


LOSSES: dict[str, LossKind] = {
    "ce": LossKind(cross_entropy, _CE_OPTIONS, binary=False),
    "ohem": LossKind(ohem_cross_entropy, {
        **_CE_OPTIONS,
        "thresh": _optional(_number(low=0, high=1)),
        "min_kept": _number(low=1, integer=True),
    }, binary=False),
    "dice": LossKind(dice_loss, {
        "use_sigmoid": _boolean, "naive_dice": _boolean, "eps": _number(low=0, low_open=True),
        "mask_ignored": _boolean,
    }, binary=True),
    "lovasz": LossKind(lovasz_loss, {
        "per_image": _boolean, "classes": _lovasz_classes, "class_weight": _CLASS_WEIGHT,
    }, binary=True),
    "focal": LossKind(focal_loss, {
        "gamma": _NON_NEGATIVE,
        "alpha": _either(_number(low=0, high=1), _numbers(_number(low=0, high=1))),
        "class_weight": _CLASS_WEIGHT,
    }, binary=True),
    "bce": LossKind(binary_cross_entropy, {
        "pos_weight": _either(_NON_NEGATIVE, _numbers(_NON_NEGATIVE)), "avg_non_ignore": _boolean,
    }, binary=True),
}
ALIASES = {
    "cross_entropy": "ce", "crossentropy": "ce", "ohem_ce": "ohem", "lovasz_softmax": "lovasz",
    "binary_cross_entropy": "bce", "sigmoid_focal": "focal",
}


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(item) for item in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class LossTerm:
    """`weight * LOSSES[name].function(logits, labels, **options)`."""

    name: str
    weight: float = 1.0
    options: tuple = ()  # sorted (key, value) pairs, so that terms compare and hash

    def __str__(self) -> str:
        options = ",".join(f"{key}={_format_value(value)}" for key, value in self.options)
        return f"{self.name}{f'({options})' if options else ''}:{self.weight!r}"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        return self.weight * LOSSES[self.name].function(logits, labels, ignore_index=ignore_index, **dict(self.options))


@dataclass(frozen=True)
class LossSpec:
    """A weighted sum of loss terms (`parse_loss_spec("ce:1.0+dice:3.0")`)."""

    terms: tuple[LossTerm, ...]

    def __str__(self) -> str:
        return "+".join(str(term) for term in self.terms) if self.terms else "none"

    def check_num_labels(self, num_labels: int, where: str = "") -> None:
        """Refuse terms that cannot train this many output channels, and per-class options of the wrong length."""
        for term in self.terms:
            kind = LOSSES[term.name]
            if num_labels == 1 and not kind.binary:
                raise ValueError(f"loss {term.name!r}{where} needs num_labels >= 2; for one output channel (binary "
                                 "masks) use bce, dice, lovasz or focal")
            for key, value in term.options:
                length = len(value) if isinstance(value, tuple) else None
                if key == "classes" and length is not None and max(value) >= num_labels:
                    raise ValueError(f"loss {term.name!r}{where}: classes {list(value)} outside [0, {num_labels})")
                if key != "classes" and length is not None and length != num_labels:
                    raise ValueError(f"loss {term.name!r}{where}: {key} has {length} values but the model has "
                                     f"{num_labels} classes")

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        if not self.terms:
            return logits.sum() * 0.0
        total = None
        for term in self.terms:
            value = term(logits, labels, ignore_index)
            total = value if total is None else total + value
        return total


class LossSpecError(ValueError):
    """A loss specification that does not parse; the message names the bad part."""

    def __init__(self, spec: str, part: str, problem: str):
        super().__init__(f"loss spec {spec!r}: {part!r}: {problem}")


_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")


def _split_top_level(text: str, separator: str) -> list[str]:
    """Split at `separator` outside brackets and parentheses."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _parse_value(text: str, spec: str, part: str):
    text = text.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise LossSpecError(spec, part, f"unclosed list {text!r}")
        inner = text[1:-1].strip()
        return [_parse_value(item, spec, part) for item in inner.split(",")] if inner else []
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        return text
    raise LossSpecError(spec, part, f"cannot read the value {text!r} (a number, true / false, none, a word or a list)")


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_term(text: str, spec: str) -> LossTerm:
    part = text.strip()
    if not part:
        raise LossSpecError(spec, text, "empty term (two '+' in a row, or one at an end)")
    body, weight = part, 1.0
    head, colon, tail = part.rpartition(":")
    if colon and ")" not in tail:
        body = head
        try:
            weight = float(tail)
        except ValueError:
            raise LossSpecError(spec, part, f"the weight after ':' must be a number, got {tail.strip()!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise LossSpecError(spec, part, f"the weight must be a finite number >= 0, got {tail.strip()!r}")
    match = _NAME.match(body)
    if match is None:
        raise LossSpecError(spec, part, "a term starts with a loss name (" + ", ".join(sorted(LOSSES)) + ")")
    name = ALIASES.get(match.group(1).lower(), match.group(1).lower())
    if name not in LOSSES:
        raise LossSpecError(spec, part, f"unknown loss {match.group(1)!r}{_did_you_mean(name, LOSSES)}; losses: "
                            + ", ".join(sorted(LOSSES)))
    rest = body[match.end():].strip()
    options = {}
    if rest:
        if not (rest.startswith("(") and rest.endswith(")")):
            raise LossSpecError(spec, part, f"expected '(key=value, ...)' after {name!r}, got {rest!r}")
        kind = LOSSES[name]
        for option in _split_top_level(rest[1:-1], ","):
            if not option.strip():
                continue
            key, equals, value = option.partition("=")
            key = key.strip()
            if not equals:
                raise LossSpecError(spec, part, f"option {option.strip()!r} is not key=value")
            if key not in kind.options:
                raise LossSpecError(spec, part, f"{name} has no option {key!r}{_did_you_mean(key, kind.options)}; "
                                    f"its options: {', '.join(sorted(kind.options))}")
            if key in options:
                raise LossSpecError(spec, part, f"option {key!r} given twice")
            try:
                options[key] = kind.options[key](_parse_value(value, spec, part), key)
            except LossSpecError:
                raise
            except ValueError as error:
                raise LossSpecError(spec, part, str(error)) from None
    return LossTerm(name, weight, tuple(sorted(options.items())))


def parse_loss_spec(spec: str | LossSpec) -> LossSpec:
    """`"ce:1.0+dice(use_sigmoid=false):3.0"` -> `LossSpec`; `"none"` is no loss. Errors name the bad term."""
    if isinstance(spec, LossSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise LossSpecError(str(spec), str(spec), "a loss spec is a non-empty string such as 'ce:1.0+dice:3.0'")
    if spec.strip().lower() == "none":
        return LossSpec(())
    depth = 0
    for char in spec:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if depth < 0:
            break
    if depth != 0:
        raise LossSpecError(spec, spec, "unbalanced parentheses or brackets")
    return LossSpec(tuple(_parse_term(term, spec) for term in _split_top_level(spec, "+")))


_HEAD_SECTION = re.compile(r"\s*(decode|aux\d*)\s*=(?![=])", re.IGNORECASE)


@dataclass(frozen=True)
class HeadLosses:
    """The losses of a model's heads: the decode head's, and each auxiliary head's (`auxiliary=None`: the decode
    head's terms times the model's `auxiliary_loss_weight`; `per_auxiliary[k]` for head k alone)."""

    decode: LossSpec
    auxiliary: LossSpec | None = None
    per_auxiliary: tuple = ()  # sorted (index, LossSpec) pairs

    def __str__(self) -> str:
        if self.auxiliary is None and not self.per_auxiliary:
            return str(self.decode)
        sections = [f"decode={self.decode}"]
        if self.auxiliary is not None:
            sections.append(f"aux={self.auxiliary}")
        sections += [f"aux{index}={spec}" for index, spec in self.per_auxiliary]
        return ";".join(sections)

    def head_specs(self, model) -> list[tuple[str, torch.nn.Module, LossSpec, float]]:
        """`(name, module, spec, weight)` for every head of `model` (a spec without terms, `aux=none`, adds a zero
        that keeps the head's parameters in the graph, as DDP needs)."""
        heads = segmentation_heads(model)
        decode, auxiliary = heads[0], heads[1:]
        per_auxiliary = dict(self.per_auxiliary)
        if per_auxiliary and max(per_auxiliary) >= len(auxiliary):
            names = ", ".join(f"aux{index}" for index in range(len(auxiliary))) or "none"
            raise ValueError(f"loss spec {str(self)!r}: aux{max(per_auxiliary)} does not exist; "
                             f"{type(model).__name__} has {len(auxiliary)} auxiliary head(s) ({names})")
        if (self.auxiliary is not None or per_auxiliary) and not auxiliary:
            raise ValueError(f"loss spec {str(self)!r} names auxiliary heads, but {type(model).__name__} has none")
        auxiliary_weight = float(getattr(model.config, "auxiliary_loss_weight", None) or 0.4)
        specs = [(decode[0], decode[1], self.decode, 1.0)]
        for index, (name, module) in enumerate(auxiliary):
            if index in per_auxiliary:
                specs.append((name, module, per_auxiliary[index], 1.0))
            elif self.auxiliary is not None:
                specs.append((name, module, self.auxiliary, 1.0))
            else:
                specs.append((name, module, self.decode, auxiliary_weight))
        num_labels = model.config.num_labels
        for name, _, spec, _ in specs:
            spec.check_num_labels(num_labels, f" ({name})")
        return specs

    @contextlib.contextmanager
    def capture(self, model):
        """Record the heads' logits during one forward pass (forward hooks, removed after)."""
        specs = self.head_specs(model)
        captured: dict[str, list] = {name: [] for name, *_ in specs}
        handles = [
            module.register_forward_hook(lambda _module, _inputs, output, name=name: captured[name].append(output))
            for name, module, *_ in specs
        ]
        try:
            yield _Captured(specs, captured, model.config.num_labels)
        finally:
            for handle in handles:
                handle.remove()


@dataclass
class _Captured:
    specs: list
    outputs: dict
    num_labels: int

    def loss(self, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        """The weighted sum over heads of each head's spec on its logits, resized bilinearly to the label size as
        the models' own losses do."""
        check_loss_labels(labels, self.num_labels, ignore_index)
        total = None
        for name, _, spec, weight in self.specs:
            outputs = self.outputs[name]
            if len(outputs) != 1:
                raise RuntimeError(f"the head {name} ran {len(outputs)} times in one forward pass; expected once "
                                   "(were the labels passed to the model? SETR runs its auxiliary heads only then)")
            logits = _head_logits(outputs[0], name)
            if not spec.terms:
                value = logits.sum() * 0.0
                total = value if total is None else total + value
                continue
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            value = weight * spec(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                                  labels, ignore_index)
            total = value if total is None else total + value
        return total


def _head_logits(output: Any, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor) and output.ndim == 4:
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the head {name} returned {type(output).__name__}, not a (batch, classes, h, w) logits tensor")


def check_loss_labels(labels: torch.Tensor, num_labels: int, ignore_index: int = 255) -> None:
    """Labels the losses can read: an integer `(batch, H, W)` tensor of class indices (0 / 1 for one output
    channel) or the ignore index; anything else would be read silently as some class."""
    if labels.ndim != 3 or labels.is_floating_point():
        raise ValueError(f"labels must be an integer (batch, height, width) tensor, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    limit = max(num_labels, 2)
    invalid = (labels != ignore_index) & ((labels < 0) | (labels >= limit))
    if invalid.any():
        bad = torch.unique(labels[invalid])[:10].tolist()
        raise ValueError(f"labels hold values {bad} outside [0, {limit}) that are not the ignore index {ignore_index}")


def segmentation_heads(model) -> list[tuple[str, torch.nn.Module]]:
    """`[(name, module), ...]`: the decode head first, then the auxiliary heads in order: SETR's
    `auxiliary_heads[k]`, UperNet's (MPViT's, transformers') `auxiliary_head`; SegFormer has none."""
    model = getattr(model, "module", model)  # DDP / DataParallel
    decode = getattr(model, "decode_head", None)
    if not isinstance(decode, torch.nn.Module):
        raise ValueError(f"{type(model).__name__} has no decode_head: configurable losses need one")
    heads = [("decode_head", decode)]
    auxiliary = getattr(model, "auxiliary_heads", None)
    if isinstance(auxiliary, torch.nn.ModuleList):
        heads += [(f"auxiliary_heads.{index}", head) for index, head in enumerate(auxiliary)]
    elif isinstance(getattr(model, "auxiliary_head", None), torch.nn.Module):
        heads.append(("auxiliary_head", model.auxiliary_head))
    return heads


def parse_head_losses(spec: str | HeadLosses | LossSpec) -> HeadLosses:
    """`"ce+dice:3"` (the decode head's; auxiliary heads follow it) or `"decode=...;aux=...;aux1=..."`."""
    if isinstance(spec, HeadLosses):
        return spec
    if isinstance(spec, LossSpec):
        return HeadLosses(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise LossSpecError(str(spec), str(spec), "a loss spec is a non-empty string such as 'ce:1.0+dice:3.0'")
    sections = [section for section in spec.split(";")]
    if len(sections) == 1 and not _HEAD_SECTION.match(sections[0]):
        return HeadLosses(parse_loss_spec(spec))
    decode, auxiliary, per_auxiliary = None, None, {}
    for section in sections:
        match = _HEAD_SECTION.match(section)
        if match is None:
            raise LossSpecError(spec, section.strip(), "with several heads every part is HEAD=SPEC, HEAD one of "
                                "decode, aux (every auxiliary head), aux0, aux1, ...")
        head, body = match.group(1).lower(), section[match.end():]
        if head == "decode":
            if decode is not None:
                raise LossSpecError(spec, section.strip(), "decode given twice")
            decode = parse_loss_spec(body)
        elif head == "aux":
            if auxiliary is not None:
                raise LossSpecError(spec, section.strip(), "aux given twice")
            auxiliary = parse_loss_spec(body)
        else:
            index = int(head[3:])
            if index in per_auxiliary:
                raise LossSpecError(spec, section.strip(), f"aux{index} given twice")
            per_auxiliary[index] = parse_loss_spec(body)
    if decode is None:
        raise LossSpecError(spec, spec, "name the decode head's loss too (decode=SPEC)")
    return HeadLosses(decode, auxiliary, tuple(sorted(per_auxiliary.items())))


# ------------------------------------------------------------------------------------------------- class weights

CLASS_WEIGHT_METHODS = ("inverse_frequency", "median_frequency")


def class_weights_from_counts(pixels: np.ndarray, image_pixels: np.ndarray, method: str) -> np.ndarray:
    """Class weights from per-class pixel counts (`pixels[c]`) and the labelled pixels of the images holding class c
    (`image_pixels[c]`). "inverse_frequency": `total / (num_present * pixels[c])` (the weighted mean over the
    split's pixels is 1); "median_frequency" (Eigen & Fergus 2015): `median(freq) / freq[c]` with `freq[c] =
    pixels[c] / image_pixels[c]`. A class absent from the split gets 1.0."""
    if method not in CLASS_WEIGHT_METHODS:
        raise ValueError(f"class weights: method must be one of {', '.join(CLASS_WEIGHT_METHODS)}, got {method!r}")
    pixels, image_pixels = np.asarray(pixels, dtype=np.float64), np.asarray(image_pixels, dtype=np.float64)
    present = pixels > 0
    if not present.any():
        raise ValueError("class weights: the split holds no labelled pixel")
    weights = np.ones_like(pixels)
    if method == "inverse_frequency":
        weights[present] = pixels[present].sum() / (present.sum() * pixels[present])
    else:
        frequency = pixels[present] / image_pixels[present]
        weights[present] = np.median(frequency) / frequency
    return weights


def class_weights_from_data(dataset, label_column: str, num_labels: int, method: str, reduce_labels: bool = False,
                            label_ids: str | None = None, split: str = "train") -> list[float]:
    """`class_weights_from_counts` over a split's label maps (each decoded once, counted with one `bincount`; after
    the `label_ids` table and reduce-labels, the ignore index left out). Values outside the classes are refused."""
    from tqdm.auto import tqdm

    from ..data.labels import _label_array
    from ..data.transforms import IGNORE_INDEX, reduce_zero_label

    if num_labels < 2:
        raise ValueError("class weights need num_labels >= 2; for binary masks give bce(pos_weight=...)")
    pixels = np.zeros(num_labels, dtype=np.int64)
    image_pixels = np.zeros(num_labels, dtype=np.int64)
    column = dataset.select_columns([label_column]) if hasattr(dataset, "select_columns") else dataset
    for index in tqdm(range(len(column)), desc=f"class weights: counting the {split} label maps", unit="map",
                      disable=len(column) < 200):
        label = _label_array(column[index][label_column], f"{split} example {index}", label_ids)
        if reduce_labels:
            label = reduce_zero_label(label)
        values = label[label != IGNORE_INDEX].ravel().astype(np.int64)
        if values.size and (values.min() < 0 or values.max() >= num_labels):
            bad = np.unique(values[(values < 0) | (values >= num_labels)])[:10].tolist()
            raise ValueError(f"{split} example {index}: label values {bad} outside the {num_labels} classes")
        counts = np.bincount(values, minlength=num_labels)
        pixels += counts
        image_pixels += (counts > 0) * values.size
    return [round(float(weight), 6) for weight in class_weights_from_counts(pixels, image_pixels, method)]


def with_class_weights(heads: HeadLosses, class_weight) -> HeadLosses:
    """`heads` with `class_weight` given to every term that takes one (ce, ohem, lovasz, focal); a term that already
    has class weights is refused (give them once)."""
    values = tuple(float(value) for value in class_weight)

    def weighted(spec: LossSpec) -> LossSpec:
        terms = []
        for term in spec.terms:
            options = dict(term.options)
            if "class_weight" in LOSSES[term.name].options:
                if "class_weight" in options:
                    raise ValueError(f"loss term {str(term)!r} has its own class_weight; computed class weights would "
                                     "replace them: give one or the other")
                options["class_weight"] = values
            terms.append(LossTerm(term.name, term.weight, tuple(sorted(options.items()))))
        return LossSpec(tuple(terms))

    return HeadLosses(
        weighted(heads.decode), None if heads.auxiliary is None else weighted(heads.auxiliary),
        tuple((index, weighted(spec)) for index, spec in heads.per_auxiliary),
    )


__all__ = [
    "ALIASES",
    "CLASS_WEIGHT_METHODS",
    "HeadLosses",
    "LOSSES",
    "LossSpec",
    "LossSpecError",
    "LossTerm",
    "binary_cross_entropy",
    "class_weights_from_counts",
    "class_weights_from_data",
    "cross_entropy",
    "dice_loss",
    "focal_loss",
    "lovasz_loss",
    "ohem_cross_entropy",
    "ohem_pixel_weights",
    "parse_head_losses",
    "parse_loss_spec",
    "segmentation_heads",
    "with_class_weights",
]
