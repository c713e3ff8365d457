# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""The `hf-seg` command line (also `python -m hf_seg`).

predict / export / list are implemented here; train, evaluate and quickstart hand their arguments to
`hf_seg.training` and convert to `hf_seg.convert.cli`, which parse them (so `hf-seg train --help` is theirs).

Errors the user can fix (a missing file, an unknown model, an unreadable image, a bad option value) are printed as
one line on stderr, `hf-seg: error: ...`, without a traceback (`hf-seg --debug ...` shows it) and with a non-zero
exit status: 2 for what was named wrong on the command line, 1 for what failed while working.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import logging
import os
import re
import sys
import traceback
import warnings
from pathlib import Path


__all__ = ["CliError", "main"]

PROG = "hf-seg"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
EXIT_USAGE = 2  # what the user named does not exist / is not valid (argparse uses 2 as well)
EXIT_FAILURE = 1  # it exists but could not be used
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class CliError(Exception):
    """An error reported as one line on stderr with exit status `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def _one_line(error: BaseException | str, limit: int = 400) -> str:
    """The message on one line, shortened (exporters put whole graphs into their messages)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 5] + " ..."


# --------------------------------------------------------------------------------------------------- model loading


class LoadedModel:
    """A model with what predict needs around it: its processor, palette, preset (if any) and where it came from."""

    def __init__(self, model, processor, palette, preset_name: str | None, source: str):
        self.model = model
        self.processor = processor
        self.palette = palette
        self.preset_name = preset_name
        self.source = source


def _palette_for(config, preset=None):
    """The label set's palette when the model's classes are one of the bundled label sets, else distinct colours."""
    from .labels import LABEL_SETS, load_label_set
    from .visualize import default_palette

    num_labels = int(getattr(config, "num_labels", 0) or 0)
    if preset is not None and getattr(preset, "label_set", None):
        id2label, palette = load_label_set(preset.label_set)
        if len(id2label) == num_labels:
            return palette
    names = [str(name) for _, name in sorted((int(k), v) for k, v in (getattr(config, "id2label", None) or {}).items())]
    for label_set in LABEL_SETS:
        id2label, palette = load_label_set(label_set)
        if names == [id2label[i] for i in range(len(id2label))]:
            return palette
    return default_palette(max(num_labels, 2))  # one output channel (binary masks) predicts 0 and 1


