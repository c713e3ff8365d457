"""hf_seg.metrics: the streaming confusion matrix against mmsegmentation 1.x IoUMetric, the evaluate module, the
Trainer helpers, strict input checks and the distributed reduction."""

import ast
import math
import os

import numpy as np
import pytest
import torch

from hf_seg.metrics import (
    MEAN_IOU_METRIC_PATH,
    SegmentationConfusionMatrix,
    SegmentationMetricsForTrainer,
    preprocess_logits_for_metrics,
)


# ---------------------------------------------------------------------------------------------------------------
# mmseg reference


@pytest.fixture(scope="module")
def mmseg_iou():
    from mmseg_reference import import_mmseg

    import_mmseg()
    from mmseg.evaluation import IoUMetric
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    def run(preds, labels, num_labels, ignore_index=255):
        """mmseg's per-class arrays (unrounded, fractions) and its rounded summary (percentages)."""
        metric = IoUMetric(ignore_index=ignore_index, iou_metrics=["mIoU"])
        metric.dataset_meta = {"classes": [f"class{i}" for i in range(num_labels)]}
        samples = [
            SegDataSample(
                pred_sem_seg=PixelData(data=torch.as_tensor(p)[None]),
                gt_sem_seg=PixelData(data=torch.as_tensor(r)[None]),
            ).to_dict()
            for p, r in zip(preds, labels)
        ]
        metric.process({}, samples)
        inter, union, pred_area, label_area = (sum(x) for x in zip(*metric.results))
        raw = IoUMetric.total_area_to_metrics(inter, union, pred_area, label_area, ["mIoU"])
        summary = metric.compute_metrics(list(metric.results))
        return raw, summary

    return run


def mmseg_reduce_zero_label(label):
    """Written from mmseg's LoadAnnotations(reduce_zero_label=True) documentation: 0 -> 255, k -> k - 1, 255 stays."""
    label = np.array(label, dtype=np.int64)
    label[label == 0] = 255
    label = label - 1
    label[label == 254] = 255
    return label


def random_case(seed, num_labels, shapes, ignore_frac=0.1, pred_classes=None, label_classes=None):
    rng = np.random.default_rng(seed)
    preds, labels = [], []
    for shape in shapes:
        pc = np.arange(num_labels) if pred_classes is None else np.asarray(pred_classes)
        lc = np.arange(num_labels) if label_classes is None else np.asarray(label_classes)
        label = rng.choice(lc, size=shape)
        # correlated predictions: right on about half of the pixels, so IoUs are not all tiny
        pred = np.where(rng.random(shape) < 0.5, label, rng.choice(pc, size=shape))
        pred = np.where(np.isin(pred, pc), pred, rng.choice(pc, size=shape))
        label = np.where(rng.random(shape) < ignore_frac, 255, label)
        preds.append(pred.astype(np.int64))
        labels.append(label.astype(np.int64))
    return preds, labels


def assert_matches_mmseg(ours, raw, summary):
    assert math.isclose(ours["aAcc"], float(raw["aAcc"]), rel_tol=1e-6, abs_tol=1e-7)
    np.testing.assert_allclose(ours["per_category_iou"], raw["IoU"], rtol=1e-6, atol=1e-7, equal_nan=True)
    np.testing.assert_allclose(ours["per_category_accuracy"], raw["Acc"], rtol=1e-6, atol=1e-7, equal_nan=True)
    assert np.array_equal(np.isnan(ours["per_category_iou"]), np.isnan(raw["IoU"]))
    assert np.array_equal(np.isnan(ours["per_category_accuracy"]), np.isnan(raw["Acc"]))
    # mmseg's returned summary: percentages rounded to 2 decimals
    for key in ("aAcc", "mIoU", "mAcc"):
        assert abs(round(ours[key] * 100, 2) - summary[key]) <= 0.011, key


