# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""ONNX export of semantic-segmentation models (SETR, transformers' SegFormer, MPViT, ...).

`export_onnx(model, path, height, width)` writes a graph with one input, `pixel_values` `(batch, 3, height, width)`
float32, and one output, `logits` `(batch, num_labels, h, w)` at the model's output resolution (SETR: the input size;
SegFormer: 1/4 of it). With `dynamic=True` (the default) batch, height and width are free axes.

Exporter: PyTorch's `torch.export`-based exporter (`dynamo=True`, needs `onnxscript`) is the default: it is
PyTorch's default since 2.9, the TorchScript one is deprecated, and both give the same logits (max abs diff ~1e-7
against eager on the tiny test models). `exporter="torchscript"` is kept because it needs no `onnxscript` and exports
much faster (0.3 s instead of 5-10 s for the test models on 2 CPU cores).

Height and width stay fixed (batch alone is dynamic, with a warning) for models with adaptive pooling to an output
larger than 1x1, such as UperNet's pyramid pooling (MPViT): PyTorch's ONNX lowering of `adaptive_avg_pool2d` builds
its pooling windows for the traced size only, and other sizes give wrong numbers or fail in onnxruntime (checked
with torch 2.13 / onnxscript 0.7: a 2x2 -> 6x6 pool traced, run on 2x4, differs by 1.6). `supports_dynamic_size` says
which case a model is in.

Two things keep a dynamic graph general, because both exporters record Python control flow for the example input
only:

- the example batch has 2 images (`torch.export` specialises axes of size 0 or 1 to constants);
- for SETR, whose position embeddings are resized to the input's patch grid only when that grid differs from
  `config.image_size / patch_size`, the example input's sides are moved off that grid (by one patch), so that the
  graph holds the resize. At the stored grid the exported resize is bilinear to the same size, an exact copy.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch

from .models.setr import SetrConfig


__all__ = ["export_onnx", "onnx_max_abs_diff", "supports_dynamic_size"]

_EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18


class _LogitsOnly(torch.nn.Module):
    """`pixel_values -> logits`: the model's output dataclass is not an ONNX output type."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).logits


def supports_dynamic_size(model: torch.nn.Module) -> bool:
    """False when the model holds adaptive pooling to more than 1x1, whose ONNX graph is right at the traced size
    only (see the module docstring)."""
    pools = (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)
    for module in model.modules():
        if isinstance(module, pools):
            size = module.output_size
            sizes = size if isinstance(size, (tuple, list)) else (size, size)
            if any(side is None or side != 1 for side in sizes):
                return False
    return True


def _example_size(model, height: int, width: int, dynamic: bool) -> tuple[int, int]:
    """The size the example input is traced at (see the module docstring)."""
    config = getattr(model, "config", None)
    if not isinstance(config, SetrConfig):
        return height, width
    patch = int(config.patch_size)
    if height % patch or width % patch:
        raise ValueError(
            f"SETR takes inputs whose sides are multiples of its patch size {patch}; got --size {height} {width}. "
            f"Use e.g. {height + (-height) % patch} {width + (-width) % patch}."
        )
    if dynamic and supports_dynamic_size(model):
        grid_h, grid_w = config.image_grid_size
        if height // patch == grid_h:
            height += patch
        if width // patch == grid_w:
            width += patch
    return height, width


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    height: int,
    width: int,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    exporter: str = "dynamo",
) -> Path:
    """
    Export `model` (anything called as `model(pixel_values=...)` whose output has `.logits`) to ONNX at `path`.

    Args:
        model: the model, on the CPU. It is exported in eval mode; its own train/eval mode is restored afterwards.
        path: the `.onnx` file to write (parent folders are created).
        height, width: the input size the graph is traced at; with `dynamic=False` the only size it accepts.
        opset: the ONNX opset version (18 by default, what the dynamo exporter targets natively).
        dynamic: free batch / height / width axes (batch only, with a warning, where `supports_dynamic_size(model)`
            is False).
        exporter: `"dynamo"` (`torch.onnx.export(dynamo=True)`, needs `onnxscript`) or `"torchscript"`.

    Returns:
        The path written.
    """
    if exporter not in _EXPORTERS:
        raise ValueError(f"exporter must be one of {_EXPORTERS}, got {exporter!r}")
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise ImportError(
            "the dynamo ONNX exporter needs onnxscript: `pip install onnx onnxscript`, or use exporter='torchscript'"
        )
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    dynamic_size = dynamic and supports_dynamic_size(model)
    if dynamic and not dynamic_size:
        warnings.warn(
            f"{type(model).__name__} has adaptive pooling (e.g. UperNet's pyramid pooling), which PyTorch exports to "
            f"ONNX for the traced size only: the graph takes any batch size but only {height}x{width} inputs.",
            stacklevel=2,
        )
    trace_height, trace_width = _example_size(model, height, width, dynamic)
    example = torch.randn(2 if dynamic else 1, 3, trace_height, trace_width, generator=torch.Generator().manual_seed(0))
    wrapper = _LogitsOnly(model)
    was_training = model.training
    wrapper.eval()  # the TorchScript exporter restores the *wrapper's* mode, recursively: it must be eval as well
    common = dict(input_names=["pixel_values"], output_names=["logits"], opset_version=opset)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python shape checks, deprecation notices
            if exporter == "dynamo":
                axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
                dynamic_shapes = {"pixel_values": axes} if dynamic else None
                torch.onnx.export(
                    wrapper, (example,), str(path), dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False,
                    **common,
                )
            else:
                axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"},
                        "logits": {0: "batch", 2: "logits_height", 3: "logits_width"}}
                if not dynamic_size:
                    axes = {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}
                torch.onnx.export(
                    wrapper, (example,), str(path), dynamo=False, dynamic_axes=axes if dynamic else None, **common
                )
    finally:
        model.train(was_training)
    return path


def onnx_max_abs_diff(model: torch.nn.Module, path: str | os.PathLike, pixel_values: torch.Tensor) -> float:
    """Largest absolute difference between the logits of the ONNX graph (onnxruntime, CPU) and of `model` (eager,
    float32) on `pixel_values`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"pixel_values": pixel_values.detach().cpu().float().numpy()})
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(pixel_values=pixel_values).logits.float().cpu()
    finally:
        model.train(was_training)
    if tuple(onnx_logits.shape) != tuple(logits.shape):
        raise ValueError(f"ONNX logits have shape {tuple(onnx_logits.shape)}, PyTorch's {tuple(logits.shape)}")
    return float((torch.from_numpy(onnx_logits) - logits).abs().max())