def check_safetensors_files(folder: Path) -> None:
    """Refuse a saved folder whose `*.safetensors` weights cannot be opened (truncated by an interrupted copy or
    download, or not safetensors at all), naming the file: safetensors itself says only "incomplete metadata".
    Opening reads the header and checks that the file covers every tensor it lists; no tensor is loaded."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # noqa: BLE001 - SafetensorError, OSError, ...
            size = file.stat().st_size
            raise CliError(f"weights file {file} ({size:,} bytes) is truncated or not a safetensors file: "
                           f"{_one_line(error, 200)}", EXIT_FAILURE) from error


def _load_pretrained(name_or_path: str, where: str, trust_remote_code: bool, need_processor: bool,
                     local: bool) -> LoadedModel:
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
    from transformers.utils import logging as transformers_logging

    if local:
        check_safetensors_files(Path(name_or_path))

    # A local folder loads in moments: no "Loading weights" bar. Hub downloads keep their progress bars.
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    if local:
        transformers_logging.disable_progress_bar()
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ... here
        raise CliError(f"cannot load the model {where}: {_one_line(error)}", EXIT_FAILURE) from error
    finally:
        if local and bars_were_on:
            transformers_logging.enable_progress_bar()
    processor = None
    if need_processor:
        try:
            processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except Exception as error:  # noqa: BLE001
            raise CliError(f"cannot load the image processor {where}: {_one_line(error)}", EXIT_FAILURE) from error
    return LoadedModel(model, processor, _palette_for(model.config), None, where)


def load_model(name: str, trust_remote_code: bool = False, need_processor: bool = True) -> LoadedModel:
    """`--model`: a preset name (random weights), a local folder written by `save_pretrained`, or a Hub id."""
    from . import presets

    if name in presets.PRESETS:
        preset = presets.get_preset(name)
        print(
            f"{PROG}: warning: {name!r} is a preset name: the model is randomly initialised, its predictions are "
            "noise. Pass a trained model folder or Hub id for real results.",
            file=sys.stderr,
        )
        model = presets.create_model(name)
        processor = presets.create_image_processor(name) if need_processor else None
        return LoadedModel(model, processor, _palette_for(model.config, preset), name, f"preset {name!r}")

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CliError(f"model folder {name} has no config.json: it is not a folder written by save_pretrained",
                           EXIT_USAGE)
        if need_processor and not (path / "preprocessor_config.json").is_file():
            raise CliError(f"model folder {name} has no preprocessor_config.json: save the image processor with "
                           "processor.save_pretrained(folder)", EXIT_USAGE)
        return _load_pretrained(str(path), f"from folder {name}", trust_remote_code, need_processor, local=True)
    if path.exists():
        raise CliError(f"--model {name} is a file; pass the folder that holds config.json", EXIT_USAGE)

    if _HUB_ID.fullmatch(name):  # owner/name, and no such local folder: a Hub repository
        return _load_pretrained(name, f"{name!r} from the Hugging Face Hub (no local folder of that name)",
                                trust_remote_code, need_processor, local=False)
    if "/" in name or "\\" in name or name.startswith((".", "~")):
        raise CliError(f"model folder {name} does not exist", EXIT_USAGE)
    raise CliError(
        f"unknown model {name!r}: not a preset (`{PROG} list` shows them), a local folder or a Hub id (owner/name)."
        + presets.did_you_mean(name, presets.list_models()),
        EXIT_USAGE,
    )


# ---------------------------------------------------------------------------------------------------------- images


def _expand_images(inputs: list[str], recursive: bool = False) -> list[Path]:
    """Files as given and the image files (by extension) inside given folders (and their subfolders when
    `recursive`: Cityscapes keeps its images in one folder per city); refuses missing paths."""
    paths = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            found = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                hint = "" if recursive or not any(p.is_dir() for p in path.iterdir()) else \
                    "; it has subfolders: pass --recursive to look into them"
                raise CliError(f"folder {item} holds no image files ({', '.join(IMAGE_EXTENSIONS)}){hint}", EXIT_USAGE)
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise CliError(f"no such file or folder: {item}", EXIT_USAGE)
    return paths


def _open_image(path: Path):
    """The image, decoded and turned upright by its EXIF orientation, or a one-line error naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise CliError(f"cannot read image {path}: {_one_line(error)}", EXIT_FAILURE) from error


