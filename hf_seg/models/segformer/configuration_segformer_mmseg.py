# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Configuration of SegFormer as mmsegmentation 1.x builds it: transformers' MiT encoder with mmseg's decode head."""

from huggingface_hub.dataclasses import strict
from transformers import SegformerConfig


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


__all__ = ["SegformerMmsegConfig"]
