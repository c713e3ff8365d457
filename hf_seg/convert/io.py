# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Reading source checkpoints: `.pth` / `.pt` / `.bin` through `torch.load(weights_only=True)` and `.safetensors`,
unwrapped to a flat `{key: tensor}` state dict, with one-line errors for missing, truncated or corrupt files."""

import pickle
import re
import zipfile
from pathlib import Path

import torch

from .common import ConversionError, listing


def one_line(error: BaseException | str) -> str:
    """The message of an error on a single line (torch and safetensors errors span several)."""
    return " ".join(str(error).split())


def _read(path: Path):
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own SafetensorsError / OSError / ValueError
            raise ConversionError(f"cannot read checkpoint {path}: not a valid safetensors file, it is truncated or "
                                  f"corrupt ({one_line(error)[:200]})") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = one_line(error)
        if "weights_only" in text or "Unsupported global" in text:
            # torch words it "Unsupported global: GLOBAL a.b" or "unsupported GLOBAL a.b whose module a is blocked"
            found = re.search(r"GLOBAL ([\w.]+)", text)
            global_name = found.group(1) if found else "?"
            raise ConversionError(
                f"cannot read checkpoint {path} with torch.load(weights_only=True): it pickles an object that is not "
                f"a tensor or plain container ({global_name}); load it in a trusted environment and re-save "
                "checkpoint['state_dict'] alone"
            ) from error
        raise ConversionError(f"cannot read checkpoint {path}: the file is corrupt ({text[:200]})") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise ConversionError(f"cannot read checkpoint {path}: the file is truncated or corrupt "
                              f"({one_line(error)[:200]})") from error


def unwrap_state_dict(checkpoint, path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: `checkpoint['state_dict']` (mmcv / mmengine runners), `checkpoint['model']`
    (timm / DeiT / MPViT ImageNet) or the dict itself; a leading `module.` (DataParallel) is stripped."""
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict of tensors")
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    not_tensors = [str(key) for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"checkpoint {path}: entries that are not tensors (no state_dict/model wrapper found): "
                              f"{listing(not_tensors, limit=8)}")
    if not checkpoint:
        raise ConversionError(f"checkpoint {path} holds no tensors")
    if all(key.startswith("module.") for key in checkpoint):
        checkpoint = {key[len("module."):]: value for key, value in checkpoint.items()}
    return dict(checkpoint)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read and unwrap a checkpoint file (see `unwrap_state_dict`); `ConversionError` with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist or is not a file")
    if path.suffix not in (".pth", ".pt", ".bin", ".ckpt", ".safetensors"):
        raise ConversionError(f"checkpoint {path}: unknown extension {path.suffix!r} (expected .pth, .pt, .bin, "
                              ".ckpt or .safetensors)")
    return unwrap_state_dict(_read(path), path)
