"""MPViT conversion (youngwanLEE/MPViT checkpoints -> hf_seg) against an independent reference.

There is no MPViT on PyPI, so the reference is built here, independently of hf_seg's modeling code:

* a seeded random checkpoint in the authors' key layout (MODELS.md §5.4, written from the authors' `mpvit.py`), every
  parameter and buffer random (BatchNorm statistics included), with the shared position-encoding modules listed
  again under their alias names (the same tensors, as the authors' `state_dict()` lists them);
* the backbone forward written below in functional form (F.conv2d / F.batch_norm / F.layer_norm / F.linear) from the
  paper and MODELS.md §4.2, reading the authors' keys directly, including the alias keys that the authors' blocks
  actually call (`MHCA_layers.{l}.cpe`, `MHCA_layers.{l}.factoratt_crpe.crpe`);
* mmsegmentation 1.2.2's `UPerHead` / `FCNHead` for the UperNet heads, loaded with the checkpoint's head keys as they
  are (the authors' fork is mmseg 0.11, whose head keys are the same).

The chain: random checkpoint -> `convert_mpvit.py` / `convert_mpvit_checkpoint` -> hf_seg logits vs reference
logits, max |diff| <= 1e-4 (fp32) on a square and a non-square input, for the ImageNet classifier and the UperNet
layouts on tiny variants, and once for the real-size `mpvit-tiny` preset. Also: every preset's layout converts
(key counts as MODELS.md §5.4 states them) and every error path exits non-zero with a one-line message.
"""

import dataclasses
import json
import math
import sys

import pytest
import torch
from torch.nn import functional as F

from conversion_fixtures import load_without_hf_seg, max_abs_diff, randomize_, run_script
from mmseg_reference import import_mmseg


import_mmseg()  # a test dependency: failing to import it fails these tests rather than skipping them

from mmseg.models.decode_heads import FCNHead, UPerHead  # noqa: E402

from hf_seg.convert.cli import main  # noqa: E402
from hf_seg.convert.common import ConversionError  # noqa: E402
from hf_seg.convert.mpvit import ALIAS_REASON, convert_mpvit_checkpoint, detect_mpvit_layout  # noqa: E402
from hf_seg.presets import PRESETS, Preset, get_preset  # noqa: E402


pytestmark = pytest.mark.filterwarnings(
    "ignore:``build_loss`` would be deprecated", "ignore:Default ``avg_non_ignore`` is False"
)

TOLERANCE = 1e-4
SIZES = [(64, 64), (56, 88)]  # square; non-square with odd maps at strides 16 / 32 (ceil)
NUM_CLASSES = 5
HEADS = 8
CRPE_WINDOWS = {3: 2, 5: 3, 7: 3}  # kernel -> heads, the authors' default
# A tiny MPViT (the authors' argument names); distinct MLP ratios per stage so that a stage mix-up cannot hide.
TINY = dict(embed_dims=[16, 24, 32, 40], num_path=[2, 3, 2, 2], num_layers=[1, 2, 1, 1], mlp_ratios=[2, 3, 2, 4])
TINY_CONFIG = dict(hidden_sizes=TINY["embed_dims"], num_paths=TINY["num_path"], depths=TINY["num_layers"],
                   mlp_ratios=TINY["mlp_ratios"], num_attention_heads=[HEADS] * 4, decoder_hidden_size=16,
                   auxiliary_channels=8)
UPERNET_CHANNELS = dict(decoder=16, auxiliary=8)
TINY_PRESETS = [
    Preset("tiny-mpvit", "mpvit", dict(TINY_CONFIG, num_labels=NUM_CLASSES),
           dict(size={"shortest_edge": 64}, crop_pct=0.875, resample=3, image_mean=[0.485, 0.456, 0.406],
                image_std=[0.229, 0.224, 0.225]), None),
    Preset("tiny-upernet-mpvit", "upernet", dict(TINY_CONFIG, num_labels=NUM_CLASSES,
                                                  out_features=["stage1", "stage2", "stage3", "stage4"]),
           dict(size={"shortest_edge": 64, "longest_edge": 256}, do_reduce_labels=False, size_divisor=1), None,
           dict(mode="whole")),
]
TINY_DICTS = [dataclasses.asdict(preset) for preset in TINY_PRESETS]
MEASURED = {}


# --- the authors' checkpoint layout (youngwanLEE/MPViT mpvit.py, MODELS.md §5.4) --------------------------------------