CASES = {
    "batch_with_ignore": dict(num_labels=7, shapes=[(16, 20)] * 4),
    "uneven_sizes": dict(num_labels=5, shapes=[(9, 13), (31, 7), (1, 1), (24, 24)]),
    "absent_classes": dict(num_labels=8, shapes=[(12, 12)] * 3, pred_classes=[0, 1, 2, 6], label_classes=[0, 1, 3, 6]),
    "mostly_ignored": dict(num_labels=4, shapes=[(10, 10)] * 2, ignore_frac=0.95),
    "many_classes": dict(num_labels=150, shapes=[(64, 48), (40, 80)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_mmseg(mmseg_iou, name):
    case = dict(CASES[name])
    num_labels = case["num_labels"]
    preds, labels = random_case(sum(map(ord, name)), **case)
    raw, summary = mmseg_iou(preds, labels, num_labels)
    cm = SegmentationConfusionMatrix(num_labels)
    uniform = len(set(case["shapes"])) == 1
    cm.update(np.stack(preds) if uniform else preds, torch.as_tensor(np.stack(labels)) if uniform else labels)
    ours = cm.compute()
    assert_matches_mmseg(ours, raw, summary)
    if name == "absent_classes":
        iou, acc = ours["per_category_iou"], ours["per_category_accuracy"]
        assert np.isnan(iou[[4, 5, 7]]).all() and np.isnan(acc[[2, 4, 5, 7]]).all()  # absent from both / from labels
        assert iou[2] == 0 and iou[3] == 0 and acc[3] == 0  # only predicted / only labelled


def test_reduce_labels_matches_mmseg(mmseg_iou):
    # ADE20K-style raw labels: 0 = "other" (ignored after reduction), 1..K = classes, some 255 already
    num_labels = 6
    rng = np.random.default_rng(3)
    raw_labels = [rng.integers(0, num_labels + 1, size=s) for s in [(10, 14), (7, 7)]]
    raw_labels[0][0, :5] = 255
    preds = [rng.integers(0, num_labels, size=label.shape) for label in raw_labels]
    raw, summary = mmseg_iou(preds, [mmseg_reduce_zero_label(label) for label in raw_labels], num_labels)
    cm = SegmentationConfusionMatrix(num_labels, reduce_labels=True)
    cm.update(preds, [torch.as_tensor(label, dtype=torch.uint8) for label in raw_labels])
    assert_matches_mmseg(cm.compute(), raw, summary)


def test_other_ignore_index_matches_mmseg(mmseg_iou):
    preds, labels = random_case(11, 5, [(12, 9)] * 2)
    labels = [np.where(label == 255, 2, label) for label in labels]  # class 2 used as the ignore index
    raw, summary = mmseg_iou(preds, labels, 5, ignore_index=2)
    cm = SegmentationConfusionMatrix(5, ignore_index=2)
    cm.update(preds, labels)
    assert_matches_mmseg(cm.compute(), raw, summary)


# ---------------------------------------------------------------------------------------------------------------
# streaming, merging, input kinds


def test_streaming_merge_and_input_kinds():
    preds, labels = random_case(5, 9, [(20, 30)] * 6)
    whole = SegmentationConfusionMatrix(9)
    whole.update(np.stack(preds), np.stack(labels))

    stream = SegmentationConfusionMatrix(9)
    for p, r in zip(preds, labels):
        stream.update(torch.as_tensor(p, dtype=torch.int32), torch.as_tensor(r, dtype=torch.uint8))  # (H, W) each
    assert torch.equal(stream.matrix, whole.matrix)

    first, second = SegmentationConfusionMatrix(9), SegmentationConfusionMatrix(9)
    first.update(preds[:2], labels[:2])
    second.update(torch.as_tensor(np.stack(preds[2:])), torch.as_tensor(np.stack(labels[2:])))
    summed = first + second
    assert torch.equal(summed.matrix, whole.matrix)
    assert not torch.equal(first.matrix, whole.matrix)  # __add__ leaves its operands alone
    first.merge(second)
    assert torch.equal(first.matrix, whole.matrix)

    a, b = whole.compute(), stream.compute()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert whole.matrix.dtype == torch.int64 and int(whole.matrix.sum()) == sum(int((r != 255).sum()) for r in labels)

    whole.reset()
    assert int(whole.matrix.sum()) == 0
    with pytest.raises(ValueError, match="different settings"):
        first.merge(SegmentationConfusionMatrix(9, reduce_labels=True))


def test_empty_and_nan():
    cm = SegmentationConfusionMatrix(3)
    cm.update([], [])
    cm.update(np.zeros((2, 2), dtype=np.int64), np.full((2, 2), 255))  # all ignored
    out = cm.compute()
    assert math.isnan(out["aAcc"]) and math.isnan(out["mIoU"]) and math.isnan(out["mAcc"])
    assert np.isnan(out["per_category_iou"]).all()


def test_bad_inputs():
    cm = SegmentationConfusionMatrix(4)
    shapes = r"prediction and reference 1 differ in shape: prediction \(3, 4\), reference \(4, 3\)"
    with pytest.raises(ValueError, match=shapes):
        cm.update([np.zeros((2, 2), int), np.zeros((3, 4), int)], [np.zeros((2, 2), int), np.zeros((4, 3), int)])
    with pytest.raises(ValueError, match="2 prediction maps but 1 reference"):
        cm.update([np.zeros((2, 2), int)] * 2, [np.zeros((2, 2), int)])
    label = np.array([[0, 1], [7, 255]])
    with pytest.raises(ValueError, match=r"references contain values \[7\]"):
        cm.update(np.zeros((2, 2), int), label)
    with pytest.raises(ValueError, match=r"references contain values \[-3, 4\]"):
        cm.update(np.zeros((2, 2), int), np.array([[-3, 1], [4, 255]]))
    with pytest.raises(ValueError, match=r"references contain values \[4\]"):  # K with prediction 0
        cm.update(np.zeros((1, 1), int), np.array([[4]]))
    with pytest.raises(ValueError, match=r"predictions contain values \[-1, 9\]"):
        cm.update(np.array([[-1, 9], [0, 0]]), np.array([[0, 1], [2, 3]]))
    with pytest.raises(TypeError, match="integer class indices"):
        cm.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match=r"references contain values \[2\].*not ignore_index=-1"):
        SegmentationConfusionMatrix(2, ignore_index=-1).update(np.zeros((1, 1), int), np.array([[2]]))
    assert int(cm.matrix.sum()) == 0  # nothing half-counted
    # an out-of-range prediction on an ignored pixel is fine (mmseg drops those pixels first)
    cm.update(np.array([[-1, 2]]), np.array([[255, 2]]))
    assert int(cm.matrix.sum()) == 1 and int(cm.matrix[2, 2]) == 1


def test_bad_labels_mmseg_silently_drops(mmseg_iou):
    """Documents why hf_seg refuses labels outside [0, K): mmseg counts their predictions but not the labels."""
    raw, _ = mmseg_iou([np.array([[1, 1]])], [np.array([[1, 9]])], 3)
    assert float(raw["IoU"][1]) == 0.5  # the pixel labelled 9 still adds a prediction of class 1 to the union
    with pytest.raises(ValueError, match=r"\[9\]"):
        SegmentationConfusionMatrix(3).update(np.array([[1, 1]]), np.array([[1, 9]]))


# ---------------------------------------------------------------------------------------------------------------
# evaluate module


# The Hub metric's keys; the values equal SegmentationConfusionMatrix's mIoU / mAcc / aAcc.
HUB_KEYS = {"mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"}
CLASS_KEY = {"mean_iou": "mIoU", "mean_accuracy": "mAcc", "overall_accuracy": "aAcc"}


@pytest.fixture(scope="module")
def mean_iou_metric():
    import evaluate

    assert os.environ.get("HF_EVALUATE_OFFLINE") == "1" and os.environ.get("HF_HUB_OFFLINE") == "1"
    return evaluate.load(MEAN_IOU_METRIC_PATH)


def assert_equals_class(out, expected):
    """`out` (evaluate module) against `SegmentationConfusionMatrix.compute()`, bit for bit."""
    assert set(out) == HUB_KEYS
    for key, class_key in CLASS_KEY.items():
        assert isinstance(out[key], float)
        np.testing.assert_array_equal(out[key], expected[class_key])
    for key in ("per_category_iou", "per_category_accuracy"):
        assert isinstance(out[key], np.ndarray) and out[key].dtype == np.float64
        np.testing.assert_array_equal(out[key], expected[key])


def assert_metrics(out, mean_iou, mean_accuracy, overall_accuracy, iou, accuracy):
    assert set(out) == HUB_KEYS
    np.testing.assert_allclose(
        [out["mean_iou"], out["mean_accuracy"], out["overall_accuracy"]], [mean_iou, mean_accuracy, overall_accuracy],
        rtol=1e-12, atol=0,
    )
    np.testing.assert_allclose(out["per_category_iou"], iou, rtol=1e-12, atol=0)
    np.testing.assert_allclose(out["per_category_accuracy"], accuracy, rtol=1e-12, atol=0)


def test_evaluate_module_offline_equals_class(mean_iou_metric):
    source = open(os.path.join(MEAN_IOU_METRIC_PATH, "mean_iou.py"), encoding="utf-8").read()
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {"datasets", "evaluate", "numpy"}, imported  # self-contained: evaluate copies the file alone

    metric = mean_iou_metric
    preds, labels = random_case(8, 6, [(11, 17), (5, 9), (20, 3)])
    raw_labels = [np.where(label == 255, 0, label + 1) for label in labels]  # un-reduced form of the same labels
    for reduce_labels, refs in ((False, labels), (True, raw_labels)):
        cm = SegmentationConfusionMatrix(6, reduce_labels=reduce_labels)
        cm.update(preds, refs)
        out = metric.compute(
            predictions=preds, references=refs, num_labels=6, ignore_index=255, reduce_labels=reduce_labels
        )
        assert_equals_class(out, cm.compute())
        with_matrix = metric.compute(
            predictions=preds, references=refs, num_labels=6, ignore_index=255, reduce_labels=reduce_labels,
            return_confusion_matrix=True,
        )
        assert set(with_matrix) == HUB_KEYS | {"confusion_matrix"}
        assert with_matrix["confusion_matrix"].dtype == np.int64
        np.testing.assert_array_equal(with_matrix["confusion_matrix"], cm.matrix.numpy())

    # batch by batch through evaluate's add_batch / add, and straight through _compute (as PEFT's guide calls it)
    cm = SegmentationConfusionMatrix(6)
    cm.update(preds, labels)
    for p, r in zip(preds, labels):
        metric.add_batch(predictions=[p], references=[r])
    assert_equals_class(metric.compute(num_labels=6, ignore_index=255), cm.compute())
    for p, r in zip(preds, labels):
        metric.add(prediction=torch.as_tensor(p), reference=r.tolist())
    assert_equals_class(metric.compute(num_labels=6), cm.compute())  # ignore_index defaults to 255
    assert_equals_class(metric._compute(predictions=preds, references=labels, num_labels=6, ignore_index=255),
                        cm.compute())


def test_evaluate_module_hub_documented_example(mean_iou_metric):
    """The example in the Hub metric's docstring (huggingface/evaluate metrics/mean_iou), with its printed result.

    Its 255 predictions sit on pixels whose reference is 255 (ignored), so the strict checks accept it."""
    predicted = [
        np.array([[1, 2], [3, 4], [5, 255]]),
        np.array([[2, 7], [9, 2], [3, 6]]),
        np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]]),
    ]
    ground_truth = [
        np.array([[0, 3], [5, 4], [6, 255]]),
        np.array([[1, 7], [9, 2], [3, 6]]),
        np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]]),
    ]
    out = mean_iou_metric.compute(
        predictions=predicted, references=ground_truth, num_labels=10, ignore_index=255, reduce_labels=False
    )
    assert out["mean_iou"] == 0.47750000000000004
    assert out["mean_accuracy"] == 0.5916666666666666
    assert out["overall_accuracy"] == 0.5263157894736842
    np.testing.assert_allclose(out["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1], rtol=1e-12)
    np.testing.assert_allclose(out["per_category_accuracy"], [0, 0, 0.75, 2 / 3, 1, 0, 0.5, 1, 1, 1], rtol=1e-12)


def _example_compute_metrics(metric, id2label, do_reduce_labels):
    """transformers' examples/pytorch/semantic-segmentation/run_semantic_segmentation.py ``compute_metrics``, as
    written there (``ignore_index=0``, ``reduce_labels=image_processor.do_reduce_labels``)."""
    from torch import nn

    @torch.no_grad()
    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        logits_tensor = torch.from_numpy(logits)
        # scale the logits to the size of the label
        logits_tensor = nn.functional.interpolate(
            logits_tensor,
            size=labels.shape[-2:],
            mode="bilinear",
            align_corners=False,
        ).argmax(dim=1)

        pred_labels = logits_tensor.detach().cpu().numpy()
        metrics = metric.compute(
            predictions=pred_labels,
            references=labels,
            num_labels=len(id2label),
            ignore_index=0,
            reduce_labels=do_reduce_labels,
        )
        # add per category metrics as individual key-value pairs
        per_category_accuracy = metrics.pop("per_category_accuracy").tolist()
        per_category_iou = metrics.pop("per_category_iou").tolist()

        metrics.update({f"accuracy_{id2label[i]}": v for i, v in enumerate(per_category_accuracy)})
        metrics.update({f"iou_{id2label[i]}": v for i, v in enumerate(per_category_iou)})

        return metrics

    return compute_metrics


def test_transformers_example_compute_metrics_through_trainer(mean_iou_metric, tmp_path, capsys):
    """The example's compute_metrics in a real Trainer.evaluate (numpy logits and labels), then the example's
    trainer.log_metrics("eval", ...) and trainer.save_metrics("eval", ...)."""
    import json

    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments
    from transformers.modeling_outputs import SemanticSegmenterOutput

    id2label = {0: "unlabeled", 1: "road", 2: "car", 3: "sky"}  # sidewalk-semantic style: 0 is a class, ignored

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, len(id2label), 1)

        def forward(self, pixel_values, labels=None):
            logits = self.conv(pixel_values)[:, :, ::4, ::4]  # quarter resolution, like SegFormer
            return SemanticSegmenterOutput(loss=logits.mean() * 0, logits=logits)

    class Data(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(100 + i)
            label = torch.randint(0, len(id2label), (12, 16), generator=g)
            pixel_values = torch.nn.functional.one_hot(label, len(id2label))[..., :3].permute(2, 0, 1).float()
            pixel_values = pixel_values + 0.5 * torch.randn(3, 12, 16, generator=g)
            return {"pixel_values": pixel_values, "labels": label}

    model = Tiny()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True)
    trainer = Trainer(
        model=model, args=args, eval_dataset=Data(),
        compute_metrics=_example_compute_metrics(mean_iou_metric, id2label, do_reduce_labels=False),
    )
    metrics = trainer.evaluate()
    capsys.readouterr()
    trainer.log_metrics("eval", metrics)
    printed = capsys.readouterr().out
    trainer.save_metrics("eval", metrics)
    saved = json.loads((tmp_path / "eval_results.json").read_text())

    cm = SegmentationConfusionMatrix(len(id2label), ignore_index=0)
    with torch.no_grad():
        for i in range(len(Data())):
            item = Data()[i]
            logits = model(item["pixel_values"][None]).logits
            cm.update(preprocess_logits_for_metrics(logits, item["labels"][None]), item["labels"][None])
    expected = cm.compute()
    assert 0 < expected["mIoU"] < 1 and np.isnan(expected["per_category_accuracy"][0])  # class 0 is all ignored

    names = [f"{kind}_{id2label[i]}" for kind in ("accuracy", "iou") for i in range(len(id2label))]
    wanted = {f"eval_{k}" for k in ["mean_iou", "mean_accuracy", "overall_accuracy", *names]}
    assert wanted <= set(metrics)
    assert not any(isinstance(v, np.ndarray) for v in metrics.values())
    for key, class_key in CLASS_KEY.items():
        assert type(metrics[f"eval_{key}"]) is float and metrics[f"eval_{key}"] == expected[class_key]
        assert saved[f"eval_{key}"] == expected[class_key]
        assert f"eval_{key}" in printed and f"{round(expected[class_key], 4)}" in printed
    for i in range(1, len(id2label)):
        assert metrics[f"eval_iou_{id2label[i]}"] == expected["per_category_iou"][i]
        assert metrics[f"eval_accuracy_{id2label[i]}"] == expected["per_category_accuracy"][i]
    assert math.isnan(metrics["eval_accuracy_unlabeled"]) and math.isnan(saved["eval_accuracy_unlabeled"])


def test_transformers_example_compute_metrics_call(mean_iou_metric):
    """The same compute_metrics on an EvalPrediction, and the result in Trainer's own formatting helpers."""
    import json
    import types

    from transformers import EvalPrediction
    from transformers.trainer_pt_utils import log_metrics, metrics_format
    from transformers.trainer_utils import denumpify_detensorize

    id2label = {i: f"c{i}" for i in range(5)}
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, size=(3, 16, 12))
    logits = rng.standard_normal((3, 5, 4, 3)).astype(np.float32)
    metrics = _example_compute_metrics(mean_iou_metric, id2label, False)(
        EvalPrediction(predictions=logits, label_ids=labels)
    )
    preds = torch.nn.functional.interpolate(
        torch.from_numpy(logits), size=(16, 12), mode="bilinear", align_corners=False
    ).argmax(1)
    cm = SegmentationConfusionMatrix(5, ignore_index=0)
    cm.update(preds, labels)
    expected = cm.compute()
    assert len(metrics) == 3 + 2 * 5 and all(type(v) is float for v in metrics.values())
    assert metrics["mean_iou"] == expected["mIoU"] and metrics["iou_c3"] == expected["per_category_iou"][3]
    assert json.dumps(denumpify_detensorize(dict(metrics))) == json.dumps(metrics)  # what Trainer.evaluate does
    assert all(isinstance(v, float) for v in metrics_format(metrics).values())
    log_metrics(types.SimpleNamespace(is_world_process_zero=lambda: True), "eval", metrics)
    assert json.loads(json.dumps(metrics)).keys() == metrics.keys()

    # with do_reduce_labels=True the example's ignore_index=0 does not ignore the 255 that reduce_labels makes of 0:
    # the Hub metric half-counts those pixels (their predictions join the union), this module refuses them
    with pytest.raises(ValueError, match=r"references contain values \[255\].*pass ignore_index=255"):
        _example_compute_metrics(mean_iou_metric, id2label, True)(EvalPrediction(predictions=logits, label_ids=labels))


