"""hf_seg.inference.segment: whole / slide / multi-scale + flip inference against mmsegmentation's protocol."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import SegformerConfig, SegformerForSemanticSegmentation

import hf_seg
from hf_seg.inference import _default_slide_settings, segment, slide_windows


NUM_LABELS = 5


@pytest.fixture(scope="module")
def setr():
    torch.manual_seed(0)
    config = hf_seg.SetrConfig(
        image_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        decoder_type="pup", auxiliary_in_indices=[0, 1], num_labels=NUM_LABELS,
    )
    return hf_seg.SetrForSemanticSegmentation(config).eval()


@pytest.fixture(scope="module")
def segformer():
    torch.manual_seed(0)
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16, num_labels=NUM_LABELS,
    )
    return SegformerForSemanticSegmentation(config).eval()


def _image(height, width, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


def _processor(**size):
    if size:
        return hf_seg.SetrImageProcessor(size=size)
    return hf_seg.SetrImageProcessor(do_resize=False)


def _window_logits(model, window):
    """Logits of one `(1, 3, h, w)` window at its size: SETR's input padded to 16 and cropped, others resized."""
    height, width = window.shape[-2:]
    if isinstance(model.config, hf_seg.SetrConfig):
        window = F.pad(window, (0, (-width) % 16, 0, (-height) % 16))
    with torch.no_grad():
        logits = model(pixel_values=window).logits
    logits = F.interpolate(logits, size=window.shape[-2:], mode="bilinear", align_corners=False)
    return logits[:, :, :height, :width]