class _Random:
    """Seeded tensors: weights N(0, 1/fan_in) (activations stay O(1) through the random network), biases N(0, 0.05^2),
    norm scales near 1, BatchNorm statistics random."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def normal(self, *shape, mean=0.0, std=1.0):
        return mean + std * torch.randn(shape, generator=self.generator)

    def weight(self, *shape):
        fan_in = math.prod(shape[1:])
        return self.normal(*shape, std=fan_in**-0.5)

    def bias(self, size):
        return self.normal(size, std=0.05)

    def batch_norm(self, prefix, size) -> dict:
        return {
            f"{prefix}weight": self.normal(size, mean=1.0, std=0.1), f"{prefix}bias": self.normal(size, std=0.1),
            f"{prefix}running_mean": self.normal(size, std=0.1),
            f"{prefix}running_var": 0.5 + torch.rand(size, generator=self.generator),
            f"{prefix}num_batches_tracked": torch.randint(1, 10_000, (), generator=self.generator),
        }

    def layer_norm(self, prefix, size) -> dict:
        return {f"{prefix}weight": self.normal(size, mean=1.0, std=0.1), f"{prefix}bias": self.normal(size, std=0.1)}


def authors_backbone(arch: dict, seed: int, prefix: str = "", in_chans: int = 3, zeros: bool = False) -> dict:
    """The state dict of the authors' `MPViT` (module registration order), shared modules listed under every name
    the authors' `state_dict()` gives them. `zeros=True`: all zeros (fast; for layout-only checks of big presets)."""
    rand = _Random(seed)
    dims, paths, layers, ratios = arch["embed_dims"], arch["num_path"], arch["num_layers"], arch["mlp_ratios"]
    out = {}

    def conv_bn(name, cin, cout, kernel):  # the authors' Conv2d_BN
        out[f"{prefix}{name}.conv.weight"] = rand.weight(cout, cin, kernel, kernel)
        out.update(rand.batch_norm(f"{prefix}{name}.bn.", cout))

    conv_bn("stem.0", in_chans, dims[0] // 2, 3)
    conv_bn("stem.1", dims[0] // 2, dims[0], 3)
    for i, dim in enumerate(dims):
        for p in range(paths[i]):
            embed = f"{prefix}patch_embed_stages.{i}.patch_embeds.{p}.patch_conv."
            out[embed + "dwconv.weight"] = rand.weight(dim, 1, 3, 3)
            out[embed + "pwconv.weight"] = rand.weight(dim, dim, 1, 1)
            out.update(rand.batch_norm(embed + "bn.", dim))
    for i, dim in enumerate(dims):
        head_dim = dim // HEADS
        stage = f"{prefix}mhca_stages.{i}."
        for p in range(paths[i]):
            encoder = f"{stage}mhca_blks.{p}."
            shared = {"cpe.proj.weight": rand.weight(dim, 1, 3, 3), "cpe.proj.bias": rand.bias(dim)}
            for j, (kernel, heads) in enumerate(CRPE_WINDOWS.items()):
                shared[f"crpe.conv_list.{j}.weight"] = rand.weight(heads * head_dim, 1, kernel, kernel)
                shared[f"crpe.conv_list.{j}.bias"] = rand.bias(heads * head_dim)
            out.update({encoder + key: value for key, value in shared.items()})
            for l in range(layers[i]):
                block = f"{encoder}MHCA_layers.{l}."
                out.update({block + key: value for key, value in shared.items()})  # MHCABlock.cpe / .crpe
                out[block + "factoratt_crpe.qkv.weight"] = rand.weight(3 * dim, dim)
                out[block + "factoratt_crpe.qkv.bias"] = rand.bias(3 * dim)
                out[block + "factoratt_crpe.proj.weight"] = rand.weight(dim, dim)
                out[block + "factoratt_crpe.proj.bias"] = rand.bias(dim)
                out.update({block + "factoratt_crpe." + key: value for key, value in shared.items()
                            if key.startswith("crpe.")})
                out[block + "mlp.fc1.weight"] = rand.weight(ratios[i] * dim, dim)
                out[block + "mlp.fc1.bias"] = rand.bias(ratios[i] * dim)
                out[block + "mlp.fc2.weight"] = rand.weight(dim, ratios[i] * dim)
                out[block + "mlp.fc2.bias"] = rand.bias(dim)
                out.update(rand.layer_norm(block + "norm1.", dim))
                out.update(rand.layer_norm(block + "norm2.", dim))
        conv_bn(f"mhca_stages.{i}.InvRes.conv1", dim, dim, 1)
        out[f"{stage}InvRes.dwconv.weight"] = rand.weight(dim, 1, 3, 3)
        out.update(rand.batch_norm(f"{stage}InvRes.norm.", dim))
        conv_bn(f"mhca_stages.{i}.InvRes.conv2", dim, dim, 1)
        out_dim = dims[i + 1] if i + 1 < len(dims) else dim
        conv_bn(f"mhca_stages.{i}.aggregate", (paths[i] + 1) * dim, out_dim, 1)
    if zeros:
        out = {key: torch.zeros_like(value) for key, value in out.items()}
    return out


def stage_out_channels(arch: dict) -> list[int]:
    return list(arch["embed_dims"][1:]) + [arch["embed_dims"][-1]]


def authors_imagenet(arch: dict, seed: int, num_classes: int = NUM_CLASSES, zeros: bool = False) -> dict:
    state = authors_backbone(arch, seed, zeros=zeros)
    rand = _Random(seed + 1)
    state["cls_head.cls.weight"] = rand.weight(num_classes, arch["embed_dims"][-1])
    state["cls_head.cls.bias"] = rand.bias(num_classes)
    return state


def mmseg_heads(arch: dict, seed: int, decoder=UPERNET_CHANNELS["decoder"], auxiliary=UPERNET_CHANNELS["auxiliary"],
                num_classes=NUM_CLASSES):
    """mmseg's UPerHead + FCNHead with the paper's settings (upernet_mpvit.py), random (BN statistics included)."""
    in_channels = stage_out_channels(arch)
    norm = dict(type="BN", requires_grad=True)
    decode = UPerHead(in_channels=in_channels, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6), channels=decoder,
                      dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm, align_corners=False)
    aux = FCNHead(in_channels=in_channels[2], in_index=2, channels=auxiliary, num_convs=1, concat_input=False,
                  dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm, align_corners=False)
    for head, head_seed in ((decode, seed), (aux, seed + 1)):
        randomize_(head, head_seed)  # convolution weights N(0, 0.05^2): rescaled to N(0, 1/fan_in), as the backbone's
        with torch.no_grad():
            for module in head.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.weight.mul_(module.weight[0].numel() ** -0.5 / 0.05)
    return decode, aux


def authors_upernet(arch: dict, seed: int, **head_kwargs):
    """(state dict of the authors' UperNet `EncoderDecoder`, mmseg decode head, mmseg auxiliary head)."""
    decode, aux = mmseg_heads(arch, seed + 2, **head_kwargs)
    state = authors_backbone(arch, seed, prefix="backbone.")
    state.update({f"decode_head.{key}": value for key, value in decode.state_dict().items()})
    state.update({f"auxiliary_head.{key}": value for key, value in aux.state_dict().items()})
    return state, decode, aux


# --- the reference forward: the paper's MPViT, functional, on the authors' keys ---------------------------------------


_CALIBRATING = []  # non-empty inside `calibrated_batch_norms()`


def _batch_norm(x, sd, prefix):
    if _CALIBRATING:  # store the batch's statistics as the running ones (what training leaves: O(1) activations)
        sd[prefix + "running_mean"].copy_(x.mean(dim=(0, 2, 3)))
        sd[prefix + "running_var"].copy_(x.var(dim=(0, 2, 3), unbiased=False))
    return F.batch_norm(x, sd[prefix + "running_mean"], sd[prefix + "running_var"], sd[prefix + "weight"],
                        sd[prefix + "bias"], training=False, eps=1e-5)


def _conv_bn(x, sd, prefix, stride=1, activation=True):
    weight = sd[prefix + "conv.weight"]
    x = _batch_norm(F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2), sd, prefix + "bn.")
    return F.hardswish(x) if activation else x


