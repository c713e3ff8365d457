"""The label contract (hf_seg.data.labels, hf_seg.training.trainer.decide_labels): where class names come from, the
scan when none exist, reduce-labels decided once, refusals that name the values, and relabelling checkpoints."""

import json
from unittest import mock

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import hf_seg
from hf_seg.data import load_segmentation_dataset
from hf_seg.data.labels import DataLabels, find_class_names, read_id2label, scan_label_values
from hf_seg.training.evaluation import evaluate_segmentation
from hf_seg.training.trainer import decide_labels, evaluate_model, relabel_classifiers

from tiny_models import tiny_mpvit, tiny_segformer, tiny_setr


def _maps(values_per_map, size=8):
    """Label-map PIL images, map i holding the values values_per_map[i] in stripes."""
    maps = []
    for values in values_per_map:
        label = np.zeros((size, size), np.uint8)
        for column, value in enumerate(values):
            label[:, column] = value
        maps.append(Image.fromarray(label))
    return maps


def _dataset(values_per_map, label_feature=None, extra=None):
    images = [Image.fromarray(np.full((8, 8, 3), 100, np.uint8)) for _ in values_per_map]
    columns = {"image": images, "label": _maps(values_per_map)}
    features = {"image": datasets.Image(), "label": label_feature or datasets.Image()}
    for name, (feature, values) in (extra or {}).items():
        columns[name], features[name] = values, feature
    if label_feature is not None:
        columns["label"] = [np.asarray(m).tolist() for m in columns["label"]]
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


# ------------------------------------------------------------------------------------------- where names come from


def test_names_come_from_the_label_column_only_never_another_columns_class_label(tmp_path):
    scene = datasets.ClassLabel(names=["airport_terminal", "art_gallery"])
    data = _dataset([[0, 1], [1, 2]], extra={"scene_category": (scene, [0, 1])})
    assert find_class_names(None, data, "label").id2label is None

    typed = datasets.List(datasets.List(datasets.ClassLabel(names=["sky", "sea", "sand"])))
    data = _dataset([[0, 1], [1, 2]], label_feature=typed, extra={"scene_category": (scene, [0, 1])})
    labels = find_class_names(None, data, "label")
    assert labels.id2label == {0: "sky", 1: "sea", 2: "sand"} and "ClassLabel of column 'label'" in labels.source


def test_the_order_user_then_column_then_folder_file_then_known_hub_set(tmp_path):
    typed = datasets.List(datasets.List(datasets.ClassLabel(names=["sky", "sea"])))
    data = _dataset([[0, 1]], label_feature=typed)
    assert find_class_names(None, data, "label", id2label=["a", "b"]).id2label == {0: "a", 1: "b"}  # user first

    folder = tmp_path / "saved"
    _dataset([[0, 1]]).save_to_disk(str(folder))
    (folder / "id2label.json").write_text(json.dumps({"0": "road", "1": "car"}))
    _, info = load_segmentation_dataset(folder)
    assert info["id2label"] == {0: "road", 1: "car"} and info["labels_source"] == str(folder / "id2label.json")
    (folder / "id2label.json").write_text(json.dumps({"names": ["x", "y"], "palette": [[0, 0, 0], [1, 1, 1]]}))
    assert load_segmentation_dataset(folder)[1]["id2label"] == {0: "x", 1: "y"}  # hf_seg's label-set layout

    ade = find_class_names("scene_parse_150", _dataset([[0, 1]]), "label")
    assert len(ade.id2label) == 150 and ade.id2label[7] == "bed " and ade.reduce_labels is True
    assert find_class_names("someone/their-set", _dataset([[0, 1]]), "label").id2label is None  # offline: none
    (tmp_path / "hub.json").write_text(json.dumps({"0": "unlabeled", "1": "flat-road"}))
    with mock.patch("huggingface_hub.hf_hub_download", return_value=str(tmp_path / "hub.json")) as download:
        hub = find_class_names("someone/their-set", _dataset([[0, 1]]), "label")
    download.assert_called_once_with("someone/their-set", "id2label.json", repo_type="dataset")
    assert hub.id2label == {0: "unlabeled", 1: "flat-road"} and "Hub data set someone/their-set" in hub.source

    names, reduce_labels = read_id2label("cityscapes")  # a bundled label set, named by the user
    assert len(names) == 19 and reduce_labels is False


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"zero": "a"}', "keys must be integer class ids"),
        ('{"0": "a", "2": "c"}', "missing [1]"),
        ("[]", "names no classes"),
        ('"ade20k"', "must be a dict, a list of class names"),
    ],
)
def test_bad_id2label_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        read_id2label(str(path))
    assert message in str(error.value) and str(path) in str(error.value)


