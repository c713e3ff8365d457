"""Tests for SetrImageProcessor: input conversion, mmsegmentation parity, padding, post-processing, serialisation,
and transformers' common image-processing mixin tests."""

import os
import unittest

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, SizeDict
from transformers.modeling_outputs import SemanticSegmenterOutput

from hf_seg.models.setr.image_processing_setr import SetrImageProcessor, get_setr_output_size

try:  # mmcv-lite is the reference implementation of the resize; optional
    import cv2
    from mmcv.image import imrescale, imresize, rescale_size
except ImportError:  # pragma: no cover - depends on the environment
    cv2 = imrescale = imresize = rescale_size = None

requires_mmcv = pytest.mark.skipif(imrescale is None, reason="mmcv (mmcv-lite) and OpenCV are not importable")

RAW = {"do_resize": False, "do_rescale": False, "do_normalize": False, "do_pad": False}  # conversion only


def converted(image, **kwargs):
    """The converted image of a single input as an (H, W, C) float array on the 0..255 scale."""
    processor = SetrImageProcessor(**RAW)
    return processor(image, **kwargs)["pixel_values"][0].transpose(1, 2, 0)


def rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------- input conversion


class TestImageConversion:
    def test_rgb_uint8_unchanged(self):
        array = rng().integers(0, 256, (5, 7, 3), dtype=np.uint8)
        np.testing.assert_array_equal(converted(Image.fromarray(array)), array)
        np.testing.assert_array_equal(converted(array), array)
        np.testing.assert_array_equal(converted(torch.from_numpy(array).permute(2, 0, 1)), array)

    @pytest.mark.parametrize("mode", ["L", "1"])
    def test_grey_replicated(self, mode):
        grey = rng().integers(0, 256, (4, 6), dtype=np.uint8)
        image = Image.fromarray(grey).convert(mode)
        expected = np.asarray(image.convert("L"))
        np.testing.assert_array_equal(converted(image), np.repeat(expected[..., None], 3, axis=-1))

    def test_la_drops_alpha(self):
        la = rng().integers(0, 256, (4, 6, 2), dtype=np.uint8)
        la[..., 1] = 255  # opaque, so the premultiplied "La" form holds the same grey values
        out = converted(Image.fromarray(la, mode="LA"))
        np.testing.assert_array_equal(out, np.repeat(la[..., :1], 3, axis=-1))
        np.testing.assert_array_equal(converted(Image.fromarray(la, mode="LA").convert("La")), out)

    def test_rgba_drops_alpha_like_cv2(self, tmp_path):
        rgba = rng().integers(0, 256, (5, 6, 4), dtype=np.uint8)
        out = converted(Image.fromarray(rgba, mode="RGBA"))
        np.testing.assert_array_equal(out, rgba[..., :3])  # no compositing over a background
        if cv2 is not None:
            path = str(tmp_path / "rgba.png")
            Image.fromarray(rgba, mode="RGBA").save(path)
            np.testing.assert_array_equal(out, cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1])
            np.testing.assert_array_equal(converted(path), out)

    def test_palette_goes_through_palette(self):
        palette = [10, 20, 30, 200, 100, 50, 7, 8, 9] + [0] * (768 - 9)
        image = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
        image.putpalette(palette)
        expected = np.array([[[10, 20, 30], [200, 100, 50]], [[7, 8, 9], [200, 100, 50]]])
        np.testing.assert_array_equal(converted(image), expected)

    @pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "HSV"])
    def test_colour_spaces_use_pil_conversion(self, mode):
        rgb = Image.fromarray(rng().integers(0, 256, (4, 5, 3), dtype=np.uint8))
        image = rgb.convert(mode)
        np.testing.assert_array_equal(converted(image), np.asarray(image.convert("RGB")))

    def test_rgbx(self):
        rgb = Image.fromarray(rng().integers(0, 256, (4, 5, 3), dtype=np.uint8))
        np.testing.assert_array_equal(converted(rgb.convert("RGBX")), np.asarray(rgb))

    def test_16bit_rounded(self, tmp_path):
        values = np.array([[0, 128, 129, 257, 32768, 65535], [1000, 40000, 65279, 65280, 300, 12345]], dtype=np.uint16)
        expected = np.repeat(np.rint(values / 257.0)[..., None], 3, axis=-1)
        image = Image.fromarray(values)
        assert image.mode == "I;16"
        np.testing.assert_array_equal(converted(image), expected)
        np.testing.assert_array_equal(converted(values), expected)
        np.testing.assert_array_equal(converted(np.stack([values] * 3, axis=-1)), expected)
        if cv2 is not None:  # OpenCV truncates (x >> 8); the rounding differs from it by at most one level
            path = str(tmp_path / "grey16.png")
            image.save(path)
            reference = cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1].astype(int)
            assert np.abs(converted(path) - reference).max() <= 1

    def test_int32_mode_i(self):
        values = np.array([[0, 17, 255]], dtype=np.int32)
        image = Image.fromarray(values, mode="I")
        np.testing.assert_array_equal(converted(image), np.repeat(values[..., None], 3, axis=-1))

    def test_float_scales(self):
        unit = rng().random((4, 5, 3)).astype(np.float32)
        np.testing.assert_allclose(converted(unit), unit * 255, rtol=1e-6)
        full = unit * 200
        np.testing.assert_allclose(converted(full), full, rtol=1e-6)
        np.testing.assert_allclose(converted(torch.from_numpy(unit).permute(2, 0, 1).double()), unit * 255, rtol=1e-6)
        np.testing.assert_allclose(
            converted(torch.from_numpy(unit).permute(2, 0, 1).to(torch.bfloat16)),
            torch.from_numpy(unit).to(torch.bfloat16).float().numpy() * 255,
            rtol=1e-6,
        )
        grey = Image.fromarray(unit[..., 0], mode="F")
        np.testing.assert_allclose(converted(grey), np.repeat(unit[..., :1], 3, axis=-1) * 255, rtol=1e-6)

    @pytest.mark.parametrize("channels", [1, 3, 4])
    @pytest.mark.parametrize("library", ["numpy", "torch"])
    @pytest.mark.parametrize("layout", ["last", "first"])
    def test_array_layouts(self, channels, library, layout):
        hwc = rng(channels).integers(0, 256, (6, 9, channels), dtype=np.uint8)
        array = hwc if layout == "last" else hwc.transpose(2, 0, 1)
        image = torch.from_numpy(np.ascontiguousarray(array)) if library == "torch" else array
        expected = np.repeat(hwc, 3, axis=-1) if channels == 1 else hwc[..., :3]
        np.testing.assert_array_equal(converted(image), expected)

    def test_two_d_arrays_and_input_data_format(self):
        grey = rng().integers(0, 256, (4, 3), dtype=np.uint8)
        np.testing.assert_array_equal(converted(grey), np.repeat(grey[..., None], 3, axis=-1))
        # (3, 4, 3) is ambiguous: NumPy defaults to channels-last, input_data_format decides otherwise
        cube = rng().integers(0, 256, (3, 4, 3), dtype=np.uint8)
        np.testing.assert_array_equal(converted(cube), cube)
        np.testing.assert_array_equal(converted(cube, input_data_format="channels_first"), cube.transpose(1, 2, 0))

    def test_do_convert_rgb_false_keeps_alpha(self):
        rgba = rng().integers(0, 256, (4, 5, 4), dtype=np.uint8)
        out = SetrImageProcessor(**RAW)(rgba, do_convert_rgb=False)["pixel_values"][0]
        np.testing.assert_array_equal(out.transpose(1, 2, 0), rgba)

    def test_batches(self):
        batch = rng().integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
        out = SetrImageProcessor(**RAW)(batch, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(out, batch.transpose(0, 3, 1, 2))
        mixed = [Image.fromarray(batch[0]), torch.from_numpy(batch[1]).permute(2, 0, 1)[None]]
        out = SetrImageProcessor(**RAW)(mixed, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(out, batch.transpose(0, 3, 1, 2))


GOOD = np.zeros((4, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (np.zeros((6, 5, 2), dtype=np.uint8), "channel"),
        (np.zeros((2, 6, 5), dtype=np.uint8), "channel"),
        (np.zeros((1, 1, 4, 5, 3), dtype=np.uint8), "5-D"),
        (np.zeros((4, 5, 3), dtype=bool), "bool"),
        (np.zeros((4, 5, 3), dtype=np.complex64), "complex"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "empty"),
        (np.full((4, 5, 3), np.nan, dtype=np.float32), "NaN"),
        (np.full((4, 5, 3), np.inf, dtype=np.float32), "NaN or infinite"),
        (np.full((4, 5, 3), -0.5, dtype=np.float32), ">= 0"),
        (np.full((4, 5, 3), 300.0, dtype=np.float32), "[0, 255]"),
        (np.full((4, 5, 3), 256, dtype=np.int32), "0..255"),
        (np.full((4, 5, 3), -1, dtype=np.int8), "0..255"),
        (Image.fromarray(np.full((4, 5), 1000, dtype=np.int32), mode="I"), "0..255"),
        (torch.zeros(4, 5, 3, dtype=torch.bool), "bool"),
        (torch.zeros(4, 5, 3, dtype=torch.complex64), "complex"),
        (12, "unsupported input type"),
    ],
)
def test_bad_images_name_their_index(bad, fragment):
    processor = SetrImageProcessor()
    with pytest.raises(ValueError, match="image 2") as info:
        processor([GOOD, GOOD, bad])
    assert fragment in str(info.value), str(info.value)


def test_bad_single_image_is_index_0():
    with pytest.raises(ValueError, match=r"image 0: .*5-D"):
        SetrImageProcessor()(np.zeros((1, 1, 4, 5, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="image 0: cannot open"):
        SetrImageProcessor()(os.path.join(os.path.dirname(__file__), "no-such-image.png"))
    with pytest.raises(ValueError, match="empty list"):
        SetrImageProcessor()([])


# --------------------------------------------------------------------------------------------- segmentation maps


class TestSegmentationMaps:
    def test_map_kinds(self):
        labels = rng().integers(0, 151, (6, 8)).astype(np.uint8)
        image = rng().integers(0, 256, (6, 8, 3), dtype=np.uint8)
        palette_map = Image.fromarray(labels, mode="P")
        palette_map.putpalette(list(rng().integers(0, 256, 768)))  # colours must never leak into the labels
        kinds = [
            Image.fromarray(labels, mode="L"),
            palette_map,
            Image.fromarray(labels.astype(np.uint16)),
            Image.fromarray(labels.astype(np.int32), mode="I"),
            labels,
            labels.astype(np.int64)[None],
            torch.from_numpy(labels.astype(np.int64)),
            labels.astype(np.float32),
        ]
        for kind in kinds:
            out = SetrImageProcessor(**RAW)(image, kind, return_tensors="pt")
            assert out["labels"].dtype == torch.int64
            np.testing.assert_array_equal(out["labels"][0].numpy(), labels)

    def test_batched_map_array(self):
        labels = rng().integers(0, 5, (2, 4, 5))
        images = rng().integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
        out = SetrImageProcessor(**RAW)(images, labels, return_tensors="np")
        np.testing.assert_array_equal(out["labels"], labels)

    @pytest.mark.parametrize(
        ("bad", "fragment"),
        [
            (np.full((4, 5), 1.5, dtype=np.float32), "whole numbers"),
            (np.full((4, 5), np.nan, dtype=np.float32), "whole numbers"),
            (np.full((4, 5), -1, dtype=np.int64), "non-negative"),
            (np.zeros((2, 4, 5), dtype=np.int64), "2-D"),
            (np.zeros((4, 5, 3), dtype=np.uint8), "2-D"),
            (Image.new("RGB", (5, 4)), "mode 'RGB'"),
            (np.zeros((5, 4), dtype=np.uint8), "(5, 4) differs from image 1's size (4, 5)"),
            (np.zeros((4, 5), dtype=np.complex64), "dtype"),
        ],
    )
    def test_bad_maps_name_their_index(self, bad, fragment):
        good = np.zeros((4, 5), dtype=np.uint8)
        with pytest.raises(ValueError, match="segmentation map 1") as info:
            SetrImageProcessor()([GOOD, GOOD], [good, bad])
        assert fragment in str(info.value), str(info.value)

    def test_map_count_mismatch(self):
        with pytest.raises(ValueError, match="2 images but 1 segmentation maps"):
            SetrImageProcessor()([GOOD, GOOD], [np.zeros((4, 5), dtype=np.uint8)])

    def test_reduce_labels_like_mmseg(self):
        labels = np.array([[0, 1, 2, 150], [254, 255, 7, 0]], dtype=np.uint8)
        image = np.zeros((2, 4, 3), dtype=np.uint8)
        out = SetrImageProcessor(**RAW, do_reduce_labels=True)(image, labels, return_tensors="np")
        np.testing.assert_array_equal(out["labels"][0], [[255, 0, 1, 149], [253, 255, 6, 255]])
        # images are not touched by do_reduce_labels
        np.testing.assert_array_equal(out["pixel_values"][0], 0)


# --------------------------------------------------------------------------------------------- resize


KEEP_RATIO_CASES = [  # (img_scale (long, short), (h, w), expected (h, w)) as mmcv.imrescale computes them
    ((2048, 512), (512, 683), (512, 683)),
    ((2048, 512), (683, 512), (683, 512)),
    ((2048, 512), (375, 500), (512, 683)),
    ((2048, 512), (2000, 333), (2048, 341)),
    ((2048, 512), (1024, 2048), (512, 1024)),
    ((2048, 512), (97, 61), (814, 512)),
    ((2048, 512), (300, 5000), (123, 2048)),
    ((2049, 1025), (1024, 2048), (1025, 2049)),
    ((2049, 1025), (600, 800), (1025, 1367)),
    ((2049, 1025), (1000, 1000), (1025, 1025)),
    ((520, 520), (375, 500), (390, 520)),
    ((520, 520), (500, 375), (520, 390)),
    ((520, 520), (333, 500), (346, 520)),
    ((520, 520), (1000, 100), (520, 52)),
]


@pytest.mark.parametrize(("scale", "shape", "expected"), KEEP_RATIO_CASES)
def test_keep_ratio_size_matches_mmcv(scale, shape, expected):
    size = SizeDict(longest_edge=max(scale), shortest_edge=min(scale))
    assert get_setr_output_size(*shape, size) == expected
    if rescale_size is not None:
        new_w, new_h = rescale_size(shape[::-1], scale)
        assert (new_h, new_w) == expected
    out = SetrImageProcessor(size=dict(size), do_pad=False)(np.zeros((*shape, 3), dtype=np.uint8))
    assert out["pixel_values"][0].shape == (3, *expected)


def test_size_variants():
    assert get_setr_output_size(100, 50, SizeDict(height=30, width=40)) == (30, 40)
    assert get_setr_output_size(100, 50, SizeDict(shortest_edge=25)) == (50, 25)
    assert get_setr_output_size(100, 50, SizeDict(longest_edge=10)) == (10, 5)
    with pytest.raises(ValueError, match="larger than"):
        get_setr_output_size(100, 50, SizeDict(shortest_edge=30, longest_edge=10))
    with pytest.raises(ValueError, match="size"):
        get_setr_output_size(100, 50, SizeDict(max_height=30, max_width=10))


@requires_mmcv
@pytest.mark.parametrize(
    ("scale", "shape"),
    [((2048, 512), (300, 500)), ((2048, 512), (1100, 700)), ((520, 520), (375, 500)), ((2049, 1025), (257, 1200))],
)
def test_resized_pixels_match_mmcv(scale, shape):
    image = rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    labels = rng(2).integers(0, 151, shape).astype(np.uint8)
    processor = SetrImageProcessor(
        size={"shortest_edge": min(scale), "longest_edge": max(scale)},
        do_rescale=False,
        do_normalize=False,
        do_pad=False,
    )
    out = processor(image, labels, return_tensors="np")
    reference = imrescale(image, scale, interpolation="bilinear", backend="cv2")
    reference_labels = imrescale(labels, scale, interpolation="nearest", backend="cv2")
    ours = out["pixel_values"][0].transpose(1, 2, 0)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference.astype(np.float32)).max() <= 1
    np.testing.assert_array_equal(out["labels"][0], reference_labels)


@requires_mmcv
def test_fixed_size_matches_mmcv_including_downscale():
    image = rng(3).integers(0, 256, (301, 403, 3), dtype=np.uint8)
    labels = rng(4).integers(0, 20, (301, 403)).astype(np.uint8)
    for height, width in [(64, 48), (512, 512), (97, 1000)]:
        processor = SetrImageProcessor(size={"height": height, "width": width}, **{**RAW, "do_resize": True})
        out = processor(image, labels, return_tensors="np")
        reference = imresize(image, (width, height), interpolation="bilinear", backend="cv2")
        assert np.abs(out["pixel_values"][0].transpose(1, 2, 0) - reference).max() <= 1
        reference_labels = imresize(labels, (width, height), interpolation="nearest", backend="cv2")
        np.testing.assert_array_equal(out["labels"][0], reference_labels)


def test_resample_choices():
    image = rng().integers(0, 256, (10, 12, 3), dtype=np.uint8)
    nearest = SetrImageProcessor(size={"height": 20, "width": 24}, resample=0, **{**RAW, "do_resize": True})
    expected = image.repeat(2, 0).repeat(2, 1).transpose(2, 0, 1)
    np.testing.assert_array_equal(nearest(image)["pixel_values"][0], expected)
    with pytest.raises(ValueError, match="not supported"):
        SetrImageProcessor(resample=1)(image)


# --------------------------------------------------------------------------------------------- normalise and pad


def test_normalisation_matches_mmseg_formula():
    image = rng().integers(0, 256, (32, 48, 3), dtype=np.uint8)
    out = SetrImageProcessor()(image, size={"height": 32, "width": 48}, return_tensors="np")["pixel_values"][0]
    mean = np.array([123.675, 116.28, 103.53])[:, None, None]
    std = np.array([58.395, 57.12, 57.375])[:, None, None]
    np.testing.assert_allclose(out, (image.transpose(2, 0, 1) - mean) / std, atol=1e-5)
    assert SetrImageProcessor().image_mean == tuple(IMAGENET_DEFAULT_MEAN)
    assert SetrImageProcessor().image_std == tuple(IMAGENET_DEFAULT_STD)


@pytest.mark.parametrize("shape", [(300, 500), (500, 300), (97, 61), (512, 512)])
def test_padding_values_and_multiples(shape):
    image = rng().integers(0, 256, (*shape, 3), dtype=np.uint8)
    labels = rng().integers(0, 150, shape).astype(np.uint8)
    processor = SetrImageProcessor()
    out = processor(image, labels, return_tensors="np")
    pixel_values, padded_labels = out["pixel_values"], out["labels"]
    assert pixel_values.dtype == np.float32 and padded_labels.dtype == np.int64
    height, width = get_setr_output_size(*shape, processor.size)
    assert pixel_values.shape[-2] % 16 == 0 and pixel_values.shape[-1] % 16 == 0
    assert pixel_values.shape[-2] - height < 16 and pixel_values.shape[-1] - width < 16
    assert padded_labels.shape == (1, *pixel_values.shape[-2:])
    assert np.all(pixel_values[..., height:, :] == 0) and np.all(pixel_values[..., :, width:] == 0)
    assert np.all(padded_labels[..., height:, :] == 255) and np.all(padded_labels[..., :, width:] == 255)
    unpadded = SetrImageProcessor(do_pad=False)(image, labels, return_tensors="np")
    np.testing.assert_array_equal(pixel_values[..., :height, :width], unpadded["pixel_values"])
    np.testing.assert_array_equal(padded_labels[..., :height, :width], unpadded["labels"])


def test_batch_of_different_sizes_pads_to_batch_max():
    images = [np.zeros((300, 500, 3), np.uint8), np.zeros((600, 200, 3), np.uint8)]
    maps = [np.ones((300, 500), np.uint8), np.ones((600, 200), np.uint8)]
    out = SetrImageProcessor(ignore_index=99)(images, maps, return_tensors="pt")
    # resized to (512, 853) and (1536, 512); batch max (1536, 853) -> (1536, 864)
    assert tuple(out["pixel_values"].shape) == (2, 3, 1536, 864)
    assert tuple(out["labels"].shape) == (2, 1536, 864)
    assert out["labels"][0, 512:].eq(99).all() and out["labels"][0, :512, :853].eq(1).all()
    with pytest.raises(ValueError, match="do_pad"):
        SetrImageProcessor(do_pad=False)(images, return_tensors="pt")


def test_pad_size():
    out = SetrImageProcessor(pad_size={"height": 520, "width": 520})(np.zeros((300, 300, 3), np.uint8))
    assert out["pixel_values"][0].shape == (3, 528, 528)  # 520 rounded up to the size divisor
    with pytest.raises(ValueError, match="smaller"):
        SetrImageProcessor(pad_size={"height": 100, "width": 100})(np.zeros((300, 300, 3), np.uint8))


# --------------------------------------------------------------------------------------------- post-processing


def manual(logits, crop, target):
    """Crop (h, w) off the top-left of (C, H, W) logits, resize bilinearly to target, argmax."""
    region = logits[None, :, : crop[0], : crop[1]]
    scores = F.interpolate(region, size=target, mode="bilinear", align_corners=False)[0]
    return scores.argmax(0), scores


class TestPostProcess:
    def test_crops_padding_and_returns_original_sizes(self):
        processor = SetrImageProcessor()
        originals = [(300, 500), (600, 200)]
        resized = [get_setr_output_size(h, w, processor.size) for h, w in originals]  # (512, 853), (1536, 512)
        padded = (1536, 864)
        logits = torch.randn(2, 5, *padded)
        maps = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits), originals)
        for index in range(2):
            assert tuple(maps[index].shape) == originals[index]
            expected, _ = manual(logits[index], resized[index], originals[index])
            torch.testing.assert_close(maps[index], expected)
        tensor_sizes = torch.tensor(originals)
        again = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits), tensor_sizes)
        assert all(torch.equal(a, b) for a, b in zip(maps, again, strict=True))

    def test_quarter_resolution_logits(self):
        processor = SetrImageProcessor()
        original = (384, 512)  # resized (512, 683) -> padded (512, 688); logits at 1/4: (128, 172)
        logits = torch.randn(1, 4, 128, 172)
        out = processor.post_process_semantic_segmentation(
            SemanticSegmenterOutput(logits=logits), [original], return_segmentation_scores=True
        )
        assert tuple(out[0].segmentation.shape) == original
        assert tuple(out[0].segmentation_scores.shape) == (4, *original)
        torch.testing.assert_close(out[0].segmentation, out[0].segmentation_scores.argmax(0))

    def test_quarter_resolution_logits_follow_mmseg(self):
        """mmsegmentation resizes 1/4 logits to the padded input, crops the padding, then resizes to the original."""
        processor = SetrImageProcessor()
        original = (384, 512)  # resized (512, 683) -> padded (512, 688)
        logits = torch.randn(1, 4, 128, 172)
        maps = processor.post_process_semantic_segmentation(logits, [original])
        at_input = F.interpolate(logits, size=(512, 688), mode="bilinear", align_corners=False)[0]
        expected, _ = manual(at_input, (512, 683), original)
        torch.testing.assert_close(maps[0], expected)

    def test_integral_fraction_equals_manual_crop(self):
        processor = SetrImageProcessor(size={"height": 64, "width": 96})
        logits = torch.randn(1, 3, 16, 24)  # 1/4 of the (64, 96) input, no padding needed
        maps = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits), [(50, 70)])
        at_input = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False)[0]
        expected, _ = manual(at_input, (64, 96), (50, 70))
        torch.testing.assert_close(maps[0], expected)

    def test_round_trip_recovers_label_map(self):
        # already at the test scale: resize is the identity, so cropping the padding must give the map back exactly
        labels = rng().integers(0, 6, (512, 700))
        processor = SetrImageProcessor()
        out = processor(np.zeros((512, 700, 3), np.uint8), labels, return_tensors="pt")
        one_hot = F.one_hot(out["labels"].clamp(max=5), 6).permute(0, 3, 1, 2).float()
        maps = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=one_hot), [(512, 700)])
        np.testing.assert_array_equal(maps[0].numpy(), labels)

    def test_without_target_sizes_and_errors(self):
        processor = SetrImageProcessor()
        logits = torch.randn(2, 3, 32, 48)
        maps = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits))
        torch.testing.assert_close(maps[1], logits[1].argmax(0))
        with pytest.raises(ValueError, match="as many target sizes"):
            processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits), [(10, 10)])
        with pytest.raises(ValueError, match="not a scaled copy"):
            processor.post_process_semantic_segmentation(
                SemanticSegmenterOutput(logits=torch.randn(1, 3, 512, 512)), [(300, 900)]
            )


