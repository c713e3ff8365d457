"""hf_seg's own MPViT tests: sizes and FLOPs against the authors' numbers, the attention against its formula, the
UperNet composition through transformers' `UperNetForSemanticSegmentation`, head parity with mmsegmentation, losses,
odd input sizes, fast paths, gradient checkpointing, save/load, Auto classes, remote code and the processors."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

import hf_seg
from hf_seg import MPViTBackbone, MPViTConfig, MPViTForImageClassification, MPViTForSemanticSegmentation, MPViTModel
from hf_seg.models.mpvit.modeling_mpvit import MPViTConvRelPosEncoding, MPViTFactorizedAttention
from hf_seg.optimize import conv3x3_of_upsampled, optimize_for_inference


STAGES = ["stage1", "stage2", "stage3", "stage4"]
pytestmark = pytest.mark.filterwarnings(
    "ignore:``build_loss`` would be deprecated", "ignore:Default ``avg_non_ignore`` is False"
)


def tiny_config(**overrides):
    kwargs = dict(
        hidden_sizes=[16, 24, 32, 40], depths=[1, 2, 1, 1], num_paths=[2, 3, 2, 2], mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=16, auxiliary_channels=8, num_labels=5, out_features=STAGES,
    )
    kwargs.update(overrides)
    return MPViTConfig(**kwargs)


def randomize_batch_norms(model):
    """Non-trivial BatchNorm statistics and affine parameters, so that a wrong BN path cannot hide."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model


def tiny_segmenter(seed=0, **overrides):
    torch.manual_seed(seed)
    return randomize_batch_norms(MPViTForSemanticSegmentation(tiny_config(**overrides))).eval()


# --- sizes against the authors' numbers ------------------------------------------------------------------------------

# youngwanLEE/MPViT mpvit.py docstrings (ImageNet, 1000 classes): parameters and fvcore FLOPs (multiply-adds) at 224.
AUTHORS_IMAGENET = {
    "mpvit-tiny": (5_843_736, 1_654_163_812),
    "mpvit-xsmall": (10_573_448, 2_971_396_560),
    "mpvit-small": (22_892_400, 4_799_650_824),
    "mpvit-base": (74_845_976, 16_445_326_240),
}
# The paper / semantic_segmentation README (ADE20K, 150 classes): UperNet params and FLOPs (512x2048 input).
PAPER_UPERNET = {"upernet-mpvit-small-ade20k-512": (52e6, 943e9), "upernet-mpvit-base-ade20k-512": (105e6, 1185e9)}
# Exact counts of our UperNet presets (MODELS.md §4.4 computed S and B the same way; T / XS have no paper number).
UPERNET_PARAMS = {
    "upernet-mpvit-tiny-ade20k-512": 33_892_508,
    "upernet-mpvit-xsmall-ade20k-512": 38_985_676,
    "upernet-mpvit-small-ade20k-512": 51_588_020,
    "upernet-mpvit-base-ade20k-512": 105_295_196,
}


def meta_model(name):
    with torch.device("meta"):
        return hf_seg.create_model(name).eval()


def count_parameters(model):
    return sum(parameter.numel() for parameter in model.parameters())


def flop_counter_macs(model, size):
    """Multiply-adds of convolutions and matrix products, as `torch.utils.flop_counter` counts them (FLOPs / 2)."""
    with torch.device("meta"):
        pixel_values = torch.randn(1, 3, *size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixel_values)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", sorted(AUTHORS_IMAGENET))
def test_imagenet_presets_have_the_authors_parameter_count(name):
    model = meta_model(name)
    assert type(model) is MPViTForImageClassification
    assert count_parameters(model) == AUTHORS_IMAGENET[name][0]


@pytest.mark.parametrize("name", sorted(UPERNET_PARAMS))
def test_upernet_presets_parameter_counts(name):
    model = meta_model(name)
    assert type(model) is MPViTForSemanticSegmentation
    count = count_parameters(model)
    assert count == UPERNET_PARAMS[name]
    if name in PAPER_UPERNET:
        assert abs(count / PAPER_UPERNET[name][0] - 1) < 0.01