def _reference_slide(model, inputs, crop, stride):
    """mmseg's slide_inference loop, written out, one window at a time."""
    (hc, wc), (hs, ws) = crop, stride
    _, _, height, width = inputs.shape
    preds = inputs.new_zeros((1, NUM_LABELS, height, width))
    count = inputs.new_zeros((1, 1, height, width))
    for i in range(max(height - hc + hs - 1, 0) // hs + 1):
        for j in range(max(width - wc + ws - 1, 0) // ws + 1):
            y1, x1 = i * hs, j * ws
            y2, x2 = min(y1 + hc, height), min(x1 + wc, width)
            y1, x1 = max(y2 - hc, 0), max(x2 - wc, 0)
            logits = _window_logits(model, inputs[:, :, y1:y2, x1:x2])
            preds += F.pad(logits, (x1, width - x2, y1, height - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def _mmseg_slide(model, inputs, crop, stride):
    """mmseg 1.x's own EncoderDecoder.slide_inference, called unbound on a duck-typed segmentor wrapping `model`."""
    from mmseg_reference import import_mmseg

    import_mmseg()
    from mmseg.models.segmentors import EncoderDecoder

    def encode_decode(window, batch_img_metas):
        assert tuple(batch_img_metas[0]["img_shape"]) == tuple(window.shape[-2:])
        return _window_logits(model, window)

    stand_in = SimpleNamespace(
        test_cfg=SimpleNamespace(crop_size=crop, stride=stride), out_channels=NUM_LABELS, encode_decode=encode_decode
    )
    metas = [dict(img_shape=tuple(inputs.shape[-2:]), ori_shape=tuple(inputs.shape[-2:]))]
    return EncoderDecoder.slide_inference(stand_in, inputs, metas)


def _expected(seg_logits, original):
    """mmseg's postprocess: logits of the resized image -> original size (bilinear) -> softmax / argmax."""
    logits = F.interpolate(seg_logits, size=original, mode="bilinear", align_corners=False)[0]
    return logits.argmax(0), logits.softmax(0)


def _check(labels, probs, expected_labels, expected_probs):
    assert labels.dtype == torch.int64 and labels.shape == expected_labels.shape
    assert (probs - expected_probs).abs().max().item() <= 1e-5
    assert torch.equal(labels, expected_labels)


# --------------------------------------------------------------------------------------------------- slide windows


@pytest.mark.parametrize("height,width,crop,stride", [
    (100, 150, (64, 64), (42, 42)), (40, 30, (64, 64), (42, 42)), (64, 64, (64, 64), (64, 64)),
    (65, 200, (48, 64), (16, 40)), (1024, 2048, (1024, 1024), (768, 768)), (512, 683, (512, 512), (341, 341)),
])
def test_slide_windows_cover_the_image_like_mmseg(height, width, crop, stride):
    windows = slide_windows(height, width, crop, stride)
    count = torch.zeros(height, width)
    for y1, y2, x1, x2 in windows:
        assert (y2 - y1, x2 - x1) == (min(crop[0], height), min(crop[1], width))
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    if (height, width) == (1024, 2048):
        assert windows == [(0, 1024, 0, 1024), (0, 1024, 768, 1792), (0, 1024, 1024, 2048)]


# --------------------------------------------------------------------------------------------- slide vs references

SLIDE_CASES = [  # (image (h, w), processor size or None, crop, stride)
    ((100, 150), None, 64, 42),  # larger than the crop, non-square, stride < crop
    ((40, 30), None, 64, 42),  # smaller than the crop: one smaller window, not a patch multiple (padded)
    ((50, 140), None, 64, 48),  # smaller in height only
    ((90, 200), {"shortest_edge": 96, "longest_edge": 160}, 64, 42),  # keep-ratio resize, then slide
    ((97, 131), None, (48, 64), (32, 40)),  # rectangular crop and stride
]


@pytest.mark.parametrize("shape,size,crop,stride", SLIDE_CASES)
def test_slide_matches_mmseg_slide_inference(setr, shape, size, crop, stride):
    processor, image = _processor(**(size or {})), _image(*shape)
    labels, probs = segment(setr, processor, image, mode="slide", crop_size=crop, stride=stride, batch_size=3,
                            return_probabilities=True)
    inputs = processor(images=image, do_pad=False, return_tensors="pt")["pixel_values"]
    crop2 = (crop, crop) if isinstance(crop, int) else crop
    stride2 = (stride, stride) if isinstance(stride, int) else stride
    with torch.no_grad():
        seg_logits = _mmseg_slide(setr, inputs, crop2, stride2)
    _check(labels[0], probs[0], *_expected(seg_logits, shape))


@pytest.mark.parametrize("shape,size,crop,stride", SLIDE_CASES)
def test_slide_matches_one_window_at_a_time_reference(setr, shape, size, crop, stride):
    processor, image = _processor(**(size or {})), _image(*shape, seed=1)
    labels, probs = segment(setr, processor, [image], mode="slide", crop_size=crop, stride=stride, batch_size=4,
                            return_probabilities=True)
    inputs = processor(images=image, do_pad=False, return_tensors="pt")["pixel_values"]
    crop2 = (crop, crop) if isinstance(crop, int) else crop
    stride2 = (stride, stride) if isinstance(stride, int) else stride
    _check(labels[0], probs[0], *_expected(_reference_slide(setr, inputs, crop2, stride2), shape))


def test_batched_windows_equal_one_window_at_a_time(setr):
    images = [_image(100, 150), _image(40, 30, seed=2), _image(130, 70, seed=3)]
    processor = _processor()
    one = segment(setr, processor, images, mode="slide", crop_size=64, stride=32, batch_size=1,
                  return_probabilities=True)
    for batch_size in (2, 5, 64):
        many = segment(setr, processor, images, mode="slide", crop_size=64, stride=32, batch_size=batch_size,
                       return_probabilities=True)
        for a, b, pa, pb in zip(one[0], many[0], one[1], many[1], strict=True):
            assert torch.equal(a, b)
            assert (pa - pb).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------------------- whole mode


def test_whole_mode_label_maps_at_original_size(setr):
    processor = _processor(shortest_edge=48, longest_edge=100)
    images = [_image(70, 130), _image(33, 33, seed=1), _image(120, 50, seed=2)]
    labels, probs = segment(setr, processor, images, mode="whole", return_probabilities=True)
    for image, label, prob in zip(images, labels, probs, strict=True):
        assert label.shape == image.shape[:2] and label.dtype == torch.int64
        assert prob.shape == (NUM_LABELS, *image.shape[:2])
        # the processor's own pipeline (pad to 16, model, post-process with the original size) agrees
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            outputs = setr(**inputs)
        expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]],
                                                                return_segmentation_scores=True)[0]
        assert torch.equal(label, expected.segmentation)
        assert (prob - expected.segmentation_scores.softmax(0)).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------------ scales and flips


def _manual_tta(model, base_size, image, scales, mode, **slide):
    original = image.shape[:2]
    total = 0
    for scale in scales:
        processor = _processor(**{key: int(value * scale) for key, value in base_size.items()})
        inputs = processor(images=image, do_pad=False, return_tensors="pt")["pixel_values"]
        for flipped in (False, True):
            x = inputs.flip(-1) if flipped else inputs
            if mode == "slide":
                logits = _reference_slide(model, x, **slide)
            else:
                logits = _window_logits(model, x)
            probs = _expected(logits, original)[1]
            total = total + (probs.flip(-1) if flipped else probs)
    total = total / (2 * len(scales))
    return total.argmax(0), total


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_multiscale_flip_equals_manual_average(setr, mode):
    base_size = {"shortest_edge": 64, "longest_edge": 128}
    image, scales = _image(90, 150, seed=4), [0.75, 1.0, 1.5]
    slide = dict(crop_size=64, stride=40) if mode == "slide" else {}
    labels, probs = segment(setr, _processor(**base_size), image, mode=mode, scales=scales, flip=True,
                            return_probabilities=True, **slide)
    ref = dict(crop=(64, 64), stride=(40, 40)) if mode == "slide" else {}
    _check(labels[0], probs[0], *_manual_tta(setr, base_size, image, scales, mode, **ref))


# -------------------------------------------------------------------------------------- SegFormer (logits at 1/4)


def test_transformers_segformer_whole_and_slide(segformer):
    # do_pad=False: whole mode would otherwise pad to the processor's size_divisor, as the processor itself does
    processor = hf_seg.SetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, do_pad=False)
    image = _image(80, 170, seed=5)
    labels, probs = segment(segformer, processor, image, mode="whole", return_probabilities=True)
    inputs = processor(images=image, do_pad=False, return_tensors="pt")["pixel_values"]
    _check(labels[0], probs[0], *_expected(_window_logits(segformer, inputs), image.shape[:2]))

    labels, probs = segment(segformer, processor, image, mode="slide", crop_size=48, stride=32, batch_size=2,
                            return_probabilities=True)
    with torch.no_grad():
        seg_logits = _mmseg_slide(segformer, inputs, (48, 48), (32, 32))
    _check(labels[0], probs[0], *_expected(seg_logits, image.shape[:2]))