def test_evaluate_module_ignore_index_by_hand(mean_iou_metric):
    # reference 7 is ignored, with its out-of-range-free prediction 2; the other 5 pixels:
    # (r0,p0) (r0,p1) (r1,p1) (r1,p1) (r2,p0) -> intersect [1, 2, 0], area_label [2, 2, 1], area_pred [2, 3, 0]
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    ref = np.array([[0, 0, 1], [1, 2, 7]])
    out = mean_iou_metric.compute(predictions=[pred], references=[ref], num_labels=3, ignore_index=7)
    assert_metrics(out, 1 / 3, 0.5, 3 / 5, iou=[1 / 3, 2 / 3, 0], accuracy=[0.5, 1, 0])
    # a prediction outside [0, K) is fine on an ignored pixel
    out = mean_iou_metric.compute(
        predictions=[np.where(ref == 7, 99, pred)], references=[ref], num_labels=3, ignore_index=7
    )
    assert_metrics(out, 1 / 3, 0.5, 3 / 5, iou=[1 / 3, 2 / 3, 0], accuracy=[0.5, 1, 0])
    # ignore_index=None ignores nothing (as the Hub metric's `label != None`): the 7 is then refused
    with pytest.raises(ValueError, match=r"references contain values \[7\] outside \[0, 3\).*ignore_index=None"):
        mean_iou_metric.compute(predictions=[pred], references=[ref], num_labels=3, ignore_index=None)
    out = mean_iou_metric.compute(
        predictions=[pred], references=[np.where(ref == 7, 2, ref)], num_labels=3, ignore_index=None
    )
    assert_metrics(out, (1 / 3 + 2 / 3 + 1 / 2) / 3, 2 / 3, 4 / 6, iou=[1 / 3, 2 / 3, 1 / 2], accuracy=[0.5, 1, 0.5])


