# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""SegFormer / MiT state dicts -> transformers' Segformer classes and hf_seg's mmseg-head SegFormer (no I/O).

Sources (key tables: MODELS.md §5.3, checked against NVlabs/SegFormer's `mix_transformer.py` / `segformer_head.py`
and mmsegmentation's `mit2mmseg.py`):

* the authors' layout (NVlabs/SegFormer, an mmseg 0.11 fork): segmentation checkpoints hold `backbone.patch_embed{s}`,
  `backbone.block{s}.{j}` (separate `attn.q` and fused `attn.kv`), `backbone.norm{s}` and the all-MLP
  `decode_head.linear_c{s}` / `linear_fuse` / `linear_pred` (+ an unused, random `conv_seg`, dropped and listed).
  -> `SegformerForSemanticSegmentation`. The ImageNet encoders `mit_b*.pth` hold the same encoder keys without
  `backbone.` plus the classifier `head.*` -> `SegformerForImageClassification`.
* mmsegmentation 1.x: `backbone.layers.{s}.{0: patch embedding, 1: blocks, 2: norm}` (fused `in_proj` q|k|v, the
  Mix-FFN as 1x1 convolutions) and its own decode head (`convs.{i}`, `fusion_conv`, `conv_seg`), which transformers'
  `SegformerDecodeHead` cannot hold -> hf_seg's `SegformerMmsegForSemanticSegmentation` (transformers' encoder with
  every LayerNorm at mmseg's eps 1e-6).

Numerics: the authors build the patch-embedding and sequence-reduction LayerNorms with eps 1e-5 and the others with
1e-6; transformers' `SegformerModel` uses 1e-5 for all of them (its `layer_norm_eps` field is not read), a difference
of about 1e-5 in the logits (MODELS.md §3.2).
"""

import re
from collections.abc import Callable, Mapping

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


_PARAM = r"(?P<param>weight|bias)"
_BN_PARAM = r"(?P<param>weight|bias|running_mean|running_var|num_batches_tracked)"

SEGFORMER_LAYOUT_SIGNATURES = {
    "original": r"(?:backbone\.)?patch_embed1\.proj\.weight",
    "mmseg": r"(?:backbone\.)?layers\.0\.0\.projection\.weight",
}

ORIGINAL_SEGFORMER_DROPPED = {
    r"decode_head\.conv_seg\.(?:weight|bias)": (
        "conv_seg of mmseg's BaseDecodeHead: never called by the authors' SegFormer head (random, untrained)"
    ),
}


def detect_segformer_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """"original" (NVlabs/SegFormer, also `mit_b*.pth`) or "mmseg" (mmsegmentation 1.x), from the encoder keys."""
    return detect_layout(state_dict, SEGFORMER_LAYOUT_SIGNATURES, "SegFormer / MiT")


def _encoder_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    return "backbone." if any(key.startswith("backbone.") for key in state_dict) else ""


def _split_rows(names: tuple[str, ...], template: str) -> Callable[[dict, torch.Tensor], Converted]:
    """Split a fused projection's rows into equal parts named `names` (cloned: no shared storage on save)."""

    def split(groups: dict, tensor: torch.Tensor) -> Converted:
        if tensor.shape[0] % len(names):
            raise ConversionError(f"a fused projection of shape {tuple(tensor.shape)} does not split into "
                                  f"{len(names)} equal row blocks")
        return [(template.format(name=name, **groups), part.clone())
                for name, part in zip(names, tensor.chunk(len(names), dim=0))]

    return split


def _stage_from_one(template: str) -> Callable[[dict, torch.Tensor], Converted]:
    """The authors number stages 1..4, transformers 0..3."""

    def rename(groups: dict, tensor: torch.Tensor) -> Converted:
        return [(template.format(**dict(groups, s=int(groups["s"]) - 1)), tensor)]

    return rename


def _flatten_1x1(template: str) -> Callable[[dict, torch.Tensor], Converted]:
    """mmseg's Mix-FFN 1x1 convolution [out, in, 1, 1] -> transformers' Linear [out, in]."""

    def rename(groups: dict, tensor: torch.Tensor) -> Converted:
        if groups["param"] == "weight" and tensor.ndim == 4:
            tensor = tensor.flatten(1)
        return [(template.format(**groups), tensor)]

    return rename


def _original_encoder_rules(prefix: str, target: str) -> list[Rule]:
    source = re.escape(prefix)
    block = rf"{source}block(?P<s>\d+)\.(?P<j>\d+)\."
    to_block = target + "stages.{s}.blocks.{j}."
    return [
        Rule(rf"{source}patch_embed(?P<s>\d+)\.proj\.{_PARAM}",
             _stage_from_one(target + "stages.{s}.patch_embeddings.proj.{param}")),
        Rule(rf"{source}patch_embed(?P<s>\d+)\.norm\.{_PARAM}",
             _stage_from_one(target + "stages.{s}.patch_embeddings.layer_norm.{param}")),
        Rule(rf"{block}norm1\.{_PARAM}", _stage_from_one(to_block + "layernorm_before.{param}")),
        Rule(rf"{block}attn\.q\.{_PARAM}", _stage_from_one(to_block + "attention.q_proj.{param}")),
        Rule(rf"{block}attn\.kv\.{_PARAM}", lambda groups, tensor: _split_rows(
            ("k", "v"), to_block + "attention.{name}_proj.{param}")(dict(groups, s=int(groups["s"]) - 1), tensor)),
        Rule(rf"{block}attn\.proj\.{_PARAM}", _stage_from_one(to_block + "attention.o_proj.{param}")),
        Rule(rf"{block}attn\.sr\.{_PARAM}",
             _stage_from_one(to_block + "attention.sequence_reduction.sequence_reduction.{param}")),
        Rule(rf"{block}attn\.norm\.{_PARAM}", _stage_from_one(to_block + "attention.sequence_reduction.layer_norm.{param}")),
        Rule(rf"{block}norm2\.{_PARAM}", _stage_from_one(to_block + "layernorm_after.{param}")),
        Rule(rf"{block}mlp\.(?P<fc>fc[12])\.{_PARAM}", _stage_from_one(to_block + "mlp.{fc}.{param}")),
        Rule(rf"{block}mlp\.dwconv\.dwconv\.{_PARAM}", _stage_from_one(to_block + "mlp.dwconv.dwconv.{param}")),
        Rule(rf"{source}norm(?P<s>\d+)\.{_PARAM}", _stage_from_one(target + "stages.{s}.layer_norm.{param}")),
    ]


def _mmseg_encoder_rules(prefix: str, target: str) -> list[Rule]:
    source = re.escape(prefix)
    block = rf"{source}layers\.(?P<s>\d+)\.1\.(?P<j>\d+)\."
    to_block = target + "stages.{s}.blocks.{j}."
    return [
        Rule(rf"{source}layers\.(?P<s>\d+)\.0\.projection\.{_PARAM}", target + "stages.{s}.patch_embeddings.proj.{param}"),
        Rule(rf"{source}layers\.(?P<s>\d+)\.0\.norm\.{_PARAM}", target + "stages.{s}.patch_embeddings.layer_norm.{param}"),
        Rule(rf"{block}norm1\.{_PARAM}", to_block + "layernorm_before.{param}"),
        Rule(rf"{block}attn\.attn\.in_proj_{_PARAM}", _split_rows(("q", "k", "v"), to_block + "attention.{name}_proj.{param}")),
        Rule(rf"{block}attn\.attn\.out_proj\.{_PARAM}", to_block + "attention.o_proj.{param}"),
        Rule(rf"{block}attn\.sr\.{_PARAM}", to_block + "attention.sequence_reduction.sequence_reduction.{param}"),
        Rule(rf"{block}attn\.norm\.{_PARAM}", to_block + "attention.sequence_reduction.layer_norm.{param}"),
        Rule(rf"{block}norm2\.{_PARAM}", to_block + "layernorm_after.{param}"),
        Rule(rf"{block}ffn\.layers\.0\.{_PARAM}", _flatten_1x1(to_block + "mlp.fc1.{param}")),
        Rule(rf"{block}ffn\.layers\.1\.{_PARAM}", to_block + "mlp.dwconv.dwconv.{param}"),
        Rule(rf"{block}ffn\.layers\.4\.{_PARAM}", _flatten_1x1(to_block + "mlp.fc2.{param}")),
        Rule(rf"{source}layers\.(?P<s>\d+)\.2\.{_PARAM}", target + "stages.{s}.layer_norm.{param}"),
    ]


_ORIGINAL_HEAD_RULES = [
    Rule(rf"decode_head\.linear_c(?P<s>\d+)\.proj\.{_PARAM}",
         _stage_from_one("decode_head.linear_projections.{s}.proj.{param}")),
    Rule(r"decode_head\.linear_fuse\.conv\.weight", "decode_head.linear_fuse.weight"),
    Rule(rf"decode_head\.linear_fuse\.bn\.{_BN_PARAM}", "decode_head.batch_norm.{param}"),
    Rule(rf"decode_head\.linear_pred\.{_PARAM}", "decode_head.classifier.{param}"),
]

_MMSEG_HEAD_RULES = [
    Rule(rf"decode_head\.(?P<module>convs\.\d+|fusion_conv)\.conv\.{_PARAM}", "decode_head.{module}.conv.{param}"),
    Rule(rf"decode_head\.(?P<module>convs\.\d+|fusion_conv)\.bn\.{_BN_PARAM}", "decode_head.{module}.batch_norm.{param}"),
    Rule(rf"decode_head\.conv_seg\.{_PARAM}", "decode_head.classifier.{param}"),
]


def read_segformer_architecture(state_dict: Mapping[str, torch.Tensor], layout: str) -> dict:
    """`SegformerConfig` fields the encoder's shapes determine: hidden sizes, depths, patch sizes, sequence-reduction
    ratios, MLP ratios, input channels. Attention heads and strides come from the preset."""
    prefix = _encoder_prefix(state_dict)
    what = "NVlabs/SegFormer" if layout == "original" else "mmsegmentation 1.x SegFormer"
    if layout == "original":
        projections = indexed(state_dict, rf"{re.escape(prefix)}patch_embed(\d+)\.proj\.weight")
        stage_keys = {s - 1: rf"{re.escape(prefix)}block{s}\.(\d+)\." for s in projections}
        fc1, sr = "mlp.fc1.weight", "attn.sr.weight"
        projections = {s - 1: tensor for s, tensor in projections.items()}
    else:
        projections = indexed(state_dict, rf"{re.escape(prefix)}layers\.(\d+)\.0\.projection\.weight")
        stage_keys = {s: rf"{re.escape(prefix)}layers\.{s}\.1\.(\d+)\." for s in projections}
        fc1, sr = "ffn.layers.0.weight", "attn.sr.weight"
    if list(projections) != list(range(len(projections))) or not projections:
        raise ConversionError(f"not a {what} state dict: patch-embedding stages {list(projections)}")
    depths, mlp_ratios, sr_ratios = [], [], []
    for stage, projection in projections.items():
        blocks = indexed(state_dict, stage_keys[stage] + re.escape(fc1))
        if not blocks:
            raise ConversionError(f"not a {what} state dict: stage {stage} has no blocks")
        depths.append(len(blocks))
        mlp_ratios.append(blocks[0].shape[0] // projection.shape[0])
        reductions = indexed(state_dict, stage_keys[stage] + re.escape(sr))
        sr_ratios.append(reductions[0].shape[-1] if reductions else 1)
    return dict(
        num_channels=projections[0].shape[1],
        num_encoder_blocks=len(projections),
        hidden_sizes=[tensor.shape[0] for tensor in projections.values()],
        patch_sizes=[tensor.shape[-1] for tensor in projections.values()],
        depths=depths,
        mlp_ratios=mlp_ratios,
        sr_ratios=sr_ratios,
    )


def convert_segformer_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    preset_config: Mapping,
    *,
    preset_name: str,
    task: str = "segmentation",
    id2label: Mapping[int, str] | None = None,
    source: str = "auto",
) -> ConvertedCheckpoint:
    """Convert a SegFormer (`task="segmentation"`) or MiT ImageNet (`task="classification"`) state dict of either
    layout for the preset `preset_name` (config fields `preset_config`). Returns a `ConvertedCheckpoint` whose model
    class is transformers' `SegformerForSemanticSegmentation` / `SegformerForImageClassification` or, for
    mmsegmentation 1.x segmentation checkpoints, hf_seg's `SegformerMmsegForSemanticSegmentation`."""
    from transformers import SegformerConfig, SegformerForImageClassification, SegformerForSemanticSegmentation

    from ..models.segformer import SegformerMmsegConfig, SegformerMmsegForSemanticSegmentation

    layout = detect_segformer_layout(state_dict) if source == "auto" else source
    if layout not in SEGFORMER_LAYOUT_SIGNATURES:
        raise ConversionError(f"unknown SegFormer source layout {source!r}; use one of auto, "
                              f"{', '.join(SEGFORMER_LAYOUT_SIGNATURES)}")
    prefix = _encoder_prefix(state_dict)
    preset_config = dict(preset_config)
    if id2label is not None:
        preset_config["num_labels"] = len(id2label)
    read = read_segformer_architecture(state_dict, layout)
    drop: dict[str, str] = {}

    if task == "classification":
        if prefix:
            raise ConversionError("a segmentation checkpoint (backbone.* keys) cannot be converted for the ImageNet "
                                  f"classifier preset {preset_name!r}")
        if layout == "mmseg":
            raise ConversionError("mmsegmentation 1.x MiT files carry no ImageNet classifier (mit2mmseg.py drops "
                                  "head.*); convert the authors' mit_b*.pth for an mit-b* preset")
        read["num_labels"] = require(state_dict, "head.weight", "MiT ImageNet").shape[0]
        config_class, model_class, target = SegformerConfig, SegformerForImageClassification, "segformer."
        rules = [*_original_encoder_rules(prefix, target), Rule(rf"head\.{_PARAM}", "classifier.{param}")]
    elif layout == "original":
        read["decoder_hidden_size"] = require(state_dict, "decode_head.linear_c1.proj.weight", "NVlabs/SegFormer").shape[0]
        read["num_labels"] = require(state_dict, "decode_head.linear_pred.weight", "NVlabs/SegFormer").shape[0]
        config_class, model_class = SegformerConfig, SegformerForSemanticSegmentation
        rules = [*_original_encoder_rules(prefix, "segformer."), *_ORIGINAL_HEAD_RULES]
        drop = ORIGINAL_SEGFORMER_DROPPED
    else:
        what = "mmsegmentation 1.x SegFormer"
        read["num_labels"] = require(state_dict, "decode_head.conv_seg.weight", what).shape[0]
        config_class, model_class = SegformerMmsegConfig, SegformerMmsegForSemanticSegmentation
        rules = [*_mmseg_encoder_rules(prefix, "segformer."), *_MMSEG_HEAD_RULES]

    check_fits_preset(read, preset_config, preset_name)
    if layout == "mmseg" and task == "segmentation":
        # mmseg's head width (256 for every MiT) is a variant field, not an identity one
        read["decoder_hidden_size"] = require(state_dict, "decode_head.convs.0.conv.weight", "mmseg").shape[0]
    read.pop("num_labels")
    kwargs = {**preset_config, **read}
    if id2label is not None:
        kwargs.pop("num_labels", None)
        kwargs.update(id2label=dict(id2label), label2id={label: index for index, label in id2label.items()})
    config = config_class(**kwargs)
    source_name = {"original": "NVlabs/SegFormer", "mmseg": "mmsegmentation 1.x SegFormer"}[layout]
    converted, dropped = apply_rules(
        state_dict, rules, model_shapes(model_class, config),
        what=f"{source_name} -> {model_class.__name__} conversion failed", drop=drop,
    )
    return ConvertedCheckpoint(config, model_class, converted, layout, dropped)