def test_autocast_bfloat16_runs(setr):
    labels = segment(setr, _processor(), _image(70, 90), mode="slide", crop_size=64, stride=48,
                     autocast_dtype=torch.bfloat16)
    reference = segment(setr, _processor(), _image(70, 90), mode="slide", crop_size=64, stride=48)
    assert labels[0].shape == (70, 90)
    assert (labels[0] == reference[0]).float().mean() > 0.9


# ------------------------------------------------------------------------------------------- defaults and errors


def test_slide_defaults(setr, segformer):
    assert _default_slide_settings(setr, None, None, None) == ((64, 64), (42, 42))
    assert _default_slide_settings(setr, None, None, "setr-pup-vit-large-ade20k-512") == ((512, 512), (341, 341))
    assert _default_slide_settings(setr, None, None, "setr-naive-vit-large-cityscapes-768") == ((768, 768), (512, 512))
    assert _default_slide_settings(segformer, 96, None, None) == ((96, 96), (64, 64))
    labels = segment(setr, _processor(), _image(100, 120), mode="slide")
    assert labels[0].shape == (100, 120)


@pytest.mark.parametrize("kwargs,message", [
    (dict(mode="sliding"), "mode must be one of"),
    (dict(mode="slide", crop_size=32, stride=48), "larger than crop_size"),
    (dict(mode="slide", crop_size=0), "must be positive"),
    (dict(mode="slide", crop_size=(32, 32, 32)), "crop_size must be an int"),
    (dict(mode="slide", crop_size=32, stride=-1), "stride must be positive"),
    (dict(mode="whole", crop_size=32), "apply to mode='slide' only"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(scales=[]), "scales must be a non-empty"),
    (dict(scales=[1.0, -0.5]), "scales must be a non-empty"),
    (dict(autocast_dtype=torch.float64), "autocast_dtype must be"),
])
def test_bad_arguments_raise_clear_errors(setr, kwargs, message):
    with pytest.raises(ValueError, match=message):
        segment(setr, _processor(), _image(40, 40), **kwargs)


def test_bad_inputs_raise_clear_errors(setr, segformer):
    with pytest.raises(ValueError, match="needs crop_size"):
        segment(segformer, _processor(), _image(40, 40), mode="slide")
    with pytest.raises(ValueError, match="empty list"):
        segment(setr, _processor(), [], mode="whole")

    class NoLogits(torch.nn.Module):
        def forward(self, pixel_values):
            return {"scores": pixel_values}

    with pytest.raises(ValueError, match="must have `.logits`"):
        segment(NoLogits(), _processor(), _image(40, 40))