def _block(x, sd, block, size):
    """One MHCA block on tokens [B, N, C]: conv position encoding, factorized attention + conv relative position
    encoding, MLP; the shared modules read through the names the authors' block calls them by."""
    batch, tokens, channels = x.shape
    height, width = size
    head_dim = channels // HEADS
    as_map = x.transpose(1, 2).reshape(batch, channels, height, width)
    as_map = as_map + F.conv2d(as_map, sd[block + "cpe.proj.weight"], sd[block + "cpe.proj.bias"], padding=1,
                               groups=channels)
    x = as_map.flatten(2).transpose(1, 2)
    y = F.layer_norm(x, (channels,), sd[block + "norm1.weight"], sd[block + "norm1.bias"], eps=1e-6)
    qkv = F.linear(y, sd[block + "factoratt_crpe.qkv.weight"], sd[block + "factoratt_crpe.qkv.bias"])
    q, k, v = qkv.reshape(batch, tokens, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)  # each [B, h, N, Ch]
    context = k.softmax(dim=2).transpose(2, 3) @ v  # [B, h, Ch, Ch]
    factorized = (q @ context) * head_dim**-0.5
    v_map = v.transpose(2, 3).reshape(batch, HEADS * head_dim, height, width)
    convolved = []
    start = 0
    for j, (kernel, heads) in enumerate(CRPE_WINDOWS.items()):
        crpe = block + f"factoratt_crpe.crpe.conv_list.{j}."
        group = v_map[:, start : start + heads * head_dim]
        convolved.append(F.conv2d(group, sd[crpe + "weight"], sd[crpe + "bias"], padding=kernel // 2,
                                  groups=heads * head_dim))
        start += heads * head_dim
    conv_v = torch.cat(convolved, dim=1).reshape(batch, HEADS, head_dim, tokens).transpose(2, 3)
    attention = (factorized + q * conv_v).transpose(1, 2).reshape(batch, tokens, channels)
    x = x + F.linear(attention, sd[block + "factoratt_crpe.proj.weight"], sd[block + "factoratt_crpe.proj.bias"])
    y = F.layer_norm(x, (channels,), sd[block + "norm2.weight"], sd[block + "norm2.bias"], eps=1e-6)
    hidden = F.gelu(F.linear(y, sd[block + "mlp.fc1.weight"], sd[block + "mlp.fc1.bias"]))
    return x + F.linear(hidden, sd[block + "mlp.fc2.weight"], sd[block + "mlp.fc2.bias"])