def _check_readable(path: Path) -> None:
    """Cheap up-front check (header only) so that a bad file fails before the model is loaded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - the header is parsed on open
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise CliError(f"cannot read image {path}: {_one_line(error)}", EXIT_FAILURE) from error


def _rgb_array(image, processor):
    """The image as (H, W, 3) uint8 for overlays, converted by the processor's own rules when it exposes them (so a
    16-bit or CMYK picture looks as the model saw it), else by PIL."""
    import numpy as np

    convert = getattr(processor, "convert_image", None)
    if convert is not None:
        try:
            array = np.asarray(convert(image, 0, True, None))
            return np.clip(np.moveaxis(array, 0, -1), 0, 255).round().astype(np.uint8)
        except (TypeError, ValueError):
            pass
    return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------------------------------------------- subcommands


def _pair_argument(values, name: str):
    if values is None:
        return None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise CliError(f"{name} takes one or two positive integers (height [width]), got {values}", EXIT_USAGE)
    return values[0] if len(values) == 1 else tuple(values)


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CliError(f"--device {name}: {_one_line(error)}", EXIT_USAGE) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine", EXIT_USAGE)
    return device


def _plan_outputs(images: list[Path], output_dir: Path, overlay: bool, overwrite: bool):
    """`(image, label map path, overlay path or None)` per image. Before anything is written, every output is checked
    against every other output and every input (resolved paths, so `./a.png`, links and `..` do not hide a clash;
    hard links by inode): two outputs on one path, or an output on an input, are refused naming both files; an
    existing output file is refused unless `overwrite`, and an input is never overwritten."""

    def key(path: Path) -> str:
        return os.path.normcase(str(path.resolve()))

    def inode(path: Path):
        try:
            status = path.stat()
        except OSError:
            return None
        return status.st_dev, status.st_ino

    if output_dir.exists() and not output_dir.is_dir():
        raise CliError(f"--output-dir {output_dir} is a file, not a folder", EXIT_USAGE)
    inputs, input_inodes = {}, {}
    for path in images:
        if key(path) in inputs:
            raise CliError(f"{inputs[key(path)]} and {path} are the same image, given twice", EXIT_USAGE)
        inputs[key(path)] = path
        input_inodes[inode(path)] = path
    outputs, plan = {}, []
    for path in images:
        targets = [(output_dir / f"{path.stem}.png", "label map")]
        if overlay:
            targets.append((output_dir / f"{path.stem}_overlay.png", "overlay"))
        for target, role in targets:
            what = f"the {role} of {path}"
            if key(target) in inputs:
                same = inputs[key(target)]
                alias = "" if str(same) == str(target) else f" (as {target})"
                raise CliError(f"{what} would overwrite the input image {same}{alias}; choose another --output-dir",
                               EXIT_USAGE)
            if key(target) in outputs:
                other = outputs[key(target)]
                raise CliError(f"{other} and {what} would both be written to {target}; rename one of the images",
                               EXIT_USAGE)
            outputs[key(target)] = what
            if target.is_symlink() or target.exists():
                if target.is_dir():
                    raise CliError(f"{what} would be written to {target}, which is a folder", EXIT_USAGE)
                if inode(target) in input_inodes:
                    raise CliError(f"{what} would overwrite the input image {input_inodes[inode(target)]} "
                                   f"({target} is the same file); choose another --output-dir", EXIT_USAGE)
                if not overwrite:
                    raise CliError(f"{target} already exists ({what} would replace it); pass --overwrite to replace "
                                   "existing outputs, or choose another --output-dir", EXIT_USAGE)
        plan.append((path, targets[0][0], targets[1][0] if overlay else None))
    return plan


def _save_png(picture, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`: a replaced output is a new file, so a
    hard link to the old one (perhaps an input elsewhere) keeps its content, and an interrupted run leaves no
    half-written PNG."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        picture.save(temporary, format="PNG")
        os.replace(temporary, path)
    except BaseException as error:  # an interrupted or failed write leaves no temporary file behind
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CliError(f"cannot write {path}: {_one_line(error)}", EXIT_FAILURE) from error
        raise


# `predict --format`: how a label map becomes a PNG. "palette": hf_seg's colour PNG (pixel value = class id).
# The test servers' formats are single-channel PNGs named after the image: Cityscapes wants its 34 label ids (train
# ids mapped back, 255 -> 0 "unlabeled"), the ADE20K challenge 1..150 (class k -> k + 1; 0 is "other").
SUBMISSION_FORMATS = {"cityscapes": ("cityscapes", 19), "ade20k": ("ade20k", 150)}


def _submission_encoder(output_format: str, config):
    """The function turning a label map (class ids) into the PNG values of `output_format`; refuses a model whose
    classes are not the data set's (by count; other names only warn, as the ids are what the server reads)."""
    import numpy as np
    from PIL import Image

    if output_format == "palette":
        return None
    label_set, num_classes = SUBMISSION_FORMATS[output_format]
    if config.num_labels != num_classes:
        raise CliError(f"--format {output_format} needs a model of the {num_classes} {label_set} classes; this one "
                       f"has {config.num_labels}", EXIT_USAGE)
    from .labels import load_label_set

    names = [str(name).lower() for name in load_label_set(label_set)[0].values()]
    own = [str(config.id2label[index]).lower() for index in range(num_classes)]
    if own != names:
        differing = next(index for index in range(num_classes) if own[index] != names[index])
        print(f"warning: the model's class {differing} is {own[differing]!r}, not {label_set}'s "
              f"{names[differing]!r}; the PNGs hold {label_set}'s ids for the model's class order", file=sys.stderr)
    if output_format == "cityscapes":
        from .data.datasets import train_ids_to_label_ids

        return lambda label_map: Image.fromarray(train_ids_to_label_ids(label_map, "cityscapes").astype(np.uint8))
    return lambda label_map: Image.fromarray((np.asarray(label_map, dtype=np.int64) + 1).astype(np.uint8))


