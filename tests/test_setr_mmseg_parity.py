"""SETR parity with mmsegmentation 1.x: the same random weights, converted with `hf_seg.convert.setr`, give the same
logits (max abs diff <= 1e-4 in fp32) for the Naive, PUP and MLA variants, on a square input at the stored
position-embedding size and on a non-square one (run-time bilinear resize of the position embeddings). The
auxiliary heads are compared directly and through the training loss.

The mmseg models are small versions of mmseg's SETR configs (`configs/_base_/models/setr_*.py` and the ADE20K
variants in `configs/setr/`): ViT with img_size 64, patch 16, 64 dims, 4 layers, 4 heads, BN instead of SyncBN.
"""

import pytest
import torch
from torch.nn import functional as F

from mmseg_reference import import_mmseg


import_mmseg()  # a test dependency: failing to import it fails these tests rather than skipping them

from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402

from hf_seg.convert.setr import (  # noqa: E402
    convert_mmseg_setr_state_dict,
    detect_mmseg_setr_decoder,
    setr_config_overrides_for_mmseg,
)
from hf_seg.models.setr import SetrConfig, SetrForSemanticSegmentation  # noqa: E402


NUM_CLASSES = 5
EMBED_DIMS = 64
NUM_HEADS = 4  # not readable from a state dict (the converter's default is hidden_size // 64, as in every SETR)
OUT_INDICES = (0, 1, 2, 3)  # 4 layers: the decode head reads the last one, the auxiliary heads the earlier ones
TOLERANCE = 1e-4
SIZES = [(64, 64), (48, 80)]  # the stored position-embedding size, and a non-square one (resized at run time)

pytestmark = pytest.mark.filterwarnings(
    "ignore:``build_loss`` would be deprecated", "ignore:Default ``avg_non_ignore`` is False"
)


def _norm():
    return dict(type="BN", requires_grad=True)


def _up_head(in_index, num_convs, up_scale, kernel_size, channels=32, loss_weight=1.0):
    return dict(
        type="SETRUPHead", in_channels=EMBED_DIMS, channels=channels, in_index=in_index, num_classes=NUM_CLASSES,
        dropout_ratio=0, norm_cfg=_norm(), act_cfg=dict(type="ReLU"), num_convs=num_convs, up_scale=up_scale,
        kernel_size=kernel_size, align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=loss_weight),
    )


