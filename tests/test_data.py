"""hf_seg.data: dataset loading, mmseg-equal training augmentations, determinism and bad-data handling."""

import json
import warnings

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_seg.data import (
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    add_index_column,
    collate_segmentation,
    hsv_to_rgb_uint8,
    load_segmentation_dataset,
    photometric_distortion,
    random_crop_bbox,
    random_resize,
    rescale_size,
    rgb_to_hsv_uint8,
)
from hf_seg.data.transforms import sample_resize_scale


# ------------------------------------------------------------------------------------------------ helpers


def _textured(rng, height, width):
    """Smooth gradients + noise: realistic colours for resize / HSV checks."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(-40, 40, (height, width, 3)), 0, 255).astype(np.uint8)


def _label(rng, height, width, num_classes=5, ignore_frac=0.05):
    label = (np.arange(height)[:, None] * num_classes // height + np.zeros((1, width), int)).astype(np.uint8)
    label[: height // 3, : width // 3] = num_classes - 1
    label[rng.random((height, width)) < ignore_frac] = 255
    return label


def _write_pair(image_dir, label_dir, stem, rng, size=(24, 32), ext=".png"):
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_textured(rng, *size)).save(image_dir / f"{stem}{ext}")
    Image.fromarray(_label(rng, *size, ignore_frac=0.0)).save(label_dir / f"{stem}.png")


class RecordingRng:
    """Wraps a numpy Generator and records each draw, so the same values can be replayed into mmseg."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.draws = []

    def random(self):
        value = self.rng.random()
        self.draws.append(("random", value))
        return value

    def integers(self, low, high=None):
        value = int(self.rng.integers(low, high))
        self.draws.append(("integers", value))
        return value

    def uniform(self, low, high):
        value = float(self.rng.uniform(low, high))
        self.draws.append(("uniform", value))
        return value


class Replay:
    """Stand-ins for numpy.random functions that return recorded draws in order."""

    def __init__(self, draws):
        self.draws = list(draws)

    def _pop(self, *kinds):
        kind, value = self.draws.pop(0)
        assert kind in kinds, f"mmseg asked for {kinds}, the recorded draw is {kind}"
        return value

    def random_sample(self, *args):
        return self._pop("random")

    def randint(self, low, high=None):
        value = self._pop("integers", "randint")
        if high is None:
            assert 0 <= value < low
        else:
            assert low <= value < high
        return value

    def uniform(self, low, high):
        return self._pop("uniform")

    def choice(self, options, p=None):  # mmcv RandomFlip: np.random.choice([direction, None], p=[prob, 1 - prob])
        return options[0] if self._pop("random") < p[0] else options[-1]


@pytest.fixture(scope="module")
def mmseg():
    from mmseg_reference import import_mmseg

    return import_mmseg()


def _patch_numpy_random(monkeypatch, replay):
    for name in ("random_sample", "randint", "uniform", "choice"):
        monkeypatch.setattr(np.random, name, getattr(replay, name))


# ------------------------------------------------------------------------------------------------ loading


def test_load_image_folder_with_splits(tmp_path):
    rng = np.random.default_rng(0)
    for split, stems in (("training", ["a", "b", "c"]), ("validation", ["d"])):
        for stem in stems:
            _write_pair(tmp_path / "images" / split, tmp_path / "annotations" / split, stem, rng, ext=".jpg")
    data, info = load_segmentation_dataset(tmp_path)
    assert isinstance(data, DatasetDict) and sorted(data) == ["training", "validation"]
    assert len(data["training"]) == 3 and info["image_column"] == "image" and info["label_column"] == "label"
    assert info["id2label"] is None
    train, info = load_segmentation_dataset(tmp_path, split="training", id2label={"0": "a", "1": "b"})
    assert isinstance(train, Dataset) and info["id2label"] == {0: "a", 1: "b"}
    example = train[1]
    assert example["image"].size == (32, 24) and example["label"].mode == "L"
    with pytest.raises(ValueError, match="'test' not found"):
        load_segmentation_dataset(tmp_path, split="test")


