# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Opt-in CPU inference speed-ups for segmentation models: `optimize_for_inference(model)`.

The model files (`modeling_setr.py`, `modeling_mpvit.py`, shipped to the Hub as remote code) are plain PyTorch: one
forward for training and inference, `nn.Linear`, the normal BatchNorm. What makes them fast on a CPU is applied
here, to a model that already exists, and works as well on transformers' own classes
(`SegformerForSemanticSegmentation`, `UperNetForSemanticSegmentation` with any backbone):

1. **oneDNN linear layers.** Every `nn.Linear` (with `nn.Linear`'s own forward) calls oneDNN's fp32 GEMM
   (`torch.ops.mkldnn._linear_pointwise`, the op PyTorch's inductor uses for CPU linears) instead of `F.linear`,
   which on a CPU runs the BLAS PyTorch was built with (MKL). On this project's 2-core AMD EPYC machine MKL's SGEMM
   reaches 180-190 GFLOP/s on ViT-L's products and oneDNN's AVX-512 kernels 390-430 GFLOP/s (SETR-PUP ViT-L at
   512x512: 4.3 -> 2.8-3.0 s). The op is private to PyTorch: its existence is checked (`hasattr`) and, where it is
   missing, the linear layers stay as they are.
2. **BatchNorm folded into the convolution before it.** Where a convolution's output is read by a BatchNorm in eval
   mode and by nothing else, the convolution runs with the folded weight and bias
   (`torch.nn.utils.fusion.fuse_conv_bn_weights`, the arithmetic of `torch.ao.quantization.fuse_modules`): one
   full-size tensor less to write and read. The folded weight is kept beside the convolution (not in its state
   dict) and recomputed whenever one of the tensors it comes from is replaced or changed in place
   (`load_state_dict`, an optimizer step), which their version counters tell; this costs one more copy of those
   convolutions' weights (120 MB for MPViT-Small + UperNet, mostly its head) and saves recomputing it per call
   (30M multiply-adds and 240 MB of memory traffic per forward there).
3. **Activations in place.** Where an activation module (ReLU, Hardswish, GELU, SiLU, ReLU6) reads only the output
   of a linear layer or of a (folded) convolution, it runs in place on that fresh output.
4. **UperNet's `fpn_bottleneck` on the coarse levels.** transformers' `UperNetHead` (and subclasses that keep its
   forward, such as MPViT's) upsamples three FPN levels to 1/4 and concatenates them before a 3x3 convolution; here
   that convolution splits into nine 1x1 convolutions per level that commute with the bilinear upsampling, so they
   run at the coarse resolution (`conv3x3_of_upsampled`): the same function without the upsampled maps and their
   concatenation, and 41% fewer FLOPs for MPViT-Small + UperNet at 512x512.
5. **SegFormer's all-MLP head on the coarse stages.** The head projects each stage to the decoder width, resizes the
   maps to 1/4, concatenates them and fuses them with a 1x1 convolution + BatchNorm. That fuse is linear per pixel,
   so it commutes with the bilinear resize: each stage's slice of it (BatchNorm folded, and in transformers' head
   merged with the stage's projection) runs at the stage's own resolution and the resized results are summed. The
   4 x width concatenation at 1/4 is never built; for SegFormer-B2 at 512x512 the head's 40 GMAC fuse becomes
   1.6 GMAC. Works for transformers' `SegformerDecodeHead` and hf_seg's `SegformerMmsegDecodeHead` (whose per-stage
   ConvModules run as before). The 1x1 classifier runs as one matrix product.
6. **SegFormer's sequence reduction as one matrix product.** The kernel = stride = R convolution that shrinks keys
   and values is a GEMM over the R x R patches of the tokens, with no transpose to `[B, C, H, W]` and back.
7. **SegFormer's depthwise and patch convolutions on channels-last maps.** The tokens `[B, H * W, C]` already are
   a channels-last map; oneDNN runs Mix-FFN's 3x3 depthwise convolution on it several times faster than on the NCHW
   view transformers passes, and the output reads as tokens again without a copy.

How it is applied: like the `kernels` library's `kernelize` (which transformers' `use_kernels=True` calls), it
replaces the `forward` of module *instances*: the module tree, parameter names, `state_dict`, hooks and classes stay
as they are, so `save_pretrained` writes the plain weights and the plain model code, and the class's own `forward`
is always there to fall back on. Which modules are rewritten is decided from one traced forward of a small example
input: module hooks record which module produced every tensor and a `TorchFunctionMode` which modules read it, so a
convolution's output is only folded or activated in place where nothing else reads it (a skip connection, a
returned hidden state). Models whose forward cannot be traced that way at least get the linear layers and the
UperNet head. Why not the other mechanisms users know: `torch.ao.quantization.fuse_modules` wants the module names
and replaces the BatchNorms by `Identity` (the state dict changes); `torch.fx`'s fusion passes (and
`torch.fx.experimental.optimization.optimize_for_inference`, whose name this function borrows) need a symbolic trace,
which transformers' models do not allow (`SegformerDecodeHead` iterates over a proxy); timm's `reparameterize_model`
needs a method per module class in the model code, which must stay plain; `kernelize` itself swaps only layers that
the model code marked with `use_kernel_forward_from_hub` (transformers' Segformer / UperNet layers are not) for
kernels from the Hub.

It is for inference: the model is put in eval mode, and `model.train()` gives every module its plain forward back.

Every rewritten forward keeps the plain computation unless it is a plain fp32 inference call: the module is in eval
mode, autograd is not recording (`torch.inference_mode()` / `torch.no_grad()`, or frozen weights), no autocast, not
under `torch.compile` / `torch.export` / `torch.jit.trace` (compilers do these rewrites themselves). oneDNN also
needs a CPU tensor, `torch.backends.mkldnn` enabled (`torch.backends.mkldnn.flags(enabled=False)` turns it off) and
available. So gradients, reduced precision, other devices and exports keep working, at the plain model's speed.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode


logger = logging.getLogger(__name__)

_RECORD = "_hf_seg_inference_optimizations"  # attribute of an optimized model (a plain attribute, not state)


# --- when the optimized computation may run --------------------------------------------------------------------------


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta)
        return False


