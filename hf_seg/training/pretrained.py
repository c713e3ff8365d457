# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Pretrained ImageNet encoders for a randomly initialised segmentation model, as the papers start their training.

- SETR: a transformers `ViTModel` / `ViTForImageClassification` checkpoint (folder or Hub id). The SETR encoder reuses
  transformers' ViT modules, so the keys are the same up to the prefix and the patch embedding's path; ViT's final
  LayerNorm and pooler are dropped (SETR has none), and the position embeddings are resized bilinearly
  (`align_corners=False`) to the model's grid, as both SETR sources do at load time (MODELS.md §2.3).
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


def resize_position_embeddings(position_embeddings: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """`[1, 1 + g*g, D]` (class position first) -> `[1, 1 + h*w, D]`: bilinear, `align_corners=False` (SETR)."""
    num_patches = position_embeddings.shape[1] - 1
    side = int(round(num_patches**0.5))
    if side * side != num_patches:
        raise ValueError(f"position embeddings of {num_patches} patches are not a square grid")
    if (side, side) == tuple(grid_size):
        return position_embeddings
    class_position, patches = position_embeddings[:, :1], position_embeddings[:, 1:]
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(grid_size), mode="bilinear", align_corners=False)
    patches = patches.flatten(2).transpose(1, 2).to(position_embeddings.dtype)
    return torch.cat([class_position, patches], dim=1)


def vit_to_setr_encoder_state_dict(vit_state_dict: dict, grid_size: tuple[int, int]) -> dict:
    """transformers ViT weights (`ViTModel`, or `ViTForImageClassification` with `vit.`) -> `SetrModel` keys."""
    out = {}
    for key, tensor in vit_state_dict.items():
        if key.startswith("vit."):
            key = key[len("vit.") :]
        if key.startswith(_VIT_DROPPED):
            continue
        key = key.replace("embeddings.patch_embeddings.projection.", "embeddings.projection.")
        if key == "embeddings.position_embeddings":
            tensor = resize_position_embeddings(tensor, grid_size)
        out[key] = tensor
    return out


def load_pretrained_encoder(model, source: str, **from_pretrained_kwargs) -> None:
    """Fill `model`'s encoder with the ImageNet weights at `source` (folder or Hub id); see the module docstring."""
    from ..models.setr import SetrForSemanticSegmentation

    if isinstance(model, SetrForSemanticSegmentation):
        from transformers import AutoModel

        vit = AutoModel.from_pretrained(source, **from_pretrained_kwargs)
        if vit.config.model_type not in ("vit", "deit"):
            raise ValueError(f"SETR needs a ViT encoder checkpoint; {source!r} is a {vit.config.model_type!r} model")
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size"):
            if getattr(vit.config, field) != getattr(model.config, field):
                raise ValueError(
                    f"{source!r}: {field} = {getattr(vit.config, field)} but the SETR model has "
                    f"{getattr(model.config, field)}"
                )
        weights = vit_to_setr_encoder_state_dict(vit.state_dict(), model.config.image_grid_size)
        _strict_load(model.setr, weights, source, "a ViT encoder")
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
