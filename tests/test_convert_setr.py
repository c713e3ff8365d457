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

from conversion_fixtures import batch_norm_statistics_of_next_batch, max_abs_diff, randomize_
from mmseg_reference import import_mmseg


import_mmseg()  # a test dependency: failing to import it fails these tests rather than skipping them

from mmseg.registry import MODELS  # noqa: E402

from hf_seg.convert.setr import convert_setr_checkpoint, detect_setr_layout  # noqa: E402
from hf_seg.models.setr import SetrConfig  # noqa: E402
from hf_seg.presets import get_preset  # noqa: E402


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
# The DeiT-B presets at a tiny width but their real depth (12) and layer indices (hf_seg.presets), e.g. PUP-DeiT's
# four auxiliary heads on layers 4, 7, 9, 11: the authors' DeiT layout is the ViT one (their model never creates the
# distillation token), with these heads.
for _variant in ("naive", "pup", "mla"):
    _real = get_preset(f"setr-{_variant}-deit-base-cityscapes-768").config
    TINY_PRESETS[f"{_variant}-deit"] = dict(
        TINY_PRESETS[_variant], num_hidden_layers=12,
        **{key: _real[key] for key in ("auxiliary_in_indices", "mla_in_indices", "decoder_in_index") if key in _real},
    )


def _norm():
    return dict(type="BN", requires_grad=True)


def _up_head(config, in_index, num_convs, up_scale, kernel_size):
    return dict(
        type="SETRUPHead", in_channels=config.hidden_size, channels=config.decoder_channels, in_index=in_index,
        num_classes=config.num_labels, dropout_ratio=0, norm_cfg=_norm(), act_cfg=dict(type="ReLU"),
        num_convs=num_convs, up_scale=up_scale, kernel_size=kernel_size, align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    )


def _out_indices(config: SetrConfig) -> tuple[int, ...]:
    """The backbone's `out_indices` of mmseg's configs: the MLA layers, or the first three auxiliary layers and the
    decode layer (the authors' PUP 4th auxiliary head reads the decode layer, `in_index` 3)."""
    if config.decoder_type == "mla":
        return tuple(config.mla_in_indices)
    layers = config.num_hidden_layers
    return (*(index % layers for index in config.auxiliary_in_indices[:3]), config.decoder_in_index % layers)