def _predict(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from .inference import segment
    from .visualize import colorize, overlay

    crop_size = _pair_argument(args.crop_size, "--crop-size")
    stride = _pair_argument(args.stride, "--stride")
    if args.mode == "whole" and (crop_size is not None or stride is not None):
        raise CliError("--crop-size and --stride apply to --mode slide only", EXIT_USAGE)
    if not 0.0 <= args.alpha <= 1.0:
        raise CliError(f"--alpha must lie in [0, 1], got {args.alpha}", EXIT_USAGE)
    if args.scales is not None and any(scale <= 0 for scale in args.scales):
        raise CliError(f"--scales must be positive, got {args.scales}", EXIT_USAGE)
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}", EXIT_USAGE)
    images = _expand_images(args.images, recursive=args.recursive)
    output_dir = Path(args.output_dir).expanduser()
    plan = _plan_outputs(images, output_dir, args.overlay, args.overwrite)
    for path in images:
        _check_readable(path)
    device = _device(args.device)

    loaded = load_model(args.model, trust_remote_code=args.trust_remote_code)
    if "SemanticSegmentation" not in type(loaded.model).__name__:
        raise CliError(f"{loaded.source} is a {type(loaded.model).__name__}, not a semantic-segmentation model",
                       EXIT_USAGE)
    model = loaded.model.to(device).eval()
    if getattr(model.config, "num_labels", 0) > 255:
        raise CliError(f"the model has {model.config.num_labels} classes; label PNGs hold at most 255", EXIT_FAILURE)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.autocast)
    encode = _submission_encoder(args.format, model.config)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"cannot create --output-dir {output_dir}: {_one_line(error)}", EXIT_FAILURE) from error

    mode = args.mode or (getattr(model.config, "test_protocol", None) or {}).get("mode", "whole")
    if mode == "whole" and (crop_size is not None or stride is not None):
        raise CliError("--crop-size and --stride apply to --mode slide only (the model's test protocol is whole)",
                       EXIT_USAGE)
    slide = {}
    if mode == "slide":
        slide = dict(crop_size=crop_size, stride=stride, preset=loaded.preset_name)
    written = 0
    for path, label_path, overlay_path in tqdm(plan, desc="predict", unit="image", disable=args.quiet or None):
        image = _open_image(path)
        try:
            (label_map,) = segment(
                model, loaded.processor, image, mode=mode, scales=args.scales, flip=args.flip,
                batch_size=args.batch_size, autocast_dtype=autocast, **slide,
            )
        except ValueError as error:
            raise CliError(f"cannot segment {path}: {_one_line(error)}", EXIT_FAILURE) from error
        _save_png(colorize(label_map, loaded.palette) if encode is None else encode(label_map), label_path)
        if overlay_path is not None:
            picture = overlay(_rgb_array(image, loaded.processor), label_map, loaded.palette, alpha=args.alpha)
            _save_png(picture, overlay_path)
        written += 1
    if not args.quiet:
        extra = " and overlays (*_overlay.png)" if args.overlay else ""
        kind = {"palette": "palette PNG, pixel value = class id", "cityscapes": "Cityscapes labelIds PNG",
                "ade20k": "ADE20K challenge PNG, pixel value = class id + 1"}[args.format]
        print(f"wrote {written} label map{'s' if written != 1 else ''} ({kind}){extra} to {output_dir}")
    return 0


