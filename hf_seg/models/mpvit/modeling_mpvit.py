# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""PyTorch MPViT (Lee et al., "MPViT: Multi-Path Vision Transformer for Dense Prediction", CVPR 2022) and its
UperNet segmentation model.

The backbone computes what the authors' code (`youngwanLEE/MPViT`, `mpvit.py`) computes: a convolutional stem, then
four stages of multi-scale patch embedding (a chain of depthwise-separable 3x3 convolutions, one output per path, all
at the same resolution), one transformer encoder per path (convolutional position encoding, factorized attention
with convolutional relative position encoding), a convolutional local branch, and a 1x1 aggregation of all of them.
The segmentation head is transformers' `UperNetHead` / `UperNetFCNHead` (the same function as mmsegmentation's
`UPerHead` / `FCNHead`) plus the Dropout2d(0.1) before both classifiers that the paper's training uses.

Inputs of any size work (the convolutions' output sizes are `ceil(side / 2)` per stride-2 step, as in the authors'
code); the paper's test protocol feeds unpadded images.

Training and inference run the same code. CPU inference speed-ups (oneDNN linear layers, BatchNorm folded into the
convolutions, in-place activations, the UperNet head's `fpn_bottleneck` computed on the coarse levels) are opt-in and
live outside this file: `hf_seg.optimize_for_inference(model)`.
"""

import math
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithNoAttention,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
    SemanticSegmenterOutput,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import (
    capture_outputs,
    resolve_hidden_states_indices,
    selected_hidden_states,
)

from .configuration_mpvit import MPViTConfig


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm's `DropPath`): zero a sample's residual branch with probability
    `drop_prob` and scale the kept ones by `1 / (1 - drop_prob)`."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * mask / keep_prob


def conv_init_style(conv: nn.Conv2d, style: str) -> nn.Conv2d:
    """Mark how `_init_weights` initialises `conv`, following the authors' code: "fan_out" = normal with std
    sqrt(2 / (k*k*out_channels)) (their `Conv2d_BN` / `DWConv2d_BN`), "fan_out_per_group" = the same with fan_out
    divided by the groups (their `ResBlock`'s depthwise conv), "pytorch" = PyTorch's default (the position-encoding
    convs, which they leave alone)."""
    conv.init_style = style
    return conv


class MPViTConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional Hardswish: the authors' `Conv2d_BN`."""

    def __init__(self, config: MPViTConfig, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, activation: bool = True):
        super().__init__()
        self.conv = conv_init_style(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False), "fan_out"
        )
        self.batch_norm = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps)
        self.activation = nn.Hardswish() if activation else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.batch_norm(self.conv(features)))


class MPViTEmbeddings(nn.Module):
    """The stem: two stride-2 Conv3x3-BN-Hardswish, to C0/2 then C0 channels (output stride 4)."""

    def __init__(self, config: MPViTConfig):
        super().__init__()
        width = config.hidden_sizes[0]
        self.num_channels = config.num_channels
        self.conv1 = MPViTConvBN(config, config.num_channels, width // 2, kernel_size=3, stride=2)
        self.conv2 = MPViTConvBN(config, width // 2, width, kernel_size=3, stride=2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}"
            )
        return self.conv2(self.conv1(pixel_values.to(self.conv1.conv.weight.dtype)))


class MPViTPatchEmbedding(nn.Module):
    """One link of the multi-scale patch embedding chain: depthwise Conv3x3 (stride 1 or 2) -> pointwise Conv1x1 ->
    BN -> Hardswish (the authors' `DWCPatchEmbed`)."""

    def __init__(self, config: MPViTConfig, channels: int, stride: int):
        super().__init__()
        self.depthwise_conv = conv_init_style(
            nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False), "fan_out"
        )
        self.pointwise_conv = conv_init_style(nn.Conv2d(channels, channels, 1, bias=False), "fan_out")
        self.batch_norm = nn.BatchNorm2d(channels, eps=config.batch_norm_eps)
        self.activation = nn.Hardswish()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.batch_norm(self.pointwise_conv(self.depthwise_conv(features))))


