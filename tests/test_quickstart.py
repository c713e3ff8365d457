"""hf-seg quickstart: the generated data set is deterministic, and a shortened run writes every promised output.

The full run (defaults: 300 steps, 160 + 40 images of 128 x 128) is timed by hand; see README."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_seg
from hf_seg.data.quickstart import QUICKSTART_LABELS, make_example, make_quickstart_dataset
from hf_seg.training import quickstart_main


def _arrays(split):
    return [(np.asarray(row["image"]), np.asarray(row["label"])) for row in split]


def test_dataset_is_deterministic_and_has_all_classes():
    first = make_quickstart_dataset(num_train=12, num_validation=3, size=64, seed=7)
    second = make_quickstart_dataset(num_train=12, num_validation=3, size=64, seed=7)
    for split in ("train", "validation"):
        for (image_a, label_a), (image_b, label_b) in zip(_arrays(first[split]), _arrays(second[split]), strict=True):
            assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)
    train = _arrays(first["train"])
    assert train[0][0].shape == (64, 64, 3) and train[0][0].dtype == np.uint8 and train[0][1].shape == (64, 64)
    present = np.unique(np.concatenate([label.ravel() for _, label in train]))
    assert present.tolist() == list(range(len(QUICKSTART_LABELS))) and len(QUICKSTART_LABELS) >= 5
    # the background is textured, not flat; another seed gives other pictures; splits differ
    background = train[0][0][train[0][1] == 0]
    assert background.std(axis=0).min() > 5
    other = make_quickstart_dataset(num_train=12, num_validation=3, size=64, seed=8)
    assert not np.array_equal(_arrays(other["train"])[0][0], train[0][0])
    assert not np.array_equal(_arrays(first["validation"])[0][0], train[0][0])
    # the example generator alone is reproducible from its generator
    image, label = make_example(np.random.default_rng([7, 0, 0]), 64)
    assert np.array_equal(image, train[0][0]) and np.array_equal(label, train[0][1])
    with pytest.raises(ValueError, match="at least one image per split"):
        make_quickstart_dataset(num_train=0)


def test_short_quickstart_run_writes_model_metrics_and_overlays(tmp_path, capsys):
    out = tmp_path / "quickstart"
    assert quickstart_main([
        "--output_dir", str(out), "--max_steps", "12", "--num_train", "8", "--num_validation", "3",
        "--image_size", "64", "--batch_size", "4",
    ]) == 0
    printed = capsys.readouterr().out
    assert f"Hub-ready model folder: {out / 'model'}" in printed and "validation mIoU" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and metrics["num_examples"] == 3
    assert {f"iou_{name}" for name in QUICKSTART_LABELS} <= set(metrics)
    assert f"mIoU {metrics['mean_iou']:.4f}" in printed
    model_dir = out / "model"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (model_dir / name).is_file(), name
    card = (model_dir / "README.md").read_text()
    assert f"| mean_iou | {metrics['mean_iou']:.4f} |" in card and "hf_seg-quickstart-shapes" in card
    assert "datasets:" not in card  # a generated data set is no Hub id: it stays out of the card's metadata
    (snippet,) = re.findall(r'AutoModelForSemanticSegmentation\.from_pretrained\("([^"]+)"\)', card)
    assert Path(snippet).resolve() == model_dir.resolve()  # the card's usage snippet loads what exists
    model = AutoModelForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    assert type(model).__name__ == "SegformerForSemanticSegmentation" and model.config.num_labels == 6
    image = Image.open(next((out / "overlays").glob("validation_00_image_truth_prediction.png")))
    assert image.size == (3 * 64, 64) and image.mode == "RGB"
    overlays = sorted((out / "overlays").glob("*_image_truth_prediction.png"))
    assert len(overlays) == 3
    # the saved prediction picture is the reloaded model's prediction on that validation image
    data = make_quickstart_dataset(num_train=8, num_validation=3, size=64, seed=0)
    (prediction,) = hf_seg.segment(model, processor, [np.asarray(data["validation"][0]["image"])])
    saved = np.asarray(Image.open(out / "overlays" / "validation_00_prediction.png"))
    assert np.array_equal(saved, prediction.numpy().astype(np.uint8))