@pytest.mark.parametrize("name", sorted(AUTHORS_IMAGENET))
def test_imagenet_flops_match_the_authors(name):
    """fvcore (which the authors used) adds 2 per BatchNorm element (eval, affine), 5 per LayerNorm element and 1
    per pooled element to the multiply-adds of convolutions and matrix products. With those, our count matches the
    docstring to 0.05%; torch's flop counter alone (no norms) is within 1.2%."""
    model = meta_model(name)
    macs = flop_counter_macs(model, (224, 224))
    reference = AUTHORS_IMAGENET[name][1]
    assert abs(macs / reference - 1) < 0.012

    norm_elements = {"batch": 0, "layer": 0}

    def counting(kind):
        def hook(module, inputs, output):
            norm_elements[kind] += inputs[0].numel()
        return hook

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(counting("batch"))
        elif isinstance(module, nn.LayerNorm):
            module.register_forward_hook(counting("layer"))
    assert flop_counter_macs(model, (224, 224)) == macs
    pooled = model.config.hidden_sizes[-1] * 7 * 7
    fvcore_style = macs + 2 * norm_elements["batch"] + 5 * norm_elements["layer"] + pooled
    assert abs(fvcore_style / reference - 1) < 5e-4


@pytest.mark.parametrize("name", sorted(PAPER_UPERNET))
def test_upernet_flops_match_the_paper_at_512x2048(name):
    """The model's multiply-adds match the paper within 1%. `optimize_for_inference` computes the same function with
    fewer (the UperNet head's `fpn_bottleneck` on the coarse levels)."""
    model = meta_model(name)
    architecture_macs = flop_counter_macs(model, (512, 2048))
    assert abs(architecture_macs / PAPER_UPERNET[name][1] - 1) < 0.01
    inference_macs = flop_counter_macs(optimize_for_inference(model), (512, 2048))
    assert inference_macs < 0.75 * architecture_macs  # S: 0.59, B: 0.71


# --- the computation -------------------------------------------------------------------------------------------------


def test_factorized_attention_matches_the_formula():
    """Per head h: scale * q_h (softmax_N(k_h)^T v_h) + q_h * DWConv_h(v_h as a map), written out head by head."""
    torch.manual_seed(0)
    config = MPViTConfig()
    channels, heads, size = 64, 8, (5, 7)
    attention = MPViTFactorizedAttention(config, channels, heads).eval()
    crpe = MPViTConvRelPosEncoding(config, channels, heads).eval()
    tokens = torch.randn(2, size[0] * size[1], channels)
    with torch.no_grad():
        actual = attention(tokens, size, crpe)
        q, k, v = attention.qkv(tokens).split(channels, dim=-1)
        head_dim = channels // heads
        # head -> (its depthwise conv, its first channel in that conv): heads [0, 2) k3, [2, 5) k5, [5, 8) k7
        head_convs = [(conv, (head - first) * head_dim)
                      for conv, first, split in zip(crpe.convs, [0, 2, 5], config.crpe_head_splits)
                      for head in range(first, first + split)]
        outputs = []
        for head in range(heads):
            part = slice(head * head_dim, (head + 1) * head_dim)
            q_h, k_h, v_h = q[..., part], k[..., part], v[..., part]
            context = k_h.softmax(dim=1).transpose(1, 2) @ v_h
            conv, start = head_convs[head]
            v_map = v_h.transpose(1, 2).reshape(2, head_dim, *size)
            conv_v = F.conv2d(v_map, conv.weight[start : start + head_dim], conv.bias[start : start + head_dim],
                              padding=conv.kernel_size[0] // 2, groups=head_dim)
            conv_v = conv_v.flatten(2).transpose(1, 2)
            outputs.append(head_dim**-0.5 * (q_h @ context) + q_h * conv_v)
        expected = attention.proj(torch.cat(outputs, dim=-1))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("in_size", "out_size"), [((8, 8), (16, 16)), ((3, 5), (11, 17)), ((1, 2), (4, 8)), ((5, 7), (5, 7))])
def test_conv3x3_of_upsampled_equals_upsample_then_conv(in_size, out_size):
    torch.manual_seed(0)
    features, weight = torch.randn(2, 6, *in_size), torch.randn(4, 6, 3, 3)
    upsampled = F.interpolate(features, size=out_size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        conv3x3_of_upsampled(features, weight, out_size), F.conv2d(upsampled, weight, padding=1), rtol=1e-5, atol=3e-5
    )


