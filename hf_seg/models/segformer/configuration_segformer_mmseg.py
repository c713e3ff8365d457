# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Configuration of SegFormer as mmsegmentation 1.x builds it: transformers' MiT encoder with mmseg's decode head."""

import numbers

from huggingface_hub.dataclasses import strict
from transformers import SegformerConfig


def check_segformer_labels(num_labels, id2label) -> None:
    """Refuse what transformers only warns about and then silently replaces: `num_labels` that is not a positive
    integer, or that disagrees with the number of classes `id2label` names; `id2label` that names no class, or
    whose keys are not the class ids 0..n-1. Called before the configuration is built (`num_labels` is not kept)."""
    if num_labels is not None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, numbers.Integral) or num_labels < 1:
            raise ValueError(f"num_labels={num_labels!r} must be a positive integer (the number of classes)")
        if id2label is not None and len(id2label) != num_labels:
            raise ValueError(
                f"num_labels={num_labels} disagrees with len(id2label)={len(id2label)}; pass one of the two or "
                "make them agree"
            )
    if id2label is not None:
        if len(id2label) == 0:
            raise ValueError("id2label={} names no class: a model needs num_labels >= 1")
        try:
            ids = sorted(int(key) for key in id2label)
        except (TypeError, ValueError):
            keys = list(id2label)[:8]
            raise ValueError(f"id2label keys must be the class ids 0..{len(id2label) - 1}, got {keys}") from None
        if ids != list(range(len(ids))):
            raise ValueError(f"id2label keys must be the class ids 0..{len(ids) - 1}, got {ids[:8]}")


def validate_segformer_architecture(config) -> None:
    """Refuse a SegFormer configuration the model cannot build, naming the field and its value: every per-stage
    list has `num_encoder_blocks` positive entries, each stage width is a multiple of its heads, sizes are positive
    and probabilities lie in [0, 1]. `SegformerMmsegConfig` runs it as its validator; `hf_seg.create_config` runs it
    on the transformers `SegformerConfig` of the SegFormer / MiT presets."""
    for name in ("num_channels", "num_encoder_blocks", "decoder_hidden_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    for name in ("depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides", "num_attention_heads", "mlp_ratios"):
        value = list(getattr(config, name))
        if len(value) != config.num_encoder_blocks:
            raise ValueError(f"{name}={value} must have num_encoder_blocks={config.num_encoder_blocks} entries")
        if any(item < 1 for item in value):
            raise ValueError(f"{name}={value} must be positive")
    for stage, (width, heads) in enumerate(zip(config.hidden_sizes, config.num_attention_heads)):
        if width % heads:
            raise ValueError(
                f"hidden_sizes[{stage}]={width} is not a multiple of num_attention_heads[{stage}]={heads}"
            )
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob", "drop_path_rate"):
        value = getattr(config, name)
        if not 0 <= value <= 1:
            raise ValueError(f"{name}={value} must lie in [0, 1]")
    if not config.layer_norm_eps > 0:
        raise ValueError(f"layer_norm_eps={config.layer_norm_eps} must be positive")
    if not config.id2label:
        raise ValueError(f"id2label={config.id2label} names no class: a model needs num_labels >= 1")


@strict
class SegformerMmsegConfig(SegformerConfig):
    r"""
    Configuration of [`SegformerMmsegForSemanticSegmentation`]: the Mix Transformer (MiT) encoder of transformers'
    `SegformerModel` with the decode head of mmsegmentation 1.x's `SegformerHead`, which differs structurally from the
    authors' all-MLP head that transformers' `SegformerDecodeHead` implements (per-stage 1x1 conv + BatchNorm + ReLU
    instead of a Linear with bias; stages concatenated shallow to deep; one width for every MiT size). Checkpoints of
    mmsegmentation 1.x's SegFormer configs load into this model; the authors' (NVlabs/SegFormer) load into
    transformers' `SegformerForSemanticSegmentation`.

    Every `SegformerConfig` field keeps its meaning, with two differences:
        decoder_hidden_size (`int`, defaults to 256): `channels` of mmseg's head (256 for every MiT size in
            mmsegmentation 1.x's configs).
        layer_norm_eps (`float`, defaults to 1e-6): used by every LayerNorm of the encoder, as mmsegmentation 1.x
            builds them (transformers' `SegformerModel` ignores this field and uses 1e-5; this model applies it).
    """

    model_type = "segformer-mmseg"

    decoder_hidden_size: int = 256
    layer_norm_eps: float = 1e-6

    def __post_init__(self, **kwargs):
        check_segformer_labels(kwargs.get("num_labels"), self.id2label)
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`from_pretrained(folder, num_labels=n)` asks for n new classes in place of the saved ones (transformers
        warns, then replaces `id2label` with LABEL_0..n-1): the saved names are dropped here, so that the strict
        check of `num_labels` against `id2label` only ever sees what the caller passed."""
        num_labels = kwargs.get("num_labels")
        if num_labels is not None:
            check_segformer_labels(num_labels, kwargs.get("id2label"))
            saved = config_dict.get("id2label")
            if saved is not None and len(saved) != num_labels:
                config_dict = {key: value for key, value in config_dict.items() if key not in ("id2label", "label2id")}
        return super().from_dict(config_dict, **kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: refuse configurations the model cannot build, naming the field."""
        super().validate_architecture()
        validate_segformer_architecture(self)


__all__ = ["SegformerMmsegConfig", "check_segformer_labels", "validate_segformer_architecture"]
