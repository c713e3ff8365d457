"""SETR conversion parity for both source layouts, on a tiny ViT (img 64, patch 16, 64 dims, 4 layers, 4 heads).

mmsegmentation 1.x layout: a seeded random mmseg SETR (`VisionTransformer` + `SETRUPHead` / `MLANeck` +
`SETRMLAHead`, aux heads) -> `convert_setr_checkpoint`; reference: the mmseg model.

The authors' layout (fudan-zvg/SETR): no installed implementation computes the authors' heads, so the reference is
built as follows (independent of hf_seg's code):
* Naive and PUP: mmseg's modules compute the authors' variant exactly when configured for it: ViT with
  `patch_bias=True` and the class token through all blocks; the authors' Naive head = `SETRUPHead(num_convs=1,
  up_scale=1, kernel_size=1)` (classify at 1/16, one resize to the input); PUP = `SETRUPHead(num_convs=4, up_scale=2,
  kernel_size=3)` (a 1x1 classifier commutes with the last x2 resize); the authors' aux heads likewise. The only
  difference is the authors' conv bias before BatchNorm, which is exactly a shift of the running mean: the authors'
  checkpoint is made by an explicit key rename (MODELS.md §5.2, written in this file) with a random bias `b` added
  and `running_mean + b` stored.
* MLA: the encoder and MLA neck are mmseg's (bit-exact with the authors', MODELS.md §2.9 row 5) and the authors'
  MLA head (x4 with align_corners=True, shallow->deep concat, 3x3 classifier) is written here in a few functional
  lines from the authors' description.
Every parameter and buffer is random, BatchNorm statistics included; the unused `conv_seg` keys are present.
"""

import pytest
import torch
from torch.nn import functional as F

from conversion_fixtures import max_abs_diff, randomize_
from mmseg_reference import import_mmseg


try:
    import_mmseg()
except ImportError as err:  # pragma: no cover - depends on the environment
    pytest.skip(f"mmsegmentation reference not available: {err}", allow_module_level=True)

from mmseg.registry import MODELS  # noqa: E402

from hf_seg.convert.setr import convert_setr_checkpoint, detect_setr_layout  # noqa: E402


NUM_CLASSES, DIMS, LAYERS, HEADS = 5, 64, 4, 4
TOLERANCE = 1e-4
SIZES = [(64, 64), (48, 80)]
pytestmark = pytest.mark.filterwarnings(
    "ignore:``build_loss`` would be deprecated", "ignore:Default ``avg_non_ignore`` is False"
)

# Tiny versions of hf_seg's SETR presets (the authors' variants): what the converter gets as the preset config.
_ENCODER = dict(image_size=64, patch_size=16, hidden_size=DIMS, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                intermediate_size=4 * DIMS, num_labels=NUM_CLASSES)
TINY_PRESETS = {
    "naive": dict(_ENCODER, decoder_type="naive", decoder_in_index=-1, decoder_num_convs=1, decoder_kernel_size=1,
                  decoder_upsample_scale=1, decoder_channels=32, auxiliary_in_indices=[0, 1, 2],
                  auxiliary_num_convs=1, auxiliary_kernel_size=1, auxiliary_upsample_scale=1),
    "pup": dict(_ENCODER, decoder_type="pup", decoder_in_index=-1, decoder_num_convs=4, decoder_kernel_size=3,
                decoder_upsample_scale=2, decoder_channels=32, auxiliary_in_indices=[0, 1, 2, 3],
                auxiliary_num_convs=1, auxiliary_kernel_size=3, auxiliary_upsample_scale=4),
    "mla": dict(_ENCODER, decoder_type="mla", mla_in_indices=[0, 1, 2, 3], mla_channels=32, mla_head_channels=16,
                auxiliary_in_indices=[0, 1, 2, 3], auxiliary_num_convs=0),
}


def _norm():
    return dict(type="BN", requires_grad=True)


def _up_head(in_index, num_convs, up_scale, kernel_size, channels=32):
    return dict(
        type="SETRUPHead", in_channels=DIMS, channels=channels, in_index=in_index, num_classes=NUM_CLASSES,
        dropout_ratio=0, norm_cfg=_norm(), act_cfg=dict(type="ReLU"), num_convs=num_convs, up_scale=up_scale,
        kernel_size=kernel_size, align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    )


