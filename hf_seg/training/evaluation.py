# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""The papers' evaluation protocol over a dataset, streamed and reduced across processes.

Trainer's own evaluation loop cannot express it: it batches processed inputs and compares logits with labels *at the
processed size*, while mmsegmentation resizes each image keeping its ratio, runs it whole or in sliding windows,
resizes the logits back to the **original** label size and scores there. So `evaluate_segmentation` runs
`hf_seg.segment` image by image (whole / slide, keep-ratio test resize, logits resized back) and adds each original
label map to a `SegmentationConfusionMatrix`; nothing but one image's logits and the [K, K] matrix is ever held.
With `torch.distributed` initialised each process takes every `world_size`-th image and the matrices are summed with
one `all_reduce`, so every process returns the metrics of the whole set (equal to a one-process run). A streamed split
(an `IterableDataset`) is read once in order and split across processes by `datasets.distributed.split_dataset_by_node`
(whole shards when their number divides by the processes, else every `world_size`-th example): each example is scored
on exactly one process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from datasets import IterableDataset

from ..data.transforms import decode_example
from ..inference import segment
from ..metrics import SegmentationConfusionMatrix


def _distributed():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def metrics_to_dict(result: dict, id2label: Mapping[int, str] | None = None, per_category: bool = True) -> dict:
    """`SegmentationConfusionMatrix.compute()` -> flat JSON-friendly floats (`mean_iou`, `iou_<label>`, ...)."""
    out = {
        "mean_iou": result["mIoU"],
        "mean_accuracy": result["mAcc"],
        "overall_accuracy": result["aAcc"],
    }
    if per_category:
        names = dict(id2label or {})
        for index, (iou, accuracy) in enumerate(zip(result["per_category_iou"], result["per_category_accuracy"])):
            name = str(names.get(index, index))
            out[f"iou_{name}"] = float(iou)
            out[f"accuracy_{name}"] = float(accuracy)
    return out


@torch.no_grad()
def broadcast_buffers(model, source_rank: int = 0) -> None:
    """Give every process rank `source_rank`'s buffers (BatchNorm running statistics). Under DDP each process
    updates its own statistics with its own last batches, so without this every process would evaluate slightly
    different models, and none of them the one rank 0 saves."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point() or buffer.dtype in (torch.int64, torch.int32):
            dist.broadcast(buffer.data, source_rank)


@torch.no_grad()
def evaluate_segmentation(
    model,
    processor,
    dataset,
    image_column: str = "image",
    label_column: str = "label",
    reduce_labels: bool = False,
    mode: str = "whole",
    crop_size=None,
    stride=None,
    scales=None,
    flip: bool = False,
    min_short_side: int | None = None,
    batch_size: int = 4,
    autocast_dtype: torch.dtype | None = None,
    ignore_index: int = 255,
    id2label: Mapping[int, str] | None = None,
    per_category: bool = True,
    max_examples: int | None = None,
    sync_buffers: bool = True,
    label_ids: str | None = None,
    return_confusion: bool = False,
) -> dict:
    """mIoU / mAcc / aAcc (fractions) of `model` on `dataset` (a `datasets.Dataset` with image and label columns, or
    a streamed `IterableDataset`), with mmsegmentation's test protocol. `scales` / `flip` / `min_short_side` are the
    multi-scale + flip test (`hf_seg.segment`'s: softmax probabilities averaged over every scale and flip, as the
    authors' `aug_test`). See the module docstring for distribution and memory; `sync_buffers` first gives every
    process rank 0's BatchNorm statistics (`broadcast_buffers`). `label_ids`: the data set's label-id table (e.g.
    "cityscapes"), applied as each label map is decoded, before reduce-labels. `return_confusion`: return
    `(metrics, confusion)`, the summed `SegmentationConfusionMatrix` too."""
    num_labels = max(model.config.num_labels, 2)  # one output channel (binary masks): background + foreground
    if model.config.num_labels == 1 and id2label is not None and len(id2label) == 1:
        id2label = {0: "background", 1: next(iter(dict(id2label).values()))}
    confusion = SegmentationConfusionMatrix(num_labels, ignore_index=ignore_index, reduce_labels=reduce_labels)
    rank, world_size = _distributed()
    if sync_buffers:
        broadcast_buffers(model)
    if isinstance(dataset, IterableDataset):
        total, batches = None, _stream_batches(dataset, rank, world_size, batch_size, max_examples)
    else:
        total = len(dataset) if max_examples is None else min(len(dataset), max_examples)
        indices = list(range(rank, total, world_size))
        chunks = (indices[start : start + batch_size] for start in range(0, len(indices), batch_size))
        batches = ((chunk, dataset.select(chunk) if hasattr(dataset, "select") else [dataset[i] for i in chunk])
                   for chunk in chunks)
    scored = 0
    was_training = model.training
    model.eval()
    try:
        for chunk, rows in batches:
            scored += len(chunk)
            images, labels = [], []
            for index, row in zip(chunk, rows):
                where = index if total is not None or world_size == 1 else f"example {index} of process {rank}'s share"
                image, label, _ = decode_example(row[image_column], row[label_column], where, label_ids)
                images.append(image)
                labels.append(torch.from_numpy(np.ascontiguousarray(label)))
            predictions = segment(
                model, processor, images, mode=mode, crop_size=crop_size, stride=stride, scales=scales, flip=flip,
                min_short_side=min_short_side, batch_size=batch_size, autocast_dtype=autocast_dtype,
            )
            try:
                confusion.update(predictions, labels)
            except ValueError as error:
                if "references contain values" not in str(error):
                    raise
                flag = "false" if reduce_labels else "true"
                raise ValueError(
                    f"examples {chunk[0]}..{chunk[-1]}: {error}; the model has {num_labels} classes and the labels "
                    f"were read with reduce_labels={reduce_labels}. If that is not this data's convention, pass "
                    f"--reduce_labels {flag} (reduce_labels={not reduce_labels})."
                ) from error
    finally:
        model.train(was_training)
    confusion.all_reduce()
    metrics = metrics_to_dict(confusion.compute(), id2label, per_category)
    metrics["num_examples"] = total if total is not None else _summed_over_processes(scored)
    return (metrics, confusion) if return_confusion else metrics


def _stream_batches(dataset, rank: int, world_size: int, batch_size: int, max_examples: int | None):
    """`(positions, rows)` of this process's share of a stream, `batch_size` at a time, in the stream's order (on one
    process the same batches as a map-style split). `max_examples`: the stream's first ones, split example by
    example (splitting shards would take a part of every shard instead)."""
    from datasets.distributed import split_dataset_by_node

    stream = dataset if max_examples is None else dataset.take(max_examples)
    if world_size > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size,
                                       strategy="auto" if max_examples is None else "examples")
    chunk, rows = [], []
    for position, row in enumerate(stream):
        chunk.append(position)
        rows.append(row)
        if len(chunk) == batch_size:
            yield chunk, rows
            chunk, rows = [], []
    if chunk:
        yield chunk, rows


def _summed_over_processes(count: int) -> int:
    """`count` summed over the processes (torch.distributed; itself when not initialised)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return count
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(dist.get_backend()).lower() else "cpu"
    total = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return int(total.item())


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def json_ready(metrics: dict) -> dict:
    """NaN -> None, so the metrics survive `json.dump` as valid JSON."""
    return {key: _clean(value) for key, value in metrics.items()}


__all__ = ["broadcast_buffers", "evaluate_segmentation", "json_ready", "metrics_to_dict"]