def test_stage_output_sizes_halve_with_ceil_at_odd_sizes():
    model = MPViTModel(tiny_config()).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 45, 70), output_hidden_states=True)
    sizes = [tuple(state.shape[-2:]) for state in outputs.hidden_states]
    assert sizes == [(12, 18), (12, 18), (6, 9), (3, 5), (2, 3)]
    assert [state.shape[1] for state in outputs.hidden_states] == [16, 24, 32, 40, 40]
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state.mean(dim=(2, 3)))


@pytest.mark.parametrize("size", [(64, 64), (32, 96), (45, 70), (33, 33)])
def test_any_input_size(size):
    model = tiny_segmenter()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size)).logits
    assert logits.shape == (2, 5, *size)
    assert torch.isfinite(logits).all()


def test_batch_items_are_independent():
    model = tiny_segmenter()
    pixel_values = torch.randn(3, 3, 40, 56)
    with torch.no_grad():
        batched = model(pixel_values).logits
        single = model(pixel_values[1:2]).logits
    torch.testing.assert_close(batched[1:2], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(48, 64), (45, 70)])
def test_optimized_for_inference_computes_the_same_function(size):
    """`optimize_for_inference` (oneDNN linears, BatchNorm folded, in-place activations, the head's fpn_bottleneck on
    the coarse levels) gives the plain model's logits, also where the level sizes are not exact halves (45x70: 12x18,
    6x9, 3x5, 2x3). More in tests/test_optimize.py."""
    model = tiny_segmenter()
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        plain = model(pixel_values).logits
        optimized = optimize_for_inference(model)(pixel_values).logits
    assert model._hf_seg_inference_optimizations.coarse_bottleneck_heads == 1
    torch.testing.assert_close(optimized, plain, rtol=1e-5, atol=1e-5)


# --- UperNet: transformers' composition and mmsegmentation's heads ---------------------------------------------------


def upernet_config(backbone_config):
    return UperNetConfig(
        backbone_config=backbone_config, hidden_size=backbone_config.decoder_hidden_size,
        pool_scales=list(backbone_config.pool_scales), use_auxiliary_head=True, auxiliary_loss_weight=0.4,
        auxiliary_channels=backbone_config.auxiliary_channels, auxiliary_num_convs=1, auxiliary_concat_input=False,
        auxiliary_in_channels=None, loss_ignore_index=255, num_labels=backbone_config.num_labels,
    )


def test_auto_backbone_builds_mpvit():
    backbone = AutoBackbone.from_config(tiny_config())
    assert type(backbone) is MPViTBackbone
    assert backbone.channels == [24, 32, 40, 40]
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 64)).feature_maps
    assert [tuple(feature.shape[1:]) for feature in maps] == [(24, 16, 16), (32, 8, 8), (40, 4, 4), (40, 2, 2)]


def test_transformers_upernet_with_mpvit_backbone_gives_the_same_logits():
    """transformers' own UperNetForSemanticSegmentation(UperNetConfig(backbone_config=MPViTConfig(...))) takes our
    segmentation model's state dict as it is and computes the same logits (eval: no dropout)."""
    model = tiny_segmenter()
    upernet = UperNetForSemanticSegmentation(upernet_config(model.config)).eval()
    assert type(upernet.backbone) is MPViTBackbone
    upernet.load_state_dict(model.state_dict(), strict=True)
    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = model(pixel_values).logits
        theirs = upernet(pixel_values).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def mmseg_heads():
    from mmseg_reference import import_mmseg

    import_mmseg()
    from mmseg.models.decode_heads import FCNHead, UPerHead

    return UPerHead, FCNHead