def _inference_call(module: nn.Module, features: torch.Tensor, weight: torch.Tensor, *others) -> bool:
    """True for a plain fp32 inference call of `module` on `features` with the parameters `weight` and `others` (some
    None): see the module docstring."""
    return (
        not torch.compiler.is_compiling()  # first: the checks below are not traceable
        and not torch.jit.is_tracing()
        and not module.training
        and features.dtype == torch.float32
        and weight.dtype == torch.float32
        and not (
            torch.is_grad_enabled()
            and (features.requires_grad or any(t is not None and t.requires_grad for t in (weight, *others)))
        )
        and not _autocast_enabled(features.device.type)
    )


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN and its linear op `torch.ops.mkldnn._linear_pointwise`."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# --- activations -----------------------------------------------------------------------------------------------------


def _gelu_(features: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return torch.ops.aten.gelu_(features, approximate=approximate)


def _inplace_activation(module: nn.Module):
    """The in-place function equal to `module` (an activation module of a known class), or None."""
    if "forward" in vars(module):
        return None
    kind = type(module)
    if kind is nn.ReLU:
        return torch.relu_
    if kind is nn.ReLU6:
        return functools.partial(F.relu6, inplace=True)
    if kind is nn.Hardswish:
        return functools.partial(F.hardswish, inplace=True)
    if kind is nn.SiLU:
        return functools.partial(F.silu, inplace=True)
    if kind is nn.GELU:
        return functools.partial(_gelu_, approximate=module.approximate)
    try:
        from transformers.activations import GELUActivation
    except ImportError:  # pragma: no cover
        return None
    if kind is GELUActivation and getattr(module, "act", None) is F.gelu:
        return _gelu_
    return None


def _plain(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """`module`'s class forward (its instance forward may be a pass-through set here)."""
    return type(module).forward(module, features)


def _activate(activation, features: torch.Tensor, fast: bool) -> torch.Tensor:
    if activation is None:
        return features
    module, inplace = activation
    return inplace(features) if fast else _plain(module, features)


# --- the rewritten forwards ------------------------------------------------------------------------------------------


def _passthrough_forward(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """A BatchNorm folded into the convolution before it, or an activation applied by the module before it."""
    return features


def _matmul(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, onednn) -> torch.Tensor:
    """`F.linear` through oneDNN where it may run (a CPU tensor, `torch.backends.mkldnn` enabled and available)."""
    if (
        onednn is not None
        and features.device.type == "cpu"
        and torch.backends.mkldnn.enabled
        and torch.backends.mkldnn.is_available()
    ):
        return onednn(features, weight, bias, "none", [], "")
    return F.linear(features, weight, bias)


def _linear_forward(linear: nn.Linear, onednn, activation, features: torch.Tensor) -> torch.Tensor:
    fast = _inference_call(linear, features, linear.weight, linear.bias)
    output = _matmul(features, linear.weight, linear.bias, onednn if fast else None)
    return _activate(activation, output, fast)


def _conv_forward(conv: nn.Conv2d, norm: nn.BatchNorm2d | None, folded, activation,
                  features: torch.Tensor) -> torch.Tensor:
    parameters = () if norm is None else (norm.weight, norm.bias)
    fast = _inference_call(conv, features, conv.weight, conv.bias, *parameters) and (norm is None or not norm.training)
    if not fast:
        output = _plain(conv, features)
        return _activate(activation, output if norm is None else _plain(norm, output), fast)
    if norm is None:
        output = conv._conv_forward(features, conv.weight, conv.bias)
    else:
        output = conv._conv_forward(features, *folded(conv, norm))
    return _activate(activation, output, fast)


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the one convolution equal to `norm(conv(x))` with the norm's running statistics."""
    with torch.no_grad():
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
        )
    return weight.detach(), bias.detach()


class DerivedWeights:
    """`compute(*modules)` (weights derived from those modules' parameters and buffers, e.g. a BatchNorm folded into
    a convolution), kept until one of those tensors is replaced by another or changed in place (which bumps its
    version counter), or a module's `eps` changes."""

    def __init__(self, compute):
        self.compute = compute
        self.sources, self.versions, self.value = (), (), None

    def __call__(self, *modules: nn.Module):
        sources = tuple(tensor for module in modules for tensor in (*module.parameters(), *module.buffers()))
        try:
            versions = tuple(tensor._version for tensor in sources) + tuple(getattr(m, "eps", None) for m in modules)
        except RuntimeError:  # parameters made under inference_mode have no version counter: no caching
            return self.compute(*modules)
        if (
            self.value is None
            or versions != self.versions
            or any(new is not old for new, old in zip(sources, self.sources))
        ):
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable outside inference_mode too
                self.value = self.compute(*modules)
            self.sources, self.versions = sources, versions
        return self.value


# --- UperNet's fpn_bottleneck on the coarse levels -------------------------------------------------------------------


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


def _upernet_head_forward(head: nn.Module, folded, encoder_hidden_states) -> torch.Tensor:
    """transformers' `UperNetHead.forward` with the `fpn_bottleneck` (BN folded) run by `conv3x3_of_upsampled` on
    the three coarse levels instead of on their upsampled concatenation."""
    bottleneck = head.fpn_bottleneck
    bottleneck_conv = bottleneck.conv
    norm = bottleneck.batch_norm
    if not (
        _inference_call(head, encoder_hidden_states[0], bottleneck_conv.weight, bottleneck_conv.bias, norm.weight,
                        norm.bias)
        and not norm.training
    ):
        return type(head).forward(head, encoder_hidden_states)
    laterals = [conv(encoder_hidden_states[index]) for index, conv in enumerate(head.lateral_convs)]
    laterals.append(head.psp_forward(encoder_hidden_states))
    for index in range(len(laterals) - 1, 0, -1):
        laterals[index - 1] += F.interpolate(
            laterals[index], size=laterals[index - 1].shape[2:], mode="bilinear", align_corners=head.align_corners
        )
    fpn_outs = [conv(lateral) for conv, lateral in zip(head.fpn_convs, laterals)] + [laterals[-1]]
    weight, bias = folded(bottleneck_conv, bottleneck.batch_norm)
    weights = weight.split(head.channels, dim=1)
    size = tuple(fpn_outs[0].shape[2:])
    fused = F.conv2d(fpn_outs[0], weights[0], bias, padding=1)
    for level_features, level_weight in zip(fpn_outs[1:], weights[1:]):
        fused += conv3x3_of_upsampled(level_features, level_weight, size)
    return head.classifier(torch.relu_(fused))


def _is_coarse_bottleneck_head(module: nn.Module) -> bool:
    """A transformers `UperNetHead` (or subclass with its forward) whose fpn_bottleneck this module can rewrite."""
    try:
        from transformers.models.upernet.modeling_upernet import UperNetConvModule, UperNetHead
    except ImportError:  # pragma: no cover
        return False
    if not isinstance(module, UperNetHead) or type(module).forward is not UperNetHead.forward:
        return False
    bottleneck = getattr(module, "fpn_bottleneck", None)
    if not isinstance(bottleneck, UperNetConvModule) or type(bottleneck).forward is not UperNetConvModule.forward:
        return False
    conv, norm = bottleneck.conv, bottleneck.batch_norm
    return (
        module.align_corners is False
        and type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
        and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
        and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats and norm.running_mean is not None
        and type(bottleneck.activation) is nn.ReLU
        and conv.in_channels == module.channels * (len(module.lateral_convs) + 1)
    )


# --- SegFormer: the decode head's fuse on the coarse stages, the sequence reduction as one matrix product -------------


def _sum_of_upsampled(stage_maps, weights, bias: torch.Tensor) -> torch.Tensor:
    """`relu(bias + sum_i upsample(weights[i] @ stage_maps[i]))`, every map resized bilinearly to the first one's
    size: the 1x1 fuse convolution of an all-MLP head (BatchNorm folded) applied per stage *before* the resize,
    which commutes with a per-pixel linear map, instead of on the concatenation of the resized maps."""
    size = stage_maps[0].shape[2:]
    fused = None
    for features, weight in zip(stage_maps, weights):
        batch_size, _, height, width = features.shape
        projected = torch.matmul(weight, features.reshape(batch_size, features.shape[1], height * width))
        projected = projected.view(batch_size, weight.shape[0], height, width)
        if projected.shape[2:] != size:
            projected = F.interpolate(projected, size=size, mode="bilinear", align_corners=False)
        fused = projected if fused is None else fused.add_(projected)
    return torch.relu_(fused.add_(bias.view(-1, 1, 1)))


def _pointwise(conv: nn.Conv2d, features: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution on an NCHW map as one matrix product (oneDNN's 1x1 convolution of a wide map with many
    output channels is several times slower than the GEMM)."""
    batch_size, channels, height, width = features.shape
    weight = conv.weight.view(conv.out_channels, channels)
    output = torch.matmul(weight, features.reshape(batch_size, channels, height * width))
    if conv.bias is not None:
        output = output.add_(conv.bias.view(-1, 1))
    return output.view(batch_size, conv.out_channels, height, width)


def _batch_norm_scale_shift(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    return scale, norm.bias.double() - norm.running_mean.double() * scale


def _segformer_head_weights(head: nn.Module):
    """transformers' `SegformerDecodeHead`: each stage's `SegformerMLP` projection, its slice of `linear_fuse` and
    the BatchNorm merged into one `[decoder_hidden_size, hidden_size]` matrix (in float64, then the head's dtype)."""
    scale, bias = _batch_norm_scale_shift(head.batch_norm)
    fuse = head.linear_fuse.weight.double().flatten(1).split(head.batch_norm.num_features, dim=1)[::-1]  # reversed
    weights = []
    for projection, fuse_slice in zip(head.linear_projections, fuse):
        weights.append((scale[:, None] * (fuse_slice @ projection.proj.weight.double())).to(head.classifier.weight))
        bias = bias + scale * (fuse_slice @ projection.proj.bias.double())
    return weights, bias.to(head.classifier.weight)


def _segformer_head_forward(head: nn.Module, derived, encoder_hidden_states, **kwargs) -> torch.Tensor:
    first = encoder_hidden_states[0]
    norm = head.batch_norm
    if not (_inference_call(head, first, head.linear_fuse.weight, norm.weight, norm.bias) and not norm.training
            and all(state.ndim == 4 for state in encoder_hidden_states)):
        return type(head).forward(head, encoder_hidden_states, **kwargs)
    weights, bias = derived(head)
    return _pointwise(head.classifier, _sum_of_upsampled(list(encoder_hidden_states), weights, bias))


def _mmseg_head_weights(head: nn.Module):
    """hf_seg's `SegformerMmsegDecodeHead`: the fusion convolution's slice per stage with its BatchNorm folded in."""
    scale, bias = _batch_norm_scale_shift(head.fusion_conv.batch_norm)
    fuse = head.fusion_conv.conv.weight.double().flatten(1).split(len(scale), dim=1)
    weights = [(scale[:, None] * fuse_slice).to(head.classifier.weight) for fuse_slice in fuse]
    return weights, bias.to(head.classifier.weight)


def _mmseg_head_forward(head: nn.Module, derived, stage_maps) -> torch.Tensor:
    norm = head.fusion_conv.batch_norm
    if not (_inference_call(head, stage_maps[0], head.fusion_conv.conv.weight, norm.weight, norm.bias)
            and not norm.training):
        return type(head).forward(head, stage_maps)
    weights, bias = derived(head)
    projected = [conv(features) for features, conv in zip(stage_maps, head.convs)]
    return _pointwise(head.classifier, _sum_of_upsampled(projected, weights, bias))


def _plain_1x1_conv(conv, bias: bool) -> bool:
    return (
        type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
        and (conv.bias is not None) == bias
    )


def _fusable_norm(norm) -> bool:
    return type(norm) is nn.BatchNorm2d and norm.track_running_stats and norm.running_mean is not None


def _all_mlp_head_kind(module: nn.Module) -> str | None:
    """"segformer" for transformers' `SegformerDecodeHead`, "mmseg" for hf_seg's `SegformerMmsegDecodeHead` (each
    with its class's forward and the layers that forward assumes), else None."""
    from transformers.models.segformer.modeling_segformer import SegformerDecodeHead, SegformerMLP

    from .models.segformer.modeling_segformer_mmseg import SegformerMmsegConvModule, SegformerMmsegDecodeHead

    kind = type(module)
    if kind is SegformerDecodeHead:
        return "segformer" if (
            _plain_1x1_conv(module.linear_fuse, bias=False) and _fusable_norm(module.batch_norm)
            and type(module.activation) is nn.ReLU and _plain_1x1_conv(module.classifier, bias=True)
            and all(type(mlp) is SegformerMLP and _plain_linear(mlp.proj) for mlp in module.linear_projections)
        ) else None
    if kind is SegformerMmsegDecodeHead:
        fusion = module.fusion_conv
        return "mmseg" if (
            type(fusion) is SegformerMmsegConvModule and _plain_1x1_conv(fusion.conv, bias=False)
            and _fusable_norm(fusion.batch_norm) and type(fusion.activation) is nn.ReLU
            and _plain_1x1_conv(module.classifier, bias=True)
        ) else None
    return None


def _patch_linear_weight(reduction: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    conv = reduction.sequence_reduction
    return conv.weight.permute(0, 2, 3, 1).flatten(1).contiguous(), conv.bias


def _sequence_reduction_forward(reduction: nn.Module, onednn, derived, hidden_states, height: int,
                                width: int) -> torch.Tensor:
    """transformers' `SegformerSequenceReduction` (a convolution with kernel = stride = R, then LayerNorm) as one
    matrix product over the R x R patches of the `[B, H * W, C]` tokens: no transpose to `[B, C, H, W]` and back."""
    conv = reduction.sequence_reduction
    if not _inference_call(reduction, hidden_states, conv.weight, conv.bias):
        return type(reduction).forward(reduction, hidden_states, height, width)
    batch_size, _, channels = hidden_states.shape
    ratio = conv.stride[0]
    rows, columns = height // ratio, width // ratio
    patches = hidden_states.view(batch_size, height, width, channels)[:, : rows * ratio, : columns * ratio]
    patches = patches.reshape(batch_size, rows, ratio, columns, ratio, channels).permute(0, 1, 3, 2, 4, 5)
    weight, bias = derived(reduction)
    reduced = _matmul(patches.reshape(batch_size, rows * columns, ratio * ratio * channels), weight, bias, onednn)
    return reduction.layer_norm(reduced)


def _channels_last_conv(conv: nn.Conv2d, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`conv` on `[B, H * W, C]` tokens seen as a channels-last map, returning `[B, H' * W', C']` tokens: oneDNN
    runs SegFormer's depthwise and patch convolutions several times faster on channels-last maps, and neither side
    needs a transposing copy."""
    batch_size, _, channels = tokens.shape
    features = tokens.reshape(batch_size, height, width, channels).permute(0, 3, 1, 2)
    output = conv(features.contiguous(memory_format=torch.channels_last))
    return output.permute(0, 2, 3, 1).reshape(batch_size, -1, output.shape[1])


def _depthwise_forward(module: nn.Module, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """transformers' `SegformerDepthWiseConv` (Mix-FFN's 3x3 depthwise convolution) on channels-last maps."""
    conv = module.dwconv
    if not _inference_call(module, hidden_states, conv.weight, conv.bias):
        return type(module).forward(module, hidden_states, height, width)
    return _channels_last_conv(conv, hidden_states, height, width)


def _patch_embedding_forward(module: nn.Module, pixel_values: torch.Tensor):
    """transformers' `SegformerOverlapPatchEmbeddings` with its convolution on a channels-last map, whose output
    reads as `[B, H * W, C]` tokens without a copy."""
    conv = module.proj
    if not _inference_call(module, pixel_values, conv.weight, conv.bias):
        return type(module).forward(module, pixel_values)
    batch_size, channels, height, width = pixel_values.shape
    tokens = pixel_values.permute(0, 2, 3, 1).reshape(batch_size, height * width, channels)
    embeddings = _channels_last_conv(conv, tokens, height, width)
    output_height = (height + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    return module.layer_norm(embeddings), output_height, embeddings.shape[1] // output_height


def _segformer_conv_kind(module: nn.Module) -> str | None:
    """"depthwise" / "patch" for transformers' `SegformerDepthWiseConv` / `SegformerOverlapPatchEmbeddings` with their
    class's forward and a plain convolution, else None."""
    from transformers.models.segformer.modeling_segformer import (
        SegformerDepthWiseConv,
        SegformerOverlapPatchEmbeddings,
    )

    if type(module) is SegformerDepthWiseConv and type(module.dwconv) is nn.Conv2d:
        return "depthwise"
    if (type(module) is SegformerOverlapPatchEmbeddings and type(module.proj) is nn.Conv2d
            and module.proj.dilation == (1, 1) and module.proj.padding_mode == "zeros"
            and type(module.layer_norm) is nn.LayerNorm):
        return "patch"
    return None


def _is_patch_reduction(module: nn.Module) -> bool:
    from transformers.models.segformer.modeling_segformer import SegformerSequenceReduction

    if type(module) is not SegformerSequenceReduction:
        return False
    conv = module.sequence_reduction
    return (
        type(conv) is nn.Conv2d and conv.kernel_size == conv.stride and conv.kernel_size[0] == conv.kernel_size[1]
        and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
        and type(module.layer_norm) is nn.LayerNorm
    )


# --- which modules may be fused: one traced forward ------------------------------------------------------------------

_METADATA = {"shape", "dtype", "device", "ndim", "requires_grad", "is_leaf", "layout", "is_cuda", "is_cpu",
             "is_meta", "is_sparse", "is_quantized", "is_mkldnn", "names", "itemsize", "nbytes", "grad_fn"}
_METADATA_METHODS = {"size", "dim", "numel", "stride", "is_contiguous", "is_floating_point", "is_complex",
                     "element_size", "get_device", "data_ptr", "nelement", "ndimension", "__len__"}


def _reads_values(func) -> bool:
    """False for calls that only look at a tensor's metadata (`x.shape`, `x.dim()`, ...)."""
    name = getattr(func, "__name__", None)
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", None) not in _METADATA
    return name not in _METADATA_METHODS


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


class _Dataflow(TorchFunctionMode):
    """During one forward: which watched module produced each tensor, and which module (innermost running one; None
    at the top level or for the returned outputs) read its values."""

    def __init__(self):
        super().__init__()
        self.running: list[nn.Module] = []
        self.producer: dict[int, nn.Module] = {}
        self.kept: list[torch.Tensor] = []  # keeps the produced tensors alive, so that their ids stay unique
        self.readers: dict[int, set] = defaultdict(set)
        self.inputs: dict[nn.Module, list[int]] = defaultdict(list)
        self.outputs: dict[nn.Module, list[int]] = defaultdict(list)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _reads_values(func):
            reader = self.running[-1] if self.running else None
            for tensor in _tensors((args, kwargs)):
                if id(tensor) in self.producer:
                    self.readers[id(tensor)].add(reader)
        return func(*args, **kwargs)

    def pre_hook(self, module, args):
        self.running.append(module)
        first = args[0] if args else None
        self.inputs[module].append(id(first) if isinstance(first, torch.Tensor) else None)

    def post_hook(self, module, args, output):
        self.running.pop()
        if isinstance(output, torch.Tensor):
            self.producer.setdefault(id(output), module)  # the innermost module that returned it made it
            self.outputs[module].append(id(output))
            self.kept.append(output)
        else:
            self.outputs[module].append(None)

    def read_only_by(self, producer: nn.Module, reader: nn.Module) -> bool:
        """Every output of `producer` is a tensor whose values only `reader` reads, and `reader` only reads those."""
        outputs = self.outputs[producer]
        return (
            bool(outputs)
            and all(output is not None and self.readers[output] == {reader} for output in outputs)
            and set(self.inputs[reader]) <= set(outputs)
        )


def _foldable_conv(module) -> bool:
    return type(module).forward is nn.Conv2d.forward and isinstance(module, nn.Conv2d) and "forward" not in vars(module)


def _plain_linear(module) -> bool:
    return type(module).forward is nn.Linear.forward and isinstance(module, nn.Linear) and "forward" not in vars(module)


def _foldable_norm(module) -> bool:
    return (
        type(module).forward is nn.BatchNorm2d.forward and isinstance(module, nn.BatchNorm2d)
        and "forward" not in vars(module) and module.track_running_stats and module.running_mean is not None
    )


def _trace_fusions(model: nn.Module, example_inputs, linears_bound: bool):
    """From one eval forward: `{conv: norm}` (conv read only by that BatchNorm) and `{producer: activation}` (the
    producer, a linear layer, a convolution or a folded BatchNorm's convolution, read only by that activation)."""
    flow = _Dataflow()
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(flow.pre_hook))
        handles.append(module.register_forward_hook(flow.post_hook))
    try:
        with torch.no_grad(), flow:
            outputs = _call(model, example_inputs)
            for tensor in _tensors(outputs):  # the returned tensors are read by the caller
                if id(tensor) in flow.producer:
                    flow.readers[id(tensor)].add(None)
    finally:
        for handle in handles:
            handle.remove()

    folds = {}
    for norm, inputs in flow.inputs.items():
        if not _foldable_norm(norm):
            continue
        producers = {flow.producer.get(index) for index in inputs}
        if len(producers) != 1:
            continue
        conv = producers.pop()
        if conv is not None and _foldable_conv(conv) and flow.read_only_by(conv, norm):
            folds[conv] = norm

    activations = {}
    folded_norms = {norm: conv for conv, norm in folds.items()}
    for activation, inputs in flow.inputs.items():
        inplace = _inplace_activation(activation)
        if inplace is None:
            continue
        producers = {flow.producer.get(index) for index in inputs}
        if None in producers:
            continue
        owners = {}
        for producer in producers:
            if producer in folded_norms:
                owner = folded_norms[producer]
            elif _foldable_conv(producer) or (linears_bound and _plain_linear(producer)):
                owner = producer
            else:
                break
            if not flow.read_only_by(producer, activation):
                break
            owners[owner] = (activation, inplace)
        else:
            activations.update(owners)
    return folds, activations, outputs


# --- the entry points ------------------------------------------------------------------------------------------------


@dataclass
class InferenceOptimizations:
    """What `optimize_for_inference` did to a model (kept on it, for `undo_inference_optimizations`)."""

    onednn_linears: int = 0
    folded_batch_norms: int = 0
    inplace_activations: int = 0
    coarse_bottleneck_heads: int = 0
    coarse_fuse_heads: int = 0
    patch_reductions: int = 0
    channels_last_convs: int = 0
    traced: bool = False
    modules: list = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        return (f"{self.onednn_linears} oneDNN linear layers, {self.folded_batch_norms} BatchNorms folded, "
                f"{self.inplace_activations} in-place activations, {self.coarse_bottleneck_heads} UperNet heads, "
                f"{self.coarse_fuse_heads} all-MLP heads, {self.patch_reductions} sequence reductions, "
                f"{self.channels_last_convs} channels-last convolutions")


def _call(model: nn.Module, inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def _default_example_inputs(model: nn.Module) -> torch.Tensor:
    """A random `[1, C, 64, 96]` image (sides rounded up to the patch size) in the model's dtype and device."""
    config = getattr(model, "config", None)
    channels = getattr(config, "num_channels", None)
    backbone_config = getattr(config, "backbone_config", None)
    if channels is None and backbone_config is not None:
        channels = getattr(backbone_config, "num_channels", None)
    patch = getattr(config, "patch_size", None)
    patch = patch if isinstance(patch, int) and patch > 0 else 1
    height, width = (-(-side // patch) * patch for side in (64, 96))
    parameter = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, channels or 3, height, width, generator=generator)
    return pixel_values.to(device=parameter.device, dtype=parameter.dtype)


def _bind(module: nn.Module, function, *args) -> None:
    module.forward = functools.partial(function, module, *args)


def _train(model: nn.Module, mode: bool = True) -> nn.Module:
    """`model.train(mode)` of an optimized model: `train()` / `train(True)` first gives it its plain forwards back."""
    if mode:
        undo_inference_optimizations(model)
    return nn.Module.train(model, mode)


def optimize_for_inference(model: nn.Module, example_inputs=None, check: bool = True) -> nn.Module:
    """Make `model` (any hf_seg model, transformers' `SegformerForSemanticSegmentation` or
    `UperNetForSemanticSegmentation`, any `nn.Module`) faster at CPU fp32 inference, in place; returns `model`.

    **For inference only.** The model is put in eval mode. `model.train()` undoes the optimizations (the model then
    trains exactly as the plain model; call this again afterwards), and so does `undo_inference_optimizations`.
    Everything else stays the plain model's: the module tree, parameter names and `state_dict` (so `save_pretrained`
    writes the plain weights and a saved folder loads as the plain model), the classes, and the model code that
    `save_pretrained` ships. Calling it again on an optimized model does nothing.

    The fast paths run under `torch.inference_mode()` / `torch.no_grad()` for fp32 inputs; any other call (autograd
    recording, autocast, other dtypes, `torch.compile` / export / `jit.trace`, `torch.backends.mkldnn` disabled for
    the linear layers) computes the plain model's function the plain way. See the module docstring for what is done.

    Args:
        model: the model; its parameters may be on any device (only CPU gets oneDNN linears; a `meta` model can be
            optimized to count the FLOPs of the inference path).
        example_inputs: what to trace one forward with, to find the BatchNorms and activations that can be fused:
            a tensor (the first positional argument) or a dict of keyword arguments. Default: a random
            `[1, num_channels, 64, 96]` image (sides rounded up to `config.patch_size`). Only the data flow matters,
            not the values or the size.
        check: run the example again after optimizing and raise (leaving the model plain) unless every output
            equals the plain model's within 1e-4 (absolute, plus 1e-4 relative). Only for CPU fp32 models.

    Returns:
        `model`, with `model._hf_seg_inference_optimizations` saying what was done (`str()` of it summarises).
    """
    model.eval()
    if isinstance(getattr(model, _RECORD, None), InferenceOptimizations):
        return model
    onednn = torch.ops.mkldnn._linear_pointwise if onednn_linear_available() else None
    if example_inputs is None:
        example_inputs = _default_example_inputs(model)
    record = InferenceOptimizations()
    try:
        folds, activations, expected = _trace_fusions(model, example_inputs, linears_bound=True)
        record.traced = True
    except Exception as error:  # noqa: BLE001 - a model the trace cannot run still gets the local rewrites
        logger.warning("optimize_for_inference: could not trace %s (%s); BatchNorms and activations are not fused",
                       type(model).__name__, error)
        folds, activations, expected = {}, {}, None

    folded_norms = set(folds.values())
    fused_activations = {activation for activation, _ in activations.values()}
    for module in model.modules():
        if _is_coarse_bottleneck_head(module) and "forward" not in vars(module):
            _bind(module, _upernet_head_forward, DerivedWeights(fold_batch_norm))
            record.coarse_bottleneck_heads += 1
        elif "forward" not in vars(module) and (head_kind := _all_mlp_head_kind(module)) is not None:
            if head_kind == "segformer":
                _bind(module, _segformer_head_forward, DerivedWeights(_segformer_head_weights))
            else:
                _bind(module, _mmseg_head_forward, DerivedWeights(_mmseg_head_weights))
            record.coarse_fuse_heads += 1
        elif "forward" not in vars(module) and _is_patch_reduction(module):
            _bind(module, _sequence_reduction_forward, onednn, DerivedWeights(_patch_linear_weight))
            record.patch_reductions += 1
        elif "forward" not in vars(module) and (conv_kind := _segformer_conv_kind(module)) is not None:
            _bind(module, _depthwise_forward if conv_kind == "depthwise" else _patch_embedding_forward)
            record.channels_last_convs += 1
        elif module in folds or (module in activations and _foldable_conv(module)):
            norm = folds.get(module)
            folded = None if norm is None else DerivedWeights(fold_batch_norm)
            _bind(module, _conv_forward, norm, folded, activations.get(module))
            record.folded_batch_norms += module in folds
        elif _plain_linear(module) and (onednn is not None or module in activations):
            _bind(module, _linear_forward, onednn, activations.get(module))
            record.onednn_linears += onednn is not None
        elif module in folded_norms or module in fused_activations:
            _bind(module, _passthrough_forward)
        else:
            continue
        record.modules.append(module)
    record.inplace_activations = len(activations)
    setattr(model, _RECORD, record)
    model.train = functools.partial(_train, model)

    parameter = next(model.parameters(), None)
    if check and expected is not None and parameter is not None and parameter.device.type == "cpu" \
            and parameter.dtype == torch.float32:
        with torch.inference_mode():
            actual = _call(model, example_inputs)
        for reference, optimized in zip(list(_tensors(expected)), list(_tensors(actual))):
            if reference.is_floating_point() and not torch.allclose(optimized, reference, rtol=1e-4, atol=1e-4):
                difference = (optimized - reference).abs().max().item()
                undo_inference_optimizations(model)
                raise RuntimeError(
                    f"optimize_for_inference changed {type(model).__name__}'s outputs (max abs diff {difference:.3g}) "
                    "on the example input; the model was left plain. Please report this with the model's config."
                )
    logger.info("optimize_for_inference(%s): %s", type(model).__name__, record)
    return model


def undo_inference_optimizations(model: nn.Module) -> nn.Module:
    """Give every module of an `optimize_for_inference` model its class's forward back (a no-op on a plain model)."""
    record = vars(model).pop(_RECORD, None)
    if record is None:
        return model
    for module in record.modules:
        vars(module).pop("forward", None)
    vars(model).pop("train", None)
    return model


def is_optimized_for_inference(model: nn.Module) -> bool:
    return isinstance(getattr(model, _RECORD, None), InferenceOptimizations)


__all__ = [
    "InferenceOptimizations",
    "conv3x3_of_upsampled",
    "fold_batch_norm",
    "is_optimized_for_inference",
    "onednn_linear_available",
    "optimize_for_inference",
    "undo_inference_optimizations",
]