def test_load_flat_folder_and_mismatched_stems(tmp_path):
    rng = np.random.default_rng(1)
    for stem in ("x1", "x2"):
        _write_pair(tmp_path / "images", tmp_path / "annotations", stem, rng)
    data, _ = load_segmentation_dataset(tmp_path, split="train")
    assert len(data) == 2
    for index in range(12):
        Image.fromarray(_textured(rng, 8, 8)).save(tmp_path / "images" / f"orphan{index:02d}.png")
    with pytest.raises(ValueError, match="12 image\\(s\\) without a label map") as error:
        load_segmentation_dataset(tmp_path)
    assert "orphan00" in str(error.value) and "orphan09" in str(error.value) and "orphan10" not in str(error.value)


def test_load_from_disk_detects_columns_and_class_labels(tmp_path):
    rng = np.random.default_rng(2)
    images = [Image.fromarray(_textured(rng, 10, 12)) for _ in range(3)]
    maps = [Image.fromarray(_label(rng, 10, 12)) for _ in range(3)]
    features = Features(
        {"pixel_values": ImageFeature(), "semantic_map": ImageFeature(), "scene": ClassLabel(names=["in", "out"])}
    )
    ds = Dataset.from_dict({"pixel_values": images, "semantic_map": maps, "scene": [0, 1, 0]}, features=features)
    DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(tmp_path / "dd")
    ds.save_to_disk(tmp_path / "single")

    data, info = load_segmentation_dataset(tmp_path / "dd", split="validation")
    assert len(data) == 1 and info["image_column"] == "pixel_values" and info["label_column"] == "semantic_map"
    assert info["id2label"] is None  # the ClassLabel of another column ("scene") never names the label map's classes
    (tmp_path / "dd" / "id2label.json").write_text(json.dumps(["sky", "tree", "road"]))
    _, info = load_segmentation_dataset(tmp_path / "dd", split="validation")
    assert info["id2label"] == {0: "sky", 1: "tree", 2: "road"} and info["labels_source"].endswith("id2label.json")

    label_file = tmp_path / "labels.json"
    label_file.write_text(json.dumps({"names": ["sky", "tree"], "palette": [[0, 0, 0], [1, 1, 1]]}))
    data, info = load_segmentation_dataset(tmp_path / "single", id2label=str(label_file))
    assert isinstance(data, DatasetDict) and list(data) == ["train"] and info["id2label"] == {0: "sky", 1: "tree"}
    label_file.write_text(json.dumps({"0": "a", "1": "b", "2": "c"}))
    _, info = load_segmentation_dataset(tmp_path / "single", id2label=label_file)
    assert info["id2label"] == {0: "a", 1: "b", 2: "c"}

    _, info = load_segmentation_dataset(tmp_path / "single", image_column="semantic_map", label_column="pixel_values")
    assert (info["image_column"], info["label_column"]) == ("semantic_map", "pixel_values")
    with pytest.raises(ValueError, match="column 'nope' not found"):
        load_segmentation_dataset(tmp_path / "single", label_column="nope")


def test_load_empty_split_names_it(tmp_path):
    rng = np.random.default_rng(3)
    _write_pair(tmp_path / "images" / "train", tmp_path / "annotations" / "train", "a", rng)
    (tmp_path / "images" / "validation").mkdir()
    (tmp_path / "annotations" / "validation").mkdir()
    with pytest.raises(ValueError, match="Split 'validation'.*empty"):
        load_segmentation_dataset(tmp_path)
    data, _ = load_segmentation_dataset(tmp_path, split="train")
    assert len(data) == 1


# ------------------------------------------------------------------------------------------------ parity with mmseg