def _mmseg_config(variant: str) -> dict:
    """mmseg 1.x's ADE20K SETR configs at toy size."""
    backbone = dict(
        type="VisionTransformer", img_size=(64, 64), patch_size=16, in_channels=3, embed_dims=EMBED_DIMS,
        num_layers=4, num_heads=NUM_HEADS, out_indices=OUT_INDICES, drop_rate=0.0, final_norm=False,
        norm_cfg=dict(type="LN", eps=1e-6, requires_grad=True), with_cls_token=variant != "mla",
        interpolate_mode="bilinear",
    )
    config = dict(type="EncoderDecoder", backbone=backbone, train_cfg=dict(), test_cfg=dict(mode="whole"))
    if variant == "naive":  # setr_vit-l_naive_8xb2-160k_ade20k-512x512
        config["decode_head"] = _up_head(3, num_convs=1, up_scale=4, kernel_size=1)
        config["auxiliary_head"] = [_up_head(i, 2, 4, 1, loss_weight=0.4) for i in range(3)]
    elif variant == "pup":  # setr_vit-l_pup_8xb2-160k_ade20k-512x512
        config["decode_head"] = _up_head(3, num_convs=4, up_scale=2, kernel_size=3)
        config["auxiliary_head"] = [_up_head(i, 2, 4, 3, loss_weight=0.4) for i in range(3)]
    else:  # setr_vit-l_mla_8xb2-160k_ade20k-512x512
        config["neck"] = dict(type="MLANeck", in_channels=[EMBED_DIMS] * 4, out_channels=32, norm_cfg=_norm(),
                              act_cfg=dict(type="ReLU"))
        config["decode_head"] = dict(
            type="SETRMLAHead", in_channels=(32, 32, 32, 32), channels=64, in_index=(0, 1, 2, 3), dropout_ratio=0,
            mla_channels=16, num_classes=NUM_CLASSES, norm_cfg=_norm(), align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        )
        config["auxiliary_head"] = [
            dict(type="FCNHead", in_channels=32, channels=32, in_index=i, dropout_ratio=0, norm_cfg=_norm(),
                 act_cfg=dict(type="ReLU"), num_convs=0, kernel_size=1, concat_input=False, num_classes=NUM_CLASSES,
                 align_corners=False,
                 loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
            for i in range(4)
        ]
    return config


@torch.no_grad()
def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter and buffer with seeded random values of a sensible scale (BN variances positive)."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point():
            tensor.copy_(torch.randint(0, 1000, tensor.shape, generator=generator))
            continue
        shape, leaf = tensor.shape, name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            value = torch.rand(shape, generator=generator) + 0.5
        elif tensor.ndim >= 2 and leaf != "pos_embed" and leaf != "cls_token":
            fan_in = shape[1:].numel()
            value = (torch.rand(shape, generator=generator) * 2 - 1) * (3 / fan_in) ** 0.5
        elif leaf == "weight":  # LayerNorm / BatchNorm scales
            value = 1 + 0.2 * torch.randn(shape, generator=generator)
        else:  # biases, running means, class token and position embeddings
            value = 0.2 * torch.randn(shape, generator=generator)
        tensor.copy_(value)


def _overrides(state_dict, **kwargs):
    return setr_config_overrides_for_mmseg(
        state_dict, out_indices=OUT_INDICES, num_attention_heads=NUM_HEADS, **kwargs
    )


def _build_pair(variant: str, seed: int = 0):
    mmseg_model = MODELS.build(_mmseg_config(variant))
    _randomize(mmseg_model, seed)
    mmseg_model.eval()
    state_dict = mmseg_model.state_dict()
    config = SetrConfig(**_overrides(state_dict), num_labels=NUM_CLASSES)
    hf_model = SetrForSemanticSegmentation(config)
    hf_model.load_state_dict(convert_mmseg_setr_state_dict(state_dict, config), strict=True)
    hf_model.eval()
    return mmseg_model, hf_model


@pytest.fixture(scope="module", params=["naive", "pup", "mla"])
def pair(request):
    return request.param, *_build_pair(request.param)


def _mmseg_features(mmseg_model, pixel_values):
    features = mmseg_model.backbone(pixel_values)
    return mmseg_model.neck(features) if mmseg_model.with_neck else features


def _mmseg_logits(mmseg_model, pixel_values):
    """What mmseg's EncoderDecoder.encode_decode computes: decode head, then one bilinear resize to the input."""
    logits = mmseg_model.decode_head.forward(_mmseg_features(mmseg_model, pixel_values))
    return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


def test_detect_decoder(pair):
    variant, mmseg_model, _ = pair
    assert detect_mmseg_setr_decoder(mmseg_model.state_dict()) == variant


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_logits_match_mmseg(pair, size):
    variant, mmseg_model, hf_model = pair
    pixel_values = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _mmseg_logits(mmseg_model, pixel_values)
        logits = hf_model(pixel_values).logits
    assert logits.shape == expected.shape == (2, NUM_CLASSES, *size)
    diff = (logits - expected).abs().max().item()
    assert diff <= TOLERANCE, f"{variant} {size}: max abs diff {diff:.3g}"
    # the test would be vacuous if the logits were flat
    assert expected.std() > 0.1


def test_eager_attention_matches_mmseg():
    """The parity above runs transformers' default attention (sdpa); the eager path gives the same logits."""
    mmseg_model, hf_model = _build_pair("pup", seed=3)
    hf_model.set_attn_implementation("eager")
    assert hf_model.config._attn_implementation == "eager"
    pixel_values = torch.randn(1, 3, 48, 80, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        diff = (hf_model(pixel_values).logits - _mmseg_logits(mmseg_model, pixel_values)).abs().max().item()
    assert diff <= TOLERANCE


def test_auxiliary_heads_match_mmseg(pair):
    """Each auxiliary head's output (resized to the input) and the total training loss (decode + 0.4 x aux)."""
    variant, mmseg_model, hf_model = pair
    size = (48, 80)
    generator = torch.Generator().manual_seed(2)
    pixel_values = torch.randn(2, 3, *size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (2, *size), generator=generator)
    labels[0, : size[0] // 2] = 255  # ignored pixels count as 0 in mmseg's average (avg_non_ignore=False)
    config = hf_model.config
    assert len(hf_model.auxiliary_heads) == len(mmseg_model.auxiliary_head) == (4 if variant == "mla" else 3)
    with torch.no_grad():
        mmseg_features = _mmseg_features(mmseg_model, pixel_values)
        outputs = hf_model.setr(pixel_values, output_hidden_states=True)
        grid = (size[0] // 16, size[1] // 16)
        if variant == "mla":
            hf_inputs = hf_model.neck([outputs.hidden_states[i + 1] for i in config.mla_in_indices], grid)
        for index, (mmseg_head, hf_head) in enumerate(zip(mmseg_model.auxiliary_head, hf_model.auxiliary_heads)):
            expected = mmseg_head.forward(mmseg_features)
            if variant == "mla":
                hf_input = hf_inputs[config.auxiliary_in_indices[index]]
            else:
                hf_input = outputs.hidden_states[config.auxiliary_in_indices[index] + 1]
            got = hf_head(hf_input, grid)
            expected, got = (
                F.interpolate(tensor, size=size, mode="bilinear", align_corners=False) for tensor in (expected, got)
            )
            diff = (got - expected).abs().max().item()
            assert diff <= TOLERANCE, f"{variant} auxiliary head {index}: max abs diff {diff:.3g}"

        data_samples = [SegDataSample(gt_sem_seg=PixelData(data=label[None])) for label in labels]
        for sample in data_samples:
            sample.set_metainfo(dict(img_shape=size, pad_shape=size))
        mmseg_losses = mmseg_model.loss(pixel_values, data_samples)
        mmseg_loss = sum(value for key, value in mmseg_losses.items() if "loss" in key)
        hf_loss = hf_model(pixel_values, labels=labels).loss
    assert abs(hf_loss.item() - mmseg_loss.item()) <= TOLERANCE, (hf_loss.item(), mmseg_loss.item())


def test_strictness():
    """Unconsumed source keys, missing target keys and shape mismatches are refused with the key names."""
    mmseg_model = MODELS.build(_mmseg_config("pup"))
    state_dict = mmseg_model.state_dict()
    config = SetrConfig(**_overrides(state_dict), num_labels=NUM_CLASSES)

    extra = dict(state_dict, **{"backbone.ln1.weight": torch.ones(EMBED_DIMS)})  # a final norm hf_seg has no place for
    with pytest.raises(ValueError, match=r"backbone\.ln1\.weight"):
        convert_mmseg_setr_state_dict(extra, config)

    missing = {key: value for key, value in state_dict.items() if key != "decode_head.norm.bias"}
    with pytest.raises(ValueError, match=r"decode_head\.layer_norm\.bias"):
        convert_mmseg_setr_state_dict(missing, config)

    labels = ("id2label", "label2id")
    other_labels = SetrConfig(**{k: v for k, v in config.to_diff_dict().items() if k not in labels},
                              num_labels=NUM_CLASSES + 1)
    with pytest.raises(ValueError, match=r"decode_head\.classifier\.weight.*shape|shape.*decode_head\.classifier"):
        convert_mmseg_setr_state_dict(state_dict, other_labels)

    # an auxiliary-free model takes the checkpoint only when asked to drop the auxiliary heads
    config = SetrConfig(**_overrides(state_dict, drop_auxiliary_heads=True), num_labels=NUM_CLASSES)
    assert config.auxiliary_in_indices == []
    with pytest.raises(ValueError, match=r"auxiliary_head\.0\.norm\.weight"):
        convert_mmseg_setr_state_dict(state_dict, config)
    converted = convert_mmseg_setr_state_dict(state_dict, config, drop_auxiliary_heads=True)
    assert not any(key.startswith("auxiliary_heads.") for key in converted)


def test_config_overrides_express_mmseg_configs():
    """The fields that differ from the authors' SETR, per MODELS.md §2.8/§2.9."""
    naive = _overrides(MODELS.build(_mmseg_config("naive")).state_dict())
    assert naive | dict(decoder_type="naive", patch_bias=False, head_conv_bias=False, decoder_num_convs=1,
                        decoder_kernel_size=1, decoder_upsample_scale=4, decoder_in_index=3,
                        auxiliary_in_indices=[0, 1, 2], auxiliary_num_convs=2, auxiliary_kernel_size=1,
                        auxiliary_upsample_scale=4) == naive
    pup = _overrides(MODELS.build(_mmseg_config("pup")).state_dict())
    assert pup | dict(decoder_type="pup", decoder_num_convs=4, decoder_kernel_size=3, decoder_upsample_scale=2,
                      auxiliary_num_convs=2, auxiliary_kernel_size=3, auxiliary_upsample_scale=4) == pup
    mla = _overrides(MODELS.build(_mmseg_config("mla")).state_dict())
    assert mla | dict(decoder_type="mla", mla_head_align_corners=False, mla_classifier_kernel_size=1,
                      mla_in_indices=[0, 1, 2, 3], auxiliary_in_indices=[3, 2, 1, 0], auxiliary_num_convs=0) == mla
    # with the checkpoint's patch-embedding bias present, it is kept
    state_dict = dict(MODELS.build(_mmseg_config("pup")).state_dict())
    state_dict["backbone.patch_embed.projection.bias"] = torch.zeros(EMBED_DIMS)
    assert setr_config_overrides_for_mmseg(state_dict)["patch_bias"] is True
