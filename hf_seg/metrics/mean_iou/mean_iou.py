"""mean_iou: an offline drop-in for the Hub's ``evaluate.load("mean_iou")``, strict about label values.

Load it by path, offline, and call it exactly as the Hub metric (same arguments, same semantics, same keys)::

    import evaluate, hf_seg.metrics
    metric = evaluate.load(hf_seg.metrics.MEAN_IOU_METRIC_PATH)      # instead of evaluate.load("mean_iou")
    metric.compute(predictions=preds, references=labels, num_labels=150, ignore_index=255, reduce_labels=False)
    # {"mean_iou": float, "mean_accuracy": float, "overall_accuracy": float,
    #  "per_category_iou": float64 ndarray [K], "per_category_accuracy": float64 ndarray [K]}

transformers' ``examples/pytorch/semantic-segmentation/run_semantic_segmentation.py`` works with it unchanged
(``ignore_index=0, reduce_labels=image_processor.do_reduce_labels``, labels in ``[0, num_labels)``): its
``compute_metrics`` pops the two per-category arrays, ``.tolist()``s them into ``accuracy_<name>`` / ``iou_<name>``
keys, and the rest are plain floats that ``Trainer.log_metrics`` / ``save_metrics`` accept. With
``--do_reduce_labels`` that call leaves the 255s that reduce_labels makes of 0 un-ignored: refused here (see below).

The numbers are mmsegmentation's ``IoUMetric`` ones (as the Hub metric's, which was written from mmseg) and equal
``hf_seg.metrics.SegmentationConfusionMatrix``'s: ``mean_iou`` is its ``mIoU``, ``mean_accuracy`` its ``mAcc``,
``overall_accuracy`` its ``aAcc``. ``return_confusion_matrix=True`` adds ``confusion_matrix`` (int64 [K, K], rows =
reference, columns = prediction); it is off by default so that the result has the Hub metric's keys only.

Differences from the Hub metric (huggingface/evaluate ``metrics/mean_iou``), all on inputs it would treat silently:

- **Out-of-range values raise.** After ``label_map`` and ``reduce_labels``, a reference value outside
  ``[0, num_labels)`` that is not ``ignore_index``, or a prediction outside ``[0, num_labels)`` on a pixel that is not
  ignored, raises ``ValueError`` naming the values. The Hub metric's ``np.histogram`` drops such values from one
  histogram but not the other: a bad reference still adds its pixel's prediction to that class's union (lowering its
  IoU), a bad prediction still counts its pixel as a miss. Cases that hit this in practice: ``reduce_labels=True``
  turns 0 into 255, so it needs ``ignore_index=255`` (with ``ignore_index=0`` or ``-1``, as transformers' example and
  its TF task guide pass, the 255 pixels are refused here, half-counted there); the Trainer's ``-100`` padding of
  label maps of different sizes needs ``ignore_index=-100`` (or maps of one size).
- **Inputs**: the Hub metric declares ``datasets.Image()`` features (each map is encoded as a PNG/TIFF image, int64
  downcast to int32); this one declares nested ``int32`` sequences. Like it, this one takes a list of 2-D maps of
  any sizes or an (N, H, W) array, the maps as numpy arrays or PIL images (also nested lists and CPU torch tensors:
  ``add`` / ``add_batch`` / ``compute`` convert each with ``numpy.asarray``). Maps must hold integer class indices:
  float maps raise ``TypeError`` (the Hub metric histograms them), a map that is not 2-D raises ``ValueError``, and a
  prediction/reference pair of different shapes raises ``ValueError`` naming the shapes (an ``IndexError`` there).
- **Types**: ``mean_iou`` / ``mean_accuracy`` / ``overall_accuracy`` are Python floats (numpy float64 there, a float
  subclass); the per-category values are float64 arrays in both. Counts are exact int64 (float64 sums there: equal).
- **No warnings**: NaNs (a class absent from prediction and reference, or from the reference for its accuracy; all
  three summaries when every pixel is ignored) are the same, without numpy's "Mean of empty slice" warnings.
- **Conveniences**: ``ignore_index`` defaults to 255 (required there; ``None`` ignores nothing in both);
  ``label_map`` keys and values may be ints or int-like strings (a dict loaded from JSON); label maps are remapped
  on int64 copies (the Hub metric writes into the map's own dtype, so mapping a uint8 map to -1 fails there).

``evaluate`` copies this file alone into its modules cache and imports it from there, so it depends on nothing but
numpy, datasets and evaluate (never on hf_seg).
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Mean Intersection-over-Union and pixel accuracies for semantic segmentation, computed from a confusion matrix of
pixel counts with mmsegmentation's IoUMetric definitions (as the Hub's "mean_iou" metric): per class,
IoU = intersection / union (NaN if the class is in neither prediction nor reference) and accuracy = intersection /
reference area (NaN if the class is not in the reference); mean_iou and mean_accuracy are NaN-means over classes and
overall_accuracy is correct pixels / labelled pixels. Values are fractions in [0, 1]. Pixels whose reference is
`ignore_index` are left out. Unlike the Hub metric, a reference value outside [0, num_labels) that is not
`ignore_index`, or such a prediction on a labelled pixel, raises a ValueError instead of being silently dropped from
one of the histograms.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of 2-D integer label maps (H, W) of any sizes, or an (N, H, W) array.
    references: list of 2-D integer label maps, each the shape of its prediction.
    num_labels (int): number of classes K; class indices are 0 .. K-1.
    ignore_index (int): reference value whose pixels are left out (default 255; None: none).
    nan_to_num (number, optional): if given, NaNs in all returned metrics are replaced by it (after the means are
        taken, so it does not change mean_iou / mean_accuracy unless they are NaN themselves).
    label_map (dict, optional): old reference value -> new value, applied first; every entry reads the original
        labels (so {1: 2, 2: 1} swaps them).
    reduce_labels (bool): then mmseg's reduce_zero_label / transformers' do_reduce_labels on the references:
        0 -> 255, 255 stays 255, k -> k - 1 (default False). Pass ignore_index=255 with it.
    return_confusion_matrix (bool): also return `confusion_matrix` (default False).
Returns:
    mean_iou, mean_accuracy, overall_accuracy (float); per_category_iou, per_category_accuracy (float64 arrays of
    length K); with return_confusion_matrix=True also confusion_matrix (int64 [K, K], rows = reference, columns =
    prediction).
Examples:
    >>> metric = evaluate.load(PATH_TO_THIS_FOLDER)
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]], num_labels=2,
    ...                ignore_index=255)["mean_iou"]
    0.5
"""

