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


try:
    import_mmseg()
except ImportError as err:  # pragma: no cover - depends on the environment
    pytest.skip(f"mmsegmentation reference not available: {err}", allow_module_level=True)

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


def _mmseg_segformer(seed: int):
    norm = dict(type="BN", requires_grad=True)
    config = dict(
        type="EncoderDecoder",
        backbone=dict(
            type="MixVisionTransformer", in_channels=3, embed_dims=EMBED_DIMS, num_stages=4, num_layers=DEPTHS,
            num_heads=NUM_HEADS, patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1], out_indices=(0, 1, 2, 3),
            mlp_ratio=4, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
        ),
        decode_head=dict(
            type="SegformerHead", in_channels=HIDDEN_SIZES, in_index=[0, 1, 2, 3], channels=24, dropout_ratio=0.1,
            num_classes=NUM_CLASSES, norm_cfg=norm, align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ),
        train_cfg=dict(), test_cfg=dict(mode="whole"),
    )
    return randomize_(MODELS.build(config), seed)


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


def _authors_reference_backbone(seed: int):
    """mmseg's MiT holding the weights of a random authors' checkpoint (through mmseg's mit2mmseg), with the authors'
    LayerNorm eps; returns (model, authors' encoder state dict without prefix)."""
    model = _mmseg_segformer(seed)
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


def _authors_head(seed: int, decoder: int = 32) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, mean=0.0, std=0.05):
        return mean + std * torch.randn(shape, generator=generator)

    head = {}
    for s, channels in enumerate(HIDDEN_SIZES, start=1):
        head[f"decode_head.linear_c{s}.proj.weight"] = rand(decoder, channels)
        head[f"decode_head.linear_c{s}.proj.bias"] = rand(decoder)
    head["decode_head.linear_fuse.conv.weight"] = rand(decoder, 4 * decoder, 1, 1)
    head["decode_head.linear_fuse.bn.weight"] = rand(decoder, mean=1.0, std=0.1)
    head["decode_head.linear_fuse.bn.bias"] = rand(decoder, std=0.1)
    head["decode_head.linear_fuse.bn.running_mean"] = rand(decoder, std=0.1)
    head["decode_head.linear_fuse.bn.running_var"] = 0.5 + torch.rand(decoder, generator=generator)
    head["decode_head.linear_fuse.bn.num_batches_tracked"] = torch.tensor(1234)
    head["decode_head.linear_pred.weight"] = rand(NUM_CLASSES, decoder, 1, 1)
    head["decode_head.linear_pred.bias"] = rand(NUM_CLASSES)
    head["decode_head.conv_seg.weight"] = rand(NUM_CLASSES, 128, 1, 1)  # unused in the authors' head
    head["decode_head.conv_seg.bias"] = rand(NUM_CLASSES)
    return head


def _authors_head_forward(head: dict, maps: list[torch.Tensor]) -> torch.Tensor:
    """The authors' SegFormerHead (eval): per-stage Linear, resize to 1/4, concat [c4, c3, c2, c1], 1x1 conv, BN, ReLU,
    linear_pred."""
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
                         head["decode_head.linear_fuse.bn.bias"], training=False, eps=1e-5)
    return F.conv2d(F.relu(fused), head["decode_head.linear_pred.weight"], head["decode_head.linear_pred.bias"])


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
    model = converted.model_class(converted.config).eval()
    model.load_state_dict(converted.state_dict, strict=True)
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
    backbone, encoder = _authors_reference_backbone(seed=2)
    head = _authors_head(seed=3)
    state_dict = {**{f"backbone.{k}": v for k, v in encoder.items()}, **head}
    assert detect_segformer_layout(state_dict) == "original"
    converted = convert_segformer_checkpoint(state_dict, dict(TINY_CONFIG, num_labels=NUM_CLASSES),
                                             preset_name="tiny-segformer")
    assert converted.source == "original"
    assert sorted(sum(converted.dropped.values(), [])) == ["decode_head.conv_seg.bias", "decode_head.conv_seg.weight"]
    from transformers import SegformerForSemanticSegmentation

    assert converted.model_class is SegformerForSemanticSegmentation
    model = converted.model_class(converted.config).eval()
    model.load_state_dict(converted.state_dict, strict=True)
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


def test_mit_imagenet_matches_reference():
    backbone, encoder = _authors_reference_backbone(seed=4)
    generator = torch.Generator().manual_seed(5)
    head = {"head.weight": 0.05 * torch.randn(10, HIDDEN_SIZES[-1], generator=generator),
            "head.bias": 0.05 * torch.randn(10, generator=generator)}
    converted = convert_segformer_checkpoint({**encoder, **head}, dict(TINY_CONFIG, reshape_last_stage=False,
                                             num_labels=10), preset_name="tiny-mit", task="classification")
    from transformers import SegformerForImageClassification

    assert converted.model_class is SegformerForImageClassification
    model = converted.model_class(converted.config).eval()
    model.load_state_dict(converted.state_dict, strict=True)
    worst = 0.0
    for size in SIZES:
        pixels = _inputs(size)
        with torch.no_grad():
            pooled = backbone(pixels)[-1].mean(dim=(2, 3))
            expected = F.linear(pooled, head["head.weight"], head["head.bias"])
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