def test_heads_match_mmsegmentation(mmseg_heads):
    """Our decode / auxiliary heads against mmsegmentation's UPerHead / FCNHead with the paper's settings (BN,
    dropout 0.1 off in eval), weights mapped by MODELS.md §5.4 (`.bn.` -> `.batch_norm.`, `conv_seg.` ->
    `classifier.`)."""
    upper_head, fcn_head = mmseg_heads
    model = tiny_segmenter(seed=1)
    in_channels = model.config.stage_out_channels[1:]
    norm_cfg = dict(type="BN", requires_grad=True)
    reference_decode = upper_head(
        in_channels=in_channels, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6), channels=16, dropout_ratio=0.1,
        num_classes=5, norm_cfg=norm_cfg, align_corners=False,
    ).eval()
    reference_aux = fcn_head(
        in_channels=in_channels[2], in_index=2, channels=8, num_convs=1, concat_input=False, dropout_ratio=0.1,
        num_classes=5, norm_cfg=norm_cfg, align_corners=False,
    ).eval()
    for ours, reference in ((model.decode_head, reference_decode), (model.auxiliary_head, reference_aux)):
        randomize_batch_norms(reference)
        state = {key.replace(".bn.", ".batch_norm.").replace("conv_seg.", "classifier."): value
                 for key, value in reference.state_dict().items()}
        ours.load_state_dict(state, strict=True)
    features = [torch.randn(2, channels, 32 // 2**index, 48 // 2**index) for index, channels in enumerate(in_channels)]
    with torch.no_grad():
        torch.testing.assert_close(model.decode_head(features), reference_decode(features), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.auxiliary_head(features), reference_aux(features), rtol=1e-5, atol=1e-5)
    # training mode: both apply Dropout2d(0.1) before the classifier (same mask under the same seed)
    model.decode_head.train()
    reference_decode.train()
    model.decode_head.load_state_dict({key.replace(".bn.", ".batch_norm.").replace("conv_seg.", "classifier."): value
                                       for key, value in reference_decode.state_dict().items()})
    torch.manual_seed(5)
    ours = model.decode_head(features)
    torch.manual_seed(5)
    theirs = reference_decode(features)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# --- losses and strict inputs ----------------------------------------------------------------------------------------


def test_loss_is_decode_plus_0_4_auxiliary_cross_entropy_averaged_over_all_pixels():
    model = tiny_segmenter()
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    labels[:, :10] = 255
    with torch.no_grad():
        output = model(pixel_values, labels=labels)
        features = model.backbone(pixel_values).feature_maps

        def cross_entropy(head_logits):
            logits = F.interpolate(head_logits, size=(64, 64), mode="bilinear", align_corners=False)
            losses = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
            return losses.sum() / labels.numel()  # ignored pixels count in the denominator (mmseg 0.x)

        expected = cross_entropy(model.decode_head(features)) + 0.4 * cross_entropy(model.auxiliary_head(features))
    assert model.config.auxiliary_loss_weight == 0.4
    torch.testing.assert_close(output.loss, expected, rtol=1e-5, atol=1e-6)


def test_labels_at_another_size_than_the_input_and_all_ignored():
    model = tiny_segmenter()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values, labels=torch.randint(0, 5, (1, 100, 90))).loss)
        assert model(pixel_values, labels=torch.full((1, 64, 64), 255)).loss.item() == 0.0


def test_auxiliary_head_runs_only_with_labels():
    model = tiny_segmenter()
    calls = []
    model.auxiliary_head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
        assert calls == []
        model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 32, 32, dtype=torch.long))
    assert calls == [1]
    without_aux = tiny_segmenter(use_auxiliary_head=False)
    assert without_aux.auxiliary_head is None
    with torch.no_grad():
        assert torch.isfinite(without_aux(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 32, 32).long()).loss)


def test_classifier_loss_is_cross_entropy():
    torch.manual_seed(0)
    model = MPViTForImageClassification(tiny_config(num_labels=7)).eval()
    pixel_values, labels = torch.randn(3, 3, 64, 64), torch.tensor([0, 6, 3])
    with torch.no_grad():
        output = model(pixel_values, labels=labels)
    assert output.logits.shape == (3, 7)
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, labels))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.full((1, 32, 32), 5), r"values \[5\] outside \[0, 5\)"),
        (torch.full((1, 32, 32), -1), r"values \[-1\]"),
        (torch.zeros(1, 1, 32, 32, dtype=torch.long), "labels must have shape"),
        (torch.zeros(1, 32, 32), "integer tensor"),
    ],
)
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        tiny_segmenter()(torch.randn(1, 3, 32, 32), labels=labels)


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (3, 32, 32)])
def test_bad_pixel_values_are_refused(shape):
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, height, width\)"):
        tiny_segmenter()(torch.randn(*shape))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(depths=[1, 1, 1]), "depths=.*must have num_stages=4 entries"),
        (dict(hidden_sizes=[16, 24, 30, 40]), r"hidden_sizes\[2\]=30 is not a multiple of num_attention_heads=8"),
        (dict(crpe_head_splits=[2, 3, 2]), "must add up to the 8 heads"),
        (dict(crpe_window_sizes=[3, 4, 7]), "must be odd"),
        (dict(auxiliary_in_index=4), "auxiliary_in_index=4"),
    ],
)
def test_bad_configs_are_refused(overrides, message):
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match=message):
        MPViTConfig(**{**dict(hidden_sizes=[16, 24, 32, 40]), **overrides})