def reference_backbone(sd: dict, arch: dict, pixels: torch.Tensor, prefix: str = "") -> list[torch.Tensor]:
    """The four stage outputs of the paper's MPViT for the authors' state dict `sd` (keys under `prefix`)."""
    x = _conv_bn(pixels, sd, prefix + "stem.0.", stride=2)
    x = _conv_bn(x, sd, prefix + "stem.1.", stride=2)
    outputs = []
    for i, dim in enumerate(arch["embed_dims"]):
        embeddings = []
        for p in range(arch["num_path"][i]):  # chained: path p sees p + 1 depthwise 3x3 convolutions
            embed = f"{prefix}patch_embed_stages.{i}.patch_embeds.{p}.patch_conv."
            x = F.conv2d(x, sd[embed + "dwconv.weight"], stride=2 if i > 0 and p == 0 else 1, padding=1, groups=dim)
            x = F.hardswish(_batch_norm(F.conv2d(x, sd[embed + "pwconv.weight"]), sd, embed + "bn."))
            embeddings.append(x)
        stage = f"{prefix}mhca_stages.{i}."
        local = _conv_bn(embeddings[0], sd, stage + "InvRes.conv1.")
        local = F.conv2d(local, sd[stage + "InvRes.dwconv.weight"], padding=1, groups=dim)
        local = F.hardswish(_batch_norm(local, sd, stage + "InvRes.norm."))
        branches = [embeddings[0] + _conv_bn(local, sd, stage + "InvRes.conv2.", activation=False)]
        for p, embedding in enumerate(embeddings):
            batch, _, height, width = embedding.shape
            tokens = embedding.flatten(2).transpose(1, 2)
            for l in range(arch["num_layers"][i]):
                tokens = _block(tokens, sd, f"{stage}mhca_blks.{p}.MHCA_layers.{l}.", (height, width))
            branches.append(tokens.transpose(1, 2).reshape(batch, dim, height, width))
        x = _conv_bn(torch.cat(branches, dim=1), sd, stage + "aggregate.")
        outputs.append(x)
    return outputs


def calibrate_batch_norms(sd: dict, arch: dict, prefix: str = "") -> None:
    """Replace the backbone's random BatchNorm statistics in `sd` by those of a random batch. Random statistics
    compound over the deep real-size variants (logits of std ~80 for Small, ~700 for Base), where an absolute
    tolerance means little; used by the per-preset measurement below."""
    _CALIBRATING.append(True)
    try:
        with torch.no_grad():
            reference_backbone(sd, arch, _inputs((96, 96), seed=99), prefix=prefix)
    finally:
        _CALIBRATING.clear()


def reference_classifier(sd: dict, arch: dict, pixels: torch.Tensor) -> torch.Tensor:
    pooled = reference_backbone(sd, arch, pixels)[-1].mean(dim=(2, 3))
    return F.linear(pooled, sd["cls_head.cls.weight"], sd["cls_head.cls.bias"])


def _inputs(size, seed=0):
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def _alias_count(arch: dict) -> int:
    """cpe (2 tensors) and crpe (6 tensors) repeated: cpe once and crpe twice per block."""
    return sum(paths * layers * (2 + 2 * 6) for paths, layers in zip(arch["num_path"], arch["num_layers"]))


# --- parity -----------------------------------------------------------------------------------------------------------


def test_imagenet_layout_matches_reference():
    state = authors_imagenet(TINY, seed=1)
    assert detect_mpvit_layout(state) == "original"
    converted = convert_mpvit_checkpoint(state, dict(TINY_CONFIG, num_labels=NUM_CLASSES), preset_name="tiny-mpvit",
                                         task="classification")
    assert type(converted.state_dict) is dict and converted.source == "original"
    assert converted.dropped == {ALIAS_REASON: [key for key in state if ".MHCA_layers." in key and (
        ".cpe." in key or ".crpe." in key)]}
    assert len(converted.dropped[ALIAS_REASON]) == _alias_count(TINY)
    assert len(converted.state_dict) == len(state) - _alias_count(TINY)
    model = converted.build_model()
    assert type(model).__name__ == "MPViTForImageClassification"
    worst = 0.0
    for size in SIZES:
        pixels = _inputs(size)
        with torch.no_grad():
            expected = reference_classifier(state, TINY, pixels)
            actual = model(pixel_values=pixels).logits
        assert expected.std() > 0.1  # random logits that differ by class and image: the comparison means something
        worst = max(worst, max_abs_diff(actual, expected))
    MEASURED["imagenet tiny"] = worst
    print(f"MPViT ImageNet (tiny): max |dlogit| = {worst:.2e}")
    assert worst <= TOLERANCE