def test_evaluate_module_nan_to_num_by_hand(mean_iou_metric):
    # class 1 only predicted (IoU 0, accuracy 0/0), class 2 nowhere (both 0/0)
    pred, ref = np.array([[0, 1], [0, 0]]), np.zeros((2, 2), int)
    nan = float("nan")
    out = mean_iou_metric.compute(predictions=[pred], references=[ref], num_labels=3, ignore_index=255)
    np.testing.assert_array_equal(out["per_category_iou"], [0.75, 0, nan])
    np.testing.assert_array_equal(out["per_category_accuracy"], [0.75, nan, nan])
    assert (out["mean_iou"], out["mean_accuracy"], out["overall_accuracy"]) == (0.375, 0.75, 0.75)
    # NaNs replaced after the means are taken (the means stay NaN-means), in the arrays too
    for fill in (0, -1, 0.5):
        out = mean_iou_metric.compute(
            predictions=[pred], references=[ref], num_labels=3, ignore_index=255, nan_to_num=fill
        )
        assert_metrics(out, 0.375, 0.75, 0.75, iou=[0.75, 0, fill], accuracy=[0.75, fill, fill])
        assert out["per_category_iou"].dtype == np.float64 and type(out["mean_iou"]) is float
    # every pixel ignored: all five are NaN, or the fill value
    allignored = dict(predictions=[pred], references=[np.full((2, 2), 255)], num_labels=3, ignore_index=255)
    out = mean_iou_metric.compute(**allignored)
    assert all(np.isnan(v).all() for v in out.values())
    out = mean_iou_metric.compute(**allignored, nan_to_num=5)
    assert_metrics(out, 5, 5, 5, iou=[5, 5, 5], accuracy=[5, 5, 5])