# --- training-time features ------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = MPViTForSemanticSegmentation(tiny_config(classifier_dropout_prob=0.0)).train()
    pixel_values, labels = torch.randn(2, 3, 32, 48), torch.randint(0, 5, (2, 32, 48))

    def gradients():
        model.zero_grad()
        model(pixel_values, labels=labels).loss.backward()
        return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}

    plain = gradients()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = gradients()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_drop_path_rates_rise_linearly_over_all_blocks():
    model = MPViTModel(tiny_config(drop_path_rate=0.4))
    rates = [[layer.drop_path_rate for layer in stage.paths[0].layers] for stage in model.encoder.stages]
    expected = torch.linspace(0, 0.4, 5).tolist()
    assert rates == [expected[0:1], expected[1:3], expected[3:4], expected[4:5]]
    assert all(
        [layer.drop_path_rate for layer in path.layers] == rates[index]
        for index, stage in enumerate(model.encoder.stages) for path in stage.paths
    )


def test_weight_init_follows_the_authors_code():
    torch.manual_seed(0)
    model = MPViTForSemanticSegmentation(MPViTConfig(num_labels=150))
    stage = model.backbone.encoder.stages[2]  # 216 channels, 3 paths
    linear = stage.paths[0].layers[0].attention.qkv
    assert abs(linear.weight.std().item() - 0.02) < 0.002  # timm's trunc_normal_: cut at +-2 absolute, not +-2 std
    assert linear.bias.abs().max() == 0
    # normal(0, sqrt(2 / (k*k*out))): the aggregation conv, the patch-embedding convs (groups not divided out)
    assert math.isclose(stage.aggregate.conv.weight.std().item(), math.sqrt(2 / 288), rel_tol=0.05)
    depthwise = stage.patch_embeddings[1].depthwise_conv.weight
    assert math.isclose(depthwise.std().item(), math.sqrt(2 / (9 * 216)), rel_tol=0.1)
    # the local branch divides by the groups: sqrt(2 / 9)
    assert math.isclose(stage.local_branch.depthwise_conv.weight.std().item(), math.sqrt(2 / 9), rel_tol=0.1)
    # position encodings keep PyTorch's default: uniform within 1 / sqrt(fan_in)
    proj = stage.paths[0].pos_encoding.proj
    assert proj.weight.abs().max() <= 1 / 3 + 1e-6 and proj.weight.abs().max() > 0.3 and proj.bias.abs().max() > 0
    assert torch.equal(stage.aggregate.batch_norm.weight, torch.ones(288))
    classifier = model.decode_head.classifier
    assert math.isclose(classifier.weight.std().item(), 0.01, rel_tol=0.05) and classifier.bias.abs().max() == 0


# --- save / load, Auto classes, remote code --------------------------------------------------------------------------