def test_an_id2label_that_is_neither_file_nor_label_set_is_refused():
    with pytest.raises(ValueError, match="'ade21k' is neither a JSON file nor a bundled label set"):
        read_id2label("ade21k")


# ------------------------------------------------------------------------------------------------------ the scan


def test_scan_counts_every_value_exactly_and_leaves_out_the_ignore_index():
    data = _dataset([[0, 1, 255], [3, 3, 3, 1]])
    counts = scan_label_values(data, "label")
    expected = np.zeros(4, np.int64)
    for values in ([0, 1, 255], [3, 3, 3, 1]):
        label = np.zeros((8, 8), np.int64)
        for column, value in enumerate(values):
            label[:, column] = value
        expected += np.bincount(label[label != 255], minlength=4)[:4]
    assert counts.tolist() == expected.tolist()
    reduced = scan_label_values(data, "label", reduce_labels=True)  # 0 -> ignored, k -> k - 1
    assert reduced.tolist() == expected[1:].tolist()


def test_scan_names_the_example_of_an_unreadable_map():
    data = datasets.Dataset.from_dict({"label": [b"not a png"]})
    with pytest.raises(ValueError, match="train example 0: cannot read label map"):
        scan_label_values(data, "label")


# ------------------------------------------------------------------------------------------------- the decision

ADE_LIKE = {i: f"ade_{i}" for i in range(150)}


def test_a_folder_of_own_data_never_takes_the_presets_classes_or_reduce_labels():
    data = _dataset([[0, 1, 2, 3], [0, 2]])
    contract = decide_labels(DataLabels(None, "none"), data, "label", "train", ADE_LIKE, True,
                             from_checkpoint=False, reduce_labels=None)
    assert contract.id2label == {i: f"class_{i}" for i in range(4)} and contract.reduce_labels is False
    assert "does not apply here" in contract.reduce_labels_reason and "a scan of split 'train'" in contract.source

    asked = decide_labels(DataLabels(None, "none"), data, "label", "train", ADE_LIKE, True, from_checkpoint=False,
                          reduce_labels=True)
    assert asked.id2label == {i: f"class_{i}" for i in range(3)} and asked.reduce_labels is True


def test_a_known_data_set_brings_its_convention_and_a_checkpoint_keeps_matching_classes():
    data = _dataset([[0, 1, 2]])
    known = DataLabels({0: "a", 1: "b"}, "hf_seg's x label set", reduce_labels=True)
    contract = decide_labels(known, data, "label", "train", ADE_LIKE, False, from_checkpoint=False,
                             reduce_labels=None)
    assert contract.reduce_labels is True and contract.reduce_labels_reason.startswith("the convention of")

    checkpoint = {0: "road", 1: "car", 2: "tree"}
    kept = decide_labels(DataLabels(None, "none"), data, "label", "train", checkpoint, False, from_checkpoint=True,
                         reduce_labels=None)
    assert kept.id2label == checkpoint and kept.source.startswith("the checkpoint")
    other = decide_labels(DataLabels(None, "none"), _dataset([[0, 1, 2, 3, 4]]), "label", "train", checkpoint,
                          False, from_checkpoint=True, reduce_labels=None)
    assert len(other.id2label) == 5 and other.id2label[4] == "class_4"