_REDUCED_IGNORE = 255  # reduce_labels always maps 0 (and 255) to 255


def _as_map(x, name, index):
    """One (H, W) integer label map as a numpy array (from a list, an array, a PIL image or a CPU tensor)."""
    a = np.asarray(x)
    if a.dtype == object:
        raise ValueError(f"{name}[{index}] is a ragged/object array; pass one 2-D integer map per item")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool or a.size == 0):
        raise TypeError(
            f"{name}[{index}] has dtype {a.dtype}; expected integer class indices (the argmax of the logits)"
        )
    if a.size == 0 and a.ndim != 2:
        return a.reshape(0, 0)  # an empty map comes back from datasets as []
    if a.ndim != 2:
        raise ValueError(f"{name}[{index}] has shape {a.shape}; expected a 2-D (height, width) label map")
    return a


def _as_maps(maps, name):
    if maps is None:
        return None
    return [_as_map(m, name, i) for i, m in enumerate(maps)]  # iterating an (N, H, W) array gives its maps


def _describe(values, limit=10):
    uniq = np.unique(values)
    shown = ", ".join(str(int(v)) for v in uniq[:limit])
    return f"[{shown}{', ...' if uniq.size > limit else ''}]"


def _int_label_map(label_map):
    if label_map is None:
        return None
    if not hasattr(label_map, "items"):
        raise TypeError(f"label_map must be a dict old value -> new value, got {type(label_map).__name__}")
    return {int(old): int(new) for old, new in label_map.items()}