def test_evaluate_module_label_map_and_reduce_labels_by_hand(mean_iou_metric):
    # label_map: every entry reads the original labels (1 <-> 2 swap), then 3 -> ignored
    ref, pred = np.array([[1, 2], [3, 0]]), np.array([[2, 2], [0, 0]])
    # mapped reference [[2, 1], [255, 0]]: (r2,p2) (r1,p2) (r0,p0)
    expected = dict(mean_iou=0.5, mean_accuracy=2 / 3, overall_accuracy=2 / 3, iou=[1, 0, 0.5], accuracy=[1, 0, 1])
    for label_map in ({1: 2, 2: 1, 3: 255}, {"1": "2", "2": "1", "3": "255"}):  # JSON-style string keys too
        out = mean_iou_metric.compute(
            predictions=[pred], references=[ref], num_labels=3, ignore_index=255, label_map=label_map
        )
        assert_metrics(out, **expected)
    # reduce_labels: 0 -> 255, 255 stays 255, k -> k - 1, on uint8 maps (no wrap-around)
    ref8 = np.array([[0, 255, 1, 3]], dtype=np.uint8)  # reduced: [255, 255, 0, 2]
    out = mean_iou_metric.compute(
        predictions=[np.array([[2, 2, 0, 1]])], references=[ref8], num_labels=3, ignore_index=255, reduce_labels=True
    )
    assert_metrics(out, 1 / 3, 0.5, 0.5, iou=[1, 0, 0], accuracy=[1, float("nan"), 0])
    # label_map first, then reduce_labels: {3: 0} makes the 3 a background 0, which reduce_labels sends to 255
    ref, pred = np.array([[0, 1], [2, 3]]), np.array([[1, 0], [0, 1]])  # -> [[255, 0], [1, 255]]
    out = mean_iou_metric.compute(
        predictions=[pred], references=[ref], num_labels=2, ignore_index=255, label_map={3: 0}, reduce_labels=True
    )
    assert_metrics(out, 0.25, 0.5, 0.5, iou=[0.5, 0], accuracy=[1, 0])
    # the other order would leave a 2 (from 3), outside [0, 2): what the error reports
    with pytest.raises(ValueError, match=r"values \[2\] outside \[0, 2\).*\(after label_map and reduce_labels\)"):
        mean_iou_metric.compute(
            predictions=[pred], references=[ref], num_labels=2, ignore_index=255, label_map={0: 0}, reduce_labels=True
        )