def _mmseg_setr(variant: str, authors: bool, seed: int):
    """mmseg 1.x SETR; `authors=True` configures it to compute the authors' variant (see the module docstring)."""
    backbone = dict(
        type="VisionTransformer", img_size=(64, 64), patch_size=16, in_channels=3, embed_dims=DIMS, num_layers=LAYERS,
        num_heads=HEADS, out_indices=(0, 1, 2, 3), drop_rate=0.0, final_norm=False, patch_bias=authors,
        norm_cfg=dict(type="LN", eps=1e-6, requires_grad=True), with_cls_token=variant != "mla",
        interpolate_mode="bilinear",
    )
    config = dict(type="EncoderDecoder", backbone=backbone, train_cfg=dict(), test_cfg=dict(mode="whole"))
    if variant == "naive":
        scale = 1 if authors else 4
        config["decode_head"] = _up_head(3, num_convs=1, up_scale=scale, kernel_size=1)
        config["auxiliary_head"] = [_up_head(i, 1 if authors else 2, scale, 1) for i in range(3)]
    elif variant == "pup":
        config["decode_head"] = _up_head(3, num_convs=4, up_scale=2, kernel_size=3)
        config["auxiliary_head"] = [_up_head(i, 1 if authors else 2, 4, 3) for i in range(4 if authors else 3)]
    else:
        config["neck"] = dict(type="MLANeck", in_channels=[DIMS] * 4, out_channels=32, norm_cfg=_norm(),
                              act_cfg=dict(type="ReLU"))
        config["decode_head"] = dict(
            type="SETRMLAHead", in_channels=(32, 32, 32, 32), channels=64, in_index=(0, 1, 2, 3), dropout_ratio=0,
            mla_channels=16, num_classes=NUM_CLASSES, norm_cfg=_norm(), align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        )
        config["auxiliary_head"] = [
            dict(type="FCNHead", in_channels=32, channels=32, in_index=i, num_convs=0, concat_input=False,
                 dropout_ratio=0, num_classes=NUM_CLASSES, norm_cfg=_norm(), align_corners=False,
                 loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
            for i in range(4)
        ]
    return randomize_(MODELS.build(config), seed)


def _rand(generator, *shape, mean=0.0, std=0.05):
    return mean + std * torch.randn(shape, generator=generator)


def _authors_up_head(mmseg_head: dict, source: str, target: str, generator, out: dict) -> None:
    """SETRUPHead keys -> VisionTransformerUpHead keys, with a random conv bias folded out of the running mean."""
    convs = sorted({int(key.split(".")[1]) for key in mmseg_head if key.startswith("up_convs.")})
    out[f"{target}norm.weight"], out[f"{target}norm.bias"] = mmseg_head["norm.weight"], mmseg_head["norm.bias"]
    for index in convs:
        weight = mmseg_head[f"up_convs.{index}.0.conv.weight"]
        bias = _rand(generator, weight.shape[0], std=0.1)
        out[f"{target}conv_{index}.weight"], out[f"{target}conv_{index}.bias"] = weight, bias
        for param in ("weight", "bias", "running_var", "num_batches_tracked"):
            out[f"{target}syncbn_fc_{index}.{param}"] = mmseg_head[f"up_convs.{index}.0.bn.{param}"]
        out[f"{target}syncbn_fc_{index}.running_mean"] = mmseg_head[f"up_convs.{index}.0.bn.running_mean"] + bias
    out[f"{target}conv_{len(convs)}.weight"] = mmseg_head["conv_seg.weight"]
    out[f"{target}conv_{len(convs)}.bias"] = mmseg_head["conv_seg.bias"]
    out[f"{target}conv_seg.weight"] = _rand(generator, NUM_CLASSES, 48, 1, 1)  # unused by the authors' heads
    out[f"{target}conv_seg.bias"] = _rand(generator, NUM_CLASSES)


def _sub(state: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _authors_checkpoint(model, variant: str, seed: int) -> tuple[dict, dict]:
    """fudan-zvg/SETR state dict of the mmseg model (explicit rename, MODELS.md §5.2 A/B); for MLA also the random
    authors' MLA head and aux heads (returned separately for the reference)."""
    generator = torch.Generator().manual_seed(seed)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    out = {"backbone.cls_token": state["backbone.cls_token"], "backbone.pos_embed": state["backbone.pos_embed"]}
    for param in ("weight", "bias"):
        out[f"backbone.patch_embed.proj.{param}"] = state[f"backbone.patch_embed.projection.{param}"]
        for i in range(LAYERS):
            source, target = f"backbone.layers.{i}.", f"backbone.blocks.{i}."
            for a, b in (("ln1", "norm1"), ("ln2", "norm2"), ("attn.attn.out_proj", "attn.proj"),
                         ("ffn.layers.0.0", "mlp.fc1"), ("ffn.layers.1", "mlp.fc2")):
                out[f"{target}{b}.{param}"] = state[f"{source}{a}.{param}"]
            out[f"{target}attn.qkv.{param}"] = state[f"{source}attn.attn.in_proj_{param}"]
    head = {}
    if variant != "mla":
        _authors_up_head(_sub(state, "decode_head."), "", "decode_head.", generator, out)
        for k in range(len(model.auxiliary_head)):
            _authors_up_head(_sub(state, f"auxiliary_head.{k}."), "", f"auxiliary_head.{k}.", generator, out)
        return out, head
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for j in range(4):
        for param in ("weight", "bias"):
            out[f"backbone.norm_{j}.{param}"] = state[f"neck.norm.{j}.{param}"]
        out[f"backbone.mla.mla_p{j + 2}_1x1.0.weight"] = state[f"neck.mla.channel_proj.{j}.conv.weight"]
        out[f"backbone.mla.mla_p{5 - j}.0.weight"] = state[f"neck.mla.feat_extract.{j}.conv.weight"]
        for param in bn:
            out[f"backbone.mla.mla_p{j + 2}_1x1.1.{param}"] = state[f"neck.mla.channel_proj.{j}.bn.{param}"]
            out[f"backbone.mla.mla_p{5 - j}.1.{param}"] = state[f"neck.mla.feat_extract.{j}.bn.{param}"]
    for level in range(2, 6):  # the authors' MLA head, random
        for index, (cin, cout) in ((0, (32, 16)), (3, (16, 16))):
            head[f"decode_head.mlahead.head{level}.{index}.weight"] = _rand(generator, cout, cin, 3, 3)
            norm = f"decode_head.mlahead.head{level}.{index + 1}."
            head[norm + "weight"] = _rand(generator, 16, mean=1.0, std=0.1)
            head[norm + "bias"] = _rand(generator, 16, std=0.1)
            head[norm + "running_mean"] = _rand(generator, 16, std=0.1)
            head[norm + "running_var"] = 0.5 + torch.rand(16, generator=generator)
            head[norm + "num_batches_tracked"] = torch.tensor(77)
    head["decode_head.cls.weight"] = _rand(generator, NUM_CLASSES, 64, 3, 3)
    head["decode_head.cls.bias"] = _rand(generator, NUM_CLASSES)
    head["decode_head.conv_seg.weight"] = _rand(generator, NUM_CLASSES, 64, 1, 1)
    head["decode_head.conv_seg.bias"] = _rand(generator, NUM_CLASSES)
    for k in range(4):
        head[f"auxiliary_head.{k}.aux.weight"] = _rand(generator, NUM_CLASSES, 32, 1, 1)
        head[f"auxiliary_head.{k}.conv_seg.weight"] = _rand(generator, NUM_CLASSES, 64, 1, 1)
        head[f"auxiliary_head.{k}.conv_seg.bias"] = _rand(generator, NUM_CLASSES)
    return {**out, **head}, head


def _authors_mla_head(head: dict, neck_outputs_deep_first: list[torch.Tensor], size) -> torch.Tensor:
    """The authors' VIT_MLAHead (eval) on mmseg's neck outputs (deep -> shallow, i.e. p5..p2)."""
    branches = []
    for level, features in zip(range(2, 6), neck_outputs_deep_first[::-1]):
        for index in (0, 3):
            prefix = f"decode_head.mlahead.head{level}."
            features = F.conv2d(features, head[f"{prefix}{index}.weight"], padding=1)
            norm = f"{prefix}{index + 1}."
            features = F.relu(F.batch_norm(features, head[norm + "running_mean"], head[norm + "running_var"],
                                           head[norm + "weight"], head[norm + "bias"], training=False, eps=1e-5))
        height, width = features.shape[-2:]
        branches.append(F.interpolate(features, size=(4 * height, 4 * width), mode="bilinear", align_corners=True))
    logits = F.conv2d(torch.cat(branches, dim=1), head["decode_head.cls.weight"], head["decode_head.cls.bias"],
                      padding=1)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _hf_model(converted):
    model = converted.model_class(converted.config).eval()
    model.load_state_dict(converted.state_dict, strict=True)
    return model


def _inputs(size):
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", ["naive", "pup", "mla"])
def test_original_layout_matches_reference(variant):
    reference = _mmseg_setr(variant, authors=True, seed=10)
    checkpoint, mla_head = _authors_checkpoint(reference, variant, seed=11)
    assert detect_setr_layout(checkpoint) == "original"
    converted = convert_setr_checkpoint(checkpoint, TINY_PRESETS[variant], preset_name=f"tiny-setr-{variant}")
    assert converted.source == "original"
    dropped = sum(converted.dropped.values(), [])
    assert dropped and all(".conv_seg." in key for key in dropped)
    assert len(dropped) == 2 * (1 + len(TINY_PRESETS[variant]["auxiliary_in_indices"]))
    config = converted.config
    assert config.patch_bias and (variant == "mla" or config.head_conv_bias)
    model = _hf_model(converted)
    worst = 0.0
    for size in SIZES:
        pixels = _inputs(size)
        with torch.no_grad():
            actual = model(pixel_values=pixels).logits
            if variant == "mla":
                expected = _authors_mla_head(mla_head, list(reference.neck(reference.backbone(pixels))), size)
            else:
                expected = F.interpolate(reference.decode_head(reference.backbone(pixels)), size=size,
                                         mode="bilinear", align_corners=False)
        worst = max(worst, max_abs_diff(actual, expected))
        # auxiliary heads: the same logits as the reference's (authors' MLA aux: bias-free 1x1 on p2..p5)
        with torch.no_grad():
            grid = (size[0] // 16, size[1] // 16)
            hidden = model.setr(pixels, output_hidden_states=True).hidden_states
            if variant == "mla":
                levels = model.neck([hidden[i + 1] for i in config.mla_in_indices], grid)
                deep_first = list(reference.neck(reference.backbone(pixels)))
                for k, head in enumerate(model.auxiliary_heads):
                    mine = head(levels[config.auxiliary_in_indices[k]], grid)
                    theirs = F.conv2d(deep_first[3 - k], mla_head[f"auxiliary_head.{k}.aux.weight"])
                    worst = max(worst, max_abs_diff(mine, theirs))
            else:
                features = reference.backbone(pixels)
                for k, head in enumerate(model.auxiliary_heads):
                    mine = F.interpolate(head(hidden[config.auxiliary_in_indices[k] + 1], grid), size=size,
                                         mode="bilinear", align_corners=False)
                    theirs = F.interpolate(reference.auxiliary_head[k](features), size=size, mode="bilinear",
                                           align_corners=False)
                    worst = max(worst, max_abs_diff(mine, theirs))
    print(f"SETR {variant} authors' layout: max |dlogit| = {worst:.2e}")
    assert worst <= TOLERANCE


@pytest.mark.parametrize("variant", ["naive", "pup", "mla"])
def test_mmseg_layout_matches_mmseg(variant):
    reference = _mmseg_setr(variant, authors=False, seed=20)
    state_dict = reference.state_dict()
    assert detect_setr_layout(state_dict) == "mmseg"
    converted = convert_setr_checkpoint(state_dict, TINY_PRESETS[variant], preset_name=f"tiny-setr-{variant}")
    config = converted.config
    assert converted.source == "mmseg" and converted.dropped == {}
    assert not config.patch_bias and (variant == "mla" or not config.head_conv_bias)  # mmseg 1.x's variant fields
    if variant == "mla":
        assert config.mla_classifier_kernel_size == 1 and not config.mla_head_align_corners
    if variant == "naive":
        assert config.decoder_upsample_scale == 4
    model = _hf_model(converted)
    worst = 0.0
    for size in SIZES:
        pixels = _inputs(size)
        with torch.no_grad():
            actual = model(pixel_values=pixels).logits
            expected = reference.encode_decode(pixels, [dict(img_shape=size, pad_shape=size)])
        worst = max(worst, max_abs_diff(actual, expected))
    print(f"SETR {variant} mmseg layout: max |dlogit| = {worst:.2e}")
    assert worst <= TOLERANCE


def test_checkpoint_for_another_variant_is_refused():
    from hf_seg.convert.common import ConversionError

    checkpoint, _ = _authors_checkpoint(_mmseg_setr("pup", authors=True, seed=30), "pup", seed=31)
    with pytest.raises(ConversionError, match=r"not a 'tiny-setr-naive' checkpoint: decoder_type 'pup'"):
        convert_setr_checkpoint(checkpoint, TINY_PRESETS["naive"], preset_name="tiny-setr-naive")
    with pytest.raises(ConversionError, match=r"hidden_size 64 \(checkpoint\) vs 1024 \(preset\)"):
        convert_setr_checkpoint(checkpoint, dict(TINY_PRESETS["pup"], hidden_size=1024), preset_name="big")