def _confusion_matrix(predictions, references, num_labels, ignore_index, label_map, reduce_labels):
    k = int(num_labels)
    if k < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} prediction maps but {len(references)} reference maps")
    preds, refs = [], []
    for i, (p, r) in enumerate(zip(predictions, references)):
        p, r = _as_map(p, "predictions", i), _as_map(r, "references", i)
        if p.shape != r.shape:
            raise ValueError(
                f"prediction and reference {i} differ in shape: prediction {p.shape}, reference {r.shape}"
            )
        preds.append(p.reshape(-1).astype(np.int64))
        refs.append(r.reshape(-1).astype(np.int64))
    if not preds:
        return np.zeros((k, k), dtype=np.int64)
    pred, ref = np.concatenate(preds), np.concatenate(refs)

    mapping = _int_label_map(label_map)
    if mapping:
        original = ref
        ref = original.copy()
        for old, new in mapping.items():
            ref[original == old] = new  # every entry reads the original labels
    if reduce_labels:
        ref = np.where((ref == 0) | (ref == _REDUCED_IGNORE), _REDUCED_IGNORE, ref - 1)

    valid = np.ones(ref.shape, dtype=bool) if ignore_index is None else ref != int(ignore_index)
    applied = [name for name, used in (("label_map", mapping), ("reduce_labels", reduce_labels)) if used]
    transformed = f" (after {' and '.join(applied)})" if applied else ""
    bad_ref = valid & ((ref < 0) | (ref >= k))
    if bad_ref.any():
        bad = ref[bad_ref]
        hint = ""
        if reduce_labels and ignore_index != _REDUCED_IGNORE and (bad == _REDUCED_IGNORE).any():
            hint = "; reduce_labels=True maps 0 to 255: pass ignore_index=255 to leave those pixels out"
        elif (bad == -100).any():
            hint = "; -100 is the Trainer's padding of label maps of different sizes: pass ignore_index=-100"
        raise ValueError(
            f"references contain values {_describe(bad)} outside [0, {k}) that are not ignore_index={ignore_index}"
            f"{transformed}{hint}"
        )
    bad_pred = valid & ((pred < 0) | (pred >= k))
    if bad_pred.any():
        raise ValueError(
            f"predictions contain values {_describe(pred[bad_pred])} outside [0, {k}) on pixels whose reference is "
            f"not ignore_index={ignore_index}"
        )
    index = np.where(valid, ref * k + pred, k * k)  # k * k: the ignored pixels' bin, cut off below
    return np.bincount(index, minlength=k * k + 1)[: k * k].reshape(k, k).astype(np.int64)


def _metrics(matrix, nan_to_num=None):
    m = matrix.astype(np.float64)
    intersect = np.diag(m)
    area_label = m.sum(axis=1)
    area_pred = m.sum(axis=0)
    union = area_label + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        acc = intersect / area_label
        overall = intersect.sum() / area_label.sum()
    result = {
        "mean_iou": float("nan") if np.isnan(iou).all() else float(np.nanmean(iou)),
        "mean_accuracy": float("nan") if np.isnan(acc).all() else float(np.nanmean(acc)),
        "overall_accuracy": float(overall),
        "per_category_iou": iou,
        "per_category_accuracy": acc,
    }
    if nan_to_num is not None:  # after the means, as the Hub metric does
        for key, value in result.items():
            if isinstance(value, float):
                result[key] = float(nan_to_num) if np.isnan(value) else value
            else:
                result[key] = np.where(np.isnan(value), np.float64(nan_to_num), value)
    return result


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
            reference_urls=[
                "https://huggingface.co/spaces/evaluate-metric/mean_iou",
                "https://github.com/open-mmlab/mmsegmentation",
            ],
        )

    # PIL images, tensors and arrays -> 2-D numpy maps before datasets encodes them (compute() goes through add_batch).
    # The docstrings are needed: evaluate appends the inputs description to them.
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references (lists of 2-D label maps, or (N, H, W) arrays)."""
        return super().add_batch(
            predictions=_as_maps(predictions, "predictions"), references=_as_maps(references, "references"), **kwargs
        )

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one prediction and reference (2-D label maps)."""
        return super().add(
            prediction=None if prediction is None else _as_map(prediction, "prediction", 0),
            reference=None if reference is None else _as_map(reference, "reference", 0),
            **kwargs,
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels,
        ignore_index=255,
        nan_to_num=None,
        label_map=None,
        reduce_labels=False,
        return_confusion_matrix=False,
    ):
        matrix = _confusion_matrix(predictions, references, num_labels, ignore_index, label_map, bool(reduce_labels))
        result = _metrics(matrix, nan_to_num)
        if return_confusion_matrix:
            result["confusion_matrix"] = matrix
        return result
