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


def test_evaluate_module_offline_equals_class():
    import evaluate

    assert os.environ.get("HF_EVALUATE_OFFLINE") == "1" and os.environ.get("HF_HUB_OFFLINE") == "1"
    source = open(os.path.join(MEAN_IOU_METRIC_PATH, "mean_iou.py"), encoding="utf-8").read()
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {"datasets", "evaluate", "numpy"}, imported  # self-contained: evaluate copies the file alone

    metric = evaluate.load(MEAN_IOU_METRIC_PATH)
    preds, labels = random_case(8, 6, [(11, 17), (5, 9), (20, 3)])
    raw_labels = [np.where(label == 255, 0, label + 1) for label in labels]  # un-reduced form of the same labels
    for reduce_labels, refs in ((False, labels), (True, raw_labels)):
        out = metric.compute(
            predictions=preds, references=refs, num_labels=6, ignore_index=255, reduce_labels=reduce_labels
        )
        cm = SegmentationConfusionMatrix(6, reduce_labels=reduce_labels)
        cm.update(preds, refs)
        expected = cm.compute()
        np.testing.assert_array_equal(out["confusion_matrix"], cm.matrix.numpy())
        for key, value in expected.items():
            np.testing.assert_allclose(out[key], value, rtol=0, atol=0, equal_nan=True)

    # batch by batch through evaluate's add_batch
    for p, r in zip(preds, labels):
        metric.add_batch(predictions=[p], references=[r])
    cm = SegmentationConfusionMatrix(6)
    cm.update(preds, labels)
    assert metric.compute(num_labels=6)["mIoU"] == cm.compute()["mIoU"]
    with pytest.raises(ValueError, match=r"references contain values \[7\]"):
        metric.compute(predictions=[np.zeros((2, 2), int)], references=[np.full((2, 2), 7)], num_labels=6)


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