# --------------------------------------------------------------------------------------------- serialisation


def test_save_load_round_trip(tmp_path):
    processor = SetrImageProcessor(
        size={"shortest_edge": 1025, "longest_edge": 2049}, do_reduce_labels=True, size_divisor=32, ignore_index=254
    )
    processor.save_pretrained(tmp_path)
    reloaded = SetrImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()
    assert reloaded.size == SizeDict(shortest_edge=1025, longest_edge=2049)
    assert (reloaded.do_reduce_labels, reloaded.size_divisor, reloaded.ignore_index) == (True, 32, 254)
    image, labels = rng().integers(0, 256, (40, 30, 3), dtype=np.uint8), rng().integers(0, 5, (40, 30))
    a, b = processor(image, labels, return_tensors="np"), reloaded(image, labels, return_tensors="np")
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
    np.testing.assert_array_equal(a["labels"], b["labels"])

    auto = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert type(auto) is SetrImageProcessor and auto.to_dict() == processor.to_dict()


def test_module_is_self_contained_for_hub_remote_code(tmp_path):
    """The file is shipped alone as Hub remote code: it must import nothing but torch, numpy, PIL and transformers."""
    import importlib.util
    import shutil

    from transformers.dynamic_module_utils import check_imports, get_imports

    import hf_seg.models.setr.image_processing_setr as module

    copy = tmp_path / "image_processing_setr.py"
    shutil.copy(module.__file__, copy)
    assert set(get_imports(str(copy))) <= {"PIL", "collections", "math", "numpy", "torch", "transformers"}
    check_imports(str(copy))
    spec = importlib.util.spec_from_file_location("standalone_image_processing_setr", copy)
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    out = standalone.SetrImageProcessor()(np.zeros((20, 30, 3), np.uint8), return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (1, 3, 512, 768)


def test_defaults():
    processor = SetrImageProcessor()
    assert processor.size == SizeDict(shortest_edge=512, longest_edge=2048)
    assert (processor.do_resize, processor.do_rescale, processor.do_normalize, processor.do_pad) == (True,) * 4
    assert (processor.size_divisor, processor.do_reduce_labels, processor.ignore_index) == (16, False, 255)
    assert int(processor.resample) == 2 and processor.rescale_factor == 1 / 255


# --------------------------------------------------------------------------------------------- transformers' mixin

try:  # tests/conftest.py puts `transformers_tests` on sys.path once fetched
    from fetch_transformers_tests import FETCH_HINT
except ImportError:  # pragma: no cover - harness not available
    FETCH_HINT = "transformers' common tests (package `transformers_tests`) are not importable"

try:  # only the mixin part is skipped when they are missing; the tests above always run
    _common = pytest.importorskip("transformers_tests.test_image_processing_common", reason=FETCH_HINT)
except pytest.skip.Exception:
    _common = None


if _common is None:

    @pytest.mark.skip(reason=FETCH_HINT)
    def test_transformers_image_processing_mixin():
        pass

else:
    NO_TORCHVISION = (
        "SetrImageProcessor has only the PIL backend: torchvision has no CPU build for the pinned torch and hf_seg "
        "never depends on it (DESIGN.md)"
    )

    class SetrImageProcessingTester(_common.ImageProcessingTester):
        def __init__(self, parent, **kwargs):
            kwargs.setdefault("size", {"shortest_edge": 32, "longest_edge": 64})
            kwargs.setdefault("size_divisor", 16)
            kwargs.setdefault("do_reduce_labels", False)
            kwargs.setdefault("image_mean", [0.5, 0.5, 0.5])
            kwargs.setdefault("image_std", [0.5, 0.5, 0.5])
            kwargs.setdefault("num_labels", 5)
            super().__init__(parent, **kwargs)

        def _get_image_processing_classes(self):
            # transformers infers the classes from the test folder's model name; hf_seg's lives outside transformers
            return {"pil": SetrImageProcessor}

        def expected_output_image_shape(self, images):
            size = SizeDict(**self.size)
            sizes = []
            for image in images:
                if isinstance(image, Image.Image):
                    height, width = image.height, image.width
                elif isinstance(image, np.ndarray):
                    height, width = image.shape[0], image.shape[1]
                else:
                    height, width = image.shape[1], image.shape[2]
                sizes.append(get_setr_output_size(height, width, size))
            divisor = self.size_divisor
            height = -(-max(h for h, _ in sizes) // divisor) * divisor
            width = -(-max(w for _, w in sizes) // divisor) * divisor
            return self.num_channels, height, width

        def prepare_post_process_semantic_segmentation_inputs(self):
            # logits at 1/4 of the padded input of the (1, 4) target size the mixin uses: (16, 64) -> (4, 16)
            logits = torch.randn(self.batch_size, self.num_labels, 4, 16)
            return (
                {"outputs": SemanticSegmenterOutput(logits=logits)},
                {"num_labels": self.num_labels, "height": 4, "width": 16},
            )

    class SetrImageProcessingTest(
        _common.ImageProcessingTestMixin, _common.PostProcessSemanticSegmentationTestMixin, unittest.TestCase
    ):
        image_processor_tester_class = SetrImageProcessingTester
        test_cast_dtype = True

        def test_call_segmentation_maps(self):
            processor = SetrImageProcessor(**self.image_processor_dict)
            images = self.image_processor_tester.prepare_image_inputs(equal_resolution=False, torchify=True)
            maps = [torch.randint(0, 5, image.shape[-2:]) for image in images]
            encoding = processor(images, maps, return_tensors="pt")
            expected = self.image_processor_tester.expected_output_image_shape(images)
            self.assertEqual(tuple(encoding["pixel_values"].shape), (len(images), *expected))
            self.assertEqual(tuple(encoding["labels"].shape), (len(images), *expected[1:]))
            self.assertEqual(encoding["labels"].dtype, torch.long)
            self.assertTrue(set(encoding["labels"].unique().tolist()) <= {0, 1, 2, 3, 4, 255})

        def test_override_instance_attributes_does_not_affect_other_instances(self):
            # the mixin version skips because image_mean is stored as a tuple (immutable); check `size` instead
            first, second = SetrImageProcessor(), SetrImageProcessor()
            first.size["shortest_edge"] = -1
            self.assertEqual(second.size["shortest_edge"], 512)
            self.assertEqual(SetrImageProcessor.size["shortest_edge"], 512)

        def test_image_processor_preprocess_arguments(self):
            # the mixin looks for the v4 mechanisms (`_valid_processor_keys`, a warning); in v5 the kwargs TypedDict
            # rejects unknown arguments outright
            processor = SetrImageProcessor(**self.image_processor_dict)
            with self.assertRaises(TypeError):
                processor(self.image_processor_tester.prepare_image_inputs(), extra_argument=True)

        def test_backends_equivalence(self):
            self.skipTest(f"needs two backends and a Hub image download; {NO_TORCHVISION}")

        def test_backends_equivalence_batched(self):
            self.skipTest(f"needs two backends; {NO_TORCHVISION}")

        def test_save_load_backends(self):
            self.skipTest(f"cross-backend save/load needs two backends; {NO_TORCHVISION}")

        def test_save_load_backends_auto(self):
            self.skipTest(f"cross-backend AutoImageProcessor loading needs two backends; {NO_TORCHVISION}")

        def test_can_compile_torchvision_backend(self):
            self.skipTest(f"compiles the torchvision backend on an accelerator; {NO_TORCHVISION}")

        def test_fast_image_processor_explicit_none_preserved(self):
            self.skipTest(f"tests the torchvision ('fast') backend only; {NO_TORCHVISION}")

        def test_new_models_require_torchvision_backend(self):
            self.skipTest(f"transformers' policy for models inside transformers; {NO_TORCHVISION}")

        def test_pil_can_run_without_torchvision(self):
            self.skipTest(
                "reloads through AutoImageProcessor in a fresh interpreter where SetrImageProcessor is not registered "
                "(needs `import hf_seg` or trust_remote_code); torchvision is absent here, so every test above "
                "already runs without it"
            )


def test_one_channel_logits_post_process_to_foreground_where_the_sigmoid_exceeds_a_half():
    """A binary model (num_labels=1, sigmoid loss): 1 where the logit is positive, 0 elsewhere (not an argmax of one
    channel, which is 0 everywhere)."""
    processor = SetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}, size_divisor=16)
    logits = torch.randn(1, 1, 32, 48, generator=torch.Generator().manual_seed(0))
    (plain,) = processor.post_process_semantic_segmentation(logits)
    assert torch.equal(plain, (logits[0, 0] > 0).long()) and 0 < plain.sum() < plain.numel()
    (resized,) = processor.post_process_semantic_segmentation(logits, target_sizes=[(32, 48)])
    assert torch.equal(resized, (logits[0, 0] > 0).long())
