"""SegFormer / MiT conversion parity against independent references, on a tiny MiT (hidden sizes 8/16/40/64):

* mmsegmentation 1.x layout: a seeded random mmseg `EncoderDecoder` (`MixVisionTransformer` + `SegformerHead`, BN
  statistics random) -> hf_seg's `SegformerMmsegForSemanticSegmentation`; reference: the mmseg model itself.
* the authors' layout (NVlabs/SegFormer): a random authors'-layout checkpoint; reference encoder: mmseg's
  `MixVisionTransformer` loaded (strict) through mmseg's own `mit2mmseg.convert_mit`, with the authors' LayerNorm eps
  (1e-5 in the patch embeddings and sequence reductions); reference head: the authors' all-MLP head written here
  from their description (MODELS.md §3.3). Target: transformers' `SegformerForSemanticSegmentation`.
* MiT ImageNet (`mit_b*.pth` layout): the same encoder reference + mean pooling + `head` -> transformers'
  `SegformerForImageClassification`.

Logits must agree to 1e-4 (fp32) on a square and a non-square input. Also: the presets' parameter counts equal the
paper-architecture counts of MODELS.md §3.5.
"""

import pytest
import torch
from torch.nn import functional as F

from conversion_fixtures import load_mmseg_converter, max_abs_diff, randomize_
from mmseg_reference import import_mmseg


import_mmseg()  # a test dependency: failing to import it fails these tests rather than skipping them

from mmseg.registry import MODELS  # noqa: E402

from hf_seg.convert.segformer import convert_segformer_checkpoint, detect_segformer_layout  # noqa: E402
from hf_seg.models.segformer import SegformerMmsegForSemanticSegmentation  # noqa: E402


NUM_CLASSES = 5
EMBED_DIMS, NUM_HEADS = 8, [1, 2, 5, 8]
HIDDEN_SIZES = [EMBED_DIMS * heads for heads in NUM_HEADS]  # mmseg multiplies embed_dims by the heads: 8, 16, 40, 64
DEPTHS = [1, 2, 1, 1]
TOLERANCE = 1e-4
SIZES = [(64, 64), (48, 80)]
TINY_CONFIG = dict(  # the preset-like config the converter gets (hf_seg.presets' SegFormer fields, tiny)
    hidden_sizes=HIDDEN_SIZES, depths=DEPTHS, num_attention_heads=NUM_HEADS, sr_ratios=[8, 4, 2, 1],
    mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=32, drop_path_rate=0.1, classifier_dropout_prob=0.1,
)
MEASURED = {}

pytestmark = pytest.mark.filterwarnings(
    "ignore:``build_loss`` would be deprecated", "ignore:Default ``avg_non_ignore`` is False"
)


def _mmseg_segformer(seed: int, config: dict = TINY_CONFIG, num_classes: int = NUM_CLASSES, channels: int = 24):
    """mmseg 1.x SegFormer with the MiT of `config` (hf_seg preset fields; default tiny) and a `channels`-wide head."""
    norm = dict(type="BN", requires_grad=True)
    heads = config["num_attention_heads"]
    model = dict(
        type="EncoderDecoder",
        backbone=dict(
            type="MixVisionTransformer", in_channels=3, embed_dims=config["hidden_sizes"][0] // heads[0], num_stages=4,
            num_layers=config["depths"], num_heads=heads, patch_sizes=[7, 3, 3, 3], sr_ratios=config["sr_ratios"],
            out_indices=(0, 1, 2, 3), mlp_ratio=4, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
            drop_path_rate=0.1,
        ),
        decode_head=dict(
            type="SegformerHead", in_channels=config["hidden_sizes"], in_index=[0, 1, 2, 3], channels=channels,
            dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm, align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ),
        train_cfg=dict(), test_cfg=dict(mode="whole"),
    )
    return randomize_(MODELS.build(model), seed)


def _inputs(size, seed=0):
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


# --- authors' layout: built from an mmseg MiT by the inverse of mit2mmseg, checked with mit2mmseg itself ---------------