def test_upernet_layout_matches_reference():
    state, decode, aux = authors_upernet(TINY, seed=3)
    converted = convert_mpvit_checkpoint(state, dict(TINY_CONFIG, num_labels=NUM_CLASSES,
                                                     out_features=["stage1", "stage2", "stage3", "stage4"]),
                                         preset_name="tiny-upernet-mpvit", task="segmentation")
    assert len(converted.dropped[ALIAS_REASON]) == _alias_count(TINY) and len(converted.dropped) == 1
    model = converted.build_model()
    assert type(model).__name__ == "MPViTForSemanticSegmentation" and converted.config.use_auxiliary_head
    worst = worst_aux = 0.0
    for size in SIZES:
        pixels = _inputs(size, seed=1)
        with torch.no_grad():
            features = reference_backbone(state, TINY, pixels, prefix="backbone.")
            expected = F.interpolate(decode(features), size=size, mode="bilinear", align_corners=False)
            actual = model(pixel_values=pixels).logits
            ours = model.backbone(pixels).feature_maps
            worst_aux = max(worst_aux, max_abs_diff(model.auxiliary_head(list(features)), aux(features)))
        assert expected.std() > 0.1
        assert [tuple(f.shape) for f in ours] == [tuple(f.shape) for f in features]
        worst = max(worst, max_abs_diff(actual, expected))
    MEASURED["upernet tiny"] = worst
    print(f"MPViT UperNet (tiny): max |dlogit| = {worst:.2e} (auxiliary head {worst_aux:.2e})")
    assert worst <= TOLERANCE and worst_aux <= TOLERANCE


def test_upernet_without_auxiliary_head_and_with_other_head_widths():
    """The auxiliary head (training only) is taken as the file has it; the decode head's width must be the preset's."""
    state, _, _ = authors_upernet(TINY, seed=8)
    no_aux = {key: value for key, value in state.items() if not key.startswith("auxiliary_head.")}
    preset = dict(TINY_CONFIG, num_labels=NUM_CLASSES, out_features=["stage1", "stage2", "stage3", "stage4"])
    converted = convert_mpvit_checkpoint(no_aux, preset, preset_name="tiny-upernet-mpvit")
    assert converted.config.use_auxiliary_head is False
    assert not any(key.startswith("auxiliary_head.") for key in converted.state_dict)
    wider, _, _ = authors_upernet(TINY, seed=8, decoder=24)
    with pytest.raises(ConversionError, match=r"decoder_hidden_size 24 \(checkpoint\) vs 16 \(preset\)"):
        convert_mpvit_checkpoint(wider, preset, preset_name="tiny-upernet-mpvit")


