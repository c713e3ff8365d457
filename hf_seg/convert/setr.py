# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""SETR state dicts of mmsegmentation 1.x and of the authors (fudan-zvg/SETR) -> hf_seg's `SetrForSemanticSegmentation`
(pure functions, no I/O; the authors' layout is described further down).

Source layout: what mmseg 1.x's `EncoderDecoder.state_dict()` gives (and what its checkpoints hold under
`state_dict`): `backbone.*` (`VisionTransformer`), `neck.*` (`MLANeck`, MLA only), `decode_head.*` (`SETRUPHead` or
`SETRMLAHead`), and `auxiliary_head.*` (one head) or `auxiliary_head.{k}.*` (a list: `SETRUPHead` for Naive/PUP,
`FCNHead` for MLA). Unwrapping a checkpoint file (`state_dict` / `module.` prefixes) is the caller's job.

The mapping is a rename table plus three real transforms:

* the fused attention input projection `in_proj_{weight,bias}` ([3D, D], rows q | k | v) is split into
  `q_proj` / `k_proj` / `v_proj`;
* MLA index reversal: mmseg's MLA neck returns its maps deep -> shallow and its head's branches follow that order,
  hf_seg orders them shallow -> deep. So `neck.mla.feat_extract.{j}` -> `neck.output_convs.{N-1-j}`,
  `decode_head.up_convs.{j}` -> `decode_head.branches.{N-1-j}`, and an auxiliary head reading mmseg neck output `j`
  reads hf_seg level `N-1-j` (expressed in `auxiliary_in_indices`, the head keeps its index);
* MLA classifier permutation: mmseg concatenates the branches deep -> shallow before its 1x1 classifier, hf_seg
  shallow -> deep, so the classifier's input-channel blocks are reversed.