def _export(args) -> int:
    from .export import export_onnx, onnx_max_abs_diff, supports_dynamic_size

    height, width = args.size
    if height <= 0 or width <= 0:
        raise CliError(f"--size must be positive, got {height} {width}", EXIT_USAGE)
    if args.exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise CliError("the dynamo exporter needs onnxscript: pip install onnx onnxscript (or --exporter torchscript)",
                       EXIT_FAILURE)
    loaded = load_model(args.model, trust_remote_code=args.trust_remote_code, need_processor=False)
    model = loaded.model.eval()
    torch_onnx_logger = logging.getLogger("torch.onnx")
    level = torch_onnx_logger.level
    torch_onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed, skipping torchvision::nms" & co.
    try:
        warnings.simplefilter("ignore", UserWarning)  # the adaptive-pooling case is said in the summary line
        path = export_onnx(model, args.output, height, width, opset=args.opset, dynamic=not args.static,
                           exporter=args.exporter)
    except ValueError as error:
        raise CliError(_one_line(error), EXIT_USAGE) from error
    except Exception as error:  # noqa: BLE001 - exporter failures come in many types
        raise CliError(f"ONNX export of {loaded.source} failed: {_one_line(error)}", EXIT_FAILURE) from error
    finally:
        torch_onnx_logger.setLevel(level)
    if args.static:
        axes = f"batch 1, {height}x{width}"
    elif supports_dynamic_size(model):
        axes = "dynamic batch, height and width"
    else:
        axes = f"dynamic batch, fixed {height}x{width}: the model's adaptive pooling exports for one size only"
    message = f"wrote {path} ({axes})"
    if not args.no_check:
        if importlib.util.find_spec("onnxruntime") is None:
            message += "; not checked (pip install onnxruntime to compare with PyTorch)"
        else:
            import torch

            pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
            diff = onnx_max_abs_diff(model, path, pixel_values)
            message += f"; onnxruntime vs PyTorch max abs diff {diff:.2e} at {height}x{width}"
            if diff > args.atol:
                print(message, file=sys.stderr)
                raise CliError(f"the ONNX logits differ from PyTorch's by {diff:.2e} > --atol {args.atol}")
    print(message)
    return 0


def _demo(args) -> int:
    """`hf-seg demo`: serve the Gradio app, or with --write-space write a Hugging Face Space that runs it."""
    from . import demo as demo_module

    examples = _expand_images(args.examples) if args.examples else []
    for path in examples:
        _check_readable(path)
    if args.write_space is not None:
        try:
            written = demo_module.write_space(args.model, args.write_space, examples=examples, title=args.title)
        except demo_module.SpaceError as error:
            raise CliError(str(error), EXIT_USAGE) from error
        print(f"wrote a Hugging Face Space to {args.write_space} ({', '.join(path.name for path in written)}); "
              f"upload it with: hf upload --repo-type space OWNER/NAME {args.write_space}")
        return 0
    if not 0 < args.port < 65536:
        raise CliError(f"--port must lie in 1..65535, got {args.port}", EXIT_USAGE)
    try:
        demo_module._import_gradio()
    except ImportError as error:
        raise CliError(demo_module.gradio_missing_message(f"{PROG} demo"), EXIT_FAILURE) from error
    device = _device(args.device)
    app = demo_module.build_demo(args.model, examples=examples, title=args.title, device=device,
                                 trust_remote_code=args.trust_remote_code)
    try:
        demo_module.launch(app, host=args.host, port=args.port, share=args.share, inbrowser=args.open_browser,
                           quiet=True, prevent_thread_lock=True)
    except OSError as error:
        reason = "the port is in use (choose another with --port)" if "empty port" in str(error) else _one_line(error)
        raise CliError(f"cannot serve the demo on {args.host}:{args.port}: {reason}", EXIT_FAILURE) from error
    public = f", public link {app.share_url}" if app.share_url else ""
    print(f"{PROG} demo: {args.model} on {app.local_url}{public} (Ctrl+C stops it)", file=sys.stderr)
    app.block_thread()  # until Ctrl+C, then Gradio closes the server
    return 0


@functools.lru_cache(maxsize=None)
def _parameter_counts(name: str) -> tuple[int, int]:
    """(all parameters, those used at inference) of a preset, from a model built on the meta device without
    initialisation (sizes only: no memory, no random numbers)."""
    import torch
    from transformers.initialization import no_init_weights

    from . import presets

    with no_init_weights(), torch.device("meta"):
        model = presets.create_model(name)
    total = sum(p.numel() for p in model.parameters())
    # training-only heads: SETR's `auxiliary_heads` (a list), UperNet's `auxiliary_head` (one, or None)
    auxiliary_heads = [getattr(model, attribute, None) for attribute in ("auxiliary_heads", "auxiliary_head")]
    auxiliary = sum(p.numel() for head in auxiliary_heads if head is not None for p in head.parameters())
    return total, total - auxiliary


