# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Pretrained ImageNet encoders for a randomly initialised segmentation model, as the papers start their training.

- SETR: a transformers ViT or DeiT checkpoint (`ViTModel`, `ViTForImageClassification`, `DeiT*`; folder or Hub id).
  The SETR encoder reuses transformers' ViT modules, so the keys are the same up to the prefix and the patch
  embedding's path; the final LayerNorm and pooler are dropped (SETR has none), so are DeiT's distillation token and
  its position, and the position embeddings are resized bilinearly (`align_corners=False`) to the model's grid, as
  both SETR sources do at load time (MODELS.md §2.3). The hybrid (ResNet + ViT) takes two checkpoints,
  `"resnet,vit"`: transformers' ResNet (e.g. `microsoft/resnet-50`) fills its backbone, ViT everything but the
  patch embedding, which the hybrid does not have (its 1x1 projection of the ResNet map starts from its init).
- SegFormer: a `mit-b*` `SegformerForImageClassification` or `SegformerModel`; the classifier is dropped.
- MPViT: an `mpvit-*` `MPViTForImageClassification` into the backbone of an UperNet model (when hf_seg's MPViT exists).

Loading is strict: every encoder weight of the model is filled, every source weight is used (or is one of the named
classification-only weights), and every shape matches; otherwise a `ValueError` names the keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..convert.common import listing


_VIT_DROPPED = ("layernorm.", "pooler.", "classifier.")


def _strict_load(target: torch.nn.Module, weights: dict, source: str, what: str) -> None:
    expected = target.state_dict()
    missing = set(expected) - set(weights)
    unexpected = set(weights) - set(expected)
    mismatched = [
        f"{key}: {tuple(weights[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(weights) & set(expected)
        if weights[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"model keys not in the checkpoint: {listing(missing)}")
        if unexpected:
            parts.append(f"checkpoint keys the model does not have: {listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {listing(mismatched)}")
        raise ValueError(f"cannot load {what} from {source!r}: " + "; ".join(parts))
    target.load_state_dict(weights, strict=True)


def resize_position_embeddings(
    position_embeddings: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """`[1, prefix + g*g, D]` -> `[1, 1 + h*w, D]`: the class position (row 0) is kept, the other prefix positions
    (DeiT's distillation token, row 1) are dropped, and the patch grid is resized bilinearly with
    `align_corners=False`, as the SETR sources do at load time (MODELS.md §2.3)."""
    num_patches = position_embeddings.shape[1] - num_prefix_tokens
    side = int(round(num_patches**0.5))
    if side * side != num_patches:
        raise ValueError(
            f"position embeddings of {num_patches} patches (after {num_prefix_tokens} prefix token"
            f"{'s' if num_prefix_tokens > 1 else ''}) are not a square grid"
        )
    class_position, patches = position_embeddings[:, :1], position_embeddings[:, num_prefix_tokens:]
    if (side, side) != tuple(grid_size):
        patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        patches = F.interpolate(patches, size=tuple(grid_size), mode="bilinear", align_corners=False)
        patches = patches.flatten(2).transpose(1, 2).to(position_embeddings.dtype)
    return torch.cat([class_position, patches], dim=1)


def vit_to_setr_encoder_state_dict(vit_state_dict: dict, grid_size: tuple[int, int]) -> dict:
    """transformers ViT or DeiT weights (`ViTModel` / `DeiTModel`, or their classifiers with `vit.` / `deit.`) ->
    `SetrModel` keys. DeiT's distillation token and its position are dropped, as the authors' SETR-DeiT does."""
    distilled = any(key.endswith("embeddings.distillation_token") for key in vit_state_dict)
    out = {}
    for key, tensor in vit_state_dict.items():
        key = key.removeprefix("vit.").removeprefix("deit.")
        if key.startswith(_VIT_DROPPED) or key == "embeddings.distillation_token":
            continue
        key = key.replace("embeddings.patch_embeddings.projection.", "embeddings.projection.")
        if key == "embeddings.position_embeddings":
            tensor = resize_position_embeddings(tensor, grid_size, num_prefix_tokens=2 if distilled else 1)
        out[key] = tensor
    return out


def _load_setr_encoder(model, sources: list[str], **from_pretrained_kwargs) -> None:
    """ViT / DeiT weights into the transformer; for the hybrid also a ResNet into its backbone, whose output the
    (new, randomly initialised) 1x1 projection maps to tokens in place of ViT's patch embedding."""
    from transformers import AutoModel

    hybrid = model.config.backbone_config is not None
    if len(sources) != (2 if hybrid else 1):
        wanted = "a ResNet and a ViT checkpoint (e.g. 'microsoft/resnet-50,google/vit-base-patch16-384')" if hybrid \
            else "one ViT or DeiT checkpoint"
        raise ValueError(f"this SETR model takes {wanted} as its pretrained encoder; got {sources}")
    loaded = {source: AutoModel.from_pretrained(source, **from_pretrained_kwargs) for source in sources}
    vits = [source for source, encoder in loaded.items() if encoder.config.model_type in ("vit", "deit")]
    backbones = [source for source, encoder in loaded.items() if source not in vits]
    if len(vits) != 1:
        kinds = {source: encoder.config.model_type for source, encoder in loaded.items()}
        raise ValueError(f"SETR needs one ViT or DeiT encoder checkpoint; got {kinds}")
    vit = loaded[vits[0]]
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size"):
        if getattr(vit.config, field) != getattr(model.config, field):
            raise ValueError(
                f"{vits[0]!r}: {field} = {getattr(vit.config, field)} but the SETR model has "
                f"{getattr(model.config, field)}"
            )
    weights = vit_to_setr_encoder_state_dict(vit.state_dict(), model.config.image_grid_size)
    what = "a ViT encoder"
    if hybrid:
        backbone_type = model.config.backbone_config.model_type
        resnet = loaded[backbones[0]]
        if resnet.config.model_type != backbone_type:
            raise ValueError(f"{backbones[0]!r} is a {resnet.config.model_type!r} model; the hybrid's backbone is "
                             f"a {backbone_type!r}")
        # ViT's patch embedding has no place in the hybrid: its tokens come from the backbone's 1x1 projection
        weights = {key: value for key, value in weights.items() if not key.startswith("embeddings.projection.")}
        weights.update({f"embeddings.backbone.{key}": value for key, value in resnet.state_dict().items()})
        weights.update({f"embeddings.projection.{key}": value
                        for key, value in model.setr.embeddings.projection.state_dict().items()})
        sources, what = [f"{backbones[0]} + {vits[0]}"], "a ResNet backbone and a ViT encoder"
    _strict_load(model.setr, weights, sources[0], what)


def load_pretrained_encoder(model, source: str, **from_pretrained_kwargs) -> None:
    """Fill `model`'s encoder with the ImageNet weights at `source` (folder or Hub id; for SETR's hybrid two of
    them, comma-separated: a ResNet and a ViT); see the module docstring."""
    from ..models.setr import SetrForSemanticSegmentation

    if isinstance(model, SetrForSemanticSegmentation):
        _load_setr_encoder(model, [part.strip() for part in source.split(",") if part.strip()],
                           **from_pretrained_kwargs)
        return

    from transformers import SegformerModel, SegformerPreTrainedModel

    if isinstance(model, SegformerPreTrainedModel) or hasattr(model, "segformer"):
        encoder = SegformerModel.from_pretrained(source, **from_pretrained_kwargs)
        _strict_load(model.segformer, encoder.state_dict(), source, "a MiT encoder")
        return

    backbone = getattr(model, "backbone", None)
    if backbone is not None and type(backbone).__name__.startswith("MPViT"):
        try:
            from ..models.mpvit import MPViTForImageClassification
        except ImportError as error:
            raise NotImplementedError(
                "MPViT encoders need hf_seg.models.mpvit.MPViTForImageClassification, which this installation lacks"
            ) from error
        classifier = MPViTForImageClassification.from_pretrained(source, **from_pretrained_kwargs)
        encoder = getattr(classifier, classifier.base_model_prefix)
        target = backbone.state_dict()
        weights = {key: value for key, value in encoder.state_dict().items() if key in target}
        unused = set(encoder.state_dict()) - set(weights)
        if unused:
            raise ValueError(f"{source!r}: MPViT weights without a place in the backbone: {listing(unused)}")
        # the backbone may add norms of its outputs that ImageNet training never had: they keep their init
        extra = {key: value for key, value in target.items() if key not in weights}
        non_norm = [key for key in extra if "norm" not in key]
        if non_norm:
            raise ValueError(f"{source!r}: MPViT backbone weights not in the checkpoint: {listing(non_norm)}")
        _strict_load(backbone, {**extra, **weights}, source, "an MPViT encoder")
        return

    raise NotImplementedError(
        f"no pretrained-encoder loader for {type(model).__name__}: SETR (ViT), SegFormer (MiT) and UperNet-MPViT are "
        "supported"
    )


__all__ = ["load_pretrained_encoder", "resize_position_embeddings", "vit_to_setr_encoder_state_dict"]
