"""The papers' multi-scale + flip test in evaluation: `hf_seg.segment`'s scales / flip against mmsegmentation 1.x's
`SegTTAModel` on a tiny SETR with the same weights; SETR's `setr_multi_scale` short-side rule; the per-preset
settings (`config.test_protocol["aug_test"]`) used by `evaluate_model`, `hf-seg evaluate --aug_test` and the
Trainer's evaluation."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import hf_seg
from hf_seg.inference import segment
from hf_seg.metrics import SegmentationConfusionMatrix
from hf_seg.training import evaluate_model, get_recipe, train
from hf_seg.training.trainer import evaluation_settings

from test_setr_mmseg_parity import _build_pair  # noqa: E402 - imports mmseg (a test dependency)


IMAGENET_MEAN = np.array([123.675, 116.28, 103.53])
IMAGENET_STD = np.array([58.395, 57.12, 57.375])


def _image(height, width, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR))


def _mmseg_tta(mmseg_model, image, scales, processor):
    """mmseg 1.x's TTA: every scale x (not flipped, flipped) variant through `EncoderDecoder.predict` (logits flipped
    back, resized to the original size), merged by `SegTTAModel.merge_preds`. The variants' pixels are the processor's
    resize of each scale (mmseg's `Resize(scale_factor=r, keep_ratio=True)` computes the same sizes here; OpenCV's
    fixed-point uint8 interpolation differs from it by at most one grey level, which the processor's own tests
    bound), so that what is compared is how the scales and flips are combined."""
    from mmseg.models import SegTTAModel
    from mmseg.structures import SegDataSample

    variants = []
    for scale in scales:
        size = {"shortest_edge": int(64 * scale), "longest_edge": int(128 * scale)}
        pixels = processor(images=image, size=size, do_pad=False, return_tensors="pt")["pixel_values"][0]
        for flipped in (False, True):
            inputs = pixels.flip(-1) if flipped else pixels
            sample = SegDataSample(metainfo=dict(
                ori_shape=image.shape[:2], img_shape=tuple(inputs.shape[-2:]), pad_shape=tuple(inputs.shape[-2:]),
                padding_size=[0, 0, 0, 0], flip=flipped, flip_direction="horizontal", img_path=None,
            ))
            with torch.no_grad():
                variants.append(mmseg_model.predict(inputs[None], [sample])[0])
    merged = SegTTAModel(module=mmseg_model).merge_preds([variants])[0]
    probabilities = sum(v.seg_logits.data.softmax(0) for v in variants) / len(variants)
    return merged.pred_sem_seg.data[0], probabilities


@pytest.mark.parametrize("variant", ["naive", "mla"])
def test_multiscale_flip_equals_mmseg_tta(variant):
    """Where the two agree: an image already at the test size, so that mmseg 1.x's scaling of the original image and
    the authors' (mmseg 0.x) scaling of the test size give the same sizes. (They differ for other images: mmseg 1.x
    scales the original image, the authors' code and hf_seg the test resize target.)"""
    mmseg_model, hf_model = _build_pair(variant, seed=3)
    from mmengine.config import ConfigDict

    mmseg_model.test_cfg = ConfigDict(mode="whole")
    image, scales = _image(64, 128, seed=1), [0.75, 1.0, 1.5]
    processor = hf_seg.SetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=16)
    labels, probabilities = segment(hf_model, processor, image, mode="whole", scales=scales, flip=True,
                                    return_probabilities=True)
    expected_labels, expected_probabilities = _mmseg_tta(mmseg_model, image, scales, processor)
    assert (probabilities[0] - expected_probabilities).abs().max().item() <= 1e-5
    margin = expected_probabilities.topk(2, dim=0).values
    decided = (margin[0] - margin[1]) > 1e-5  # pixels whose argmax is not a float tie
    assert torch.equal(labels[0][decided], expected_labels[decided])
    assert decided.float().mean() > 0.99 and len(expected_labels.unique()) > 1


def test_setr_multi_scale_rule_sets_the_short_side():
    """`min_short_side`: each scale's short side is max(min_short_side, int(short * scale)), no long-side limit."""
    _, hf_model = _build_pair("pup", seed=4)
    image = _image(48, 160, seed=2)
    base = hf_seg.SetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=16)
    labels, probabilities = segment(hf_model, base, image, mode="whole", scales=[0.5, 1.0, 1.5], flip=True,
                                    min_short_side=64, return_probabilities=True)
    expected = 0
    for short in (64, 64, 96):  # max(64, 32), max(64, 64), max(64, 96); the long side follows the ratio: 213, 320
        processor = hf_seg.SetrImageProcessor(size={"shortest_edge": short}, size_divisor=16)
        expected = expected + segment(hf_model, processor, image, mode="whole", flip=True,
                                      return_probabilities=True)[1][0]
    assert (probabilities[0] - expected / 3).abs().max().item() <= 1e-6
    assert torch.equal(labels[0], (expected / 3).argmax(0))