def _list(args) -> int:
    from . import presets

    names = presets.list_models(args.family)
    if not names:
        families = sorted({p.family for p in presets.PRESETS.values()})
        raise CliError(f"no presets of family {args.family!r}; families: {', '.join(families)}."
                       + presets.did_you_mean(args.family, families), EXIT_USAGE)
    print(f"{'preset':42s} {'parameters':>14s} {'inference':>14s}  {'labels':18s} test protocol")
    for name in names:
        preset = presets.get_preset(name)
        total, inference = _parameter_counts(name)
        protocol = ", ".join(f"{key} {value}" for key, value in preset.inference.items())
        label_set = preset.label_set or f"{presets.create_config(name).num_labels} classes"
        print(f"{name:42s} {total:>14,d} {inference:>14,d}  {label_set:18s} {protocol}")
    return 0


def _list_and_hint(args) -> int:
    status = _list(args)
    print(f"\ncommands: predict, export, demo, train, evaluate, robustness, analyze, quickstart, convert, list; "
          f"`{PROG} --help` explains them", file=sys.stderr)
    return status


# Subcommands implemented elsewhere: name -> (module, function, one-line help). They parse their own arguments.
_DELEGATED = {
    "train": ("hf_seg.training", "train_main", "fine-tune a model on a dataset (transformers.Trainer; accelerate)"),
    "evaluate": ("hf_seg.training", "evaluate_main", "compute mIoU / accuracy of a model on a dataset split"),
    "quickstart": ("hf_seg.training", "quickstart_main",
                   "train a tiny model on the bundled dataset on CPU in minutes, evaluate it, draw overlays"),
    "robustness": ("hf_seg.robustness", "robustness_main",
                   "mIoU under the 16 corruptions x severities of the SegFormer paper's Cityscapes-C table"),
    "analyze": ("hf_seg.analysis", "analyze_main",
                "confusion matrix, effective receptive fields or attention maps of a model, as PNG + CSV"),
}
_CONVERT = ("hf_seg.convert.cli", "main")  # main(family, argv, prog)
FAMILIES = ("setr", "segformer", "mpvit")


def _delegate(module_name: str, function_name: str, call_args: tuple, command: str) -> int:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise CliError(f"`{PROG} {command}` is not available in this installation ({module_name} is missing)")
        raise CliError(f"`{PROG} {command}` needs the package {error.name!r}: pip install {error.name}") from error
    function = getattr(module, function_name, None)
    if function is None:
        raise CliError(f"`{PROG} {command}` is not available in this installation "
                       f"({module_name}.{function_name} is missing)")
    from .presets import UnknownPresetError

    try:
        status = function(*call_args)
    except (UnknownPresetError, FileNotFoundError) as error:  # something named wrong: exit 2, as predict does
        raise CliError(str(error), EXIT_USAGE) from error
    return 0 if status is None else int(status)


# ----------------------------------------------------------------------------------------------------------- parser

_EPILOG = f"""\
models (--model): a preset name ({PROG} list; random weights, for trying things out), a folder written by
save_pretrained (config.json, model.safetensors, preprocessor_config.json), or a Hugging Face Hub id (owner/name).

examples:
  {PROG} list
  {PROG} predict --model ./my-setr photo.jpg more_photos/ --output-dir predictions --overlay
  {PROG} predict --model ./my-setr big.png --output-dir out --mode slide --crop-size 512 --stride 341
  {PROG} export --model ./my-setr --output setr.onnx --size 512 512
  {PROG} demo --model ./my-setr                    # in the browser (pip install "hf_seg[demo]")
  {PROG} train --help

exit status: 0 success, 2 something named on the command line is missing or invalid (file, model, option),
1 it exists but failed (unreadable image, model that does not load, export mismatch). --debug shows tracebacks.
"""