class MPViTConvPosEncoding(nn.Module):
    """Convolutional position encoding `x + DWConv3x3(x)` (the authors' `ConvPosEnc`), shared by all blocks of a
    path's encoder. Works on `[B, N, C]` tokens, which are a channels-last view of the `[B, C, H, W]` map."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = conv_init_style(nn.Conv2d(channels, channels, 3, 1, 1, groups=channels), "pytorch")

    def forward(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        batch_size, num_tokens, channels = tokens.shape
        feature_map = tokens.reshape(batch_size, *size, channels).permute(0, 3, 1, 2)
        encoded = self.proj(feature_map).permute(0, 2, 3, 1).reshape(batch_size, num_tokens, channels)
        return encoded + tokens


class MPViTConvRelPosEncoding(nn.Module):
    """Convolutional relative position encoding (the authors' `ConvRelPosEnc`), shared by all blocks of a path's
    encoder: the values, as a map, go through one depthwise convolution per head group (kernels 3, 5, 7 over heads
    [0, 2), [2, 5), [5, 8) by default); the result multiplies the queries element-wise."""

    def __init__(self, config: MPViTConfig, channels: int, num_heads: int):
        super().__init__()
        head_dim = channels // num_heads
        self.split_channels = [split * head_dim for split in config.crpe_head_splits]
        self.convs = nn.ModuleList(
            conv_init_style(nn.Conv2d(split, split, window, 1, window // 2, groups=split), "pytorch")
            for split, window in zip(self.split_channels, config.crpe_window_sizes)
        )

    def forward(self, query: torch.Tensor, value: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """`query`, `value`: `[B, N, C]` (heads major in C). Returns `query * conv(value)` as `[B, N, C]`."""
        batch_size, num_tokens, channels = value.shape
        value_map = value.reshape(batch_size, *size, channels).permute(0, 3, 1, 2)
        groups = torch.split(value_map, self.split_channels, dim=1)
        convolved = torch.cat([conv(group) for conv, group in zip(self.convs, groups)], dim=1)
        return query * convolved.permute(0, 2, 3, 1).reshape(batch_size, num_tokens, channels)


class MPViTFactorizedAttention(nn.Module):
    """Factorized attention with convolutional relative position encoding (the authors' `FactorAtt_ConvRelPosEnc`):
    `scale * q (softmax_N(k)^T v) + q * crpe(v)`, then a projection. Linear in the number of tokens: the per-head
    context `softmax_N(k)^T v` is a `head_dim x head_dim` matrix."""

    def __init__(self, config: MPViTConfig, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(channels, 3 * channels, bias=config.qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, hidden_states: torch.Tensor, size: tuple[int, int],
                rel_pos_encoding: MPViTConvRelPosEncoding) -> torch.Tensor:
        batch_size, num_tokens, channels = hidden_states.shape
        query, key, value = self.qkv(hidden_states).chunk(3, dim=-1)  # [B, N, C] views, heads major in C
        heads = (batch_size, num_tokens, self.num_heads, self.head_dim)
        key = key.reshape(heads).softmax(dim=1)  # over the tokens
        context = torch.einsum("bnhk,bnhv->bhkv", key, value.reshape(heads))
        # scale * (q @ context) == q @ (scale * context): scale the small matrix, not the [B, N, C] product
        factorized = torch.einsum("bnhk,bhkv->bnhv", query.reshape(heads), context * self.scale)
        hidden_states = factorized.reshape(batch_size, num_tokens, channels) + rel_pos_encoding(query, value, size)
        return self.proj(hidden_states)


class MPViTMLP(nn.Module):
    """fc1 -> activation (GELU) -> fc2, width `mlp_ratio` x channels (the authors' `Mlp`; its dropout is 0)."""

    def __init__(self, config: MPViTConfig, channels: int, mlp_ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels * mlp_ratio)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(channels * mlp_ratio, channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class MPViTLayer(GradientCheckpointingLayer):
    """One transformer block of a path (the authors' `MHCABlock`): `x = cpe(x)`, `x + attn(LN(x))`,
    `x + MLP(LN(x))`. The position encodings belong to the path's encoder (shared by its blocks) and are passed in."""

    def __init__(self, config: MPViTConfig, channels: int, num_heads: int, mlp_ratio: int, drop_path_rate: float):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.attention = MPViTFactorizedAttention(config, channels, num_heads)
        self.layernorm_after = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.mlp = MPViTMLP(config, channels, mlp_ratio)
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden_states: torch.Tensor, size: tuple[int, int], pos_encoding: MPViTConvPosEncoding,
                rel_pos_encoding: MPViTConvRelPosEncoding) -> torch.Tensor:
        hidden_states = pos_encoding(hidden_states, size)
        attention_output = self.attention(self.layernorm_before(hidden_states), size, rel_pos_encoding)
        hidden_states = hidden_states + drop_path(attention_output, self.drop_path_rate, self.training)
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        return hidden_states + drop_path(mlp_output, self.drop_path_rate, self.training)


class MPViTPathEncoder(nn.Module):
    """The transformer encoder of one path (the authors' `MHCAEncoder`): its blocks share one position encoding and
    one relative position encoding. `[B, C, H, W]` in and out; no final norm."""

    def __init__(self, config: MPViTConfig, stage: int, drop_path_rates: list[float]):
        super().__init__()
        channels, num_heads = config.hidden_sizes[stage], config.num_attention_heads[stage]
        self.pos_encoding = MPViTConvPosEncoding(channels)
        self.rel_pos_encoding = MPViTConvRelPosEncoding(config, channels, num_heads)
        self.layers = nn.ModuleList(
            MPViTLayer(config, channels, num_heads, config.mlp_ratios[stage], rate) for rate in drop_path_rates
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch_size, channels, height, width = features.shape
        hidden_states = features.permute(0, 2, 3, 1).reshape(batch_size, height * width, channels)
        for layer in self.layers:
            hidden_states = layer(hidden_states, (height, width), self.pos_encoding, self.rel_pos_encoding)
        return hidden_states.reshape(batch_size, height, width, channels).permute(0, 3, 1, 2)


class MPViTLocalBranch(nn.Module):
    """The convolutional local feature of a stage (the authors' `ResBlock`, named `InvRes`) on path 0's embedding:
    x + ConvBN1x1(Hardswish(BN(DWConv3x3(ConvBN1x1+Hardswish(x)))))."""

    def __init__(self, config: MPViTConfig, channels: int):
        super().__init__()
        self.conv1 = MPViTConvBN(config, channels, channels)
        self.depthwise_conv = conv_init_style(
            nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False), "fan_out_per_group"
        )
        self.batch_norm = nn.BatchNorm2d(channels, eps=config.batch_norm_eps)
        self.activation = nn.Hardswish()
        self.conv2 = MPViTConvBN(config, channels, channels, activation=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.batch_norm(self.depthwise_conv(self.conv1(features))))
        return features + self.conv2(hidden)


class MPViTStage(nn.Module):
    """Multi-scale patch embedding, one encoder per path, the local branch, and the global-to-local aggregation
    (Conv1x1-BN-Hardswish over [local, path 0, ..., path P-1]) to the next stage's width."""

    def __init__(self, config: MPViTConfig, stage: int, drop_path_rates: list[float]):
        super().__init__()
        channels, num_paths = config.hidden_sizes[stage], config.num_paths[stage]
        out_channels = config.stage_out_channels[stage + 1]
        self.patch_embeddings = nn.ModuleList(
            MPViTPatchEmbedding(config, channels, stride=2 if stage > 0 and path == 0 else 1)
            for path in range(num_paths)
        )
        self.paths = nn.ModuleList(MPViTPathEncoder(config, stage, drop_path_rates) for _ in range(num_paths))
        self.local_branch = MPViTLocalBranch(config, channels)
        self.aggregate = MPViTConvBN(config, (num_paths + 1) * channels, out_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        embeddings = []
        for patch_embedding in self.patch_embeddings:
            features = patch_embedding(features)
            embeddings.append(features)
        outputs = [self.local_branch(embeddings[0])]
        outputs += [encoder(embedding) for encoder, embedding in zip(self.paths, embeddings)]
        return self.aggregate(torch.cat(outputs, dim=1))


class MPViTPreTrainedModel(PreTrainedModel):
    config: MPViTConfig
    base_model_prefix = "mpvit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MPViTStage"]

    @torch.no_grad()
    def _init_weights(self, module):
        """The authors' init, decided per leaf module (transformers re-initialises missing weights module by module):
        Linear truncated normal (std `initializer_range`), zero bias; convolutions by their `init_style` (see
        `conv_init_style`); norms 1 and 0 with fresh statistics. UperNet head convolutions (unmarked) get mmcv's
        ConvModule init (kaiming normal, fan_out, ReLU gain) and the classifiers normal(0, 0.01), as in
        mmsegmentation."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, MPViTClassifier):
            init.normal_(module.weight, std=0.01)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            style = getattr(module, "init_style", "conv_module")
            if style == "pytorch":
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                if module.bias is not None:
                    bound = 1 / math.sqrt(module.weight[0].numel())
                    init.uniform_(module.bias, -bound, bound)
            elif style == "conv_module":
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    init.zeros_(module.bias)
            else:
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                if style == "fan_out_per_group":
                    fan_out //= module.groups
                init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    init.zeros_(module.bias)
        else:
            super()._init_weights(module)  # LayerNorm / BatchNorm: weight 1, bias 0, fresh running statistics


class MPViTEncoder(MPViTPreTrainedModel):
    main_input_name = "hidden_states"
    _can_record_outputs = {"hidden_states": MPViTStage}

    def __init__(self, config: MPViTConfig):
        super().__init__(config)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        starts = [sum(config.depths[:stage]) for stage in range(config.num_stages)]
        self.stages = nn.ModuleList(
            MPViTStage(config, stage, rates[start : start + depth])
            for stage, (start, depth) in enumerate(zip(starts, config.depths))
        )
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]):
        for stage in self.stages:
            hidden_states = stage(hidden_states)
        return BaseModelOutputWithNoAttention(last_hidden_state=hidden_states)


class MPViTModel(MPViTPreTrainedModel):
    """The MPViT backbone. `last_hidden_state` is the last stage's map (stride 32), `pooler_output` its global
    average (there is no final norm), `hidden_states` the stem's and every stage's output."""

    def __init__(self, config: MPViTConfig):
        super().__init__(config)
        self.embeddings = MPViTEmbeddings(config)
        self.encoder = MPViTEncoder(config)
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]):
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): any height and width
            (each stride-2 step gives `ceil(side / 2)`).
        """
        encoder_outputs = self.encoder(self.embeddings(pixel_values), **kwargs)
        last_hidden_state = encoder_outputs.last_hidden_state
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=last_hidden_state.mean(dim=(-2, -1)),
            hidden_states=encoder_outputs.hidden_states,
        )


class MPViTForImageClassification(MPViTPreTrainedModel):
    """MPViT with the ImageNet head: global average pooling of the last stage, then a Linear layer."""

    def __init__(self, config: MPViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mpvit = MPViTModel(config)
        last_width = config.hidden_sizes[-1]
        self.classifier = nn.Linear(last_width, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, labels: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> ImageClassifierOutputWithNoAttention:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class indices for the cross-entropy loss
            (a regression / multi-label loss if `config.problem_type` says so).
        """
        outputs = self.mpvit(pixel_values, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class MPViTBackbone(BackboneMixin, MPViTPreTrainedModel):
    """MPViT as a transformers backbone (for `UperNetForSemanticSegmentation` and other dense-prediction heads):
    the feature maps of `config.out_features` (stem, stage1..stage4 at strides 4, 4, 8, 16, 32)."""

    has_attentions = False

    def __init__(self, config: MPViTConfig):
        super().__init__(config)
        self.embeddings = MPViTEmbeddings(config)
        self.encoder = MPViTEncoder(config)
        self.num_features = config.stage_out_channels
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        kwargs["output_hidden_states"] = True  # the feature maps are the hidden states
        hidden_states = self.encoder(self.embeddings(pixel_values), **kwargs).hidden_states
        feature_maps = tuple(
            state for stage, state in zip(self.stage_names, hidden_states) if stage in self.out_features
        )
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states)


class MPViTClassifier(nn.Conv2d):
    """A head's 1x1 classifier with mmsegmentation's Dropout2d before it (training only). A `Conv2d` subclass, so
    the parameter names stay those of transformers' UperNet heads (`classifier.weight`, `classifier.bias`)."""

    def __init__(self, in_channels: int, num_labels: int, dropout_prob: float):
        super().__init__(in_channels, num_labels, kernel_size=1)
        self.dropout_prob = dropout_prob

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(F.dropout2d(features, self.dropout_prob, self.training))


def _upernet_settings(config: MPViTConfig) -> SimpleNamespace:
    """The fields transformers' UperNet heads read from a `UperNetConfig`, taken from an `MPViTConfig`."""
    return SimpleNamespace(
        pool_scales=list(config.pool_scales),
        hidden_size=config.decoder_hidden_size,
        num_labels=config.num_labels,
        auxiliary_in_channels=None,
        auxiliary_channels=config.auxiliary_channels,
        auxiliary_num_convs=config.auxiliary_num_convs,
        auxiliary_concat_input=config.auxiliary_concat_input,
    )


class MPViTUperNetHead(UperNetHead):
    """transformers' `UperNetHead` (PPM + FPN, the function of mmsegmentation's `UPerHead`) with Dropout2d before the
    classifier."""

    def __init__(self, config: MPViTConfig, in_channels: list[int]):
        settings = _upernet_settings(config)
        super().__init__(settings, in_channels)
        self.config = None  # the settings namespace is not a config to keep around
        self.classifier = MPViTClassifier(settings.hidden_size, config.num_labels, config.classifier_dropout_prob)


class MPViTFCNHead(UperNetFCNHead):
    """transformers' `UperNetFCNHead` (mmsegmentation's `FCNHead`) with Dropout2d before the classifier."""

    def __init__(self, config: MPViTConfig, in_channels: list[int]):
        settings = _upernet_settings(config)
        super().__init__(settings, in_channels, in_index=config.auxiliary_in_index)
        self.config = None
        self.classifier = MPViTClassifier(settings.auxiliary_channels, config.num_labels, config.classifier_dropout_prob)


class MPViTForSemanticSegmentation(MPViTPreTrainedModel):
    """MPViT + UperNet as in the paper's ADE20K configs: the four stage outputs (whatever `out_features` says) feed
    `decode_head` (UPerHead) and, in training, stage `auxiliary_in_index` feeds `auxiliary_head` (FCNHead, loss
    weight 0.4). The parameter names are those of transformers' `UperNetForSemanticSegmentation` with an
    `MPViTBackbone` (`backbone.*`, `decode_head.*`, `auxiliary_head.*`), so state dicts move between the two as they
    are; the backbone's keys are those of `MPViTModel` (an ImageNet classifier's `mpvit.*`)."""

    def __init__(self, config: MPViTConfig):
        super().__init__(config)
        self.backbone = MPViTBackbone(config)
        in_channels = config.stage_out_channels[1:]
        self.decode_head = MPViTUperNetHead(config, in_channels)
        self.auxiliary_head = MPViTFCNHead(config, in_channels) if config.use_auxiliary_head else None
        self.post_init()

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
    def forward(self, pixel_values: torch.Tensor, labels: torch.LongTensor | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> SemanticSegmenterOutput:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): any height and width.
        labels (`torch.LongTensor` of shape `(batch_size, label_height, label_width)`, *optional*): class indices in
            `[0, num_labels)` or `config.semantic_loss_ignore_index`. The loss is the cross-entropy of the decode
            head's logits resized bilinearly to the label size, plus `auxiliary_loss_weight` times the auxiliary
            head's, each averaged over all pixels (ignored ones count 0) as mmsegmentation 0.x (the authors' fork)
            does.

        Returns a `SemanticSegmenterOutput` whose `logits` are the decode head's, resized bilinearly to the input
        size `(batch_size, num_labels, height, width)`.
        """
        if labels is not None:
            self.check_labels(labels, pixel_values)
        requested = kwargs.pop("output_hidden_states", None)
        requested = self.config.output_hidden_states if requested is None else requested
        outputs = self.backbone(pixel_values, output_hidden_states=True, return_dict=True, **kwargs)
        features = outputs.hidden_states[1:]
        head_logits = self.decode_head(features)
        logits = F.interpolate(head_logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)

        loss = None
        if labels is not None:
            loss = self.segmentation_loss(head_logits, labels)
            if self.auxiliary_head is not None:
                aux_logits = self.auxiliary_head(features)
                loss = loss + self.config.auxiliary_loss_weight * self.segmentation_loss(aux_logits, labels)
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=self.filter_hidden_states(
            outputs.hidden_states, requested))

    def filter_hidden_states(self, hidden_states: tuple, requested) -> tuple | None:
        """The hidden states as `output_hidden_states=requested` (a flag, an index or a list of indices) asks."""
        if requested is None or requested is False:
            return None
        selection = selected_hidden_states(requested)
        if selection is None:
            return hidden_states
        selection = resolve_hidden_states_indices(self.backbone.encoder, selection, len(hidden_states))
        return tuple(state if index in selection else None for index, state in enumerate(hidden_states))

    def segmentation_loss(self, head_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of a head's logits resized to the label size, averaged over all pixels with ignored ones
        counting 0 (mmsegmentation 0.11, the authors' fork). A crop that is all ignore index gives 0, not NaN. With
        one output channel (`num_labels=1`, binary masks) it is the sigmoid cross-entropy of the foreground (label 1),
        averaged the same way, as transformers' Segformer does."""
        logits = F.interpolate(head_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        ignore_index = self.config.semantic_loss_ignore_index
        if logits.shape[1] == 1:
            losses = F.binary_cross_entropy_with_logits(
                logits.squeeze(1), (labels == 1).to(logits.dtype), reduction="none"
            )
            return (losses * (labels != ignore_index)).mean()
        losses = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
        return losses.mean()


__all__ = [
    "MPViTBackbone",
    "MPViTForImageClassification",
    "MPViTForSemanticSegmentation",
    "MPViTModel",
    "MPViTPreTrainedModel",
]
