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
code); the paper's test protocol feeds unpadded images. In eval mode every convolution + BatchNorm pair is folded
into one convolution; without autograd, activations run in place and the UperNet head's `fpn_bottleneck` convolution
runs on the coarse levels before their upsampling (`conv3x3_of_upsampled`): the same function with fewer full-size
tensors and 41% fewer FLOPs for MPViT-Small + UperNet. With autograd on (training) the plain computation runs.
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
from transformers.models.upernet.modeling_upernet import UperNetConvModule, UperNetFCNHead, UperNetHead
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


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the single convolution equal to `norm(conv(x))` with the norm's running statistics."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, *([1] * (conv.weight.ndim - 1))), bias


def conv_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d, features: torch.Tensor) -> torch.Tensor:
    """`norm(conv(features))`, as one convolution with the folded weight whenever the norm uses its running
    statistics (eval mode): one full-size tensor less to write and read. Gradients still reach the convolution's and
    the norm's parameters through the folded weight."""
    if norm.training or norm.running_mean is None:
        return norm(conv(features))
    weight, bias = fold_batch_norm(conv, norm)
    return F.conv2d(features, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def hardswish(features: torch.Tensor) -> torch.Tensor:
    """Hardswish, in place when autograd does not need the input."""
    return F.hardswish(features, inplace=not (torch.is_grad_enabled() and features.requires_grad))


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
        self.activation = activation

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = conv_batch_norm(self.conv, self.batch_norm, features)
        return hardswish(features) if self.activation else features


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
    BN -> Hardswish (the authors' `DWCPatchEmbed`). The BN folds into the pointwise convolution in eval mode."""

    def __init__(self, config: MPViTConfig, channels: int, stride: int):
        super().__init__()
        self.depthwise_conv = conv_init_style(
            nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False), "fan_out"
        )
        self.pointwise_conv = conv_init_style(nn.Conv2d(channels, channels, 1, bias=False), "fan_out")
        self.batch_norm = nn.BatchNorm2d(channels, eps=config.batch_norm_eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.depthwise_conv(features)
        return hardswish(conv_batch_norm(self.pointwise_conv, self.batch_norm, features))


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


# Copied from hf_seg.models.setr.modeling_setr.SetrLinear with Setr->MPViT (one file per model)
class MPViTLinear(nn.Linear):
    """`nn.Linear` whose fp32 CPU inference calls oneDNN's GEMM directly.

    On a CPU, `F.linear` runs the BLAS PyTorch was built with (MKL), whose SGEMM reaches 180-190 GFLOP/s on this
    project's 2-core AMD EPYC machine; oneDNN (PyTorch's convolution backend) runs the same products with its AVX-512
    kernels at 390-430 GFLOP/s: MPViT-Small + UperNet's forward at 512x512 takes 1.27-1.30 s instead of
    1.40-1.45 s. Same fp32 arithmetic in another summation order, so the results agree to float rounding. oneDNN's
    op has no autograd formula: training, `torch.compile` / export tracing, autocast, other dtypes and devices, and
    `torch.backends.mkldnn.flags(enabled=False)` take `F.linear`."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if (
            not torch.compiler.is_compiling()  # first: the checks below are not traceable
            and not torch.jit.is_tracing()
            and features.device.type == "cpu"
            and features.dtype == self.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (features.requires_grad or self.weight.requires_grad))
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.enabled
            and torch.backends.mkldnn.is_available()
        ):
            return torch.ops.mkldnn._linear_pointwise(features, self.weight, self.bias, "none", [], "")
        return super().forward(features)


class MPViTFactorizedAttention(nn.Module):
    """Factorized attention with convolutional relative position encoding (the authors' `FactorAtt_ConvRelPosEnc`):
    `scale * q (softmax_N(k)^T v) + q * crpe(v)`, then a projection. Linear in the number of tokens: the per-head
    context `softmax_N(k)^T v` is a `head_dim x head_dim` matrix."""

    def __init__(self, config: MPViTConfig, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = MPViTLinear(channels, 3 * channels, bias=config.qkv_bias)
        self.proj = MPViTLinear(channels, channels)

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
        self.fc1 = MPViTLinear(channels, channels * mlp_ratio)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = MPViTLinear(channels * mlp_ratio, channels)

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
        self.conv2 = MPViTConvBN(config, channels, channels, activation=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = hardswish(conv_batch_norm(self.depthwise_conv, self.batch_norm, self.conv1(features)))
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


class MPViTConvModule(UperNetConvModule):
    """transformers' `UperNetConvModule` (Conv -> BN -> ReLU, the function of mmcv's `ConvModule`), with the BN
    folded into the convolution and the ReLU in place in eval mode."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = conv_batch_norm(self.conv, self.batch_norm, features)
        return torch.relu_(features) if not (torch.is_grad_enabled() and features.requires_grad) else F.relu(features)


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


def _use_fast_conv_modules(head: nn.Module) -> None:
    """Swap a transformers UperNet head's `UperNetConvModule`s for the folding subclass (same parameters)."""
    for module in head.modules():
        if type(module) is UperNetConvModule:
            module.__class__ = MPViTConvModule


def bilinear_resize_matrix(in_size: int, out_size: int, shift: int = 0, dtype=torch.float32, device=None):
    """`[out_size, in_size]` matrix `M` with `M @ x` = `F.interpolate(x, out_size, mode="linear",
    align_corners=False)` along one axis (PyTorch's rule: source `(dst + 0.5) * in / out - 0.5`, clamped at 0, the
    last index repeated), with its rows shifted by `shift` and zero-filled where `dst + shift` leaves the output
    (the zero padding of a convolution applied after the resize)."""
    destination = torch.arange(out_size, dtype=torch.float64) + shift
    source = ((destination + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    weight_high = source - low
    inside = ((destination >= 0) & (destination < out_size)).double()
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, low), (1 - weight_high) * inside, accumulate=True)
    matrix.index_put_((rows, high), weight_high * inside, accumulate=True)
    return matrix.to(dtype=dtype, device=device)


def conv3x3_of_upsampled(features: torch.Tensor, weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`F.conv2d(F.interpolate(features, size, bilinear), weight, padding=1)` without the upsampled input: the 3x3
    convolution splits into nine 1x1 convolutions (one per tap) that commute with the per-channel bilinear resize, so
    they run at the coarse resolution; one matrix product per axis then resizes and shifts all taps at once. Equal
    in exact arithmetic; at x2, x4, x8 it needs 1/4, 1/16, 1/64 of the convolution's multiply-adds."""
    batch_size, _, height, width = features.shape
    out_channels = weight.shape[0]
    taps = weight.permute(2, 3, 0, 1).reshape(9 * out_channels, -1, 1, 1)  # (row tap, column tap, output channel)
    per_tap = F.conv2d(features, taps).view(batch_size, 3, 3, out_channels, height, width)
    kwargs = dict(dtype=features.dtype, device=features.device)
    columns = torch.cat([bilinear_resize_matrix(width, size[1], shift, **kwargs) for shift in (-1, 0, 1)], dim=1)
    rows = torch.cat([bilinear_resize_matrix(height, size[0], shift, **kwargs) for shift in (-1, 0, 1)], dim=1)
    # [B, C, row tap, h, (column tap, w)] @ [(column tap, w), W] sums the column taps while resizing the columns
    per_row_tap = per_tap.permute(0, 3, 1, 4, 2, 5).reshape(batch_size, out_channels, 3, height, 3 * width)
    per_row_tap = per_row_tap @ columns.T
    # [H, (row tap, h)] @ [B, C, (row tap, h), W] sums the row taps while resizing the rows
    return rows @ per_row_tap.reshape(batch_size, out_channels, 3 * height, size[1])


class MPViTUperNetHead(UperNetHead):
    """transformers' `UperNetHead` (PPM + FPN, the function of mmsegmentation's `UPerHead`) with Dropout2d before the
    classifier. At inference the BNs are folded, and the `fpn_bottleneck` 3x3 convolution over the concatenation of
    the four levels, three of them upsampled to 1/4, runs as one convolution on level 0 plus `conv3x3_of_upsampled`
    on the three coarse levels: the same function without the upsampled maps, their 2048-channel concatenation and
    44% of the model's multiply-adds."""

    def __init__(self, config: MPViTConfig, in_channels: list[int]):
        settings = _upernet_settings(config)
        super().__init__(settings, in_channels)
        self.config = None  # the settings namespace is not a config to keep around
        self.classifier = MPViTClassifier(settings.hidden_size, config.num_labels, config.classifier_dropout_prob)
        _use_fast_conv_modules(self)

    def forward(self, encoder_hidden_states: list[torch.Tensor]) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return super().forward(encoder_hidden_states)
        laterals = [conv(encoder_hidden_states[index]) for index, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(encoder_hidden_states))
        for index in range(len(laterals) - 1, 0, -1):
            laterals[index - 1] += F.interpolate(
                laterals[index], size=laterals[index - 1].shape[2:], mode="bilinear", align_corners=self.align_corners
            )
        fpn_outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        weight, bias = fold_batch_norm(self.fpn_bottleneck.conv, self.fpn_bottleneck.batch_norm)
        weights = weight.split(self.channels, dim=1)
        size = tuple(fpn_outs[0].shape[2:])
        fused = F.conv2d(fpn_outs[0], weights[0], bias, padding=1)
        for level_features, level_weight in zip(fpn_outs[1:], weights[1:]):
            fused += conv3x3_of_upsampled(level_features, level_weight, size)
        return self.classifier(torch.relu_(fused))


class MPViTFCNHead(UperNetFCNHead):
    """transformers' `UperNetFCNHead` (mmsegmentation's `FCNHead`) with Dropout2d before the classifier."""

    def __init__(self, config: MPViTConfig, in_channels: list[int]):
        settings = _upernet_settings(config)
        super().__init__(settings, in_channels, in_index=config.auxiliary_in_index)
        self.config = None
        self.classifier = MPViTClassifier(settings.auxiliary_channels, config.num_labels, config.classifier_dropout_prob)
        _use_fast_conv_modules(self)


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
        ignore_index, num_labels = self.config.semantic_loss_ignore_index, self.config.num_labels
        if num_labels < 2:
            raise ValueError(f"the segmentation loss is a cross-entropy over num_labels >= 2 classes, got {num_labels}")
        invalid = (labels != ignore_index) & ((labels < 0) | (labels >= num_labels))
        if invalid.any():
            bad = torch.unique(labels[invalid])[:10].tolist()
            raise ValueError(
                f"labels hold values {bad} outside [0, {num_labels}) that are not the ignore index {ignore_index}"
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
        counting 0 (mmsegmentation 0.11, the authors' fork). A crop that is all ignore index gives 0, not NaN."""
        logits = F.interpolate(head_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        losses = F.cross_entropy(logits, labels, ignore_index=self.config.semantic_loss_ignore_index, reduction="none")
        return losses.mean()


__all__ = [
    "MPViTBackbone",
    "MPViTForImageClassification",
    "MPViTForSemanticSegmentation",
    "MPViTModel",
    "MPViTPreTrainedModel",
]