def _mmseg_setr(variant: str, authors: bool, seed: int, config: SetrConfig | None = None):
    """mmseg 1.x SETR; `authors=True` configures it to compute the authors' variant (see the module docstring).
    `config`: the sizes (default: the tiny preset of `variant`; `__main__` passes the real presets')."""
    config = config or SetrConfig(**TINY_PRESETS[variant])
    dims, classes = config.hidden_size, config.num_labels
    backbone = dict(
        type="VisionTransformer", img_size=(config.image_size, config.image_size), patch_size=16, in_channels=3,
        embed_dims=dims, num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size // dims, out_indices=_out_indices(config), drop_rate=0.0, final_norm=False,
        patch_bias=authors,
        norm_cfg=dict(type="LN", eps=1e-6, requires_grad=True), with_cls_token=variant != "mla",
        interpolate_mode="bilinear",
    )
    model = dict(type="EncoderDecoder", backbone=backbone, train_cfg=dict(), test_cfg=dict(mode="whole"))
    if variant == "naive":
        scale = 1 if authors else 4
        model["decode_head"] = _up_head(config, 3, num_convs=1, up_scale=scale, kernel_size=1)
        model["auxiliary_head"] = [_up_head(config, i, 1 if authors else 2, scale, 1) for i in range(3)]
    elif variant == "pup":
        model["decode_head"] = _up_head(config, 3, num_convs=4, up_scale=2, kernel_size=3)
        model["auxiliary_head"] = [_up_head(config, i, 1 if authors else 2, 4, 3) for i in range(4 if authors else 3)]
    else:
        neck, head = config.mla_channels, config.mla_head_channels
        model["neck"] = dict(type="MLANeck", in_channels=[dims] * 4, out_channels=neck, norm_cfg=_norm(),
                             act_cfg=dict(type="ReLU"))
        model["decode_head"] = dict(
            type="SETRMLAHead", in_channels=(neck,) * 4, channels=4 * head, in_index=(0, 1, 2, 3), dropout_ratio=0,
            mla_channels=head, num_classes=classes, norm_cfg=_norm(), align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        )
        model["auxiliary_head"] = [
            dict(type="FCNHead", in_channels=neck, channels=neck, in_index=i, num_convs=0, concat_input=False,
                 dropout_ratio=0, num_classes=classes, norm_cfg=_norm(), align_corners=False,
                 loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
            for i in range(4)
        ]
    return randomize_(MODELS.build(model), seed)


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
    classes = mmseg_head["conv_seg.weight"].shape[0]
    out[f"{target}conv_seg.weight"] = _rand(generator, classes, 48, 1, 1)  # unused by the authors' heads
    out[f"{target}conv_seg.bias"] = _rand(generator, classes)


def _sub(state: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _authors_checkpoint(model, variant: str, seed: int) -> tuple[dict, dict]:
    """fudan-zvg/SETR state dict of the mmseg model (explicit rename, MODELS.md §5.2 A/B); for MLA also the random
    authors' MLA head and aux heads (returned separately for the reference)."""
    generator = torch.Generator().manual_seed(seed)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    out = {"backbone.cls_token": state["backbone.cls_token"], "backbone.pos_embed": state["backbone.pos_embed"]}
    classes = state["decode_head.conv_seg.weight"].shape[0]
    for param in ("weight", "bias"):
        out[f"backbone.patch_embed.proj.{param}"] = state[f"backbone.patch_embed.projection.{param}"]
        for i in range(len(model.backbone.layers)):
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
    # the authors' MLA head, random, with mmseg's sizes: neck width (`mla_channels`), branch width (its mla_channels)
    neck, width = state["neck.mla.channel_proj.0.conv.weight"].shape[0], model.decode_head.mla_channels
    for level in range(2, 6):
        for index, (cin, cout) in ((0, (neck, width)), (3, (width, width))):
            head[f"decode_head.mlahead.head{level}.{index}.weight"] = _rand(generator, cout, cin, 3, 3)
            norm = f"decode_head.mlahead.head{level}.{index + 1}."
            head[norm + "weight"] = _rand(generator, width, mean=1.0, std=0.1)
            head[norm + "bias"] = _rand(generator, width, std=0.1)
            head[norm + "running_mean"] = _rand(generator, width, std=0.1)
            head[norm + "running_var"] = 0.5 + torch.rand(width, generator=generator)
            head[norm + "num_batches_tracked"] = torch.tensor(77)
    head["decode_head.cls.weight"] = _rand(generator, classes, 4 * width, 3, 3)
    head["decode_head.cls.bias"] = _rand(generator, classes)
    head["decode_head.conv_seg.weight"] = _rand(generator, classes, 4 * width, 1, 1)
    head["decode_head.conv_seg.bias"] = _rand(generator, classes)
    for k in range(4):
        head[f"auxiliary_head.{k}.aux.weight"] = _rand(generator, classes, neck, 1, 1)
        head[f"auxiliary_head.{k}.conv_seg.weight"] = _rand(generator, classes, 4 * width, 1, 1)
        head[f"auxiliary_head.{k}.conv_seg.bias"] = _rand(generator, classes)
    return {**out, **head}, head


def _authors_mla_head(head: dict, neck_outputs_deep_first: list[torch.Tensor], size,
                      calibrate: bool = False) -> torch.Tensor:
    """The authors' VIT_MLAHead (eval) on mmseg's neck outputs (deep -> shallow, i.e. p5..p2). `calibrate=True`:
    train-mode BatchNorm that stores this batch's statistics in `head` (for the real-size measurement below)."""
    branches = []
    for level, features in zip(range(2, 6), neck_outputs_deep_first[::-1]):
        for index in (0, 3):
            prefix = f"decode_head.mlahead.head{level}."
            features = F.conv2d(features, head[f"{prefix}{index}.weight"], padding=1)
            norm = f"{prefix}{index + 1}."
            features = F.relu(F.batch_norm(features, head[norm + "running_mean"], head[norm + "running_var"],
                                           head[norm + "weight"], head[norm + "bias"], training=calibrate,
                                           momentum=1.0, eps=1e-5))
        height, width = features.shape[-2:]
        branches.append(F.interpolate(features, size=(4 * height, 4 * width), mode="bilinear", align_corners=True))
    logits = F.conv2d(torch.cat(branches, dim=1), head["decode_head.cls.weight"], head["decode_head.cls.bias"],
                      padding=1)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _inputs(size):
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))


def _reference_logits(reference, variant: str, authors: bool, mla_head: dict, pixels: torch.Tensor) -> torch.Tensor:
    """Logits at the input size: mmseg's `encode_decode`, or the authors' variant computed as the docstring says."""
    size = tuple(pixels.shape[-2:])
    if not authors:
        return reference.encode_decode(pixels, [dict(img_shape=size, pad_shape=size)])
    if variant == "mla":
        return _authors_mla_head(mla_head, list(reference.neck(reference.backbone(pixels))), size)
    return F.interpolate(reference.decode_head(reference.backbone(pixels)), size=size, mode="bilinear",
                         align_corners=False)