def _authors_encoder(mmseg_backbone_state: dict, prefix: str) -> dict:
    """mmseg MiT keys -> NVlabs/SegFormer keys (MODELS.md §5.3), written here independently of hf_seg."""
    out = {}
    for key, value in mmseg_backbone_state.items():
        parts = key.split(".")
        stage, kind = int(parts[1]), parts[2]
        s = stage + 1
        if kind == "0":  # patch embedding
            out[f"{prefix}patch_embed{s}.{'proj' if parts[3] == 'projection' else 'norm'}.{parts[-1]}"] = value
        elif kind == "2":
            out[f"{prefix}norm{s}.{parts[-1]}"] = value
        else:
            block, rest = parts[3], ".".join(parts[4:])
            base = f"{prefix}block{s}.{block}."
            if rest.startswith("attn.attn.in_proj_"):
                param = rest.rsplit("_", 1)[-1]
                channels = value.shape[0] // 3
                out[base + f"attn.q.{param}"] = value[:channels]
                out[base + f"attn.kv.{param}"] = value[channels:]
            elif rest.startswith("attn.attn.out_proj."):
                out[base + "attn.proj." + parts[-1]] = value
            elif rest.startswith("ffn.layers."):
                name = {"0": "mlp.fc1", "1": "mlp.dwconv.dwconv", "4": "mlp.fc2"}[parts[6]]
                out[base + f"{name}.{parts[-1]}"] = value.flatten(1) if name != "mlp.dwconv.dwconv" and parts[-1] == "weight" else value
            else:  # norm1, norm2, attn.sr, attn.norm keep their names
                out[base + rest] = value
    return out


def _authors_reference_backbone(seed: int, config: dict = TINY_CONFIG):
    """mmseg's MiT holding the weights of a random authors' checkpoint (through mmseg's mit2mmseg), with the authors'
    LayerNorm eps; returns (model, authors' encoder state dict without prefix)."""
    model = _mmseg_segformer(seed, config)
    backbone = model.backbone
    authors = _authors_encoder({k: v.clone() for k, v in backbone.state_dict().items()}, prefix="")
    converted = load_mmseg_converter("mit2mmseg").convert_mit(authors)
    assert set(converted) == set(backbone.state_dict())
    for key, value in backbone.state_dict().items():  # the checkpoint is exactly what mmseg's converter expects
        assert torch.equal(converted[key], value), key
    backbone.load_state_dict(converted, strict=True)
    for stage in backbone.layers:
        stage[0].norm.eps = 1e-5  # authors: plain nn.LayerNorm in OverlapPatchEmbed and in the attention's sr
        for block in stage[1]:
            if hasattr(block.attn, "norm"):
                block.attn.norm.eps = 1e-5
    return backbone.eval(), authors


def _authors_head(seed: int, decoder: int = 32, hidden_sizes=HIDDEN_SIZES, num_classes: int = NUM_CLASSES) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, mean=0.0, std=0.05):
        return mean + std * torch.randn(shape, generator=generator)

    head = {}
    for s, channels in enumerate(hidden_sizes, start=1):
        head[f"decode_head.linear_c{s}.proj.weight"] = rand(decoder, channels)
        head[f"decode_head.linear_c{s}.proj.bias"] = rand(decoder)
    head["decode_head.linear_fuse.conv.weight"] = rand(decoder, 4 * decoder, 1, 1)
    head["decode_head.linear_fuse.bn.weight"] = rand(decoder, mean=1.0, std=0.1)
    head["decode_head.linear_fuse.bn.bias"] = rand(decoder, std=0.1)
    head["decode_head.linear_fuse.bn.running_mean"] = rand(decoder, std=0.1)
    head["decode_head.linear_fuse.bn.running_var"] = 0.5 + torch.rand(decoder, generator=generator)
    head["decode_head.linear_fuse.bn.num_batches_tracked"] = torch.tensor(1234)
    head["decode_head.linear_pred.weight"] = rand(num_classes, decoder, 1, 1)
    head["decode_head.linear_pred.bias"] = rand(num_classes)
    head["decode_head.conv_seg.weight"] = rand(num_classes, 128, 1, 1)  # unused in the authors' head
    head["decode_head.conv_seg.bias"] = rand(num_classes)
    return head