def test_the_presets_carry_the_papers_aug_test_settings():
    assert hf_seg.create_config("setr-pup-vit-large-ade20k-512").test_protocol["aug_test"] == dict(
        scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True, short_side_at_least_crop=True)
    assert hf_seg.create_config("setr-naive-vit-large-ade20k-512").test_protocol["aug_test"]["scales"] == [
        0.5, 0.75, 1.0]
    assert hf_seg.create_config("segformer-b2-ade20k-512").test_protocol["aug_test"] == dict(
        scales=[0.75, 0.875, 1.0, 1.125, 1.25], flip=True)
    assert hf_seg.create_config("segformer-b0-cityscapes-1024").test_protocol["aug_test"]["scales"][-1] == 2.0
    protocol = hf_seg.create_config("setr-mla-vit-large-cityscapes-768").test_protocol
    assert evaluation_settings(protocol) == dict(mode="slide", crop_size=768, stride=512)
    assert evaluation_settings(protocol, aug_test=True)["min_short_side"] == 768
    # the rule is the protocol's crop, so it follows a crop changed for training / evaluation (a tiny model at 64)
    assert evaluation_settings(dict(protocol, crop_size=64, stride=48), aug_test=True)["min_short_side"] == 64
    assert evaluation_settings(protocol, scales=[1.0, 2.0], flip=False) == dict(
        mode="slide", crop_size=768, stride=512, scales=[1.0, 2.0], flip=False)
    with pytest.raises(ValueError, match="no multi-scale \\+ flip settings"):
        evaluation_settings({"mode": "whole"}, aug_test=True)


# -------------------------------------------------------------------------------------------- evaluation paths


def _data(count=3, size=48, seed=0):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(count):
        label = rng.integers(0, 5, (size // 8, size // 8)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        images.append(Image.fromarray((rng.integers(0, 30, (size, size, 3)) + label[..., None] * 40).astype(np.uint8)))
        labels.append(Image.fromarray(label))
    split = datasets.Dataset.from_dict({"image": images, "label": labels}).cast_column("image", datasets.Image())
    split = split.cast_column("label", datasets.Image())
    return datasets.DatasetDict({"train": split, "validation": split})


def _expected_miou(model, processor, data, **settings):
    confusion = SegmentationConfusionMatrix(model.config.num_labels)
    for row in data:
        prediction = segment(model, processor, [row["image"]], **settings)[0]
        confusion.update(prediction, torch.from_numpy(np.asarray(row["label"]).astype(np.int64)))
    return confusion.compute()["mIoU"]


def test_evaluate_model_cli_and_trainer_use_the_aug_test_settings(tmp_path, capsys):
    config = dict(hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                  decoder_hidden_size=16)
    data = _data()
    recipe = get_recipe("segformer-ade20k-512", crop_size=32, train_scale=(64, 32), ratio_range=(1.0, 1.5),
                        warmup_steps=0)
    small = hf_seg.SetrImageProcessor(size={"shortest_edge": 48, "longest_edge": 192}, size_divisor=1)
    result = train("segformer-b0-ade20k-512", data, config_overrides=config, recipe=recipe, eval_aug_test=True,
                   image_processor=small,
                   reduce_labels=False, training_args=dict(output_dir=str(tmp_path / "model"), max_steps=2,
                                                           per_device_train_batch_size=2, use_cpu=True,
                                                           save_strategy="no", report_to="none"))
    folder = tmp_path / "model"
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    aug = dict(mode="whole", scales=[0.75, 0.875, 1.0, 1.125, 1.25], flip=True)
    expected = _expected_miou(model, processor, data["validation"], **aug)
    assert result.metrics["eval_mean_iou"] == pytest.approx(expected, abs=1e-12)
    assert evaluate_model(str(folder), data, aug_test=True)["mean_iou"] == pytest.approx(expected, abs=1e-12)
    single = evaluate_model(str(folder), data)["mean_iou"]
    assert single == pytest.approx(_expected_miou(model, processor, data["validation"], mode="whole"), abs=1e-12)

    data.save_to_disk(str(tmp_path / "data"))
    from hf_seg.cli import main

    assert main(["evaluate", "--model", str(folder), "--dataset", str(tmp_path / "data"), "--scales", "1.0", "1.5",
                 "--flip", "true", "--output_file", str(tmp_path / "ms.json")]) == 0
    capsys.readouterr()
    ms = json.loads((tmp_path / "ms.json").read_text())["mean_iou"]
    assert ms == pytest.approx(
        _expected_miou(model, processor, data["validation"], mode="whole", scales=[1.0, 1.5], flip=True), abs=1e-12)
