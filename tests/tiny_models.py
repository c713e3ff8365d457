"""Seeded tiny models of every family, shared by the inference-facing tests (export, compile, autocast, pipeline)."""

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

import hf_seg


NUM_LABELS = 5
TINY_SETR = dict(
    image_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
    decoder_channels=16, num_labels=NUM_LABELS, initializer_range=0.5,
)


def tiny_setr(decoder: str) -> hf_seg.SetrForSemanticSegmentation:
    torch.manual_seed(0)
    extra = dict(mla_in_indices=[0, 1, 2, 3], mla_channels=16, mla_head_channels=8) if decoder == "mla" else dict(
        auxiliary_in_indices=[1, 2])
    return hf_seg.create_model(f"setr-{decoder}-vit-large-ade20k-512", **TINY_SETR, **extra).eval()


def tiny_segformer() -> SegformerForSemanticSegmentation:
    torch.manual_seed(0)
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16, num_labels=NUM_LABELS,
    )
    return SegformerForSemanticSegmentation(config).eval()


def tiny_mpvit() -> hf_seg.MPViTForSemanticSegmentation:
    torch.manual_seed(0)
    config = hf_seg.MPViTConfig(
        hidden_sizes=[16, 16, 24, 32], depths=[1, 1, 1, 1], num_paths=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=16, auxiliary_channels=8, num_labels=NUM_LABELS,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return hf_seg.MPViTForSemanticSegmentation(config).eval()