def _authors_head_forward(head: dict, maps: list[torch.Tensor], calibrate: bool = False) -> torch.Tensor:
    """The authors' SegFormerHead (eval): per-stage Linear, resize to 1/4, concat [c4, c3, c2, c1], 1x1 conv, BN, ReLU,
    linear_pred. `calibrate=True`: train-mode BatchNorm that stores this batch's statistics in `head`."""
    size = maps[0].shape[-2:]
    projected = []
    for s, features in enumerate(maps, start=1):
        batch, _, height, width = features.shape
        tokens = F.linear(features.flatten(2).transpose(1, 2), head[f"decode_head.linear_c{s}.proj.weight"],
                          head[f"decode_head.linear_c{s}.proj.bias"])
        projected.append(F.interpolate(tokens.transpose(1, 2).reshape(batch, -1, height, width), size=size,
                                       mode="bilinear", align_corners=False))
    fused = F.conv2d(torch.cat(projected[::-1], dim=1), head["decode_head.linear_fuse.conv.weight"])
    fused = F.batch_norm(fused, head["decode_head.linear_fuse.bn.running_mean"],
                         head["decode_head.linear_fuse.bn.running_var"], head["decode_head.linear_fuse.bn.weight"],
                         head["decode_head.linear_fuse.bn.bias"], training=calibrate, momentum=1.0, eps=1e-5)
    return F.conv2d(F.relu(fused), head["decode_head.linear_pred.weight"], head["decode_head.linear_pred.bias"])


def _authors_segformer(seed: int, config: dict = TINY_CONFIG, decoder: int = 32, num_classes: int = NUM_CLASSES):
    """A random NVlabs/SegFormer segmentation state dict; returns (reference encoder, head tensors, state dict)."""
    backbone, encoder = _authors_reference_backbone(seed, config)
    head = _authors_head(seed + 1, decoder, config["hidden_sizes"], num_classes)
    return backbone, head, {**{f"backbone.{k}": v for k, v in encoder.items()}, **head}


# --- tests -------------------------------------------------------------------------------------------------------------


