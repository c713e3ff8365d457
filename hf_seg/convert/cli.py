# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""The conversion command line shared by `conversion/convert_<family>.py` and `hf-seg convert`:

    --checkpoint FILE --model-name PRESET --output-dir DIR [--source auto|original|mmseg]
    [--push-to-hub REPO_ID] [--verify IMAGE]

`main(family, argv)` reads the checkpoint (`hf_seg.convert.io`), converts it with the family's converter for the
preset, writes `config.json` (with the dataset's `id2label`), `model.safetensors`, `preprocessor_config.json`, the
model code for `trust_remote_code` and a `README.md` model card, optionally prints the predicted classes of an image
and uploads the folder. Every failure is one line on stderr starting with "error:" and exit status 1.
Each family (SETR, SegFormer / MiT, MPViT) registers a `FamilyConverter` in `CONVERTERS`.
"""

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import ConversionError, ConvertedCheckpoint, listing
from .io import load_state_dict, one_line


@dataclass(frozen=True)
class FamilyConverter:
    """`convert(state_dict, preset, id2label, source) -> ConvertedCheckpoint` for the presets of `preset_families`."""

    preset_families: tuple[str, ...]
    convert: Callable[..., ConvertedCheckpoint]


def _convert_setr(state_dict, preset, id2label, source) -> ConvertedCheckpoint:
    from .setr import convert_setr_checkpoint

    return convert_setr_checkpoint(state_dict, preset.config, preset_name=preset.name, id2label=id2label, source=source)


def _convert_segformer(state_dict, preset, id2label, source) -> ConvertedCheckpoint:
    from .segformer import convert_segformer_checkpoint

    task = "classification" if preset.family == "mit" else "segmentation"
    return convert_segformer_checkpoint(state_dict, preset.config, preset_name=preset.name, task=task,
                                        id2label=id2label, source=source)


def _convert_mpvit(state_dict, preset, id2label, source) -> ConvertedCheckpoint:
    from .mpvit import convert_mpvit_checkpoint, mpvit_task

    return convert_mpvit_checkpoint(state_dict, preset.config, preset_name=preset.name,
                                    task=mpvit_task(preset.family), id2label=id2label, source=source)


CONVERTERS: dict[str, FamilyConverter] = {
    "setr": FamilyConverter(("setr",), _convert_setr),
    "segformer": FamilyConverter(("segformer", "mit"), _convert_segformer),
    "mpvit": FamilyConverter(("mpvit", "upernet"), _convert_mpvit),
}

# Preset families whose models are ImageNet classifiers (AutoModelForImageClassification).
CLASSIFIER_FAMILIES = ("mit", "mpvit")


def build_parser(family: str, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or f"convert_{family}.py",
        description=f"Convert an authors' or mmsegmentation 1.x {family} checkpoint into a Hugging Face folder.",
    )
    parser.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin (torch.load weights_only) or .safetensors")
    parser.add_argument("--model-name", required=True, help="an hf_seg preset, e.g. from hf_seg.list_models()")
    parser.add_argument("--output-dir", required=True, help="folder to write (created if needed)")
    parser.add_argument("--source", choices=("auto", "original", "mmseg"), default="auto",
                        help="source layout: the authors' repository or mmsegmentation 1.x (default: from the keys)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub model repository")
    parser.add_argument("--verify", metavar="IMAGE", help="reload the folder and print the predicted classes")
    return parser


def write_folder(model, processor, output_dir: Path, card: str) -> list[str]:
    """save_pretrained of model and processor (safetensors; Hub code through register_for_auto_class) + README.md."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    return sorted(path.name for path in output_dir.iterdir())


def verify(output_dir: Path, image_path: str, preset, top_k: int = 5) -> list[tuple[str, float]]:
    """Reload the folder through the Auto classes and return the top classes: by share of pixels for a segmenter,
    by probability for a classifier."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModelForSemanticSegmentation

    from .. import segment

    image = Image.open(image_path).convert("RGB")
    processor = AutoImageProcessor.from_pretrained(output_dir)
    if preset.family in CLASSIFIER_FAMILIES:
        model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
        with torch.no_grad():
            probabilities = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
        values, indices = probabilities.topk(min(top_k, probabilities.numel()))
        return [(model.config.id2label[int(i)], float(v)) for v, i in zip(values, indices)]
    model = AutoModelForSemanticSegmentation.from_pretrained(output_dir).eval()
    with torch.no_grad():  # the folder's own test protocol (config.test_protocol, from the preset)
        label_map = segment(model, processor, [image])[0]
    label_map = torch.as_tensor(label_map)
    counts = torch.bincount(label_map.flatten().long(), minlength=model.config.num_labels)
    shares = counts.float() / counts.sum()
    values, indices = shares.topk(min(top_k, int((counts > 0).sum())))
    return [(model.config.id2label[int(i)], float(v)) for v, i in zip(values, indices)]


def push_to_hub(output_dir: Path, repo_id: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), commit_message="Upload model converted by hf_seg")
    return f"https://huggingface.co/{repo_id}"


def convert(family: str, checkpoint: str, model_name: str, output_dir: str, source: str = "auto") -> dict:
    """Convert and write the folder; return a summary (`layout`, `dropped`, `files`, `preset`)."""
    from ..labels import load_label_set
    from ..presets import create_image_processor, did_you_mean, get_preset, list_models

    if family not in CONVERTERS:
        raise ConversionError(f"no converter for family {family!r}; known: {', '.join(CONVERTERS)}")
    converter = CONVERTERS[family]
    try:
        preset = get_preset(model_name)
    except KeyError:
        names = [name for f in converter.preset_families for name in list_models(f)]
        raise ConversionError(f"unknown preset {model_name!r} for convert_{family}.py; valid names: "
                              f"{', '.join(names)}.{did_you_mean(model_name, names)}") from None
    if preset.family not in converter.preset_families:
        raise ConversionError(f"preset {model_name!r} is a {preset.family} preset, not one convert_{family}.py "
                              f"handles ({', '.join(converter.preset_families)})")
    state_dict = load_state_dict(checkpoint)
    id2label = load_label_set(preset.label_set)[0] if preset.label_set is not None else None
    try:
        converted = converter.convert(state_dict, preset, id2label, source)
    except ConversionError as error:
        raise ConversionError(f"{checkpoint} -> {model_name}: {error}") from error
    except ValueError as error:  # strict mapping errors of the older SETR mmseg path
        raise ConversionError(f"{checkpoint} -> {model_name}: {error}") from error
    model = converted.build_model()
    processor = create_image_processor(model_name)
    from .cards import model_card

    card = model_card(name=Path(output_dir).name or model_name, preset=preset, layout=converted.source,
                      checkpoint=Path(checkpoint).name, model_class=type(model).__name__, dropped=converted.dropped,
                      repo_hint=Path(output_dir).name)
    files = write_folder(model, processor, Path(output_dir), card)
    return dict(preset=preset, layout=converted.source, dropped=converted.dropped, files=files)


def main(family: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of `conversion/convert_<family>.py` (and `hf-seg convert`, which passes its own `prog` for the
    usage line): 0 on success, 1 on any error. Errors are one line on stderr, "error: ..." from the scripts and
    "hf-seg: error: ..." (the first word of `prog`) from `hf-seg convert`, as every other `hf-seg` error."""
    args = build_parser(family, prog).parse_args(argv)
    error_prefix = f"{prog.split()[0]}: error" if prog else "error"
    try:
        summary = convert(family, args.checkpoint, args.model_name, args.output_dir, args.source)
        print(f"converted {args.checkpoint} ({summary['layout']} layout) -> {args.output_dir} "
              f"({', '.join(summary['files'])})")
        for reason, keys in summary["dropped"].items():
            print(f"dropped {len(keys)} source keys on purpose: {listing(keys)} -- {reason}")
        if args.verify:
            for label, share in verify(Path(args.output_dir), args.verify, summary["preset"]):
                print(f"predicted: {label!r} {share:.1%}")
        if args.push_to_hub:
            print(f"uploaded to {push_to_hub(Path(args.output_dir), args.push_to_hub)}")
    except (ConversionError, ValueError, KeyError, OSError) as error:
        print(f"{error_prefix}: {one_line(error)}", file=sys.stderr)
        return 1
    return 0
