# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""SegFormer with mmsegmentation 1.x's decode head on transformers' Mix Transformer encoder.

mmsegmentation 1.x re-implemented SegFormer's head (`mmseg/models/decode_heads/segformer_head.py`): each of the four
stage maps goes through a 1x1 convolution without bias + BatchNorm + ReLU to `channels` (256 for every MiT size), is
resized bilinearly to the 1/4 map, the four are concatenated shallow to deep and fused by another 1x1 conv + BatchNorm
+ ReLU, then Dropout2d and a 1x1 classifier. transformers' `SegformerDecodeHead` (the authors' Linear-with-bias head,
deep-to-shallow concatenation) cannot hold those weights, so checkpoints from mmsegmentation 1.x's model zoo convert
to this model. The encoder is transformers' `SegformerModel`, with its LayerNorms set to `config.layer_norm_eps` (1e-6
in mmsegmentation 1.x's MiT; transformers builds them with PyTorch's default 1e-5).

This file is shipped next to converted weights as Hub remote code: it imports only torch, transformers and its own
folder's files.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.segformer.modeling_segformer import SegformerModel, SegformerPreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_segformer_mmseg import SegformerMmsegConfig


class SegformerMmsegConvModule(nn.Module):
    """1x1 Conv (no bias) -> BatchNorm -> ReLU: mmcv's `ConvModule` as mmseg's SegFormer head uses it."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.batch_norm(self.conv(features)))


class SegformerMmsegDecodeHead(nn.Module):
    """mmseg 1.x `SegformerHead`: per-stage ConvModule, resize to the 1/4 map, concatenate shallow -> deep, fuse,
    Dropout2d, 1x1 classifier. Returns logits at 1/4 of the input size, like transformers' Segformer."""

    def __init__(self, config: SegformerMmsegConfig):
        super().__init__()
        channels = config.decoder_hidden_size
        self.convs = nn.ModuleList(SegformerMmsegConvModule(size, channels) for size in config.hidden_sizes)
        self.fusion_conv = SegformerMmsegConvModule(channels * config.num_encoder_blocks, channels)
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(channels, config.num_labels, kernel_size=1)

    def forward(self, stage_maps: list[torch.Tensor]) -> torch.Tensor:
        size = stage_maps[0].shape[-2:]
        projected = [
            F.interpolate(conv(features), size=size, mode="bilinear", align_corners=False)
            if features.shape[-2:] != size
            else conv(features)
            for features, conv in zip(stage_maps, self.convs)
        ]
        fused = self.fusion_conv(torch.cat(projected, dim=1))
        return self.classifier(self.dropout(fused))


class SegformerMmsegPreTrainedModel(SegformerPreTrainedModel):
    config: SegformerMmsegConfig
    config_class = SegformerMmsegConfig


class SegformerMmsegForSemanticSegmentation(SegformerMmsegPreTrainedModel):
    def __init__(self, config: SegformerMmsegConfig):
        super().__init__(config)
        if not config.reshape_last_stage:
            raise ValueError("SegformerMmsegForSemanticSegmentation needs reshape_last_stage=True (stage maps)")
        self.segformer = SegformerModel(config)
        for module in self.segformer.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = config.layer_norm_eps
        self.decode_head = SegformerMmsegDecodeHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SemanticSegmenterOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*): class indices in
            `[0, num_labels)` or `config.semantic_loss_ignore_index`. The loss is the cross-entropy of the logits
            resized bilinearly to the label size. With `num_labels=1` (binary masks: labels 0 / 1) it is the sigmoid
            cross-entropy of the foreground averaged over all pixels, ignored ones counting 0, as transformers'
            Segformer computes it.

        Returns a `SemanticSegmenterOutput` whose `logits` are `(batch_size, num_labels, height / 4, width / 4)`.
        """
        requested = kwargs.pop("output_hidden_states", None)
        requested = self.config.output_hidden_states if requested is None else requested
        outputs = self.segformer(pixel_values, output_hidden_states=True, return_dict=True, **kwargs)
        logits = self.decode_head(list(outputs.hidden_states))

        loss = None
        if labels is not None:
            ignore_index = self.config.semantic_loss_ignore_index
            upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            if self.config.num_labels == 1:
                valid = labels != ignore_index
                invalid = valid & ((labels < 0) | (labels > 1))
                if invalid.any():
                    raise ValueError(f"with num_labels=1 (binary masks) labels are 0, 1 or the ignore index "
                                     f"{ignore_index}, got {torch.unique(labels[invalid])[:10].tolist()}")
                losses = F.binary_cross_entropy_with_logits(
                    upsampled.squeeze(1), (labels == 1).to(upsampled.dtype), reduction="none"
                )
                loss = (losses * valid).mean()
            else:
                loss = F.cross_entropy(upsampled, labels, ignore_index=ignore_index)

        return SemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states if requested else None,
            attentions=outputs.attentions,
        )


__all__ = ["SegformerMmsegForSemanticSegmentation", "SegformerMmsegPreTrainedModel"]