def test_real_size_mpvit_tiny_through_the_script(tmp_path, capsys):
    """The real `mpvit-tiny` preset (5.8M parameters, random weights), through the command line: 873 source keys
    (MODELS.md §5.4), 322 aliases consumed, the folder loads with the Auto classes and gives the reference logits."""
    arch = dict(embed_dims=[64, 96, 176, 216], num_path=[2, 3, 3, 3], num_layers=[1, 2, 4, 1], mlp_ratios=[2] * 4)
    state = authors_imagenet(arch, seed=5, num_classes=1000)
    assert len(state) == 873
    path = tmp_path / "mpvit_tiny.pth"
    torch.save({"model": state}, path)
    output = tmp_path / "mpvit-tiny-converted"
    assert main("mpvit", ["--checkpoint", str(path), "--model-name", "mpvit-tiny", "--output-dir", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "(original layout)" in printed and f"dropped {873 - 551} source keys on purpose" in printed
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(output).eval()
    assert sum(p.numel() for p in model.parameters()) == 5_843_736  # the authors' docstring count
    worst = 0.0
    for size in [(96, 96), (64, 96)]:
        pixels = _inputs(size, seed=2)
        with torch.no_grad():
            expected = reference_classifier(state, arch, pixels)
            worst = max(worst, max_abs_diff(model(pixel_values=pixels).logits, expected))
        assert expected.std() > 0.1
    MEASURED["imagenet mpvit-tiny"] = worst
    print(f"mpvit-tiny (real size): max |dlogit| = {worst:.2e} (logits: std {expected.std():.2f}, "
          f"max |.| {expected.abs().max():.2f})")
    assert worst <= TOLERANCE
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["MPViTForImageClassification"] and len(config["id2label"]) == 1000
    card = (output / "README.md").read_text()
    for text in ("license: gpl-3.0", "youngwanLEE/MPViT", "arxiv.org/abs/2112.11010", "GPL-3.0, or ETRI's commercial",
                 "ImageNet-1k top-1 (%) (source):** 78.2", "Parity:** max |Δlogit|", "mpvit_tiny.pth",
                 "AutoModelForImageClassification"):
        assert text in card, text


# The eight presets of the design's conversion contract: the authors' layout of each converts strictly.
_ARCHS = {
    "tiny": dict(embed_dims=[64, 96, 176, 216], num_layers=[1, 2, 4, 1], mlp_ratios=[2] * 4),
    "xsmall": dict(embed_dims=[64, 128, 192, 256], num_layers=[1, 2, 4, 1], mlp_ratios=[4] * 4),
    "small": dict(embed_dims=[64, 128, 216, 288], num_layers=[1, 3, 6, 3], mlp_ratios=[4] * 4),
    "base": dict(embed_dims=[128, 224, 368, 480], num_layers=[1, 3, 8, 3], mlp_ratios=[4] * 4),
}
_KEY_COUNTS = {"tiny": (873, 551), "xsmall": (873, 551), "small": (1263, 731), "base": (1419, 803)}  # MODELS.md §5.4


@pytest.mark.parametrize("size", sorted(_ARCHS))
def test_every_preset_converts_the_authors_layout(size):
    arch = dict(_ARCHS[size], num_path=[2, 3, 3, 3])
    imagenet = authors_imagenet(arch, seed=0, num_classes=1000, zeros=True)
    assert (len(imagenet), len(imagenet) - _alias_count(arch)) == _KEY_COUNTS[size]
    preset = get_preset(f"mpvit-{size}")
    converted = convert_mpvit_checkpoint(imagenet, preset.config, preset_name=preset.name, task="classification")
    assert len(converted.state_dict) == _KEY_COUNTS[size][1]

    from hf_seg.labels import load_label_set

    id2label = load_label_set("ade20k")[0]
    preset = get_preset(f"upernet-mpvit-{size}-ade20k-512")
    backbone = {f"backbone.{key}": value for key, value in imagenet.items() if not key.startswith("cls_head.")}
    decode, aux = mmseg_heads(arch, 0, decoder=512, auxiliary=256, num_classes=150)
    heads = {f"decode_head.{k}": v for k, v in decode.state_dict().items()}
    heads.update({f"auxiliary_head.{k}": v for k, v in aux.state_dict().items()})
    converted = convert_mpvit_checkpoint({**backbone, **heads}, preset.config, preset_name=preset.name,
                                         task="segmentation", id2label=id2label)
    assert len(converted.state_dict) == _KEY_COUNTS[size][1] - 2 + len(heads)
    assert converted.config.id2label[0] == "wall" and converted.config.num_labels == 150


# --- the command line on tiny presets ---------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def tiny_presets():
    PRESETS.update({preset.name: preset for preset in TINY_PRESETS})
    yield
    for preset in TINY_PRESETS:
        PRESETS.pop(preset.name, None)


@pytest.fixture(scope="module")
def upernet_checkpoint(tmp_path_factory):
    state, decode, aux = authors_upernet(TINY, seed=7)
    path = tmp_path_factory.mktemp("ckpt") / "upernet_mpvit_tiny.pth"
    torch.save({"meta": {"CLASSES": ["c"] * NUM_CLASSES, "mmseg_version": "0.11.0"}, "state_dict": state}, path)
    return path, state, decode


def test_upernet_script_writes_a_hub_folder_that_loads_without_hf_seg(upernet_checkpoint, tmp_path):
    path, state, decode = upernet_checkpoint
    output = tmp_path / "upernet-out"
    image = tmp_path / "image.png"
    from PIL import Image

    pixels_uint8 = (torch.rand(70, 90, 3, generator=torch.Generator().manual_seed(5)) * 255).byte()
    Image.fromarray(pixels_uint8.numpy()).save(image)
    result = run_script("mpvit", ["--checkpoint", str(path), "--model-name", "tiny-upernet-mpvit", "--output-dir",
                                  str(output), "--verify", str(image)], TINY_DICTS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(original layout)" in result.stdout and "predicted: 'LABEL_" in result.stdout
    assert f"dropped {_alias_count(TINY)} source keys on purpose" in result.stdout and "more)" in result.stdout
    files = {p.name for p in output.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "configuration_mpvit.py",
            "modeling_mpvit.py", "image_processing_setr.py"} <= files, files
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "mpvit" and len(config["id2label"]) == NUM_CLASSES
    assert config["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_mpvit.MPViTForSemanticSegmentation"
    assert config["hidden_sizes"] == TINY["embed_dims"] and config["mlp_ratios"] == TINY["mlp_ratios"]
    card = (output / "README.md").read_text()
    for text in ("license: gpl-3.0", "image-segmentation", "youngwanLEE/MPViT", "Reported mIoU (source):** not stated",
                 "upernet_mpvit_tiny.pth", f"{_alias_count(TINY)} keys (aliases of each path encoder"):
        assert text in card, text

    pixels = _inputs(SIZES[1], seed=4)[:1]
    logits, (module, name, _, imported) = load_without_hf_seg(output, tmp_path, pixels)
    assert module.startswith("transformers_modules") and name == "MPViTForSemanticSegmentation" and imported == "False"
    with torch.no_grad():
        expected = F.interpolate(decode(reference_backbone(state, TINY, pixels, prefix="backbone.")), size=SIZES[1],
                                 mode="bilinear", align_corners=False)
    assert max_abs_diff(logits, expected) <= TOLERANCE


def test_classifier_verify_and_push_to_hub(tiny_presets, tmp_path, capsys, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, exist_ok):
            calls.append(("create", repo_id))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())))

    import huggingface_hub
    from PIL import Image

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    path = tmp_path / "mpvit.pth"
    torch.save({"model": authors_imagenet(TINY, seed=9), "epoch": 299}, path)
    image = tmp_path / "image.png"
    pixels_uint8 = (torch.rand(80, 70, 3, generator=torch.Generator().manual_seed(6)) * 255).byte()
    Image.fromarray(pixels_uint8.numpy()).save(image)
    status = main("mpvit", ["--checkpoint", str(path), "--model-name", "tiny-mpvit", "--output-dir",
                            str(tmp_path / "out"), "--verify", str(image), "--push-to-hub", "me/tiny-mpvit"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    predicted = [line for line in captured.out.splitlines() if line.startswith("predicted: 'LABEL_")]
    assert len(predicted) == NUM_CLASSES  # top-5 of 5 classes, with probabilities
    assert calls[0] == ("create", "me/tiny-mpvit") and "model.safetensors" in calls[1][2]
    assert "uploaded to https://huggingface.co/me/tiny-mpvit" in captured.out


# --- error paths ------------------------------------------------------------------------------------------------------


def _error(tmp_path, capsys, state_dict, preset="tiny-upernet-mpvit", extra=(), wrapper="state_dict"):
    path = tmp_path / "bad.pth"
    torch.save({wrapper: state_dict}, path)
    status = main("mpvit", ["--checkpoint", str(path), "--model-name", preset, "--output-dir", str(tmp_path / "out"),
                            *extra])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    return err


def test_error_paths_name_the_problem(tiny_presets, upernet_checkpoint, tmp_path, capsys):
    _, state, _ = upernet_checkpoint
    extra = dict(state, **{"backbone.mhca_stages.0.extra.weight": torch.zeros(2)})
    assert "1 unconsumed source keys: backbone.mhca_stages.0.extra.weight" in _error(tmp_path, capsys, extra)

    missing = {k: v for k, v in state.items() if k != "backbone.mhca_stages.1.InvRes.norm.running_var"}
    err = _error(tmp_path, capsys, missing)
    assert "missing target keys (the source does not provide them): " \
           "backbone.encoder.stages.1.local_branch.batch_norm.running_var" in err

    wrong = dict(state, **{"backbone.mhca_stages.2.mhca_blks.1.MHCA_layers.0.mlp.fc2.bias": torch.zeros(33)})
    err = _error(tmp_path, capsys, wrong)
    assert "shape mismatches (source vs target): backbone.encoder.stages.2.paths.1.layers.0.mlp.fc2.bias (from " \
           "backbone.mhca_stages.2.mhca_blks.1.MHCA_layers.0.mlp.fc2.bias): (33,) vs (32,)" in err

    alias = "backbone.mhca_stages.1.mhca_blks.2.MHCA_layers.1.factoratt_crpe.crpe.conv_list.1.weight"
    corrupt = dict(state, **{alias: state[alias] + 1e-3})
    err = _error(tmp_path, capsys, corrupt)
    assert f"1 alias keys that differ from the shared module they repeat (the authors' code shares one tensor, so " \
           f"the file is corrupt): {alias} vs backbone.mhca_stages.1.mhca_blks.2.crpe.conv_list.1.weight" in err
    orphan = {k: v for k, v in state.items() if k != "backbone.mhca_stages.0.mhca_blks.0.cpe.proj.bias"}
    err = _error(tmp_path, capsys, orphan)
    assert "alias keys without the shared module they repeat: backbone.mhca_stages.0.mhca_blks.0.MHCA_layers.0." \
           "cpe.proj.bias (no backbone.mhca_stages.0.mhca_blks.0.cpe.proj.bias)" in err

    err = _error(tmp_path, capsys, state, preset="upernet-mpvit-small-ade20k-512")
    assert "the checkpoint is not a 'upernet-mpvit-small-ade20k-512' checkpoint: hidden_sizes [16, 24, 32, 40] " \
           "(checkpoint) vs [64, 128, 216, 288] (preset)" in err and "num_labels 5 (checkpoint) vs 150 (preset)" in err
    err = _error(tmp_path, capsys, state, preset="tiny-mpvit")
    assert "a segmentation checkpoint (backbone.* / decode_head.* keys) cannot be converted for the ImageNet " \
           "classifier preset 'tiny-mpvit'" in err
    imagenet = authors_imagenet(TINY, seed=2)
    err = _error(tmp_path, capsys, imagenet, wrapper="model")
    assert "an ImageNet or backbone-only checkpoint (no backbone.* / decode_head.* keys) cannot be converted for " \
           "the UperNet preset 'tiny-upernet-mpvit'" in err
    backbone_only = {k: v for k, v in imagenet.items() if not k.startswith("cls_head.")}
    err = _error(tmp_path, capsys, backbone_only, preset="tiny-mpvit")
    assert "has no ImageNet classifier (cls_head.cls.*)" in err and "mpvit_*_mm.pth" in err
    err = _error(tmp_path, capsys, dict(imagenet, **{"cls_head.cls.weight": torch.zeros(7, 40),
                                                     "cls_head.cls.bias": torch.zeros(7)}), preset="tiny-mpvit")
    assert "num_labels 7 (checkpoint) vs 5 (preset)" in err
    other_paths = authors_imagenet(dict(TINY, num_path=[2, 3, 3, 2]), seed=2)
    err = _error(tmp_path, capsys, other_paths, preset="tiny-mpvit")
    assert "num_paths [2, 3, 3, 2] (checkpoint) vs [2, 3, 2, 2] (preset)" in err

    err = _error(tmp_path, capsys, state, extra=["--source", "mmseg"])
    assert "mmsegmentation 1.x has no MPViT" in err and "youngwanLEE/MPViT" in err
    segformer_like = {"backbone.patch_embed1.proj.weight": torch.zeros(8, 3, 7, 7)}
    assert "not a MPViT checkpoint in any known layout (original)" in _error(tmp_path, capsys, segformer_like)
    err = _error(tmp_path, capsys, state, preset="mpvit-huge")
    assert "unknown preset 'mpvit-huge' for convert_mpvit.py; valid names: mpvit-base, mpvit-small, mpvit-tiny, " \
           "mpvit-xsmall, tiny-mpvit, tiny-upernet-mpvit, upernet-mpvit-base-ade20k-512" in err
    err = _error(tmp_path, capsys, state, preset="segformer-b0-ade20k-512")
    assert "is a segformer preset, not one convert_mpvit.py handles (mpvit, upernet)" in err


def test_script_exit_status_on_a_truncated_file(upernet_checkpoint, tmp_path):
    path, _, _ = upernet_checkpoint
    data = path.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 3])
    result = run_script("mpvit", ["--checkpoint", str(tmp_path / "truncated.pth"), "--model-name",
                                  "upernet-mpvit-tiny-ade20k-512", "--output-dir", str(tmp_path / "out")])
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: cannot read checkpoint") and "truncated or corrupt" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def measure_every_preset(calibrate: bool = True) -> dict:
    """Max |logit difference| per real-size preset (random weights, fp32, inputs 64x64 and 56x88), against the
    reference; `python tests/test_convert_mpvit.py [--random-statistics]` prints it (conversion/README.md)."""
    from hf_seg.labels import load_label_set

    id2label = load_label_set("ade20k")[0]
    results = {}
    for size, arch in _ARCHS.items():
        arch = dict(arch, num_path=[2, 3, 3, 3])
        state = authors_imagenet(arch, seed=11, num_classes=1000)
        if calibrate:
            calibrate_batch_norms(state, arch)
        preset = get_preset(f"mpvit-{size}")
        converted = convert_mpvit_checkpoint(state, preset.config, preset_name=preset.name, task="classification")
        model = converted.build_model()
        worst = scale = 0.0
        for shape in SIZES:
            pixels = _inputs(shape, seed=3)[:1]
            with torch.no_grad():
                expected = reference_classifier(state, arch, pixels)
                worst = max(worst, max_abs_diff(model(pixel_values=pixels).logits, expected))
            scale = max(scale, float(expected.std()))
        results[preset.name] = (worst, scale)

        state, decode, aux = authors_upernet(arch, seed=12, decoder=512, auxiliary=256, num_classes=150)
        if calibrate:
            calibrate_batch_norms(state, arch, prefix="backbone.")
        preset = get_preset(f"upernet-mpvit-{size}-ade20k-512")
        converted = convert_mpvit_checkpoint(state, preset.config, preset_name=preset.name, task="segmentation",
                                             id2label=id2label)
        model = converted.build_model()
        worst = scale = 0.0
        for shape in SIZES:
            pixels = _inputs(shape, seed=4)[:1]
            with torch.no_grad():
                features = reference_backbone(state, arch, pixels, prefix="backbone.")
                expected = F.interpolate(decode(features), size=shape, mode="bilinear", align_corners=False)
                worst = max(worst, max_abs_diff(model(pixel_values=pixels).logits, expected))
            scale = max(scale, float(expected.std()))
        results[preset.name] = (worst, scale)
    return results


if __name__ == "__main__":
    calibrated = "--random-statistics" not in sys.argv
    print(f"BatchNorm statistics: {'calibrated on a random batch' if calibrated else 'random'}")
    for name, (worst, scale) in measure_every_preset(calibrated).items():
        print(f"{name:36s} max |dlogit| {worst:.1e}  (logit std {scale:.2f})")
