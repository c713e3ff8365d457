"""Semantic-segmentation metrics: a streaming confusion matrix with mmseg 1.x ``IoUMetric`` semantics, Trainer helpers,
and an ``evaluate`` module computing the same numbers.

``SegmentationConfusionMatrix.compute()`` returns mmseg's names: ``aAcc``, ``mIoU``, ``mAcc``, ``per_category_iou``,
``per_category_accuracy``. ``evaluate.load(MEAN_IOU_METRIC_PATH)`` is an offline drop-in for the Hub's
``evaluate.load("mean_iou")``: the same ``compute(predictions, references, num_labels, ignore_index, nan_to_num,
label_map, reduce_labels)`` and the same keys, ``mean_iou`` (= ``mIoU``), ``mean_accuracy`` (= ``mAcc``),
``overall_accuracy`` (= ``aAcc``) as floats and ``per_category_iou``, ``per_category_accuracy`` as float64 arrays
(``confusion_matrix`` too with ``return_confusion_matrix=True``). Unlike the Hub metric it refuses label values outside
``[0, num_labels)`` instead of dropping them; ``mean_iou/mean_iou.py``'s docstring lists the differences.
"""

from pathlib import Path

from .confusion import (
    SegmentationConfusionMatrix,
    SegmentationMetricsForTrainer,
    metrics_from_confusion_matrix,
    preprocess_logits_for_metrics,
    reduce_zero_label,
)


#: Folder of the self-contained ``evaluate`` metric module: ``evaluate.load(MEAN_IOU_METRIC_PATH)`` (works offline), a
#: drop-in for ``evaluate.load("mean_iou")``.
MEAN_IOU_METRIC_PATH = str(Path(__file__).resolve().parent / "mean_iou")

__all__ = [
    "MEAN_IOU_METRIC_PATH",
    "SegmentationConfusionMatrix",
    "SegmentationMetricsForTrainer",
    "metrics_from_confusion_matrix",
    "preprocess_logits_for_metrics",
    "reduce_zero_label",
]