def test_save_load_round_trip_and_auto_classes(tmp_path):
    model = tiny_segmenter()
    model.save_pretrained(tmp_path / "segmenter")
    assert type(AutoConfig.from_pretrained(tmp_path / "segmenter")) is MPViTConfig
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "segmenter").eval()
    assert type(loaded) is MPViTForSemanticSegmentation
    pixel_values = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)

    torch.manual_seed(0)
    classifier = MPViTForImageClassification(tiny_config(num_labels=4)).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "classifier").eval()
    assert type(loaded) is MPViTForImageClassification
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, classifier(pixel_values).logits, rtol=0, atol=0)
        # the encoder of a classifier loads into MPViTModel and MPViTBackbone (base-model prefix `mpvit`)
        encoder = AutoModel.from_pretrained(tmp_path / "classifier").eval()
        assert type(encoder) is MPViTModel
        torch.testing.assert_close(encoder(pixel_values).pooler_output,
                                   classifier.mpvit(pixel_values).pooler_output, rtol=0, atol=0)
        # (transformers 5.23's AutoBackbone.from_pretrained asks the Hub whether the name is a repo even for a local
        # folder, so it cannot load one offline; the class itself can)
        backbone = MPViTBackbone.from_pretrained(tmp_path / "classifier").eval()
        torch.testing.assert_close(backbone(pixel_values).feature_maps[-1],
                                   classifier.mpvit(pixel_values).last_hidden_state, rtol=0, atol=0)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["hf_seg"] = None  # any `import hf_seg` now fails: only the folder's own code may be used
    import numpy as np, torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModelForSemanticSegmentation
    folder, task = sys.argv[1], sys.argv[2]
    auto = AutoModelForSemanticSegmentation if task == "segmentation" else AutoModelForImageClassification
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        logits = model(torch.load(folder + "/pixel_values.pt")).logits
    # another process may use another thread count, hence another summation order
    torch.testing.assert_close(logits, torch.load(folder + "/logits.pt"), rtol=1e-5, atol=1e-5)
    image = (np.arange(40 * 56 * 3) % 251).astype(np.uint8).reshape(40, 56, 3)
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    if task == "segmentation":
        maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(40, 56)])
        assert maps[0].shape == (40, 56)
    else:
        assert inputs["pixel_values"].shape == (1, 3, 224, 224)
    print("remote code OK", type(model).__name__, type(processor).__name__)
    """
)


@pytest.mark.parametrize(
    ("task", "preset", "expected"),
    [
        ("segmentation", "upernet-mpvit-tiny-ade20k-512", "MPViTForSemanticSegmentation SetrImageProcessor"),
        ("classification", "mpvit-tiny", "MPViTForImageClassification ConvNextImageProcessorPil"),
    ],
)
def test_trust_remote_code_without_hf_seg(tmp_path, task, preset, expected):
    torch.manual_seed(0)
    if task == "segmentation":
        model = tiny_segmenter()
    else:
        model = MPViTForImageClassification(tiny_config(num_labels=4)).eval()
    processor = hf_seg.create_image_processor(preset)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert {"configuration_mpvit.py", "modeling_mpvit.py"} <= {path.name for path in tmp_path.glob("*.py")}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "mpvit" and "AutoConfig" in config["auto_map"]
    pixel_values = torch.randn(1, 3, 48, 64)
    torch.save(pixel_values, tmp_path / "pixel_values.pt")
    with torch.no_grad():
        torch.save(model(pixel_values).logits, tmp_path / "logits.pt")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(tmp_path), task], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"remote code OK {expected}" in result.stdout


# --- processors ------------------------------------------------------------------------------------------------------


def test_imagenet_processor_is_the_authors_evaluation():
    """Short side to int(224 / 0.875) = 256 with PIL bicubic, centre crop 224, ImageNet mean / std."""
    processor = hf_seg.create_image_processor("mpvit-small")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224)
    resized = np.asarray(image.resize((341, 256), Image.BICUBIC), dtype=np.float32) / 255
    top, left = int(round((256 - 224) / 2)), int(round((341 - 224) / 2))  # torchvision's CenterCrop rounding
    crop = resized[top : top + 224, left : left + 224]
    expected = (crop - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(pixel_values[0].numpy(), expected.transpose(2, 0, 1), atol=1e-4)


def test_segmentation_processor_is_the_ade20k_test_pipeline():
    """Keep-ratio resize into (2048, 512), reduce-labels, and no padding (MPViT takes any size, mmseg 0.x does not
    pad at test time)."""
    processor = hf_seg.create_image_processor("upernet-mpvit-small-ade20k-512")
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    label = np.zeros((300, 400), dtype=np.uint8)
    label[:, 200:] = 7
    batch = processor(images=image, segmentation_maps=label, return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 512, 683)
    assert set(batch["labels"].unique().tolist()) == {255, 6}
    assert hf_seg.get_preset("upernet-mpvit-small-ade20k-512").inference == {"mode": "whole"}


def test_presets_are_listed():
    assert hf_seg.list_models("mpvit") == ["mpvit-base", "mpvit-small", "mpvit-tiny", "mpvit-xsmall"]
    assert hf_seg.list_models("upernet") == sorted(UPERNET_PARAMS)
    config = hf_seg.create_config("upernet-mpvit-base-ade20k-512")
    assert config.num_labels == 150 and config.drop_path_rate == 0.4 and config.out_features == STAGES
    assert hf_seg.create_config("mpvit-base").drop_path_rate == 0.3