def test_mmseg_layout_matches_mmseg():
    reference = _mmseg_segformer(seed=1)
    state_dict = reference.state_dict()
    assert detect_segformer_layout(state_dict) == "mmseg"
    converted = convert_segformer_checkpoint(state_dict, dict(TINY_CONFIG, num_labels=NUM_CLASSES),
                                             preset_name="tiny-segformer")
    assert converted.source == "mmseg" and converted.dropped == {}
    assert converted.model_class is SegformerMmsegForSemanticSegmentation
    assert converted.config.decoder_hidden_size == 24  # mmseg's head width, not the preset's authors' width
    model = converted.build_model()
    worst = 0.0
    for size in SIZES:
        pixels = _inputs(size)
        with torch.no_grad():
            expected = reference.decode_head(reference.backbone(pixels))
            actual = model(pixel_values=pixels).logits
        assert actual.shape == (2, NUM_CLASSES, size[0] // 4, size[1] // 4)
        worst = max(worst, max_abs_diff(actual, expected))
    MEASURED["segformer mmseg"] = worst
    print(f"segformer mmseg layout: max |dlogit| = {worst:.2e}")
    assert worst <= TOLERANCE


def test_original_layout_matches_reference():
    backbone, head, state_dict = _authors_segformer(seed=2)
    assert detect_segformer_layout(state_dict) == "original"
    converted = convert_segformer_checkpoint(state_dict, dict(TINY_CONFIG, num_labels=NUM_CLASSES),
                                             preset_name="tiny-segformer")
    assert converted.source == "original"
    assert sorted(sum(converted.dropped.values(), [])) == ["decode_head.conv_seg.bias", "decode_head.conv_seg.weight"]
    from transformers import SegformerForSemanticSegmentation

    assert converted.model_class is SegformerForSemanticSegmentation
    model = converted.build_model()
    worst = 0.0
    for size in SIZES:
        pixels = _inputs(size)
        with torch.no_grad():
            expected = _authors_head_forward(head, list(backbone(pixels)))
            actual = model(pixel_values=pixels).logits
        worst = max(worst, max_abs_diff(actual, expected))
    MEASURED["segformer original"] = worst
    print(f"segformer authors' layout: max |dlogit| = {worst:.2e}")
    assert worst <= TOLERANCE


def _mit_classifier(seed: int, channels: int, num_classes: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"head.weight": 0.05 * torch.randn(num_classes, channels, generator=generator),
            "head.bias": 0.05 * torch.randn(num_classes, generator=generator)}


def _mit_logits(backbone, head: dict, pixels: torch.Tensor) -> torch.Tensor:
    """The authors' MiT classifier: mean over the last stage's tokens, then `head`."""
    return F.linear(backbone(pixels)[-1].mean(dim=(2, 3)), head["head.weight"], head["head.bias"])


def test_mit_imagenet_matches_reference():
    backbone, encoder = _authors_reference_backbone(seed=4)
    head = _mit_classifier(seed=5, channels=HIDDEN_SIZES[-1], num_classes=10)
    converted = convert_segformer_checkpoint({**encoder, **head}, dict(TINY_CONFIG, reshape_last_stage=False,
                                             num_labels=10), preset_name="tiny-mit", task="classification")
    from transformers import SegformerForImageClassification

    assert converted.model_class is SegformerForImageClassification
    model = converted.build_model()
    worst = 0.0
    for size in SIZES:
        pixels = _inputs(size)
        with torch.no_grad():
            expected = _mit_logits(backbone, head, pixels)
            actual = model(pixel_values=pixels).logits
        worst = max(worst, max_abs_diff(actual, expected))
    MEASURED["mit original"] = worst
    print(f"mit ImageNet: max |dlogit| = {worst:.2e}")
    assert worst <= TOLERANCE


def test_mmseg_mit_has_no_classifier():
    backbone = _mmseg_segformer(seed=6).backbone
    from hf_seg.convert.common import ConversionError

    with pytest.raises(ConversionError, match="carry no ImageNet classifier"):
        convert_segformer_checkpoint(backbone.state_dict(), dict(TINY_CONFIG, num_labels=10), preset_name="tiny-mit",
                                     task="classification")


# Parameter counts of the papers' architecture (MODELS.md §3.5; the mmseg row from hf_seg's mmseg-head model).
PAPER_COUNTS = {
    "ade20k-512": [3_752_694, 13_715_798, 27_461_974, 47_337_814, 64_108_374, 84_708_694],
    "cityscapes-1024": [3_719_027, 13_682_131, 27_361_235, 47_237_075, 64_007_635, 84_607_955],
}
MMSEG_COUNTS_ADE = [3_753_718, 13_716_822, 24_761_686, 44_637_526, 61_408_086, 82_008_406]
ENCODER_COUNTS = [3_319_392, 13_151_424, 24_196_288, 44_072_128, 60_842_688, 81_443_008]


def _count(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("dataset", sorted(PAPER_COUNTS))
def test_preset_parameter_counts_match_paper_architecture(dataset):
    import hf_seg
    from hf_seg.models.segformer import SegformerMmsegConfig

    for size, expected in zip(range(6), PAPER_COUNTS[dataset]):
        name = f"segformer-b{size}-{dataset}"
        with torch.device("meta"):
            model = hf_seg.create_model(name)
            assert _count(model) == expected, name
            assert _count(model.segformer) == ENCODER_COUNTS[size], name
            if dataset == "ade20k-512":
                config = SegformerMmsegConfig(**{**hf_seg.get_preset(name).config, "decoder_hidden_size": 256},
                                              num_labels=150)
                assert _count(SegformerMmsegForSemanticSegmentation(config)) == MMSEG_COUNTS_ADE[size], name
    with torch.device("meta"):
        assert _count(hf_seg.create_model("segformer-b5-ade20k-640")) == PAPER_COUNTS["ade20k-512"][5]


def test_mit_presets_are_imagenet_classifiers():
    import hf_seg

    for size in range(6):
        with torch.device("meta"):
            model = hf_seg.create_model(f"mit-b{size}")
        assert type(model).__name__ == "SegformerForImageClassification"
        assert model.config.num_labels == 1000
        assert _count(model) == ENCODER_COUNTS[size] + 1000 * (model.config.hidden_sizes[-1] + 1)


# --- every real-size preset (not a test: `python tests/test_convert_segformer.py`, table in conversion/README.md) -----


def measure_preset(name: str, layout: str, sizes, calibration_size=(256, 256), dtype=torch.float32,
                   transformers_eps: bool = False) -> tuple[list[float], float]:
    """A seeded random real-size checkpoint of preset `name` in `layout` ("original": NVlabs/SegFormer, for `mit-b*`
    their ImageNet `mit_b*.pth`; "mmseg": mmsegmentation 1.x with its 256-wide head), the decode head's BatchNorm
    statistics from one random batch, converted by `hf_seg.convert.cli`'s converter for the preset (as
    `convert_segformer.py` does); returns the max |logit difference| per input size (batch 1, both models run in
    `dtype`) and the reference logits' std on the first size. `transformers_eps=True` gives the authors' reference
    encoder transformers' LayerNorm eps (1e-5 everywhere; the authors use 1e-6 in the blocks' and stages' norms,
    which transformers' Segformer cannot express: MODELS.md §3.2), to separate that from the key mapping."""
    from conversion_fixtures import batch_norm_statistics_of_next_batch

    from hf_seg.convert.cli import CONVERTERS
    from hf_seg.labels import load_label_set
    from hf_seg.presets import get_preset

    preset = get_preset(name)
    config = preset.config
    id2label = load_label_set(preset.label_set)[0] if preset.label_set is not None else None
    calibration = _inputs(calibration_size)
    with torch.no_grad():
        if preset.family == "mit":
            backbone, encoder = _authors_reference_backbone(seed=50, config=config)
            backbone.to(dtype)
            head = _mit_classifier(seed=51, channels=config["hidden_sizes"][-1], num_classes=config["num_labels"])
            checkpoint, reference = {**encoder, **head}, lambda pixels: _mit_logits(backbone, head, pixels)
        elif layout == "original":
            backbone, head, checkpoint = _authors_segformer(seed=52, config=config,
                                                            decoder=config["decoder_hidden_size"],
                                                            num_classes=len(id2label))
            _authors_head_forward(head, list(backbone(calibration)), calibrate=True)
            backbone.to(dtype)
            reference = lambda pixels: _authors_head_forward(head, list(backbone(pixels)))  # noqa: E731
        else:
            model = _mmseg_segformer(seed=54, config=config, num_classes=len(id2label), channels=256)
            with batch_norm_statistics_of_next_batch(model):
                model.decode_head(model.backbone(calibration))
            checkpoint = {key: value.clone() for key, value in model.state_dict().items()}
            model.to(dtype)
            reference = lambda pixels: model.decode_head(model.backbone(pixels))  # noqa: E731
    converted = CONVERTERS["segformer"].convert(checkpoint, preset, id2label, "auto")
    assert converted.source == layout, converted.source
    target = converted.build_model().to(dtype)
    if layout == "original":
        head.update({key: value.to(dtype) for key, value in head.items()})
        for norm in backbone.modules():
            if transformers_eps and isinstance(norm, torch.nn.LayerNorm):
                norm.eps = 1e-5
    differences, scale = [], None
    for size in sizes:
        pixels = _inputs(size, seed=7)[:1].to(dtype)
        with torch.no_grad():
            expected = reference(pixels)
            differences.append(max_abs_diff(target(pixel_values=pixels).logits, expected))
        scale = float(expected.std()) if scale is None else scale
    return differences, scale


if __name__ == "__main__":
    import sys
    import time
    import warnings

    from hf_seg.presets import list_models

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="``build_loss`` would be deprecated")
    warnings.filterwarnings("ignore", message="Default ``avg_non_ignore`` is False")
    dtype = torch.float64 if "--float64" in sys.argv else torch.float32
    transformers_eps = "--transformers-eps" in sys.argv  # the authors' layout only
    only = [name for name in sys.argv[1:] if not name.startswith("--")]  # optional preset names
    print(f"{dtype}, transformers_eps={transformers_eps}")
    print("| Preset | Layout | Square input | max |Δlogit| square | max |Δlogit| non-square | logit std |")
    print("|---|---|---|---|---|---|")
    for name in only or [*list_models("segformer"), *list_models("mit")]:
        if name.startswith("mit-"):
            square, non_square, layouts = 224, (192, 256), ("original",)
        else:  # the crop size
            square, non_square = int(name.rsplit("-", 1)[1]), (380, 500)
            layouts = ("original",) if transformers_eps else ("original", "mmseg")
        for layout in layouts:
            start = time.time()
            (square_diff, other), scale = measure_preset(name, layout, [(square, square), non_square], dtype=dtype,
                                                         transformers_eps=transformers_eps)
            print(f"| `{name}` | {layout} | {square}x{square} | {square_diff:.1e} | {other:.1e} "
                  f"({non_square[0]}x{non_square[1]}) | {scale:.2f} |  <!-- {time.time() - start:.0f} s -->",
                  flush=True)
