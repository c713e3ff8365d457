"""Semantic-segmentation metrics: a streaming confusion matrix with mmseg 1.x ``IoUMetric`` semantics, Trainer helpers,
and an ``evaluate`` module (``evaluate.load(MEAN_IOU_METRIC_PATH)``) computing the same numbers."""

from pathlib import Path

from .confusion import (
    SegmentationConfusionMatrix,
    SegmentationMetricsForTrainer,
    metrics_from_confusion_matrix,
    preprocess_logits_for_metrics,
    reduce_zero_label,
)


#: Folder of the self-contained ``evaluate`` metric module: ``evaluate.load(MEAN_IOU_METRIC_PATH)`` (works offline).
MEAN_IOU_METRIC_PATH = str(Path(__file__).resolve().parent / "mean_iou")

__all__ = [
    "MEAN_IOU_METRIC_PATH",
    "SegmentationConfusionMatrix",
    "SegmentationMetricsForTrainer",
    "metrics_from_confusion_matrix",
    "preprocess_logits_for_metrics",
    "reduce_zero_label",
]