@pytest.mark.parametrize("preset", ["naive", "pup", "mla", "naive-deit", "pup-deit", "mla-deit"])
def test_original_layout_matches_reference(preset):
    variant = preset.split("-")[0]
    reference = _mmseg_setr(variant, authors=True, seed=10, config=SetrConfig(**TINY_PRESETS[preset]))
    checkpoint, mla_head = _authors_checkpoint(reference, variant, seed=11)
    assert detect_setr_layout(checkpoint) == "original"
    converted = convert_setr_checkpoint(checkpoint, TINY_PRESETS[preset], preset_name=f"tiny-setr-{preset}")
    assert converted.source == "original"
    dropped = sum(converted.dropped.values(), [])
    assert dropped and all(".conv_seg." in key for key in dropped)
    assert len(dropped) == 2 * (1 + len(TINY_PRESETS[preset]["auxiliary_in_indices"]))
    config = converted.config
    assert config.patch_bias and (variant == "mla" or config.head_conv_bias)
    model = converted.build_model()
    worst = 0.0
    for size in SIZES:
        pixels = _inputs(size)
        with torch.no_grad():
            actual = model(pixel_values=pixels).logits
            expected = _reference_logits(reference, variant, True, mla_head, pixels)
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
    print(f"SETR {preset} authors' layout: max |dlogit| = {worst:.2e}")
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
    model = converted.build_model()
    worst = 0.0
    for size in SIZES:
        pixels = _inputs(size)
        with torch.no_grad():
            actual = model(pixel_values=pixels).logits
            expected = _reference_logits(reference, variant, False, {}, pixels)
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


def test_the_hybrid_has_nothing_to_convert_and_the_cards_say_what_the_presets_note():
    from hf_seg.convert.cards import model_card
    from hf_seg.convert.common import ConversionError

    hybrid = get_preset("setr-naive-r50-vit-base-cityscapes-768")
    with pytest.raises(ConversionError, match="is SETR-Hybrid .* nothing to convert; train it"):
        convert_setr_checkpoint({}, hybrid.config, preset_name=hybrid.name)
    card = model_card(name="x", preset=get_preset("setr-pup-deit-base-ade20k-512"), layout="original",
                      checkpoint="x.pth", model_class="SetrForSemanticSegmentation", dropped={}, repo_hint="x")
    assert "1024 wide for the 768-wide DeiT-B encoder" in card and "46.34 / 47.30 (README)" in card


# --- every real-size preset (not a test: `python tests/test_convert_setr.py`, table in conversion/README.md) ----------


def measure_preset(name: str, layout: str, sizes, calibration_size=(256, 256),
                   dtype=torch.float32) -> tuple[list[float], float]:
    """A seeded random real-size checkpoint of preset `name` in `layout` ("original": fudan-zvg/SETR, "mmseg"),
    BatchNorm statistics of one random batch, converted by `hf_seg.convert.cli`'s converter for the preset (as
    `convert_setr.py` does); returns the max |logit difference| per input size (batch 1, both models run in `dtype`)
    and the reference logits' std on the first size."""
    from hf_seg.convert.cli import CONVERTERS
    from hf_seg.labels import load_label_set
    from hf_seg.presets import create_config, get_preset

    preset, config = get_preset(name), create_config(name)
    variant, authors = config.decoder_type, layout == "original"
    reference = _mmseg_setr(variant, authors=authors, seed=40, config=config)
    calibration = _inputs(calibration_size)
    with torch.no_grad():
        with batch_norm_statistics_of_next_batch(reference):
            reference.encode_decode(calibration, [dict(img_shape=calibration_size, pad_shape=calibration_size)])
        checkpoint, mla_head = _authors_checkpoint(reference, variant, seed=41) if authors else (
            reference.state_dict(), {})
        if authors and variant == "mla":
            _authors_mla_head(mla_head, list(reference.neck(reference.backbone(calibration))), calibration_size,
                              calibrate=True)
    converted = CONVERTERS["setr"].convert(checkpoint, preset, load_label_set(preset.label_set)[0], "auto")
    assert converted.source == layout, converted.source
    model = converted.build_model().to(dtype)
    reference, mla_head = reference.to(dtype), {key: value.to(dtype) for key, value in mla_head.items()}
    differences, scale = [], None
    for size in sizes:
        pixels = _inputs(size)[:1].to(dtype)
        with torch.no_grad():
            expected = _reference_logits(reference, variant, authors, mla_head, pixels)
            differences.append(max_abs_diff(model(pixel_values=pixels).logits, expected))
        scale = float(expected.std()) if scale is None else scale
    return differences, scale


if __name__ == "__main__":
    import sys
    import time
    import warnings

    from hf_seg.presets import get_preset, list_models

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="``build_loss`` would be deprecated")
    warnings.filterwarnings("ignore", message="Default ``avg_non_ignore`` is False")
    non_square = (384, 512)
    dtype = torch.float64 if "--float64" in sys.argv else torch.float32
    only = [name for name in sys.argv[1:] if not name.startswith("--")]  # optional preset names
    print(dtype)
    print(f"| Preset | Layout | Square input | max |Δlogit| square | max |Δlogit| {non_square[0]}x{non_square[1]} "
          "| logit std |")
    print("|---|---|---|---|---|---|")
    for name in only or list_models("setr"):
        crop = get_preset(name).config["image_size"]  # the crop size: 512, 768 or 480
        for layout in ("original", "mmseg"):
            start = time.time()
            (square, other), scale = measure_preset(name, layout, [(crop, crop), non_square], dtype=dtype)
            print(f"| `{name}` | {layout} | {crop}x{crop} | {square:.1e} | {other:.1e} | {scale:.2f} |  "
                  f"<!-- {time.time() - start:.0f} s -->", flush=True)