@pytest.mark.parametrize("ignore_index", [255, 0, -100])
def test_evaluate_module_random_maps_equal_class(mean_iou_metric, ignore_index):
    preds, labels = random_case(40 + ignore_index % 7, 7, [(13, 11), (8, 20), (17, 17)], ignore_frac=0.15)
    labels = [np.where(label == 255, ignore_index, label) for label in labels]
    # a label_map that permutes the classes (reading the original labels) and sends class 6 to ignore_index
    perm = {c: (c + 2) % 6 for c in range(6)} | {6: ignore_index}
    if ignore_index == 0:
        perm = {0: 6, 6: 0, 1: 2, 2: 1}  # the ignored pixels become class 6, class 6 becomes ignored
    mapped = [np.vectorize(lambda v: perm.get(int(v), int(v)))(label) for label in labels]
    for kwargs, refs in (({}, labels), ({"label_map": perm}, mapped)):
        cm = SegmentationConfusionMatrix(7, ignore_index=ignore_index)
        cm.update(preds, refs)
        expected = cm.compute()
        out = mean_iou_metric.compute(
            predictions=preds, references=labels, num_labels=7, ignore_index=ignore_index, **kwargs
        )
        assert_equals_class(out, expected)
        filled = mean_iou_metric.compute(
            predictions=preds, references=labels, num_labels=7, ignore_index=ignore_index, nan_to_num=-1, **kwargs
        )
        for key in ("per_category_iou", "per_category_accuracy"):
            np.testing.assert_array_equal(filled[key], np.where(np.isnan(expected[key]), -1, expected[key]))
    # reduce_labels against the class's reduce_labels (which always reduces to 255)
    if ignore_index == 255:
        raw = [np.where(label == 255, 0, label + 1) if i != 1 else np.where(label == 255, 255, label + 1)
               for i, label in enumerate(labels)]  # background as 0, and as an already-ignored 255
        cm = SegmentationConfusionMatrix(7, reduce_labels=True)
        cm.update(preds, raw)
        out = mean_iou_metric.compute(predictions=preds, references=raw, num_labels=7, ignore_index=255,
                                      reduce_labels=True)
        assert_equals_class(out, cm.compute())