def test_hsv_conversions_match_opencv():
    import cv2  # opencv-python comes with mmcv-lite (test extra)
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), np.arange(256), indexing="ij"), -1)
    every_colour = grid.reshape(4096, 4096, 3).astype(np.uint8)
    np.testing.assert_array_equal(rgb_to_hsv_uint8(every_colour), cv2.cvtColor(every_colour, cv2.COLOR_RGB2HSV))
    hsv = every_colour[: 180 * 256 * 256 // 4096]  # hue < 180 rows
    hsv = hsv.copy()
    hsv[..., 0] %= 180
    np.testing.assert_array_equal(hsv_to_rgb_uint8(hsv), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    rng = np.random.default_rng(0)
    for width in (5, 41, 50, 77, 512):  # OpenCV's per-row scalar tail (width % 32 pixels) rounds instead of truncating
        odd = rng.integers(0, 256, (7, width, 3), dtype=np.uint8)
        odd[..., 0] %= 180
        np.testing.assert_array_equal(hsv_to_rgb_uint8(odd), cv2.cvtColor(odd, cv2.COLOR_HSV2RGB))


@pytest.mark.parametrize("shape", [(60, 80), (80, 45)])
def test_random_resize_matches_mmcv(mmseg, monkeypatch, shape):
    from mmcv.transforms import RandomResize

    rng = np.random.default_rng(4)
    image, label = _textured(rng, *shape), _label(rng, *shape)
    scale, ratio_range = (128, 48), (0.5, 2.0)
    for seed in range(6):
        recorder = RecordingRng(seed)
        target = sample_resize_scale(recorder, scale, ratio_range)
        ours_image, ours_label = random_resize(image, label, target)

        _patch_numpy_random(monkeypatch, Replay(recorder.draws))
        transform = RandomResize(scale=scale, ratio_range=ratio_range, keep_ratio=True)
        results = transform({"img": image[..., ::-1].copy(), "gt_seg_map": label.copy(), "seg_fields": ["gt_seg_map"]})
        assert results["scale"] == target
        assert ours_image.shape[:2] == results["img"].shape[:2] == rescale_size(*shape, target)
        np.testing.assert_array_equal(ours_label, results["gt_seg_map"])  # nearest: bit-equal
        # bilinear: torch float interpolation rounded vs OpenCV's 11-bit fixed point: at most one grey level
        diff = np.abs(ours_image.astype(int) - results["img"][..., ::-1].astype(int))
        assert diff.max() <= 1, diff.max()
        assert (diff > 0).mean() < 0.2


def test_random_crop_matches_mmseg_including_cat_max_ratio_retries(mmseg, monkeypatch):
    from mmseg.datasets.transforms import RandomCrop

    rng = np.random.default_rng(5)
    image = _textured(rng, 70, 90)
    label = np.zeros((70, 90), np.uint8)  # one dominant class: most crops are rejected and redrawn
    label[60:, 80:] = 1
    label[:3] = 255
    retried = 0
    for seed in range(20):
        recorder = RecordingRng(seed)
        bbox = random_crop_bbox(recorder, label, (32, 32), cat_max_ratio=0.75)
        retried += len(recorder.draws) > 2
        _patch_numpy_random(monkeypatch, Replay(recorder.draws))
        crop = RandomCrop(crop_size=(32, 32), cat_max_ratio=0.75)
        results = crop({"img": image.copy(), "gt_seg_map": label.copy(), "seg_fields": ["gt_seg_map"]})
        y1, y2, x1, x2 = bbox
        np.testing.assert_array_equal(results["img"], image[y1:y2, x1:x2])
        np.testing.assert_array_equal(results["gt_seg_map"], label[y1:y2, x1:x2])
    assert retried > 0
    # image smaller than the crop: the whole image, no draw beyond offset 0
    assert random_crop_bbox(np.random.default_rng(0), label[:10, :10], (32, 32)) == (0, 32, 0, 32)


def test_random_flip_matches_mmcv(mmseg, monkeypatch):
    from mmcv.transforms import RandomFlip

    rng = np.random.default_rng(6)
    image, label = _textured(rng, 9, 13), _label(rng, 9, 13)
    for draw in (0.2, 0.7):
        _patch_numpy_random(monkeypatch, Replay([("random", draw)]))
        results = RandomFlip(prob=0.5, direction="horizontal")(
            {"img": image.copy(), "gt_seg_map": label.copy(), "seg_fields": ["gt_seg_map"]}
        )
        flipped = draw < 0.5
        np.testing.assert_array_equal(results["img"], image[:, ::-1] if flipped else image)
        np.testing.assert_array_equal(results["gt_seg_map"], label[:, ::-1] if flipped else label)


def test_photometric_distortion_matches_mmseg_bit_for_bit(mmseg, monkeypatch):
    import mmseg.datasets.transforms.transforms as mmseg_transforms

    rng = np.random.default_rng(7)
    image = _textured(rng, 37, 77)  # width not a multiple of 32: exercises OpenCV's scalar tail too
    modes = set()
    for seed in range(40):
        record = []
        ours = photometric_distortion(np.random.default_rng(seed), image.copy(), record=record)
        modes.add(record[1][1] if record[0][1] == 0 else record[2][1])
        monkeypatch.setattr(mmseg_transforms, "random", Replay(record))
        results = mmseg_transforms.PhotoMetricDistortion()({"img": image[..., ::-1].copy()})
        np.testing.assert_array_equal(ours, results["img"][..., ::-1], err_msg=f"seed {seed}: {record}")
    assert modes == {0, 1}


def test_full_train_pipeline_matches_mmseg(mmseg, monkeypatch):
    """RandomResize → RandomCrop → RandomFlip → PhotoMetricDistortion → SegDataPreProcessor, same draws."""
    from mmcv.transforms import Compose, RandomFlip, RandomResize
    from mmseg.datasets.transforms import PackSegInputs, PhotoMetricDistortion, RandomCrop
    from mmseg.models.data_preprocessor import SegDataPreProcessor

    rng = np.random.default_rng(8)
    image, raw_label = _textured(rng, 48, 64), _label(rng, 48, 64, num_classes=6, ignore_frac=0.0)
    crop = (40, 40)
    transform = SegmentationTrainTransform(crop_size=crop, scale=(96, 32), reduce_labels=True, num_labels=5)
    preprocessor = SegDataPreProcessor(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], size=crop, bgr_to_rgb=True, seg_pad_val=255
    )
    worst, means = 0.0, []
    for seed in range(8):
        recorder = RecordingRng(seed)
        pixels, labels = transform.apply(image, raw_label.astype(np.int64), recorder)
        # photometric_distortion draws through rng.integers / rng.uniform; mmseg's randint/uniform replay them
        _patch_numpy_random(monkeypatch, Replay(recorder.draws))
        monkeypatch.setattr(mmseg.datasets.transforms.transforms, "random", np.random)
        pipeline = Compose(
            [
                RandomResize(scale=(96, 32), ratio_range=(0.5, 2.0), keep_ratio=True),
                RandomCrop(crop_size=crop, cat_max_ratio=0.75),
                RandomFlip(prob=0.5, direction="horizontal"),
                PhotoMetricDistortion(),
                PackSegInputs(),
            ]
        )
        reduced = np.where(raw_label == 0, 255, raw_label.astype(np.int64) - 1).astype(np.uint8)
        packed = pipeline(
            {
                "img": image[..., ::-1].copy(),
                "gt_seg_map": reduced,
                "seg_fields": ["gt_seg_map"],
                "img_path": None,
                "seg_map_path": None,
                "ori_shape": image.shape[:2],
                "img_shape": image.shape[:2],
                "reduce_zero_label": True,
            }
        )
        batch = preprocessor({"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]}, training=True)
        ref_pixels = batch["inputs"][0]
        ref_labels = batch["data_samples"][0].gt_sem_seg.data[0].long()
        assert pixels.shape == ref_pixels.shape == (3, *crop)
        torch.testing.assert_close(labels, ref_labels, rtol=0, atol=0)
        # Only the bilinear resize differs (≤ 1 grey level on ~12% of pixels). Contrast ×1.5 and hue shifts of
        # low-saturation pixels amplify that: over 60 seeds, mean |diff| 0.15 grey levels, max 10.2.
        diff = (pixels - ref_pixels).abs() * 58.395  # back to grey levels (std ≈ 57–58)
        worst, means = max(worst, float(diff.max())), means + [float(diff.mean())]
    assert worst <= 16.0 and np.mean(means) < 0.5, (worst, np.mean(means))


def test_the_train_transform_resizes_only_the_crop_window_with_the_full_resizes_values():
    """The transform resizes only the crop window of the image and of the label map; every output equals the crop of
    the full RandomResize (bilinear image, nearest label) followed by the same draws, bit for bit, up- or down-scaled,
    crop smaller or larger than the resized image."""
    rng = np.random.default_rng(11)
    for seed, (height, width), scale, crop in [(0, (48, 64), (96, 32), (40, 40)), (1, (60, 44), (200, 80), (64, 48)),
                                               (2, (70, 90), (40, 20), (32, 32)), (3, (33, 47), (64, 48), (16, 24))]:
        image, label = _textured(rng, height, width), _label(rng, height, width)
        transform = SegmentationTrainTransform(crop_size=crop, scale=scale, num_labels=5)
        pixels, labels = transform.apply(image, label.astype(np.int64), np.random.default_rng(seed))
        draws = np.random.default_rng(seed)
        full_image, full_label = random_resize(image, label, sample_resize_scale(draws, scale, (0.5, 2.0)))
        y1, y2, x1, x2 = random_crop_bbox(draws, full_label, crop, 0.75)
        window, window_label = full_image[y1:y2, x1:x2], full_label[y1:y2, x1:x2]
        if draws.random() < 0.5:
            window, window_label = window[:, ::-1], window_label[:, ::-1]
        window = photometric_distortion(draws, np.ascontiguousarray(window))
        expected = (torch.from_numpy(window).float() - torch.tensor(transform.mean)) / torch.tensor(transform.std)
        h, w = window_label.shape
        torch.testing.assert_close(pixels[:, :h, :w], expected.permute(2, 0, 1), rtol=0, atol=0)
        np.testing.assert_array_equal(labels[:h, :w].numpy(), window_label)


# ------------------------------------------------------------------------------------------------ transform API


def _tiny_dataset(rng, count=4, size=(40, 50), num_classes=4):
    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    return Dataset.from_dict(
        {
            "image": [Image.fromarray(_textured(rng, *size)) for _ in range(count)],
            "label": [Image.fromarray(_label(rng, *size, num_classes=num_classes)) for _ in range(count)],
        },
        features=features,
    )


def test_train_transform_outputs_and_determinism():
    rng = np.random.default_rng(9)
    dataset = add_index_column(_tiny_dataset(rng))

    def run(seed, epoch=0, indices=(0, 1, 2, 3)):
        transform = SegmentationTrainTransform(crop_size=(32, 24), scale=(80, 30), seed=seed, num_labels=4)
        transform.set_epoch(epoch)
        dataset.set_transform(transform)
        return [dataset[i] for i in indices]

    first = run(0)
    assert first[0]["pixel_values"].shape == (3, 32, 24) and first[0]["pixel_values"].dtype == torch.float32
    assert first[0]["labels"].shape == (32, 24) and first[0]["labels"].dtype == torch.int64
    again = run(0, indices=(3, 2, 1, 0))[::-1]  # order-independent: per-example seeds
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
        torch.testing.assert_close(a["labels"], b["labels"], rtol=0, atol=0)
    other_seed, other_epoch = run(1), run(0, epoch=1)
    assert any(not torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(first, other_seed, strict=True))
    assert any(not torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(first, other_epoch, strict=True))

    batch = collate_segmentation(first)
    assert batch["pixel_values"].shape == (4, 3, 32, 24) and batch["labels"].shape == (4, 32, 24)

    # DataLoader with workers gives the same crops as in-process access
    dataset.set_transform(SegmentationTrainTransform(crop_size=(32, 24), scale=(80, 30), seed=0, num_labels=4))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_segmentation)
    stacked = torch.cat([b["pixel_values"] for b in loader])
    torch.testing.assert_close(stacked, torch.stack([e["pixel_values"] for e in first]), rtol=0, atol=0)


def test_reduce_labels_and_padding():
    rng = np.random.default_rng(10)
    image = _textured(rng, 12, 14)
    label = np.full((12, 14), 3, np.int64)
    label[0] = 0
    transform = SegmentationTrainTransform(
        crop_size=64, scale=(14, 12), ratio_range=(1.0, 1.0), reduce_labels=True, num_labels=3, seed=3
    )
    pixels, labels = transform.apply(image, label, np.random.default_rng(0))
    assert pixels.shape == (3, 64, 64) and labels.shape == (64, 64)
    assert set(labels[:12, :14].unique().tolist()) == {2, 255}  # 3 -> 2, 0 -> 255
    assert (labels[12:] == 255).all() and (labels[:, 14:] == 255).all()
    assert (pixels[:, 12:] == 0).all() and (pixels[:, :, 14:] == 0).all()


def test_eval_transform_defers_to_processor():
    from hf_seg.models.setr.image_processing_setr import SetrImageProcessor

    rng = np.random.default_rng(11)
    dataset = _tiny_dataset(rng, count=2, size=(20, 30))
    processor = SetrImageProcessor(size={"height": 16, "width": 64}, size_divisor=None, do_pad=False)
    dataset.set_transform(SegmentationEvalTransform(processor, reduce_labels=True, num_labels=3))
    example = dataset[0]
    assert example["pixel_values"].shape[0] == 3 and example["labels"].shape == example["pixel_values"].shape[1:]
    assert example["labels"].max() <= 255


# ------------------------------------------------------------------------------------------------ bad data


def test_bad_examples_raise_with_index_and_file(tmp_path):
    rng = np.random.default_rng(12)
    for stem in ("good", "truncated"):
        _write_pair(tmp_path / "images", tmp_path / "annotations", stem, rng, ext=".jpg")
    path = tmp_path / "images" / "truncated.jpg"
    path.write_bytes(path.read_bytes()[:200])
    data, info = load_segmentation_dataset(tmp_path, split="train", decode=False)
    data = add_index_column(data)
    data.set_transform(SegmentationTrainTransform(crop_size=16, scale=(32, 24), num_labels=5))
    assert data[0]["pixel_values"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"example 1 \(.*truncated\.jpg\): cannot read image"):
        data[1]

    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    mismatched = Dataset.from_dict(
        {"image": [Image.fromarray(_textured(rng, 10, 10))], "label": [Image.fromarray(_label(rng, 10, 12))]},
        features=features,
    )
    mismatched.set_transform(SegmentationTrainTransform(crop_size=8, scale=(16, 8)))
    with pytest.raises(ValueError, match=r"example at batch position 0.*label map size .*\(10, 12\) differs from the image size \(10, 10\)"):
        mismatched[0]

    out_of_range = np.full((10, 10), 9, np.uint8)
    wrong = Dataset.from_dict(
        {"image": [Image.fromarray(_textured(rng, 10, 10))], "label": [Image.fromarray(out_of_range)]},
        features=features,
    )
    wrong.set_transform(SegmentationTrainTransform(crop_size=8, scale=(16, 8), reduce_labels=True, num_labels=5))
    with pytest.raises(ValueError, match=r"example at batch position 0 .*: label values \[8\] are outside the label set 0..4"):
        wrong[0]


def test_bad_examples_skip_counts_and_warns_once(tmp_path):
    rng = np.random.default_rng(13)
    features = Features({"image": ImageFeature(decode=False), "label": ImageFeature(decode=False)})
    good = Image.fromarray(_textured(rng, 10, 10))
    label = Image.fromarray(_label(rng, 10, 10, num_classes=3))
    import io

    def png_bytes(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    rows = {
        "image": [{"bytes": png_bytes(good), "path": "a.png"}, {"bytes": b"not an image", "path": "broken.png"}] * 2,
        "label": [{"bytes": png_bytes(label), "path": "a_label.png"}] * 4,
    }
    dataset = add_index_column(Dataset.from_dict(rows, features=features))
    transform = SegmentationTrainTransform(crop_size=8, scale=(16, 8), num_labels=3, on_bad_example="skip")
    dataset.set_transform(transform)
    batch = collate_segmentation([dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape[0] == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transform.set_epoch(1)
        transform.set_epoch(2)  # nothing new: no second warning
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "skipped 2 bad example(s)" in messages[0] and "broken.png" in messages[0]
    with pytest.raises(ValueError, match="on_bad_example"):
        SegmentationTrainTransform(on_bad_example="ignore")