def test_label_values_outside_the_classes_are_refused_naming_values_split_and_example():
    data = _dataset([[0, 1], [0, 1], [2, 5]])
    with pytest.raises(ValueError) as error:
        decide_labels(DataLabels({0: "a", 1: "b"}, "id2label"), data, "label", "train", ADE_LIKE, False,
                      from_checkpoint=False, reduce_labels=None)
    message = str(error.value)
    assert "split 'train' holds label values [2, 5] (e.g. example 2)" in message and "--reduce_labels true" in message


# ------------------------------------------------------------------------------------------------ relabelling


@pytest.mark.parametrize("build, expected", [
    (lambda: tiny_setr("pup"), ["decode_head.classifier", "auxiliary_heads.0.classifier",
                                "auxiliary_heads.1.classifier"]),
    (lambda: tiny_setr("mla"), ["decode_head.classifier"] + [f"auxiliary_heads.{i}.classifier" for i in range(4)]),
    (tiny_segformer, ["decode_head.classifier"]),
    (tiny_mpvit, ["decode_head.classifier", "auxiliary_head.classifier"]),
])
def test_relabel_reinitialises_only_the_classifiers(build, expected):
    model = build()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    names = relabel_classifiers(model, {0: "a", 1: "b", 2: "c"})
    assert names == expected and model.config.num_labels == 3 and model.config.label2id == {"a": 0, "b": 1, "c": 2}
    after = model.state_dict()
    changed = {name for name in before if before[name].shape != after[name].shape or not before[name].equal(after[name])}
    assert changed == {f"{name}.{part}" for name in expected for part in ("weight", "bias")}
    model.eval()
    with torch.no_grad():
        assert model(pixel_values=torch.rand(1, 3, 64, 64)).logits.shape[1] == 3


# ------------------------------------------------------------------------------------------------- evaluation


def test_evaluation_out_of_range_error_suggests_the_reduce_labels_flag():
    model, processor = tiny_segformer(), hf_seg.create_image_processor("segformer-b0-ade20k-512")
    data = _dataset([[0, 1, 7]])
    with pytest.raises(ValueError) as error:
        evaluate_segmentation(model, processor, data, reduce_labels=False)
    assert "[7]" in str(error.value) and "--reduce_labels true" in str(error.value)


def test_evaluate_defaults_to_the_saved_reduce_labels_and_warns_when_told_otherwise(tmp_path, capsys):
    model, processor = tiny_segformer(), hf_seg.create_image_processor("segformer-b0-ade20k-512")
    processor.do_reduce_labels = True
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    data = datasets.DatasetDict({"validation": _dataset([[1, 2, 5], [0, 3]])})
    saved = evaluate_model(str(tmp_path / "model"), data)
    assert "reduce_labels" not in capsys.readouterr().err
    with mock.patch("hf_seg.training.trainer.evaluate_segmentation", return_value=({}, None)) as called:
        evaluate_model(str(tmp_path / "model"), data, reduce_labels=False)
    assert called.call_args.kwargs["reduce_labels"] is False
    assert "reduce_labels=False as asked, although the model was saved with do_reduce_labels=True" in (
        capsys.readouterr().err)
    assert saved["num_examples"] == 2


def test_evaluate_refuses_a_data_set_with_another_number_of_classes(tmp_path):
    model, processor = tiny_segformer(), hf_seg.create_image_processor("segformer-b0-ade20k-512")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    typed = datasets.List(datasets.List(datasets.ClassLabel(names=["sky", "sea"])))
    data = datasets.DatasetDict({"validation": _dataset([[0, 1]], label_feature=typed)})
    with pytest.raises(ValueError, match="the data set has 2 classes .* but the model 5"):
        evaluate_model(str(tmp_path / "model"), data)