def test_evaluate_module_refuses_out_of_range_values(mean_iou_metric):
    """The Hub metric silently drops these from one histogram; this module names them."""
    metric = mean_iou_metric
    zeros = np.zeros((2, 2), int)
    with pytest.raises(ValueError, match=r"references contain values \[7\] outside \[0, 6\) that are not "
                                         r"ignore_index=255"):
        metric.compute(predictions=[zeros], references=[np.full((2, 2), 7)], num_labels=6, ignore_index=255)
    with pytest.raises(ValueError, match=r"references contain values \[-3, 4\] outside \[0, 4\)"):
        metric.compute(predictions=[zeros], references=[np.array([[-3, 1], [4, 255]])], num_labels=4,
                       ignore_index=255)
    with pytest.raises(ValueError, match=r"references contain values \[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, \.\.\.\] "):
        metric.compute(predictions=[np.zeros((1, 30), int)], references=[np.arange(30)[None]], num_labels=1,
                       ignore_index=255)  # 29 bad values: the first ten are named
    with pytest.raises(ValueError, match=r"references contain values \[-100\].*pass ignore_index=-100"):
        metric.compute(predictions=[zeros], references=[np.array([[0, 1], [-100, -100]])], num_labels=2,
                       ignore_index=255)
    with pytest.raises(ValueError, match=r"predictions contain values \[-1, 9\] outside \[0, 4\) on pixels whose "
                                         r"reference is not ignore_index=255"):
        metric.compute(predictions=[np.array([[-1, 9], [0, 255]])], references=[np.array([[0, 1], [2, 255]])],
                       num_labels=4, ignore_index=255)
    with pytest.raises(ValueError, match=r"\[255\].*reduce_labels=True maps 0 to 255: pass ignore_index=255"):
        metric.compute(predictions=[zeros], references=[np.array([[0, 1], [2, 3]])], num_labels=4, ignore_index=-1,
                       reduce_labels=True)
    # the same through _compute, and inputs that are not 2-D integer maps
    with pytest.raises(ValueError, match=r"references contain values \[9\]"):
        metric._compute(predictions=[np.array([[1, 1]])], references=[np.array([[1, 9]])], num_labels=3)
    with pytest.raises(TypeError, match="integer class indices"):
        metric.compute(predictions=[np.zeros((2, 2), np.float32)], references=[zeros], num_labels=2)
    with pytest.raises(ValueError, match=r"references\[0\] has shape \(2, 2, 3\); expected a 2-D"):
        metric.compute(predictions=[zeros], references=[np.zeros((2, 2, 3), int)], num_labels=2)
    with pytest.raises(ValueError, match=r"prediction and reference 0 differ in shape"):
        metric._compute(predictions=[zeros], references=[np.zeros((2, 3), int)], num_labels=2)


