# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""MPViT state dicts (youngwanLEE/MPViT) -> hf_seg's `MPViTForImageClassification` / `MPViTForSemanticSegmentation`
(no I/O).

Sources (key table: MODELS.md §5.4, checked against the authors' `mpvit.py` and `semantic_segmentation/backbone/
mpvit.py`; there is no MPViT in mmsegmentation 1.x, so the authors' layout is the only one):

* ImageNet `mpvit_*.pth` (weights under `model`): `stem.{0,1}`, `patch_embed_stages.{i}`, `mhca_stages.{i}` and the
  classifier `cls_head.cls` -> `MPViTForImageClassification` (`mpvit.*` + `classifier.*`).
* UperNet on ADE20K (`state_dict` + `meta`, the authors' mmseg 0.11 fork): `backbone.` + the same backbone keys (the
  segmentation backbone has no `cls_head` and no extra norms: it returns the four stage outputs as they are), the
  mmseg `UPerHead` as `decode_head.*` and the `FCNHead` as `auxiliary_head.*` -> `MPViTForSemanticSegmentation`
  (whose heads are transformers' UperNet modules: `.bn.` -> `.batch_norm.`, `conv_seg.` -> `classifier.`).

The authors register each path encoder's shared position encodings (`cpe`, `crpe`) again inside every block
(`MHCA_layers.{l}.cpe`, `.crpe`, `.factoratt_crpe.crpe`), so `state_dict()` lists the same tensors under several
names. hf_seg's model holds each shared module once: the alias keys are checked to equal their owner's tensors (a
file where they differ is corrupt and refused) and then consumed, listed under their own reason.
"""

import re
from collections.abc import Mapping

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
    listing,
    model_shapes,
    require,
)


_PARAM = r"(?P<param>weight|bias)"
_BN_PARAM = r"(?P<param>weight|bias|running_mean|running_var|num_batches_tracked)"

MPVIT_LAYOUT_SIGNATURES = {"original": r"(?:backbone\.)?stem\.0\.conv\.weight"}

# An alias key: `<prefix>mhca_stages.{i}.mhca_blks.{p}.` + `MHCA_layers.{l}.` + the shared module's own key.
_ALIAS = re.compile(
    r"(?P<encoder>(?:backbone\.)?mhca_stages\.\d+\.mhca_blks\.\d+\.)MHCA_layers\.\d+\."
    r"(?:factoratt_crpe\.)?(?P<module>(?:cpe|crpe)\..+)"
)
ALIAS_REASON = ("aliases of each path encoder's shared position encodings (the authors' code registers cpe / crpe once "
                "per encoder and again in every block): the same tensors as the encoder's own keys, checked equal")

_CLASSIFICATION_FAMILIES = ("mpvit",)


def detect_mpvit_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """"original" (youngwanLEE/MPViT, ImageNet or UperNet), from the stem's key."""
    return detect_layout(state_dict, MPVIT_LAYOUT_SIGNATURES, "MPViT")


def check_shared_aliases(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The alias keys of `state_dict`, after checking that each equals its owner (`...mhca_blks.{p}.cpe.*` /
    `.crpe.*`); `ConversionError` naming the keys whose owner is missing or holds other values."""
    aliases, orphans, different = [], [], []
    for key, tensor in state_dict.items():
        match = _ALIAS.fullmatch(key)
        if match is None:
            continue
        aliases.append(key)
        owner = match["encoder"] + match["module"]
        if owner not in state_dict:
            orphans.append(f"{key} (no {owner})")
        elif state_dict[owner].shape != tensor.shape or not torch.equal(state_dict[owner], tensor):
            different.append(f"{key} vs {owner}")
    problems = []
    if orphans:
        problems.append(f"{len(orphans)} alias keys without the shared module they repeat: {listing(orphans)}")
    if different:
        problems.append(f"{len(different)} alias keys that differ from the shared module they repeat (the authors' "
                        f"code shares one tensor, so the file is corrupt): {listing(different)}")
    if problems:
        raise ConversionError("; ".join(problems))
    return aliases


def _backbone_rules(prefix: str, target: str) -> list[Rule]:
    """The authors' backbone keys (under `prefix`) -> hf_seg's `MPViTModel` keys (under `target`)."""
    source = re.escape(prefix)
    stage = rf"{source}mhca_stages\.(?P<s>\d+)\."
    path = rf"{stage}mhca_blks\.(?P<p>\d+)\."
    layer = rf"{path}MHCA_layers\.(?P<l>\d+)\."
    to_stage = target + "encoder.stages.{s}."
    to_path = to_stage + "paths.{p}."
    to_layer = to_path + "layers.{l}."
    embed = rf"{source}patch_embed_stages\.(?P<s>\d+)\.patch_embeds\.(?P<p>\d+)\.patch_conv\."
    to_embed = to_stage + "patch_embeddings.{p}."

    def stem(template: str):
        def rename(groups: dict, tensor: torch.Tensor) -> Converted:
            return [(template.format(conv=int(groups["i"]) + 1, **groups), tensor)]

        return rename

    return [
        Rule(rf"{source}stem\.(?P<i>[01])\.conv\.weight", stem(target + "embeddings.conv{conv}.conv.weight")),
        Rule(rf"{source}stem\.(?P<i>[01])\.bn\.{_BN_PARAM}", stem(target + "embeddings.conv{conv}.batch_norm.{param}")),
        Rule(rf"{embed}dwconv\.weight", to_embed + "depthwise_conv.weight"),
        Rule(rf"{embed}pwconv\.weight", to_embed + "pointwise_conv.weight"),
        Rule(rf"{embed}bn\.{_BN_PARAM}", to_embed + "batch_norm.{param}"),
        Rule(rf"{path}cpe\.proj\.{_PARAM}", to_path + "pos_encoding.proj.{param}"),
        Rule(rf"{path}crpe\.conv_list\.(?P<j>\d+)\.{_PARAM}", to_path + "rel_pos_encoding.convs.{j}.{param}"),
        Rule(rf"{layer}factoratt_crpe\.(?P<m>qkv|proj)\.{_PARAM}", to_layer + "attention.{m}.{param}"),
        Rule(rf"{layer}mlp\.(?P<fc>fc[12])\.{_PARAM}", to_layer + "mlp.{fc}.{param}"),
        Rule(rf"{layer}norm1\.{_PARAM}", to_layer + "layernorm_before.{param}"),
        Rule(rf"{layer}norm2\.{_PARAM}", to_layer + "layernorm_after.{param}"),
        Rule(rf"{stage}InvRes\.(?P<c>conv[12])\.conv\.weight", to_stage + "local_branch.{c}.conv.weight"),
        Rule(rf"{stage}InvRes\.(?P<c>conv[12])\.bn\.{_BN_PARAM}", to_stage + "local_branch.{c}.batch_norm.{param}"),
        Rule(rf"{stage}InvRes\.dwconv\.weight", to_stage + "local_branch.depthwise_conv.weight"),
        Rule(rf"{stage}InvRes\.norm\.{_BN_PARAM}", to_stage + "local_branch.batch_norm.{param}"),
        Rule(rf"{stage}aggregate\.conv\.weight", to_stage + "aggregate.conv.weight"),
        Rule(rf"{stage}aggregate\.bn\.{_BN_PARAM}", to_stage + "aggregate.batch_norm.{param}"),
    ]


# mmseg 0.11's UPerHead / FCNHead -> transformers' UperNetHead / UperNetFCNHead names (MODELS.md §5.4)
_HEAD_MODULES = r"(?P<module>decode_head\.(?:psp_modules\.\d+\.1|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+|" \
                r"fpn_bottleneck)|auxiliary_head\.convs\.\d+)"
_HEAD_RULES = [
    Rule(rf"{_HEAD_MODULES}\.conv\.weight", "{module}.conv.weight"),
    Rule(rf"{_HEAD_MODULES}\.bn\.{_BN_PARAM}", "{module}.batch_norm.{param}"),
    Rule(rf"(?P<head>decode_head|auxiliary_head)\.conv_seg\.{_PARAM}", "{head}.classifier.{param}"),
]


def read_mpvit_architecture(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict:
    """`MPViTConfig` backbone fields the shapes determine: input channels, stage widths, paths, blocks per path, MLP
    ratios and the relative position encoding's kernels. The head count is the preset's (the shapes of the relative
    position encoding's convolutions check it)."""
    what = "youngwanLEE/MPViT"
    source = re.escape(prefix)
    stem = require(state_dict, f"{prefix}stem.0.conv.weight", what)
    widths = indexed(state_dict, rf"{source}patch_embed_stages\.(\d+)\.patch_embeds\.0\.patch_conv\.pwconv\.weight")
    if not widths or list(widths) != list(range(len(widths))):
        raise ConversionError(f"not a {what} state dict: patch-embedding stages {list(widths)}")
    num_paths, depths, mlp_ratios = [], [], []
    for stage, width in widths.items():
        paths = indexed(state_dict, rf"{source}patch_embed_stages\.{stage}\.patch_embeds\.(\d+)\.patch_conv\.pwconv"
                                    r"\.weight")
        num_paths.append(len(paths))
        blocks = indexed(state_dict,
                         rf"{source}mhca_stages\.{stage}\.mhca_blks\.0\.MHCA_layers\.(\d+)\.mlp\.fc1\.weight")
        if not blocks:
            raise ConversionError(f"not a {what} state dict: stage {stage} has no transformer blocks "
                                  f"({prefix}mhca_stages.{stage}.mhca_blks.0.MHCA_layers.*)")
        depths.append(len(blocks))
        mlp_ratios.append(blocks[0].shape[0] // width.shape[0])
    windows = indexed(state_dict, rf"{source}mhca_stages\.0\.mhca_blks\.0\.crpe\.conv_list\.(\d+)\.weight")
    return dict(
        num_channels=stem.shape[1],
        num_stages=len(widths),
        hidden_sizes=[tensor.shape[0] for tensor in widths.values()],
        num_paths=num_paths,
        depths=depths,
        mlp_ratios=mlp_ratios,
        crpe_window_sizes=[tensor.shape[-1] for tensor in windows.values()],
    )


def read_upernet_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """UperNet head fields the shapes determine: channels, number of pooling scales, the auxiliary head's presence,
    channels and convolutions, and the number of classes."""
    what = "MPViT UperNet (authors' mmseg 0.11 fork)"
    read = dict(
        decoder_hidden_size=require(state_dict, "decode_head.bottleneck.conv.weight", what).shape[0],
        num_pool_scales=len(indexed(state_dict, r"decode_head\.psp_modules\.(\d+)\.1\.conv\.weight")),
        num_labels=require(state_dict, "decode_head.conv_seg.weight", what).shape[0],
        use_auxiliary_head=any(key.startswith("auxiliary_head.") for key in state_dict),
    )
    if read["use_auxiliary_head"]:
        convs = indexed(state_dict, r"auxiliary_head\.convs\.(\d+)\.conv\.weight")
        read["auxiliary_num_convs"] = len(convs)
        if convs:
            read["auxiliary_channels"] = convs[0].shape[0]
    return read


def _config_defaults(names) -> dict:
    from ..models.mpvit import MPViTConfig

    defaults = MPViTConfig().to_dict()
    return {name: defaults[name] for name in names if name in defaults}


def convert_mpvit_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    preset_config: Mapping,
    *,
    preset_name: str,
    task: str = "segmentation",
    id2label: Mapping[int, str] | None = None,
    source: str = "auto",
) -> ConvertedCheckpoint:
    """Convert an authors' MPViT state dict for the preset `preset_name` (config fields `preset_config`): an ImageNet
    file for `task="classification"` (-> `MPViTForImageClassification`) or a UperNet file for
    `task="segmentation"` (-> `MPViTForSemanticSegmentation`)."""
    from ..models.mpvit import MPViTConfig, MPViTForImageClassification, MPViTForSemanticSegmentation

    if source == "mmseg":
        raise ConversionError("mmsegmentation 1.x has no MPViT; MPViT checkpoints come from the authors' repository "
                              "(youngwanLEE/MPViT): use --source auto or original")
    layout = detect_mpvit_layout(state_dict) if source == "auto" else source
    if layout not in MPVIT_LAYOUT_SIGNATURES:
        raise ConversionError(f"unknown MPViT source layout {source!r}; use one of auto, original")
    segmentation_file = any(key.startswith(("backbone.", "decode_head.")) for key in state_dict)
    preset_config = dict(preset_config)
    if id2label is not None:
        preset_config["num_labels"] = len(id2label)
    drop = {_ALIAS.pattern: ALIAS_REASON}
    check_shared_aliases(state_dict)

    if task == "classification":
        if segmentation_file:
            raise ConversionError(f"a segmentation checkpoint (backbone.* / decode_head.* keys) cannot be converted "
                                  f"for the ImageNet classifier preset {preset_name!r}; use an upernet-mpvit-* preset")
        if "cls_head.cls.weight" not in state_dict:
            raise ConversionError(f"the checkpoint has no ImageNet classifier (cls_head.cls.*), which the preset "
                                  f"{preset_name!r} needs: a backbone-only file (such as mpvit_*_mm.pth)?")
        read = read_mpvit_architecture(state_dict, "")
        read["num_labels"] = state_dict["cls_head.cls.weight"].shape[0]
        model_class, rules = MPViTForImageClassification, [
            *_backbone_rules("", "mpvit."), Rule(rf"cls_head\.cls\.{_PARAM}", "classifier.{param}")]
        variant = {}
    else:
        if not segmentation_file:
            raise ConversionError(f"an ImageNet or backbone-only checkpoint (no backbone.* / decode_head.* keys) "
                                  f"cannot be converted for the UperNet preset {preset_name!r}, whose heads it does "
                                  "not hold; use an mpvit-* preset for an ImageNet classifier")
        read = read_mpvit_architecture(state_dict, "backbone.")
        head = read_upernet_architecture(state_dict)
        read["num_labels"] = head.pop("num_labels")
        read["num_pool_scales"] = head.pop("num_pool_scales")
        read["decoder_hidden_size"] = head.pop("decoder_hidden_size")
        variant = head  # the auxiliary head (training only) is taken as the file has it
        model_class, rules = MPViTForSemanticSegmentation, [*_backbone_rules("backbone.", "backbone."), *_HEAD_RULES]

    expected = {**_config_defaults([*read, "pool_scales"]), **preset_config}
    expected["num_pool_scales"] = len(expected["pool_scales"])
    check_fits_preset(read, expected, preset_name)
    read.pop("num_labels")
    read.pop("num_pool_scales", None)
    kwargs = {**preset_config, **read, **variant}
    if id2label is not None:
        kwargs.pop("num_labels", None)
        kwargs.update(id2label=dict(id2label), label2id={label: index for index, label in id2label.items()})
    config = MPViTConfig(**kwargs)
    converted, dropped = apply_rules(
        state_dict, rules, model_shapes(model_class, config),
        what=f"youngwanLEE/MPViT -> {model_class.__name__} conversion failed", drop=drop,
    )
    return ConvertedCheckpoint(config, model_class, converted, layout, dropped)


def mpvit_task(preset_family: str) -> str:
    """"classification" for the ImageNet presets (`mpvit-*`), "segmentation" for `upernet-mpvit-*`."""
    return "classification" if preset_family in _CLASSIFICATION_FAMILIES else "segmentation"
