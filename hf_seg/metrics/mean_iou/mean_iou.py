"""mean_iou: mmsegmentation 1.x ``IoUMetric`` (mIoU, mAcc, aAcc) as an ``evaluate`` module.

Load it by path, offline::

    import evaluate, hf_seg.metrics
    metric = evaluate.load(hf_seg.metrics.MEAN_IOU_METRIC_PATH)
    metric.compute(predictions=preds, references=labels, num_labels=150, ignore_index=255, reduce_labels=False)

``evaluate`` copies this file alone into its modules cache and imports it from there, so it depends on nothing but
numpy, datasets and evaluate (never on hf_seg). It computes the same numbers as
``hf_seg.metrics.SegmentationConfusionMatrix`` (the tests check both against mmseg).
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Semantic-segmentation metrics from a confusion matrix of pixel counts, with mmsegmentation 1.x IoUMetric's
definitions: per class IoU = intersection / union (NaN if the class is in neither prediction nor reference) and
accuracy = intersection / reference area (NaN if the class is not in the reference); mIoU and mAcc are NaN-means over
classes, aAcc is correct pixels / labelled pixels. Values are fractions in [0, 1] (mmseg reports percentages).
Pixels whose reference is `ignore_index` are left out. Unlike mmseg, a reference value outside [0, num_labels) that
is not `ignore_index`, or such a prediction on a labelled pixel, raises a ValueError instead of being silently
dropped from one of the histograms.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of 2-D integer label maps (H, W), or an (N, H, W) array.
    references: list of 2-D integer label maps, each the shape of its prediction.
    num_labels (int): number of classes K.
    ignore_index (int): reference value to ignore (default 255).
    reduce_labels (bool): mmseg's reduce_zero_label on the references first: 0 -> 255, 255 stays, k -> k - 1
        (default False).
Returns:
    aAcc, mIoU, mAcc (float), per_category_iou, per_category_accuracy (float64 arrays of length K), confusion_matrix
    (int64 [K, K], rows = reference, columns = prediction).
Examples:
    >>> metric = evaluate.load(PATH_TO_THIS_FOLDER)
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]], num_labels=2)["mIoU"]
    0.5
"""

_REDUCED_IGNORE = 255


def _confusion_matrix(predictions, references, num_labels, ignore_index, reduce_labels):
    k = int(num_labels)
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} prediction maps but {len(references)} reference maps")
    preds, refs = [], []
    for i, (p, r) in enumerate(zip(predictions, references)):
        p, r = np.asarray(p), np.asarray(r)
        if p.shape != r.shape:
            raise ValueError(
                f"prediction and reference {i} differ in shape: prediction {p.shape}, reference {r.shape}"
            )
        for name, a in (("predictions", p), ("references", r)):
            if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool or a.size == 0):
                raise TypeError(f"{name}[{i}] has dtype {a.dtype}; expected integer class indices")
        preds.append(p.reshape(-1).astype(np.int64))
        refs.append(r.reshape(-1).astype(np.int64))
    if not preds:
        return np.zeros((k, k), dtype=np.int64)
    pred, ref = np.concatenate(preds), np.concatenate(refs)
    if reduce_labels:
        ref = np.where((ref == 0) | (ref == _REDUCED_IGNORE), _REDUCED_IGNORE, ref - 1)
    valid = ref != ignore_index
    bad_ref = valid & ((ref < 0) | (ref >= k))
    if bad_ref.any():
        raise ValueError(
            f"references contain values {np.unique(ref[bad_ref])[:10].tolist()} outside [0, {k}) that are not "
            f"ignore_index={ignore_index}"
        )
    bad_pred = valid & ((pred < 0) | (pred >= k))
    if bad_pred.any():
        raise ValueError(
            f"predictions contain values {np.unique(pred[bad_pred])[:10].tolist()} outside [0, {k}) on non-ignored "
            "pixels"
        )
    index = np.where(valid, ref * k + pred, k * k)
    return np.bincount(index, minlength=k * k + 1)[: k * k].reshape(k, k).astype(np.int64)


def _metrics(matrix):
    m = matrix.astype(np.float64)
    intersect = np.diag(m)
    area_label = m.sum(axis=1)
    area_pred = m.sum(axis=0)
    union = area_label + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        acc = intersect / area_label
        a_acc = intersect.sum() / area_label.sum()
    return {
        "aAcc": float(a_acc),
        "mIoU": float("nan") if np.isnan(iou).all() else float(np.nanmean(iou)),
        "mAcc": float("nan") if np.isnan(acc).all() else float(np.nanmean(acc)),
        "per_category_iou": iou,
        "per_category_accuracy": acc,
        "confusion_matrix": matrix,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # int32 (not uint16) so that bad values such as -1 reach the check above and get a clear error
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                }
            ),
            reference_urls=["https://github.com/open-mmlab/mmsegmentation"],
        )

    def _compute(self, predictions, references, num_labels, ignore_index=255, reduce_labels=False):
        matrix = _confusion_matrix(predictions, references, num_labels, int(ignore_index), bool(reduce_labels))
        return _metrics(matrix)