# ---------------------------------------------------------------------------------------------------------------
# Trainer helpers


def test_preprocess_logits_for_metrics():
    logits = torch.randn(2, 5, 8, 8)
    labels = torch.zeros(2, 32, 24, dtype=torch.int64)
    out = preprocess_logits_for_metrics((logits, torch.randn(2, 3)), labels)
    assert out.shape == (2, 32, 24) and not out.is_floating_point()
    up = torch.nn.functional.interpolate(logits, size=(32, 24), mode="bilinear", align_corners=False)
    assert torch.equal(out, up.argmax(1))
    assert torch.equal(preprocess_logits_for_metrics(logits, torch.zeros(2, 8, 8)), logits.argmax(1))


def test_trainer_compute_metrics_protocol():
    import inspect

    from transformers import EvalPrediction

    preds, labels = random_case(21, 4, [(6, 8)] * 6)
    labels[5][:, -2:] = -100  # padding the Trainer adds across processes
    metrics = SegmentationMetricsForTrainer(4, id2label={0: "a", 1: "b", 2: "c", 3: "d"}, per_category=True)
    assert "compute_result" in inspect.signature(metrics).parameters  # what Trainer checks
    for round_ in range(2):  # resets itself after the last batch
        for i in range(0, 6, 2):
            batch = EvalPrediction(
                predictions=torch.as_tensor(np.stack(preds[i : i + 2])),
                label_ids=torch.as_tensor(np.stack(labels[i : i + 2])),
            )
            out = metrics(batch, compute_result=i == 4)
            assert (out is None) == (i != 4)
        cm = SegmentationConfusionMatrix(4)
        cm.update(preds, [np.where(label == -100, 255, label) for label in labels])
        expected = cm.compute()
        assert out["mean_iou"] == expected["mIoU"] and out["overall_accuracy"] == expected["aAcc"]
        assert out["iou_c"] == expected["per_category_iou"][2] and "accuracy_d" in out


def test_trainer_evaluate_end_to_end(tmp_path):
    """A real Trainer.evaluate with batch_eval_metrics: per-batch calls, argmax maps, final dict."""
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments
    from transformers.modeling_outputs import SemanticSegmenterOutput

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, pixel_values, labels=None):
            logits = self.conv(pixel_values)[:, :, ::2, ::2]  # half resolution, like real heads
            return SemanticSegmenterOutput(loss=logits.mean() * 0, logits=logits)

    class Data(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            pixel_values = torch.randn(3, 8, 8, generator=g)
            return {"pixel_values": pixel_values, "labels": torch.randint(0, 3, (8, 8), generator=g)}

    seen = []
    metric = SegmentationMetricsForTrainer(3)

    def compute_metrics(eval_pred, compute_result):
        seen.append(tuple(eval_pred.predictions.shape))
        return metric(eval_pred, compute_result=compute_result)

    model = Tiny()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, batch_eval_metrics=True, report_to=[], use_cpu=True
    )
    trainer = Trainer(
        model=model, args=args, eval_dataset=Data(), compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    result = trainer.evaluate()
    assert seen == [(2, 8, 8), (2, 8, 8), (1, 8, 8)]
    cm = SegmentationConfusionMatrix(3)
    with torch.no_grad():
        for i in range(5):
            item = Data()[i]
            logits = model(item["pixel_values"][None]).logits
            cm.update(preprocess_logits_for_metrics(logits, item["labels"][None]), item["labels"][None])
    assert result["eval_mean_iou"] == pytest.approx(cm.compute()["mIoU"], abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# distributed


def _all_reduce_worker(rank, world_size, init_file, matrices_out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        preds, labels = random_case(99, 5, [(10, 10)] * 4)
        cm = SegmentationConfusionMatrix(5)
        cm.update(preds[rank::world_size], labels[rank::world_size])  # each rank its own shard
        cm.all_reduce()
        torch.save(cm.matrix, f"{matrices_out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_processes(tmp_path):
    import torch.multiprocessing as mp

    cm = SegmentationConfusionMatrix(5)
    cm.all_reduce()  # not initialised: a no-op
    preds, labels = random_case(99, 5, [(10, 10)] * 4)
    cm.update(preds, labels)
    init_file = tmp_path / "init"
    out = str(tmp_path / "matrix")
    # fork: the children reuse this process's imports (spawn would re-import torch: seconds); gloo on CPU only
    mp.start_processes(_all_reduce_worker, args=(2, str(init_file), out), nprocs=2, join=True, start_method="fork")
    for rank in range(2):
        assert torch.equal(torch.load(f"{out}.{rank}", weights_only=True), cm.matrix)
