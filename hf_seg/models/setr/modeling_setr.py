# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""PyTorch SETR: a ViT encoder with the Naive, PUP or MLA decoder (Zheng et al., "Rethinking Semantic Segmentation
from a Sequence-to-Sequence Perspective with Transformers", CVPR 2021).

The encoder has transformers' ViT parameter names and calls the attention interface (eager, sdpa, flash, flex). The
heads follow the authors' code
(`fudan-zvg/SETR`) and, through the configuration, mmsegmentation 1.x's port of it (see `SetrConfig`). Unlike the
authors' code, any input whose sides are multiples of the patch size works: the position embeddings are resized
bilinearly at run time as mmsegmentation does.

Training and inference run the same code. CPU inference speed-ups (oneDNN linear layers, BatchNorm folded into the
convolutions, in-place activations) are opt-in and live outside this file: `hf_seg.optimize_for_inference(model)`.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import load_backbone
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, SemanticSegmenterOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.vit.modeling_vit import eager_attention_forward
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import (
    capture_outputs,
    resolve_hidden_states_indices,
    selected_hidden_states,
)

from .configuration_setr import SetrConfig


def resize_bilinear(features: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize that skips the identity (the sources resize to the size a map already has)."""
    if tuple(features.shape[-2:]) == tuple(size):
        return features
    return F.interpolate(features, size=size, mode="bilinear", align_corners=align_corners)


def tokens_to_map(tokens: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """`[B, (1+) h*w, C]` tokens -> `[B, C, h, w]` map; a leading class token, if any, is dropped."""
    height, width = grid_size
    tokens = tokens[:, -height * width :]
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


class SetrConvModule(nn.Module):
    """Conv -> BatchNorm -> ReLU (mmcv's `ConvModule`; the parameter names of transformers' `UperNetConvModule`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.batch_norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.batch_norm(self.conv(features)))


def dilate_last_resnet_stage(backbone: nn.Module) -> None:
    """Turn the last stage of transformers' ResNet from stride 2 into stride 1 with dilation 2, so that its output
    keeps the previous stage's resolution (ResNet-50: 1/16 instead of 1/32). The first block keeps dilation 1 and the
    others get 2, as mmsegmentation's dilated ResNets with `contract_dilation=True` (and torchvision's
    `replace_stride_with_dilation`) do. The weights are unchanged: a pretrained ResNet loads as it is."""
    stage = backbone.encoder.stages[-1]
    for index, block in enumerate(stage.layers):
        for module in block.modules():
            if not isinstance(module, nn.Conv2d):
                continue
            module.stride = (1, 1)
            if module.kernel_size == (3, 3) and index > 0:
                module.dilation, module.padding = (2, 2), (2, 2)


class SetrEmbeddings(nn.Module):
    """Patch embedding + class token + learned position embeddings, resized to the input's patch grid on the fly.

    In the hybrid encoder (`config.backbone_config`) the patches are the pixels of a convolutional backbone's output
    map (stride `patch_size`), projected to `hidden_size` by a 1x1 convolution."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.grid_size = config.image_grid_size
        self.backbone = None
        if config.backbone_config is not None:
            self.backbone = load_backbone(config)
            if config.backbone_dilate_last_stage:
                dilate_last_resnet_stage(self.backbone)
            self.projection = nn.Conv2d(self.backbone.channels[-1], config.hidden_size, kernel_size=1)
        else:
            self.projection = nn.Conv2d(
                config.num_channels,
                config.hidden_size,
                kernel_size=config.patch_size,
                stride=config.patch_size,
                bias=config.patch_bias,
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], config.hidden_size)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def resize_position_embeddings(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """Resize the stored patch-position grid to `grid_size` (bilinear, `align_corners=False`, as both SETR
        sources do; transformers' ViT uses bicubic, which gives other numbers). The class position is kept."""
        if tuple(grid_size) == tuple(self.grid_size):
            return self.position_embeddings
        class_position, patch_positions = self.position_embeddings[:, :1], self.position_embeddings[:, 1:]
        patch_positions = patch_positions.reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
        patch_positions = F.interpolate(patch_positions, size=grid_size, mode="bilinear", align_corners=False)
        return torch.cat([class_position, patch_positions.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.num_channels}, height, width), got {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"pixel_values height and width must be multiples of the patch size {self.patch_size}, got "
                f"{height}x{width}; pad the input (SetrImageProcessor does it with do_pad=True)"
            )
        grid_size = (height // self.patch_size, width // self.patch_size)
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        if self.backbone is not None:
            pixel_values = self.backbone(pixel_values).feature_maps[-1]
            if tuple(pixel_values.shape[-2:]) != grid_size:
                raise ValueError(
                    f"the backbone's output map is {tuple(pixel_values.shape[-2:])} for a {height}x{width} input, not "
                    f"the {grid_size} token grid of patch_size={self.patch_size}: its stride must be the patch size"
                )
        patches = self.projection(pixel_values).flatten(2).transpose(1, 2)
        class_tokens = self.cls_token.expand(patches.shape[0], -1, -1)
        embeddings = torch.cat([class_tokens, patches], dim=1) + self.resize_position_embeddings(grid_size)
        return self.dropout(embeddings)


class SetrAttention(nn.Module):
    """Multi-head self-attention with the parameters of transformers' `ViTAttention` (`q_proj`, `k_proj`, `v_proj`,
    `o_proj`) and its call into the attention interface (eager / sdpa / flash / flex)."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attention_output, attention_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attention_output = attention_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attention_output), attention_weights


class SetrMLP(nn.Module):
    """fc1 -> activation (GELU) -> fc2."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class SetrLayer(GradientCheckpointingLayer):
    """The pre-norm ViT block (the authors' timm `Block`): x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        self.attention = SetrAttention(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SetrMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attention_output, _ = self.attention(self.layernorm_before(hidden_states), **kwargs)
        hidden_states = hidden_states + self.dropout(attention_output)
        return hidden_states + self.dropout(self.mlp(self.layernorm_after(hidden_states)))


class SetrPreTrainedModel(PreTrainedModel):
    config: SetrConfig
    base_model_prefix = "setr"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SetrEmbeddings", "SetrLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": SetrLayer, "attentions": SetrAttention}

    @torch.no_grad()
    def _init_weights(self, module):
        """The authors' init: truncated normal Linear weights, zero biases, PyTorch's default convolutions."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight[0].numel())
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, SetrEmbeddings):
            init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
            init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)
        else:
            super()._init_weights(module)  # LayerNorm / BatchNorm: weight 1, bias 0, fresh running statistics


class SetrModel(SetrPreTrainedModel):
    """The SETR encoder: a ViT without final LayerNorm. With the MLA decoder the class token is dropped before the
    first block, as in both sources."""

    def __init__(self, config: SetrConfig):
        super().__init__(config)
        self.embeddings = SetrEmbeddings(config)
        self.layers = nn.ModuleList([SetrLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): height and width must be
            multiples of `config.patch_size`.

        Returns a `BaseModelOutput` whose `last_hidden_state` is `(batch_size, (1 +) height/16 * width/16, hidden_size)`
        (the class token first unless `decoder_type="mla"`).
        """
        hidden_states = self.embeddings(pixel_values)
        if self.config.decoder_type == "mla":
            hidden_states = hidden_states[:, 1:]
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class SetrUpHead(nn.Module):
    """Naive / PUP head (also the auxiliary heads): optional LayerNorm on the tokens, `num_convs` x [conv, BN, ReLU,
    bilinear xscale], 1x1 classifier. The last upsampling runs after the classifier, where it has fewer channels to
    move: a 1x1 convolution and a bilinear resize commute, so the result is the same function (the authors' PUP head
    does exactly this; mmsegmentation's upsamples first)."""

    def __init__(self, config: SetrConfig, in_channels: int, num_convs: int, kernel_size: int, upsample_scale: int,
                 from_tokens: bool):
        super().__init__()
        self.upsample_scale = upsample_scale
        self.layer_norm = nn.LayerNorm(in_channels, eps=config.layer_norm_eps) if from_tokens else None
        channels = [in_channels] + [config.decoder_channels] * num_convs
        self.convs = nn.ModuleList(
            SetrConvModule(channels[i], channels[i + 1], kernel_size, bias=config.head_conv_bias)
            for i in range(num_convs)
        )
        self.classifier = nn.Conv2d(channels[-1], config.num_labels, kernel_size=1)

    def upsample(self, features: torch.Tensor) -> torch.Tensor:
        height, width = features.shape[-2:]
        return resize_bilinear(features, (height * self.upsample_scale, width * self.upsample_scale))

    def forward(self, features: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        if self.layer_norm is not None:
            features = tokens_to_map(self.layer_norm(features[:, -grid_size[0] * grid_size[1] :]), grid_size)
        for index, conv in enumerate(self.convs):
            features = conv(features)
            if index < len(self.convs) - 1:
                features = self.upsample(features)
        logits = self.classifier(features)
        return self.upsample(logits) if self.convs else logits


class SetrMLANeck(nn.Module):
    """Multi-level aggregation: per level LayerNorm -> 1x1 ConvModule, top-down cumulative sum from the deepest
    level, 3x3 ConvModule. Returns the four 1/16 maps shallow to deep."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        hidden, channels = config.hidden_size, config.mla_channels
        self.layer_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=config.layer_norm_eps) for _ in range(4))
        self.lateral_convs = nn.ModuleList(SetrConvModule(hidden, channels, 1) for _ in range(4))
        self.output_convs = nn.ModuleList(SetrConvModule(channels, channels, 3) for _ in range(4))

    def forward(self, features: list[torch.Tensor], grid_size: tuple[int, int]) -> list[torch.Tensor]:
        laterals = [
            conv(tokens_to_map(norm(tokens), grid_size))
            for tokens, norm, conv in zip(features, self.layer_norms, self.lateral_convs)
        ]
        for level in range(len(laterals) - 2, -1, -1):
            laterals[level] = laterals[level] + laterals[level + 1]
        return [conv(lateral) for lateral, conv in zip(laterals, self.output_convs)]


class SetrMLAHead(nn.Module):
    """MLA head: per level 2 x 3x3 ConvModule and bilinear x4, concatenated shallow to deep, then the classifier."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        channels, head_channels = config.mla_channels, config.mla_head_channels
        self.align_corners = config.mla_head_align_corners
        self.branches = nn.ModuleList(
            nn.Sequential(
                SetrConvModule(channels, head_channels, 3),
                SetrConvModule(head_channels, head_channels, 3),
            )
            for _ in range(4)
        )
        kernel_size = config.mla_classifier_kernel_size
        self.classifier = nn.Conv2d(4 * head_channels, config.num_labels, kernel_size, padding=kernel_size // 2)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        height, width = features[0].shape[-2:]
        upsampled = [
            F.interpolate(branch(level), size=(4 * height, 4 * width), mode="bilinear",
                          align_corners=self.align_corners)
            for level, branch in zip(features, self.branches)
        ]
        return self.classifier(torch.cat(upsampled, dim=1))


class SetrForSemanticSegmentation(SetrPreTrainedModel):
    def __init__(self, config: SetrConfig):
        super().__init__(config)
        self.setr = SetrModel(config)
        if config.decoder_type == "mla":
            self.neck = SetrMLANeck(config)
            self.decode_head = SetrMLAHead(config)
            aux_in_channels, aux_from_tokens = config.mla_channels, False
        else:
            self.neck = None
            self.decode_head = SetrUpHead(
                config, config.hidden_size, config.decoder_num_convs, config.decoder_kernel_size,
                config.decoder_upsample_scale, from_tokens=True,
            )
            aux_in_channels, aux_from_tokens = config.hidden_size, True
        self.auxiliary_heads = nn.ModuleList(
            SetrUpHead(
                config, aux_in_channels, config.auxiliary_num_convs, config.auxiliary_kernel_size,
                config.auxiliary_upsample_scale, from_tokens=aux_from_tokens,
            )
            for _ in config.auxiliary_in_indices
        )
        self.post_init()

    def encoder_layers_used(self, with_auxiliary_heads: bool) -> list[int]:
        """Indices (0-based, non-negative) of the encoder layers the heads read."""
        config, num_layers = self.config, self.config.num_hidden_layers
        if config.decoder_type == "mla":
            indices = list(config.mla_in_indices)
        else:
            indices = [config.decoder_in_index]
            if with_auxiliary_heads:
                indices += list(config.auxiliary_in_indices)
        return sorted({index % num_layers for index in indices})

    def check_labels(self, labels: torch.Tensor, pixel_values: torch.Tensor) -> None:
        if labels.ndim != 3 or labels.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"labels must have shape (batch, height, width) with batch {pixel_values.shape[0]}, got "
                f"{tuple(labels.shape)}"
            )
        if labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        ignore_index = self.config.semantic_loss_ignore_index
        num_classes = max(self.config.num_labels, 2)  # one output channel (num_labels=1): binary masks, 0 / 1
        invalid = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
        if invalid.any():
            bad = torch.unique(labels[invalid])[:10].tolist()
            raise ValueError(
                f"labels hold values {bad} outside [0, {num_classes}) that are not the ignore index {ignore_index}"
            )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SemanticSegmenterOutput:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): height and width must be
            multiples of `config.patch_size` (square or not).
        labels (`torch.LongTensor` of shape `(batch_size, label_height, label_width)`, *optional*): class indices in
            `[0, num_labels)` or `config.semantic_loss_ignore_index`. The loss is the cross-entropy of the decode
            head's logits bilinearly resized to the label size, plus `auxiliary_loss_weight` times that of each
            auxiliary head (which only run when labels are given).

        Returns a `SemanticSegmenterOutput` whose `logits` have the input's resolution, `(batch_size, num_labels,
        height, width)`: each head's output is resized bilinearly to the input size, as both SETR sources do before
        any loss or prediction. `hidden_states` / `attentions` are the encoder's, when requested.
        """
        if labels is not None:
            self.check_labels(labels, pixel_values)
        requested = kwargs.pop("output_hidden_states", None)
        requested = self.config.output_hidden_states if requested is None else requested
        # Capture only what the heads read (index 0 of `hidden_states` is the embedding output) plus what the caller
        # asked for; the caller gets back exactly what they asked for.
        needed = {index + 1 for index in self.encoder_layers_used(with_auxiliary_heads=labels is not None)}
        selection = selected_hidden_states(requested)
        if selection is not None:
            num_states = self.config.num_hidden_layers + 1
            selection = resolve_hidden_states_indices(self.setr, selection, num_hidden_states=num_states)
        capture = True if requested is True else sorted(needed | (selection or set()))
        outputs = self.setr(pixel_values, output_hidden_states=capture, return_dict=True, **kwargs)
        hidden_states = outputs.hidden_states
        grid_size = tuple(size // self.config.patch_size for size in pixel_values.shape[-2:])
        input_size = tuple(pixel_values.shape[-2:])

        def layer_output(index: int) -> torch.Tensor:
            return hidden_states[index % self.config.num_hidden_layers + 1]

        if self.neck is not None:
            neck_outputs = self.neck([layer_output(index) for index in self.config.mla_in_indices], grid_size)
            head_logits = self.decode_head(neck_outputs)
        else:
            head_logits = self.decode_head(layer_output(self.config.decoder_in_index), grid_size)
        logits = resize_bilinear(head_logits, input_size)

        loss = None
        if labels is not None:
            loss = self.segmentation_loss(head_logits, labels)
            for index, head in zip(self.config.auxiliary_in_indices, self.auxiliary_heads):
                head_input = neck_outputs[index] if self.neck is not None else layer_output(index)
                aux_logits = head(head_input, grid_size)
                loss = loss + self.config.auxiliary_loss_weight * self.segmentation_loss(aux_logits, labels)

        return SemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=self.filter_hidden_states(hidden_states, requested, selection),
            attentions=outputs.attentions,
        )

    @staticmethod
    def filter_hidden_states(hidden_states, requested, selection):
        """Return the hidden states as `output_hidden_states=requested` would have captured them."""
        if requested is None or requested is False:
            return None
        if selection is None:
            return hidden_states
        return tuple(state if index in selection else None for index, state in enumerate(hidden_states))

    def segmentation_loss(self, head_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of a head's logits resized straight to the label size (one resize), averaged over all pixels
        with ignored ones counting 0, as in both SETR sources (mmsegmentation's `avg_non_ignore=False`). So a crop
        that is all ignore index gives 0, not NaN. With one output channel (`num_labels=1`, binary masks) it is the
        sigmoid cross-entropy of the foreground (label 1), averaged the same way, as transformers' Segformer does."""
        logits = resize_bilinear(head_logits, tuple(labels.shape[-2:]))
        ignore_index = self.config.semantic_loss_ignore_index
        if logits.shape[1] == 1:
            losses = F.binary_cross_entropy_with_logits(
                logits.squeeze(1), (labels == 1).to(logits.dtype), reduction="none"
            )
            return (losses * (labels != ignore_index)).mean()
        losses = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
        return losses.mean()


__all__ = ["SetrModel", "SetrPreTrainedModel", "SetrForSemanticSegmentation"]