`setr_config_overrides_for_mmseg` reads what the state dict determines (sizes, number of convolutions, kernel sizes,
biases) and takes what it cannot (which encoder layers feed the heads, upsampling factors, number of heads) from
arguments whose defaults are mmseg 1.x's SETR configs (`configs/setr/*.py`, `configs/_base_/models/setr_*.py`).
`convert_mmseg_setr_state_dict` is strict: every source key is consumed, every target key is filled and every shape
matches, otherwise a `ConversionError` (a `ValueError`) names the offending keys.
"""

import math
import re
from collections.abc import Callable, Mapping, Sequence

import torch

from .common import (
    ConversionError,
    ConvertedCheckpoint,
    Converted,
    Rule,
    apply_rules,
    check_fits_preset,
    detect_layout,
    indexed,
    model_shapes,
    require,
)


# What mmseg 1.x's SETR configs set and a state dict cannot tell: the backbone's `out_indices`, the decode head's
# `in_index` into them, and the heads' `up_scale` (SETRUPHead's default 4 for every auxiliary head).
MMSEG_SETR_DEFAULTS = {
    "naive": dict(out_indices=(9, 14, 19, 23), decode_in_index=3, decoder_upsample_scale=4),
    "pup": dict(out_indices=(9, 14, 19, 23), decode_in_index=3, decoder_upsample_scale=2),
    "mla": dict(out_indices=(5, 11, 17, 23)),
}
MMSEG_SETRUPHEAD_UP_SCALE = 4
MMSEG, ORIGINAL = "mmsegmentation 1.x SETR", "fudan-zvg/SETR"

_PARAM = r"(?P<param>weight|bias)"
_BN_PARAM = r"(?P<param>weight|bias|running_mean|running_var|num_batches_tracked)"
_AUX = r"auxiliary_head\.(?:(?P<aux>\d+)\.)?"  # a list of heads (`.{k}.`) or a single head (index 0)

def _conv_module(source: str, target: str) -> list[Rule]:
    """mmcv `ConvModule` (`conv`, `bn`) -> hf_seg's `SetrConvModule` (`conv`, `batch_norm`). `source` is a
    key-prefix pattern and `target` a key-prefix template, both ending with the dot."""
    return [
        Rule(rf"{source}conv\.{_PARAM}", f"{target}conv.{{param}}"),
        Rule(rf"{source}bn\.{_BN_PARAM}", f"{target}batch_norm.{{param}}"),
    ]


def _split_qkv(groups: dict, tensor: torch.Tensor) -> Converted:
    """`in_proj_{weight,bias}` [3D(, D)], rows q | k | v -> three [D(, D)] projections (cloned: no shared storage)."""
    if tensor.shape[0] % 3:
        raise ValueError(f"backbone.layers.{groups['i']}.attn.attn.in_proj_{groups['param']}: first dimension "
                         f"{tensor.shape[0]} is not 3 x hidden size")
    prefix = f"setr.layers.{groups['i']}.attention"
    return [
        (f"{prefix}.{name}_proj.{groups['param']}", part.clone())
        for name, part in zip("qkv", tensor.chunk(3, dim=0))
    ]


def _reversed(num_levels: int, template: str) -> Callable[[dict, torch.Tensor], Converted]:
    """A template whose `{level}` is the mirrored index `num_levels - 1 - level` (deep->shallow to shallow->deep)."""

    def rename(groups: dict, tensor: torch.Tensor) -> Converted:
        level = int(groups.pop("level"))
        if not 0 <= level < num_levels:
            return []  # no such level in the target: the key stays unconsumed and is reported
        return [(template.format(level=num_levels - 1 - level, **groups), tensor)]

    return rename


def _reverse_input_blocks(num_levels: int) -> Callable[[dict, torch.Tensor], Converted]:
    """MLA classifier weight [nc, N*C, k, k]: reverse the order of its N input-channel blocks."""

    def permute(groups: dict, tensor: torch.Tensor) -> Converted:
        if tensor.ndim != 4 or tensor.shape[1] % num_levels:
            raise ValueError(f"decode_head.conv_seg.weight: shape {tuple(tensor.shape)} does not split into "
                             f"{num_levels} input-channel blocks")
        blocks = tensor.chunk(num_levels, dim=1)
        return [("decode_head.classifier.weight", torch.cat(blocks[::-1], dim=1))]

    return permute


def _rules(decoder_type: str, num_levels: int) -> list[Rule]:
    rules = [
        Rule(r"backbone\.cls_token", "setr.embeddings.cls_token"),
        Rule(r"backbone\.pos_embed", "setr.embeddings.position_embeddings"),
        Rule(rf"backbone\.patch_embed\.projection\.{_PARAM}", "setr.embeddings.projection.{param}"),
        Rule(rf"backbone\.layers\.(?P<i>\d+)\.ln1\.{_PARAM}", "setr.layers.{i}.layernorm_before.{param}"),
        Rule(rf"backbone\.layers\.(?P<i>\d+)\.attn\.attn\.in_proj_{_PARAM}", _split_qkv),
        Rule(rf"backbone\.layers\.(?P<i>\d+)\.attn\.attn\.out_proj\.{_PARAM}",
              "setr.layers.{i}.attention.o_proj.{param}"),
        Rule(rf"backbone\.layers\.(?P<i>\d+)\.ln2\.{_PARAM}", "setr.layers.{i}.layernorm_after.{param}"),
        Rule(rf"backbone\.layers\.(?P<i>\d+)\.ffn\.layers\.0\.0\.{_PARAM}", "setr.layers.{i}.mlp.fc1.{param}"),
        Rule(rf"backbone\.layers\.(?P<i>\d+)\.ffn\.layers\.1\.{_PARAM}", "setr.layers.{i}.mlp.fc2.{param}"),
    ]
    if decoder_type == "mla":
        rules += [
            Rule(rf"neck\.norm\.(?P<i>\d+)\.{_PARAM}", "neck.layer_norms.{i}.{param}"),
            *_conv_module(r"neck\.mla\.channel_proj\.(?P<i>\d+)\.", "neck.lateral_convs.{i}."),
            Rule(rf"neck\.mla\.feat_extract\.(?P<level>\d+)\.conv\.{_PARAM}",
                  _reversed(num_levels, "neck.output_convs.{level}.conv.{param}")),
            Rule(rf"neck\.mla\.feat_extract\.(?P<level>\d+)\.bn\.{_BN_PARAM}",
                  _reversed(num_levels, "neck.output_convs.{level}.batch_norm.{param}")),
            Rule(rf"decode_head\.up_convs\.(?P<level>\d+)\.(?P<j>[01])\.conv\.{_PARAM}",
                  _reversed(num_levels, "decode_head.branches.{level}.{j}.conv.{param}")),
            Rule(rf"decode_head\.up_convs\.(?P<level>\d+)\.(?P<j>[01])\.bn\.{_BN_PARAM}",
                  _reversed(num_levels, "decode_head.branches.{level}.{j}.batch_norm.{param}")),
            Rule(r"decode_head\.conv_seg\.weight", _reverse_input_blocks(num_levels)),
            Rule(r"decode_head\.conv_seg\.bias", "decode_head.classifier.bias"),
            # FCNHead auxiliary heads on the neck outputs (num_convs=0 in the configs: the classifier only)
            *_conv_module(rf"{_AUX}convs\.(?P<i>\d+)\.", "auxiliary_heads.{aux}.convs.{i}."),
            Rule(rf"{_AUX}conv_seg\.{_PARAM}", "auxiliary_heads.{aux}.classifier.{param}"),
        ]
    else:
        for source, target in ((r"decode_head\.", "decode_head."), (_AUX, "auxiliary_heads.{aux}.")):
            rules += [
                Rule(rf"{source}norm\.{_PARAM}", f"{target}layer_norm.{{param}}"),
                *_conv_module(rf"{source}up_convs\.(?P<i>\d+)\.0\.", f"{target}convs.{{i}}."),
                Rule(rf"{source}conv_seg\.{_PARAM}", f"{target}classifier.{{param}}"),
            ]
    return rules


# --- configuration ---------------------------------------------------------------------------------------------------


def _auxiliary_heads(state_dict: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """{head index: {key relative to the head: tensor}}; a single `auxiliary_head.*` head is index 0."""
    heads: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = re.fullmatch(r"auxiliary_head\.(?:(\d+)\.)?(.+)", key)
        if match:
            heads.setdefault(int(match.group(1) or 0), {})[match.group(2)] = tensor
    return dict(sorted(heads.items()))


def detect_mmseg_setr_decoder(state_dict: Mapping[str, torch.Tensor]) -> str:
    """"mla" when an MLA neck is present; otherwise "naive" for one 1x1 convolution in the decode head (mmseg's naive
    config) and "pup" for anything else (mmseg's PUP config has four 3x3 convolutions)."""
    if any(key.startswith("neck.") for key in state_dict):
        return "mla"
    convs = indexed(state_dict, r"decode_head\.up_convs\.(\d+)\.0\.conv\.weight")
    if not convs:
        raise ValueError("not an mmsegmentation 1.x SETR state dict: no neck.* and no decode_head.up_convs.* keys")
    return "naive" if len(convs) == 1 and convs[0].shape[-1] == 1 else "pup"


def setr_config_overrides_for_mmseg(
    state_dict: Mapping[str, torch.Tensor],
    decoder_type: str | None = None,
    *,
    out_indices: Sequence[int] | None = None,
    decode_in_index: int | None = None,
    auxiliary_in_index: Sequence[int] | None = None,
    decoder_upsample_scale: int | None = None,
    auxiliary_upsample_scale: int | None = None,
    num_attention_heads: int | None = None,
    image_size: int | Sequence[int] | None = None,
    drop_auxiliary_heads: bool = False,
) -> dict:
    """`SetrConfig` fields that make hf_seg's SETR compute what mmseg 1.x computes for `state_dict`.

    Read from the state dict: encoder sizes (hidden size, layers, MLP width, patch size, `image_size` from the
    position-embedding grid, assumed square unless given), `patch_bias` (True only if
    `backbone.patch_embed.projection.bias` is present: mmseg 1.x builds SETR without it), `head_conv_bias`, the
    decoder type (`detect_mmseg_setr_decoder`), channels, number of convolutions and kernel sizes of the decode and
    auxiliary heads.

    Taken from the arguments, with mmseg 1.x's SETR configs as defaults (`MMSEG_SETR_DEFAULTS`):
        out_indices: the backbone's `out_indices` (encoder layers handed to the heads).
        decode_in_index: the Naive/PUP decode head's `in_index` into them.
        auxiliary_in_index: each auxiliary head's `in_index` (default 0, 1, 2, ... in head order): into `out_indices`
            for Naive/PUP, into the MLA neck's outputs (deep -> shallow) for MLA.
        decoder_upsample_scale / auxiliary_upsample_scale: the heads' `up_scale` (naive 4, PUP 2; auxiliary
            SETRUPHeads 4; FCNHead auxiliary heads do not upsample).
        num_attention_heads: default hidden_size // 64 (every SETR encoder has 64-dimensional heads).
        drop_auxiliary_heads: build no auxiliary head (pass the same flag to `convert_mmseg_setr_state_dict`).

    The number of labels is not included (it belongs with the label names); the converter's shape check refuses a
    config whose `num_labels` differs from the checkpoint's classifier.
    """
    decoder_type = decoder_type or detect_mmseg_setr_decoder(state_dict)
    if decoder_type not in MMSEG_SETR_DEFAULTS:
        raise ValueError(f"decoder_type={decoder_type!r} is not one of {tuple(MMSEG_SETR_DEFAULTS)}")
    defaults = MMSEG_SETR_DEFAULTS[decoder_type]

    patch_weight = require(state_dict, "backbone.patch_embed.projection.weight", MMSEG)
    position_embeddings = require(state_dict, "backbone.pos_embed", ORIGINAL)
    hidden_size, num_channels, patch_size = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[-1]
    layers = indexed(state_dict, r"backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\.weight")
    if not layers:
        raise ValueError("not an mmsegmentation 1.x SETR state dict: no backbone.layers.{i}.ffn.layers.0.0.weight")
    if image_size is None:
        grid = math.isqrt(position_embeddings.shape[1] - 1)
        if grid * grid != position_embeddings.shape[1] - 1:
            raise ValueError(f"backbone.pos_embed has {position_embeddings.shape[1] - 1} patch positions, not a "
                             "square grid: pass image_size=(height, width)")
        image_size = grid * patch_size
    overrides = dict(
        image_size=image_size if isinstance(image_size, int) else list(image_size),
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=len(layers),
        num_attention_heads=num_attention_heads or max(hidden_size // 64, 1),
        intermediate_size=layers[0].shape[0],
        qkv_bias="backbone.layers.0.attn.attn.in_proj_bias" in state_dict,
        patch_bias="backbone.patch_embed.projection.bias" in state_dict,
        layer_norm_eps=1e-6,  # backbone_norm_cfg and the heads' / neck's norm_layer in every SETR config
        decoder_type=decoder_type,
    )
    out_indices = list(defaults["out_indices"] if out_indices is None else out_indices)

    if decoder_type == "mla":
        lateral = require(state_dict, "neck.mla.channel_proj.0.conv.weight", MMSEG)
        branch = require(state_dict, "decode_head.up_convs.0.0.conv.weight", MMSEG)
        classifier = require(state_dict, "decode_head.conv_seg.weight", MMSEG)
        num_levels = len(indexed(state_dict, r"neck\.mla\.channel_proj\.(\d+)\.conv\.weight"))
        if len(out_indices) != num_levels:
            raise ValueError(f"out_indices={out_indices} must name one encoder layer per MLA neck input "
                             f"({num_levels} inputs)")
        overrides.update(
            mla_in_indices=out_indices,
            mla_channels=lateral.shape[0],
            mla_head_channels=branch.shape[0],
            mla_head_align_corners=False,
            mla_classifier_kernel_size=classifier.shape[-1],
        )
    else:
        convs = indexed(state_dict, r"decode_head\.up_convs\.(\d+)\.0\.conv\.weight")
        decode_in_index = defaults["decode_in_index"] if decode_in_index is None else decode_in_index
        overrides.update(
            decoder_in_index=out_indices[decode_in_index],
            decoder_channels=convs[0].shape[0],
            decoder_num_convs=len(convs),
            decoder_kernel_size=convs[0].shape[-1],
            decoder_upsample_scale=decoder_upsample_scale or defaults["decoder_upsample_scale"],
            head_conv_bias="decode_head.up_convs.0.0.conv.bias" in state_dict,
        )

    heads = {} if drop_auxiliary_heads else _auxiliary_heads(state_dict)
    if list(heads) != list(range(len(heads))):
        raise ValueError(f"auxiliary heads {list(heads)} are not numbered 0..{len(heads) - 1}")
    auxiliary_in_index = list(range(len(heads)) if auxiliary_in_index is None else auxiliary_in_index)
    if len(auxiliary_in_index) != len(heads):
        raise ValueError(f"auxiliary_in_index={auxiliary_in_index} must give one index per auxiliary head "
                         f"({len(heads)} heads)")
    overrides["auxiliary_in_indices"] = []
    if heads:
        # every head must have the same structure: the config describes one
        layouts = {index: sorted(head) for index, head in heads.items()}
        if any(layout != layouts[0] for layout in layouts.values()):
            different = [index for index, layout in layouts.items() if layout != layouts[0]]
            raise ValueError(f"auxiliary heads {different} differ in structure from auxiliary head 0; hf_seg's "
                             "SetrConfig describes all auxiliary heads with one set of fields")
        head = heads[0]
        setr_up_head = "norm.weight" in head  # SETRUPHead (Naive/PUP); FCNHead (MLA) has no LayerNorm
        convs = indexed(head, r"up_convs\.(\d+)\.0\.conv\.weight" if setr_up_head else r"convs\.(\d+)\.conv\.weight")
        if decoder_type == "mla":
            num_levels = len(out_indices)
            overrides["auxiliary_in_indices"] = [num_levels - 1 - index for index in auxiliary_in_index]
        else:
            overrides["auxiliary_in_indices"] = [out_indices[index] for index in auxiliary_in_index]
        overrides.update(
            auxiliary_num_convs=len(convs),
            auxiliary_kernel_size=convs[0].shape[-1] if convs else 1,
            auxiliary_upsample_scale=auxiliary_upsample_scale or (MMSEG_SETRUPHEAD_UP_SCALE if setr_up_head else 1),
        )
        if convs:
            channels = convs[0].shape[0]
            if decoder_type == "mla":
                overrides["decoder_channels"] = channels  # used by the MLA auxiliary heads' convolutions only
                overrides["head_conv_bias"] = any(key.endswith(".conv.bias") for key in head)
            elif channels != overrides["decoder_channels"]:
                raise ValueError(f"auxiliary heads have {channels} channels, the decode head "
                                 f"{overrides['decoder_channels']}; hf_seg uses decoder_channels for both")
    return overrides


# --- state dict ------------------------------------------------------------------------------------------------------


def setr_target_shapes(config) -> dict[str, torch.Size]:
    """Key -> shape of `SetrForSemanticSegmentation(config).state_dict()`, built on the meta device (no memory)."""
    from ..models.setr.modeling_setr import SetrForSemanticSegmentation

    return model_shapes(SetrForSemanticSegmentation, config)


def convert_mmseg_setr_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config,
    *,
    drop_auxiliary_heads: bool = False,
    target_shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Map an mmseg 1.x SETR state dict onto `SetrForSemanticSegmentation(config)`'s keys.

    `config` is a `SetrConfig` built with `setr_config_overrides_for_mmseg(state_dict, ...)`. With
    `drop_auxiliary_heads=True` the source's `auxiliary_head.*` keys are consumed and discarded (the config must
    then have no auxiliary heads). `target_shapes` defaults to `setr_target_shapes(config)`.

    Raises `ValueError` naming every unconsumed source key, missing or doubly filled target key and shape mismatch.
    Tensors are passed through unchanged (not copied) except the split and permuted ones.
    """
    num_levels = len(config.mla_in_indices) if config.decoder_type == "mla" else 0
    expected = setr_target_shapes(config) if target_shapes is None else target_shapes
    drop = {r"auxiliary_head\..*": "auxiliary heads not converted (drop_auxiliary_heads=True)"} if drop_auxiliary_heads else None
    converted, _ = apply_rules(
        state_dict, _rules(config.decoder_type, num_levels), expected,
        what=f"mmseg SETR -> hf_seg SETR ({config.decoder_type}) conversion failed", drop=drop,
    )
    return converted


# --- the authors' layout (fudan-zvg/SETR, an mmseg 0.6 fork) ---------------------------------------------------------
#
# `backbone.*` is the timm-style ViT (`blocks.{i}.attn.qkv` fused, `patch_embed.proj` with bias); for MLA the backbone
# also holds `norm_{0..3}` and the MLA neck (`mla.mla_p{2..5}_1x1`, `mla.mla_p{2..5}`, shallow -> deep = hf_seg's
# order). Naive/PUP heads (`VisionTransformerUpHead`) are `norm`, `conv_{i}` + `syncbn_fc_{i}` and a last `conv_{n}`
# that is the classifier; the MLA head is `mlahead.head{2..5}.{0,1,3,4}` + a 3x3 `cls`. Every head also carries
# mmseg's `conv_seg`, which the authors' heads never call: it is dropped (listed). The MLA auxiliary heads' 1x1
# classifiers (`aux.weight`) have no bias; hf_seg's have one, filled with zeros (the same function).

ORIGINAL_SETR_DROPPED = {
    r"(?:decode_head|auxiliary_head\.\d+)\.conv_seg\.(?:weight|bias)": (
        "conv_seg of mmseg's BaseDecodeHead: never called by the authors' SETR heads (random, untrained)"
    ),
}

SETR_LAYOUT_SIGNATURES = {
    "original": r"backbone\.blocks\.\d+\.attn\.qkv\.weight",
    "mmseg": r"backbone\.layers\.\d+\.attn\.attn\.in_proj_weight",
}


def detect_setr_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """"original" (fudan-zvg/SETR) or "mmseg" (mmsegmentation 1.x), from the encoder's key names."""
    return detect_layout(state_dict, SETR_LAYOUT_SIGNATURES, "SETR")


def detect_original_setr_decoder(state_dict: Mapping[str, torch.Tensor]) -> str:
    """"mla" (an MLA head), "pup" (five head convolutions conv_0..conv_4) or "naive" (conv_0, conv_1)."""
    if any(key.startswith("decode_head.mlahead.") for key in state_dict):
        return "mla"
    convs = indexed(state_dict, r"decode_head\.conv_(\d+)\.weight")
    if not convs:
        raise ValueError("not a fudan-zvg/SETR state dict: no decode_head.mlahead.* and no decode_head.conv_{i}.*")
    return "pup" if len(convs) == 5 else "naive"


def _original_aux_heads(state_dict: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    heads: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = re.fullmatch(r"auxiliary_head\.(\d+)\.(.+)", key)
        if match and not match.group(2).startswith("conv_seg."):
            heads.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    return dict(sorted(heads.items()))


def setr_config_overrides_for_original(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """`SetrConfig` fields that a fudan-zvg/SETR state dict determines through its keys and shapes.

    Encoder sizes, `image_size` (square: the authors' model only runs at its training size), `patch_bias`,
    `head_conv_bias`, the decoder type and sizes, the authors' MLA head (`align_corners=True` upsampling, classifier
    kernel read from `cls`), and the number and structure of the auxiliary heads. What no shape tells (which encoder
    layers the heads read, attention heads, upsampling factors) comes from the preset. `num_labels` is included so
    that the caller can compare it with the preset's label set.
    """
    patch_weight = require(state_dict, "backbone.patch_embed.proj.weight", ORIGINAL)
    position_embeddings = require(state_dict, "backbone.pos_embed", ORIGINAL)
    layers = indexed(state_dict, r"backbone\.blocks\.(\d+)\.mlp\.fc1\.weight")
    if not layers:
        raise ConversionError(f"not a {ORIGINAL} state dict: no backbone.blocks.{{i}}.mlp.fc1.weight")
    grid = math.isqrt(position_embeddings.shape[1] - 1)
    if grid * grid != position_embeddings.shape[1] - 1:
        raise ValueError(f"backbone.pos_embed has {position_embeddings.shape[1] - 1} patch positions, not a square "
                         "grid as every fudan-zvg/SETR model has")
    decoder_type = detect_original_setr_decoder(state_dict)
    overrides = dict(
        image_size=grid * patch_weight.shape[-1],
        patch_size=patch_weight.shape[-1],
        num_channels=patch_weight.shape[1],
        hidden_size=patch_weight.shape[0],
        num_hidden_layers=len(layers),
        intermediate_size=layers[0].shape[0],
        qkv_bias="backbone.blocks.0.attn.qkv.bias" in state_dict,
        patch_bias="backbone.patch_embed.proj.bias" in state_dict,
        layer_norm_eps=1e-6,
        decoder_type=decoder_type,
    )
    if decoder_type == "mla":
        lateral = require(state_dict, "backbone.mla.mla_p2_1x1.0.weight", ORIGINAL)
        branch = require(state_dict, "decode_head.mlahead.head2.0.weight", ORIGINAL)
        classifier = require(state_dict, "decode_head.cls.weight", ORIGINAL)
        overrides.update(
            mla_channels=lateral.shape[0],
            mla_head_channels=branch.shape[0],
            mla_head_align_corners=True,
            mla_classifier_kernel_size=classifier.shape[-1],
            num_labels=classifier.shape[0],
        )
    else:
        convs = indexed(state_dict, r"decode_head\.conv_(\d+)\.weight")
        overrides.update(
            decoder_channels=convs[0].shape[0],
            decoder_num_convs=len(convs) - 1,
            decoder_kernel_size=convs[0].shape[-1],
            head_conv_bias="decode_head.conv_0.bias" in state_dict,
            num_labels=convs[len(convs) - 1].shape[0],
        )
    heads = _original_aux_heads(state_dict)
    if list(heads) != list(range(len(heads))):
        raise ValueError(f"auxiliary heads {list(heads)} are not numbered 0..{len(heads) - 1}")
    if heads:
        layouts = {index: sorted(head) for index, head in heads.items()}
        if any(layout != layouts[0] for layout in layouts.values()):
            raise ValueError("the auxiliary heads differ in structure; hf_seg's SetrConfig describes them with one "
                             "set of fields")
        head = heads[0]
        if decoder_type == "mla":
            if sorted(head) != ["aux.weight"]:
                raise ValueError(f"unsupported MLA auxiliary head (keys {sorted(head)}); the authors' configs build "
                                 "VIT_MLA_AUXIHead with in_channels=256, a single 1x1 `aux` convolution")
            overrides.update(auxiliary_num_convs=0, auxiliary_kernel_size=1)
        else:
            convs = indexed(head, r"conv_(\d+)\.weight")
            overrides.update(auxiliary_num_convs=len(convs) - 1, auxiliary_kernel_size=convs[0].shape[-1])
    overrides["num_auxiliary_heads"] = len(heads)
    return overrides


def _original_up_head_rules(source: str, target: str, num_convs: int) -> list[Rule]:
    """`VisionTransformerUpHead` (`norm`, `conv_{i}` + `syncbn_fc_{i}`, classifier `conv_{num_convs}`)."""

    def conv(groups: dict, tensor: torch.Tensor) -> Converted:
        index, param = int(groups["i"]), groups["param"]
        name = "classifier" if index == num_convs else f"convs.{index}.conv"
        return [(f"{target.format(**groups)}{name}.{param}", tensor)]

    return [
        Rule(rf"{source}norm\.{_PARAM}", f"{target}layer_norm.{{param}}"),
        Rule(rf"{source}conv_(?P<i>\d+)\.{_PARAM}", conv),
        Rule(rf"{source}syncbn_fc_(?P<i>\d+)\.{_BN_PARAM}", f"{target}convs.{{i}}.batch_norm.{{param}}"),
    ]


def _original_rules(config) -> list[Rule]:
    def split_qkv(groups: dict, tensor: torch.Tensor) -> Converted:
        prefix = f"setr.layers.{groups['i']}.attention"
        return [(f"{prefix}.{name}_proj.{groups['param']}", part.clone())
                for name, part in zip("qkv", tensor.chunk(3, dim=0))]

    def level(template: str) -> Callable[[dict, torch.Tensor], Converted]:
        def rename(groups: dict, tensor: torch.Tensor) -> Converted:
            groups = dict(groups, level=int(groups["level"]) - 2)  # p2 (shallowest) is hf_seg's level 0
            return [(template.format(**groups), tensor)]

        return rename

    def mla_aux(groups: dict, tensor: torch.Tensor) -> Converted:
        prefix = f"auxiliary_heads.{groups['aux']}.classifier"
        return [(f"{prefix}.weight", tensor), (f"{prefix}.bias", tensor.new_zeros(tensor.shape[0]))]

    rules = [
        Rule(r"backbone\.cls_token", "setr.embeddings.cls_token"),
        Rule(r"backbone\.pos_embed", "setr.embeddings.position_embeddings"),
        Rule(rf"backbone\.patch_embed\.proj\.{_PARAM}", "setr.embeddings.projection.{param}"),
        Rule(rf"backbone\.blocks\.(?P<i>\d+)\.norm1\.{_PARAM}", "setr.layers.{i}.layernorm_before.{param}"),
        Rule(rf"backbone\.blocks\.(?P<i>\d+)\.attn\.qkv\.{_PARAM}", split_qkv),
        Rule(rf"backbone\.blocks\.(?P<i>\d+)\.attn\.proj\.{_PARAM}", "setr.layers.{i}.attention.o_proj.{param}"),
        Rule(rf"backbone\.blocks\.(?P<i>\d+)\.norm2\.{_PARAM}", "setr.layers.{i}.layernorm_after.{param}"),
        Rule(rf"backbone\.blocks\.(?P<i>\d+)\.mlp\.(?P<fc>fc[12])\.{_PARAM}", "setr.layers.{i}.mlp.{fc}.{param}"),
    ]
    if config.decoder_type == "mla":
        rules += [
            Rule(rf"backbone\.norm_(?P<i>\d+)\.{_PARAM}", "neck.layer_norms.{i}.{param}"),
            Rule(rf"backbone\.mla\.mla_p(?P<level>[2-5])_1x1\.0\.{_PARAM}",
                  level("neck.lateral_convs.{level}.conv.{param}")),
            Rule(rf"backbone\.mla\.mla_p(?P<level>[2-5])_1x1\.1\.{_BN_PARAM}",
                  level("neck.lateral_convs.{level}.batch_norm.{param}")),
            Rule(rf"backbone\.mla\.mla_p(?P<level>[2-5])\.0\.{_PARAM}", level("neck.output_convs.{level}.conv.{param}")),
            Rule(rf"backbone\.mla\.mla_p(?P<level>[2-5])\.1\.{_BN_PARAM}",
                  level("neck.output_convs.{level}.batch_norm.{param}")),
        ]
        for source, target, kind in (("0", "0", "conv"), ("1", "0", "bn"), ("3", "1", "conv"), ("4", "1", "bn")):
            param = _PARAM if kind == "conv" else _BN_PARAM
            name = "conv" if kind == "conv" else "batch_norm"
            rules.append(Rule(rf"decode_head\.mlahead\.head(?P<level>[2-5])\.{source}\.{param}",
                               level(f"decode_head.branches.{{level}}.{target}.{name}.{{param}}")))
        rules += [
            Rule(rf"decode_head\.cls\.{_PARAM}", "decode_head.classifier.{param}"),
            Rule(r"auxiliary_head\.(?P<aux>\d+)\.aux\.weight", mla_aux),
        ]
    else:
        rules += _original_up_head_rules(r"decode_head\.", "decode_head.", config.decoder_num_convs)
        rules += _original_up_head_rules(r"auxiliary_head\.(?P<aux>\d+)\.", "auxiliary_heads.{aux}.",
                                         config.auxiliary_num_convs)
    return rules


def convert_original_setr_state_dict(
    state_dict: Mapping[str, torch.Tensor], config, *, target_shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Map a fudan-zvg/SETR state dict onto `SetrForSemanticSegmentation(config)`; return `(state dict, dropped)`.

    `config` carries the authors' variant fields (`setr_config_overrides_for_original` on top of the preset).
    `dropped` lists the unused `conv_seg` keys. Strict like `convert_mmseg_setr_state_dict` (`ConversionError`).
    """
    expected = setr_target_shapes(config) if target_shapes is None else target_shapes
    return apply_rules(
        state_dict, _original_rules(config), expected,
        what=f"fudan-zvg/SETR -> hf_seg SETR ({config.decoder_type}) conversion failed", drop=ORIGINAL_SETR_DROPPED,
    )


# --- whole checkpoints for a preset -----------------------------------------------------------------------------------

# Architecture fields a checkpoint must share with the preset it is converted for.
_SETR_IDENTITY_FIELDS = (
    "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "intermediate_size",
    "decoder_type", "num_labels",
)


def _mmseg_out_indices(preset_config: Mapping) -> list[int]:
    """mmseg 1.x SETR's backbone `out_indices` for the preset's encoder: the MLA layers, or the decode layer after
    the first three auxiliary layers (mmseg's configs: (9, 14, 19, 23) for ViT-L, the authors' layers)."""
    if preset_config["decoder_type"] == "mla":
        return list(preset_config["mla_in_indices"])
    layers = preset_config["num_hidden_layers"]
    auxiliary = [index % layers for index in preset_config.get("auxiliary_in_indices", [])][:3]
    return auxiliary + [preset_config.get("decoder_in_index", -1) % layers]


def convert_setr_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    preset_config: Mapping,
    *,
    preset_name: str,
    id2label: Mapping[int, str] | None = None,
    source: str = "auto",
):
    """Convert a SETR state dict of either layout for the preset `preset_name` (whose config fields are
    `preset_config`). The config gets the source's variant fields (authors': patch and head-conv biases, MLA
    align_corners and 3x3 classifier; mmseg 1.x: none of these, its Naive upsampling, its auxiliary heads).
    Returns a `ConvertedCheckpoint`; raises `ConversionError` when the checkpoint does not fit."""
    from ..models.setr import SetrConfig, SetrForSemanticSegmentation

    if preset_config.get("backbone_config") is not None:
        raise ConversionError(
            f"{preset_name!r} is SETR-Hybrid (a ResNet backbone feeding the ViT): neither fudan-zvg/SETR nor "
            "mmsegmentation 1.x has a configuration or released checkpoint of it, so there is nothing to convert; "
            "train it (hf-seg train) instead"
        )
    layout = detect_setr_layout(state_dict) if source == "auto" else source
    if layout not in SETR_LAYOUT_SIGNATURES:
        raise ConversionError(f"unknown SETR source layout {source!r}; use one of auto, {', '.join(SETR_LAYOUT_SIGNATURES)}")
    preset_config = dict(preset_config)
    if id2label is not None:
        preset_config["num_labels"] = len(id2label)
    try:
        if layout == "original":
            read = setr_config_overrides_for_original(state_dict)
        else:
            read = dict(num_labels=require(state_dict, "decode_head.conv_seg.weight", MMSEG).shape[0])
            read.update(setr_config_overrides_for_mmseg(
                state_dict, out_indices=_mmseg_out_indices(preset_config),
                num_attention_heads=preset_config.get("num_attention_heads"),
            ))
    except ConversionError:
        raise
    except ValueError as error:
        raise ConversionError(str(error)) from error
    check_fits_preset({name: read[name] for name in _SETR_IDENTITY_FIELDS if name in read}, preset_config,
                      preset_name)
    num_auxiliary = read.pop("num_auxiliary_heads", None)
    if num_auxiliary is not None:  # the authors' auxiliary heads: their inputs come from the preset
        expected = len(preset_config.get("auxiliary_in_indices", []))
        if num_auxiliary != expected:
            raise ConversionError(f"the checkpoint is not a {preset_name!r} checkpoint: {num_auxiliary} auxiliary "
                                  f"heads (checkpoint) vs {expected} (preset)")
    read.pop("num_labels")
    kwargs = {**preset_config, **read}
    if id2label is not None:
        kwargs.pop("num_labels", None)
        kwargs.update(id2label=dict(id2label), label2id={label: index for index, label in id2label.items()})
    config = SetrConfig(**kwargs)
    if layout == "original":
        converted, dropped = convert_original_setr_state_dict(state_dict, config)
    else:
        converted = convert_mmseg_setr_state_dict(state_dict, config)
        dropped = {}
    return ConvertedCheckpoint(config, SetrForSemanticSegmentation, converted, layout, dropped)