class _Formatter(argparse.HelpFormatter):
    """Shows a default only where there is one worth showing (not None / False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Semantic segmentation with SETR, SegFormer and MPViT as Hugging Face transformers models: "
        "predict, export to ONNX, train, evaluate, convert checkpoints, list presets.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    def model_arguments(sub):
        sub.add_argument("--model", required=True, metavar="ID_OR_DIR",
                         help="preset name (random weights), save_pretrained folder, or Hub id owner/name")
        sub.add_argument("--trust-remote-code", action="store_true",
                         help="allow a Hub model's own code to run (models not built into transformers or hf_seg)")

    predict = subparsers.add_parser(
        "predict", help="segment images: label PNGs (with the dataset's palette) and overlay pictures",
        description="Segment images at their original size and write, per image, OUTPUT_DIR/<name>.png: a palette "
        "PNG whose pixel values are the class ids (coloured with the dataset's palette), and with --overlay "
        "OUTPUT_DIR/<name>_overlay.png, the image blended with the coloured prediction. Nothing is written when an "
        "output would land on an input image or on another output, or (without --overwrite) on an existing file.",
        formatter_class=_Formatter,
    )
    model_arguments(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGES", help="image files, or folders of image files")
    predict.add_argument("--recursive", action="store_true",
                         help="also take the images in the folders' subfolders (the outputs stay flat, named after "
                         "each image; two images of one name are refused)")
    predict.add_argument("--output-dir", required=True, help="folder for the outputs (created if missing)")
    predict.add_argument("--mode", choices=("whole", "slide"), default=None,
                         help="whole: one pass on the resized image; slide: overlapping windows, as SETR evaluates "
                         "(default: the model's saved test protocol, config.test_protocol, else whole)")
    predict.add_argument("--crop-size", type=int, nargs="+", metavar="N",
                         help="slide window height [width] (default: the preset's, or SETR's config.image_size)")
    predict.add_argument("--stride", type=int, nargs="+", metavar="N",
                         help="slide stride height [width] (default: the preset's, or 2/3 of the crop)")
    predict.add_argument("--scales", type=float, nargs="+", metavar="R",
                         help="test-time scales, e.g. 0.5 0.75 1.0 1.25 1.5 1.75 (probabilities averaged)")
    predict.add_argument("--flip", action="store_true", help="also average horizontally flipped predictions")
    predict.add_argument("--format", choices=("palette", *SUBMISSION_FORMATS), default="palette",
                         help="palette: colour PNG whose pixel value is the class id; cityscapes: the evaluation "
                         "server's labelIds PNG (train ids mapped back); ade20k: the challenge's PNG (class id + 1)")
    predict.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace output files that already exist (an input image is never overwritten)")
    predict.add_argument("--alpha", type=float, default=0.5, help="weight of the colours in the overlay")
    predict.add_argument("--batch-size", type=int, default=4, help="windows / variants per forward pass")
    predict.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    predict.add_argument("--autocast", choices=("bf16", "fp16"), help="run the model under torch.autocast")
    predict.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
    predict.set_defaults(handler=_predict)

    export = subparsers.add_parser(
        "export", help="export a model to ONNX and check it against PyTorch with onnxruntime",
        description="Export a model to ONNX (input pixel_values (batch, 3, H, W) float32, normalised as the "
        "model's image processor does; output logits). Batch, height and width are dynamic unless --static (models "
        "with adaptive pooling, e.g. UperNet: batch only). "
        "When onnxruntime is installed the exported graph is run and compared with PyTorch.",
        formatter_class=_Formatter,
    )
    model_arguments(export)
    export.add_argument("--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    export.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"),
                        help="example input size (SETR: multiples of the patch size); the only size with --static")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    export.add_argument("--static", action="store_true", help="fixed batch 1 and --size instead of dynamic axes")
    export.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="torch.onnx exporter: dynamo (torch.export, needs onnxscript) or the legacy torchscript")
    export.add_argument("--no-check", action="store_true", help="do not compare with onnxruntime")
    export.add_argument("--atol", type=float, default=1e-3, help="largest accepted ONNX vs PyTorch logit difference")
    export.set_defaults(handler=_export)

    demo = subparsers.add_parser(
        "demo", help="segment images in the browser (a Gradio app), or write a Hugging Face Space that does",
        description="Serve a Gradio app: upload an image or pick an example, choose whole / slide / multi-scale + "
        "flip inference, see the overlay, the legend of the classes present with their share of the image, and "
        "download the label map (a PNG whose pixel values are the class ids). Needs gradio: "
        'pip install "hf_seg[demo]". With --write-space DIR, write a Hugging Face Space (app.py, requirements.txt, '
        "README.md with the Space's metadata) into the new or empty folder DIR instead: a model folder is copied "
        "into it, a Hub id is loaded by the Space.",
        formatter_class=_Formatter,
    )
    model_arguments(demo)
    demo.add_argument("--host", default="127.0.0.1",
                      help="address to serve on (0.0.0.0: every network interface of this machine)")
    demo.add_argument("--port", type=int, default=7860, help="port to serve on")
    demo.add_argument("--examples", nargs="+", metavar="IMAGES", help="example images (files or folders) to offer")
    demo.add_argument("--title", help="the page's title (default: the model's name)")
    demo.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    demo.add_argument("--share", action="store_true", help="also make a temporary public link through Gradio's "
                      "share servers (needs the internet)")
    demo.add_argument("--open-browser", action="store_true", help="open the page in the default browser")
    demo.add_argument("--write-space", metavar="DIR",
                      help="write a Hugging Face Space into DIR (new or empty) instead of serving the app")
    demo.set_defaults(handler=_demo)

    listing = subparsers.add_parser("list", help="list the model presets with sizes, label sets and test protocol",
                                    description="List the model presets (names for --model and create_model).")
    listing.add_argument("--family", help="only this family (setr, segformer, mpvit, upernet-mpvit, ...)")
    listing.set_defaults(handler=_list)

    for name, (module_name, function_name, help_text) in _DELEGATED.items():
        sub = subparsers.add_parser(name, help=help_text, add_help=False, prefix_chars="\0",
                                    description=f"{help_text}; `{PROG} {name} --help` lists its options.")
        sub.add_argument("arguments", nargs=argparse.REMAINDER)
        sub.set_defaults(delegate=(module_name, function_name))

    convert = subparsers.add_parser(
        "convert", help="convert an authors' / mmsegmentation checkpoint into a save_pretrained folder",
        add_help=False, prefix_chars="\0",
        description=f"{PROG} convert FAMILY --checkpoint FILE --model-name PRESET --output-dir DIR; "
        f"`{PROG} convert FAMILY --help` lists the options.",
    )
    convert.add_argument("arguments", nargs=argparse.REMAINDER)
    convert.set_defaults(delegate=_CONVERT)
    return parser


def _run(args) -> int:
    if getattr(args, "delegate", None) is not None:
        module_name, function_name = args.delegate
        if args.command == "convert":
            if not args.arguments or args.arguments[0] in ("-h", "--help"):
                print(f"usage: {PROG} convert {{{','.join(FAMILIES)}}} --checkpoint FILE --model-name PRESET "
                      f"--output-dir DIR [options]\n\nConvert a source checkpoint of one family; "
                      f"`{PROG} convert FAMILY --help` lists the options.")
                return 0 if args.arguments else EXIT_USAGE
            family, rest = args.arguments[0], args.arguments[1:]
            if family not in FAMILIES:
                raise CliError(f"unknown family {family!r} for convert; choose from {', '.join(FAMILIES)}", EXIT_USAGE)
            return _delegate(module_name, function_name, (family, rest, f"{PROG} convert {family}"), f"convert {family}")
        return _delegate(module_name, function_name, (list(args.arguments),), args.command)
    return args.handler(args)


def main(argv: list[str] | None = None) -> int:
    """Run `hf-seg` with `argv` (default: `sys.argv[1:]`) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) and argparse's usage errors (2): return the status, do not exit
        return 0 if exit_.code is None else int(exit_.code) if isinstance(exit_.code, int) else EXIT_FAILURE
    if args.command is None:  # bare `hf-seg` / `python -m hf_seg`: the preset table, then where to go next
        args = argparse.Namespace(command="list", family=None, debug=args.debug, handler=_list_and_hint)
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.simplefilter("ignore", FutureWarning)
            return _run(args)
    except CliError as error:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hf-seg list | head`: the reader left; no message, as other command-line tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout again at exit
        return 0
    except Exception as error:  # noqa: BLE001 - anything unexpected: one line, the traceback with --debug
        if args.debug:
            traceback.print_exc()
            hint = ""
        else:
            hint = " (run with --debug for the traceback)"
        print(f"{PROG}: error: {type(error).__name__}: {_one_line(error)}{hint}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
