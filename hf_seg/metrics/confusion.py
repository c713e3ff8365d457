"""Streaming semantic-segmentation metrics from a [K, K] confusion matrix.

`SegmentationConfusionMatrix` accumulates exact int64 pixel counts ``matrix[reference, prediction]`` batch by batch,
so evaluation never holds all predictions (let alone logits) in memory. ``compute()`` gives the numbers of
mmsegmentation 1.x's ``IoUMetric`` (``intersect_and_union`` + ``total_area_to_metrics``):

- per class ``c``: ``intersect = M[c, c]``, ``area_label = M[c, :].sum()``, ``area_pred = M[:, c].sum()``,
  ``union = area_label + area_pred - intersect``;
- ``per_category_iou = intersect / union``: NaN for a class absent from both prediction and reference (0/0),
  0 for a class that is only predicted or only in the reference;
- ``per_category_accuracy = intersect / area_label``: NaN for every class absent from the reference, even if
  predicted (0/0);
- ``aAcc = intersect.sum() / area_label.sum()``; ``mIoU`` / ``mAcc``: NaN-mean over classes.

Values are **fractions in [0, 1]**; mmseg prints and returns percentages (``* 100``, rounded to 2 decimals).
Counts are int64 and the ratios are taken in float64, so they are exact; mmseg accumulates float32 histograms, which
stop being exact above 2**24 pixels per class (its numbers can differ in the last digits on large data sets).

Differences from mmseg, by choice (hf_seg is strict at the edges): a reference value outside ``[0, num_labels)`` that
is not ``ignore_index``, or a prediction outside ``[0, num_labels)`` on a pixel that is not ignored, raises a
``ValueError`` naming the values. mmseg's ``torch.histc`` silently drops such values from one histogram but not the
other (a bad label still adds its prediction to ``area_pred``), which is never what a user meant.

Trainer helpers: `preprocess_logits_for_metrics` (argmax at label resolution, so the Trainer keeps integer maps, not
logits) and `SegmentationMetricsForTrainer`, a ``compute_metrics`` for ``TrainingArguments(batch_eval_metrics=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


__all__ = [
    "SegmentationConfusionMatrix",
    "SegmentationMetricsForTrainer",
    "metrics_from_confusion_matrix",
    "preprocess_logits_for_metrics",
    "reduce_zero_label",
]

_REDUCED_IGNORE = 255  # mmseg's reduce_zero_label (and transformers' do_reduce_labels) always use 255


def reduce_zero_label(labels: torch.Tensor) -> torch.Tensor:
    """mmseg's ``reduce_zero_label`` / transformers' ``do_reduce_labels``: 0 -> 255, 255 stays 255, k -> k - 1."""
    labels = labels.to(torch.int32 if labels.element_size() <= 4 else torch.int64)  # room for 0 - 1
    return torch.where((labels == 0) | (labels == _REDUCED_IGNORE), _REDUCED_IGNORE, labels - 1)


def _as_tensor(x: Any, what: str, index: int) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise ValueError(f"{what}[{index}] is a ragged/object array; pass one integer map per list item")
        if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
            arr = arr.astype(np.int64)  # torch has no (full) support for these
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_floating_point() or t.is_complex():
        raise TypeError(
            f"{what}[{index}] has dtype {t.dtype}; expected integer class indices (take the argmax of the logits, "
            "e.g. with preprocess_logits_for_metrics)"
        )
    return t


def _split(maps: Any, what: str) -> list[torch.Tensor]:
    """A batch (N, H, W), one map (H, W), or a sequence of maps of any sizes -> list of integer tensors."""
    if isinstance(maps, (torch.Tensor, np.ndarray)) and maps.dtype != object:
        t = _as_tensor(maps, what, 0)
        if t.ndim == 2:
            return [t]
        if t.ndim == 3:
            return list(t)  # views, no copy
        raise ValueError(f"{what} must be (H, W), (N, H, W) or a list of (H, W) maps; got shape {tuple(t.shape)}")
    if isinstance(maps, (Sequence, np.ndarray)) and not isinstance(maps, (str, bytes)):
        out = [_as_tensor(m, what, i) for i, m in enumerate(maps)]
        for i, t in enumerate(out):
            if t.ndim == 3 and t.shape[0] == 1:
                out[i] = t[0]
            elif t.ndim != 2:
                raise ValueError(f"{what}[{i}] must be a 2-D (H, W) map; got shape {tuple(t.shape)}")
        return out
    raise TypeError(f"{what} must be a tensor, an array or a list of maps; got {type(maps).__name__}")


def _describe(values: torch.Tensor, limit: int = 10) -> str:
    uniq = torch.unique(values)
    shown = ", ".join(str(int(v)) for v in uniq[:limit])
    return f"[{shown}{', ...' if uniq.numel() > limit else ''}] ({uniq.numel()} distinct)"


def metrics_from_confusion_matrix(matrix: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """mmseg ``IoUMetric`` numbers (fractions) from a [K, K] ``matrix[reference, prediction]`` of pixel counts."""
    m = torch.as_tensor(matrix).detach().cpu().to(torch.float64).numpy()
    intersect = np.diag(m)
    area_label = m.sum(axis=1)
    area_pred = m.sum(axis=0)
    union = area_label + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        acc = intersect / area_label
        a_acc = intersect.sum() / area_label.sum()
    all_nan = np.isnan(iou).all()  # nanmean of all-NaN warns; the answer is NaN, as in mmseg
    return {
        "aAcc": float(a_acc),
        "mIoU": float("nan") if all_nan else float(np.nanmean(iou)),
        "mAcc": float("nan") if np.isnan(acc).all() else float(np.nanmean(acc)),
        "per_category_iou": iou,
        "per_category_accuracy": acc,
    }


class SegmentationConfusionMatrix:
    """Streaming confusion matrix for semantic segmentation; ``compute()`` gives mmseg 1.x ``IoUMetric``'s numbers.

    Args:
        num_labels: number of classes K; valid labels and predictions are ``0 .. K-1``.
        ignore_index: reference value whose pixels are left out (255, as in mmseg).
        reduce_labels: apply mmseg's ``reduce_zero_label`` to the references first (ADE20K: 0 "other" -> 255,
            k -> k - 1). Leave False when the labels were already reduced (e.g. by an image processor with
            ``do_reduce_labels=True``).

    ``update(predictions, references)`` takes torch tensors or numpy arrays: a batch ``(N, H, W)``, one map
    ``(H, W)``, or a list of maps of different sizes (each prediction the size of its reference). All pixels of a
    call are counted with one ``torch.bincount``; the matrix lives on the device of the first update.

    Distributed: each process updates with its own shard, then ``all_reduce()`` sums the matrices (once!) before
    ``compute()``. ``merge(other)`` / ``a + b`` combine matrices in one process.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, reduce_labels: bool = False):
        if int(num_labels) < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = int(num_labels)
        self.ignore_index = int(ignore_index)
        self.reduce_labels = bool(reduce_labels)
        self.matrix = torch.zeros(self.num_labels, self.num_labels, dtype=torch.int64)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_labels={self.num_labels}, ignore_index={self.ignore_index}, "
            f"reduce_labels={self.reduce_labels}, pixels={int(self.matrix.sum())})"
        )

    def reset(self) -> None:
        self.matrix = torch.zeros_like(self.matrix)

    @torch.no_grad()
    def update(self, predictions: Any, references: Any) -> None:
        """Add a batch: (N, H, W) / (H, W) tensors or arrays, or lists of (H, W) maps of any sizes."""
        pred, ref = self._flatten(predictions, references)
        if pred is None:
            return
        if self.reduce_labels:
            ref = reduce_zero_label(ref)
        counts = self._count(pred, ref)
        if self.matrix.device != counts.device:
            self.matrix = self.matrix.to(counts.device)
        self.matrix += counts

    def _flatten(self, predictions: Any, references: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Both inputs as 1-D tensors on the matrix's device (a batch tensor is only reshaped, a list concatenated)."""
        device = self.matrix.device if self.matrix.any() else None
        batched = (torch.Tensor, np.ndarray)
        if (
            isinstance(predictions, batched)
            and isinstance(references, batched)
            and predictions.dtype != object
            and references.dtype != object
            and predictions.ndim in (2, 3)
            and tuple(predictions.shape) == tuple(references.shape)
        ):
            pred, ref = _as_tensor(predictions, "predictions", 0), _as_tensor(references, "references", 0)
            pred, ref = pred.reshape(-1), ref.reshape(-1)
        else:
            preds = _split(predictions, "predictions")
            refs = _split(references, "references")
            if len(preds) != len(refs):
                raise ValueError(f"got {len(preds)} prediction maps but {len(refs)} reference maps")
            if not preds:
                return None, None
            for i, (p, r) in enumerate(zip(preds, refs)):
                if p.shape != r.shape:
                    raise ValueError(
                        f"prediction and reference {i} differ in shape: prediction {tuple(p.shape)}, "
                        f"reference {tuple(r.shape)}"
                    )
            pred = torch.cat([p.reshape(-1).to(refs[0].device) for p in preds])
            ref = torch.cat([r.reshape(-1).to(refs[0].device) for r in refs])
        device = device or ref.device
        return pred.to(device), ref.to(device)

    def _count(self, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """[K, K] counts of the pixels with ``ref != ignore_index``, with one ``torch.bincount``; strict ranges."""
        k, ignore = self.num_labels, self.ignore_index
        if pred.dtype == torch.bool:
            pred = pred.to(torch.uint8)
        if ref.dtype == torch.bool:
            ref = ref.to(torch.uint8)
        # The usual case: ignore_index (255) >= K. Then index = ref * K + pred puts the ignored pixels in a block of
        # their own, [ignore * K, ignore * K + K), and no mask is needed: 3 passes over the pixels plus bincount.
        block = k <= ignore < 2**16
        small = pred.element_size() <= 4 and ref.element_size() <= 4 and (max(ignore, k) + 1) * k < 2**31
        dtype = torch.int32 if small else torch.int64

        valid = None
        pred_lo, pred_hi = torch.aminmax(pred)
        if pred_lo < 0 or pred_hi >= k:  # perhaps only on ignored pixels: look closer
            valid = ref != ignore
            bad = pred[valid & ((pred < 0) | (pred >= k))]
            if bad.numel():
                raise ValueError(f"predictions contain values {_describe(bad)} outside [0, {k}) on non-ignored pixels")
            pred = torch.where(valid, pred, 0)
        if block:
            index = torch.add(pred.to(dtype), ref.to(dtype), alpha=k)
            size = (ignore + 1) * k
        else:
            valid = ref != ignore if valid is None else valid
            index = torch.where(valid, torch.add(pred.to(dtype), ref.to(dtype), alpha=k), k * k)
            size = k * k + 1
        index_lo, index_hi = torch.aminmax(index)
        counts = None
        if index_lo >= 0 and index_hi < size:
            counts = torch.bincount(index, minlength=size)
            if block:
                # rows k .. ignore-1 must be empty (references in [K, ignore_index))
                if counts[k * k : ignore * k].any():
                    counts = None
            elif counts[k * k] != index.numel() - valid.sum():  # ref == K with pred == 0 lands on k*k
                counts = None
        if counts is None:
            valid = ref != ignore if valid is None else valid
            bad = ref[valid & ((ref < 0) | (ref >= k))]
            raise ValueError(
                f"references contain values {_describe(bad)} outside [0, {k}) that are not ignore_index="
                f"{ignore}{' (after reduce_labels)' if self.reduce_labels else ''}"
            )
        return counts[: k * k].view(k, k).to(torch.int64)

    def _check_compatible(self, other: SegmentationConfusionMatrix) -> None:
        if not isinstance(other, SegmentationConfusionMatrix):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if (other.num_labels, other.ignore_index, other.reduce_labels) != (
            self.num_labels,
            self.ignore_index,
            self.reduce_labels,
        ):
            raise ValueError(
                "cannot merge confusion matrices with different settings: "
                f"{(self.num_labels, self.ignore_index, self.reduce_labels)} vs "
                f"{(other.num_labels, other.ignore_index, other.reduce_labels)} "
                "(num_labels, ignore_index, reduce_labels)"
            )

    def merge(self, other: SegmentationConfusionMatrix) -> SegmentationConfusionMatrix:
        """Add ``other``'s counts to this matrix (in place) and return self."""
        self._check_compatible(other)
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def __add__(self, other: SegmentationConfusionMatrix) -> SegmentationConfusionMatrix:
        self._check_compatible(other)
        out = type(self)(self.num_labels, self.ignore_index, self.reduce_labels)
        out.matrix = self.matrix.clone()
        return out.merge(other)

    def __iadd__(self, other: SegmentationConfusionMatrix) -> SegmentationConfusionMatrix:
        return self.merge(other)

    def all_reduce(self, group=None) -> SegmentationConfusionMatrix:
        """Sum the matrix over all processes (torch.distributed), in place; a no-op when not initialised.

        Call it once per evaluation, on every process. With the NCCL backend the matrix travels through the
        current CUDA device.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        matrix = self.matrix
        if "nccl" in str(dist.get_backend(group)).lower() and matrix.device.type != "cuda":
            matrix = matrix.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(matrix, op=dist.ReduceOp.SUM, group=group)
        self.matrix = matrix.to(self.matrix.device)
        return self

    def compute(self) -> dict[str, Any]:
        """``aAcc``, ``mIoU``, ``mAcc`` (floats) and ``per_category_iou``, ``per_category_accuracy`` (float64 [K]
        arrays, NaN as described in the module docstring); fractions, not percentages."""
        return metrics_from_confusion_matrix(self.matrix)


def preprocess_logits_for_metrics(logits: Any, labels: torch.Tensor | None) -> torch.Tensor:
    """For ``Trainer(preprocess_logits_for_metrics=...)``: logits (N, K, h, w) -> argmax maps (N, H, W) at the labels'
    size (bilinear, ``align_corners=False``), so the Trainer gathers integer maps instead of logits.

    ``logits`` may be the model's output tuple (the first element is taken). Without labels the logits keep their
    size.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if logits.ndim != 4:
        raise ValueError(f"expected logits of shape (N, num_labels, h, w), got {tuple(logits.shape)}")
    with torch.no_grad():
        if labels is not None:
            size = tuple(labels.shape[-2:])
            if tuple(logits.shape[-2:]) != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.argmax(dim=1)


class SegmentationMetricsForTrainer:
    """A ``compute_metrics`` for ``Trainer`` with ``TrainingArguments(batch_eval_metrics=True)``.

    transformers calls it once per evaluation batch as ``compute_metrics(eval_pred, compute_result=is_last)``; it
    adds the batch to a confusion matrix and, on the last batch, returns ``{"mean_iou", "mean_accuracy",
    "overall_accuracy"}`` (fractions; plus ``iou_<label>`` / ``accuracy_<label>`` when ``id2label`` is given and
    ``per_category=True``) and resets itself for the next evaluation. Pair it with ``preprocess_logits_for_metrics``
    so ``eval_pred.predictions`` are argmax maps (raw logits of the label size are accepted too).

    Distribution: the Trainer already gathers predictions and labels of all processes (``gather_for_metrics``)
    before calling ``compute_metrics``, so every process sees every batch and its matrix is already global;
    ``all_reduce`` is therefore False by default (summing again would multiply every count by the world size). Set it
    True when you call this object yourself with each process's own shard.

    Label padding: the Trainer pads labels of different sizes across processes with -100; such pixels
    (``pad_index``) are ignored like ``ignore_index``.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int = 255,
        reduce_labels: bool = False,
        id2label: Mapping[int, str] | None = None,
        per_category: bool = False,
        all_reduce: bool = False,
        pad_index: int | None = -100,
    ):
        self.confusion = SegmentationConfusionMatrix(num_labels, ignore_index, reduce_labels)
        self.id2label = {int(k): v for k, v in id2label.items()} if id2label else None
        self.per_category = per_category
        self.all_reduce = all_reduce
        self.pad_index = pad_index

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, Any] | None:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(predictions, (tuple, list)) and not isinstance(predictions[0], (int, np.integer)):
            predictions = predictions[0]
        predictions = torch.as_tensor(predictions)
        labels = torch.as_tensor(labels)
        if predictions.is_floating_point():  # logits slipped through: (N, K, H, W)
            predictions = preprocess_logits_for_metrics(predictions, labels)
        if self.pad_index is not None:
            labels = torch.where(labels == self.pad_index, self.confusion.ignore_index, labels)
        self.confusion.update(predictions, labels)
        if not compute_result:
            return None
        if self.all_reduce:
            self.confusion.all_reduce()
        result = self.confusion.compute()
        self.confusion.reset()
        out = {
            "mean_iou": result["mIoU"],
            "mean_accuracy": result["mAcc"],
            "overall_accuracy": result["aAcc"],
        }
        if self.per_category:
            names = self.id2label or {}
            for i, (iou, acc) in enumerate(zip(result["per_category_iou"], result["per_category_accuracy"])):
                name = names.get(i, str(i))
                out[f"iou_{name}"] = float(iou)
                out[f"accuracy_{name}"] = float(acc)
        return out
