# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""`hf-seg train`, `hf-seg evaluate` and `hf-seg quickstart` as functions `*_main(argv) -> int`.

`train_main` parses with `HfArgumentParser`, so every `TrainingArguments` flag is available (`--fp16`,
`--gradient_accumulation_steps`, `--gradient_checkpointing`, `--resume_from_checkpoint`, `--push_to_hub`, ...).
Recipe values fill the `TrainingArguments` fields the command line does not set (learning rate, weight decay,
steps, per-device batch size from the recipe's total batch, warmup); flags given explicitly always win.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments


@dataclass
class ModelArguments:
    model: str = field(metadata={"help": "preset name (hf_seg.list_models()), checkpoint folder or Hub id"})
    pretrained_encoder: str | None = field(
        default=None, metadata={"help": "ImageNet encoder for a preset: ViT (SETR), mit-b* (SegFormer), mpvit-*"}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": 'JSON object of model-configuration fields, e.g. \'{"drop_path_rate": 0.2}\''}
    )
    image_processor: str | None = field(default=None, metadata={"help": "folder / Hub id of another image processor"})
    lora_rank: int | None = field(
        default=None,
        metadata={"help": "LoRA fine-tuning (needs pip install \"hf_seg[peft]\"): adapters of this rank on the encoder's "
                          "attention and MLP linears, the decode / auxiliary heads trained in full; the saved folder "
                          "is the merged plain model"},
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling alpha (default: 2 x --lora-rank)"})
    lora_dropout: float | None = field(default=None, metadata={"help": "dropout on the LoRA adapters' input (default 0)"})


@dataclass
class DataArguments:
    dataset: str = field(metadata={"help": "Hub id, save_to_disk folder or images/ + annotations/ folder"})
    train_split: str = field(default="train")
    eval_split: str | None = field(default="validation", metadata={"help": "'none' for no evaluation"})
    image_column: str | None = field(default=None)
    label_column: str | None = field(default=None)
    id2label: str | None = field(
        default=None, metadata={"help": "JSON file (dict or list of class names) or a bundled label set (ade20k, ...)"}
    )
    reduce_labels: bool | None = field(
        default=None,
        metadata={"help": "mmseg reduce_zero_label: 0 = other / ignored, k -> k-1 (default: the data set's convention, "
                          "e.g. ADE20K's; False for your own label maps)"},
    )
    label_ids: str | None = field(
        default=None,
        metadata={"help": "the label maps hold a data set's raw label ids: cityscapes (*_gtFine_labelIds.png), "
                          "coco_stuff164k, coco_stuff10k, pascal_context_459; none: read them as they are (default: "
                          "detected from the file names or the value range; saved with the model)"},
    )
    eval_mode: str | None = field(default=None, metadata={"help": "whole or slide (default: the preset's)"})
    eval_crop_size: int | None = field(default=None)
    eval_stride: int | None = field(default=None)
    eval_scales: list[float] | None = field(
        default=None, metadata={"help": "multi-scale evaluation: test scales (multiplying the test resize)"}
    )
    eval_flip: bool | None = field(default=None, metadata={"help": "also evaluate on flipped copies"})
    eval_aug_test: bool = field(
        default=False, metadata={"help": "evaluate with the preset's multi-scale + flip settings (the papers' MS+flip)"}
    )
    max_eval_examples: int | None = field(default=None)
    streaming: bool = field(
        default=False,
        metadata={"help": "read the splits as streams (datasets' streaming=True), for sets too large to download "
                          "first; needs --max_steps; each process reads its own shards"},
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata={"help": "with --streaming: examples in the seeded shuffle buffer (reshuffled every pass; 0: the "
                          "stream's order)"},
    )
    per_class_metrics: bool = field(
        default=False, metadata={"help": "print per-class IoU and accuracy too (all_results.json always has them)"}
    )
    allow_non_finite: bool = field(
        default=False,
        metadata={"help": "keep training through NaN / inf losses and save such weights (transformers' behaviour); "
                          "by default training stops naming the step and the loss, and never saves them"},
    )


@dataclass
class RecipeArguments:
    recipe: str | None = field(default=None, metadata={"help": "recipe name (default: the preset's)"})
    optimizer: str | None = field(default=None, metadata={"help": "sgd or adamw"})
    momentum: float | None = field(default=None)
    custom_keys: str | None = field(
        default=None, metadata={"help": 'JSON, e.g. \'{"head": {"lr_mult": 10}, "norm": {"decay_mult": 0}}\''}
    )
    poly_power: float | None = field(default=None)
    min_lr: float | None = field(default=None)
    warmup_ratio_start: float | None = field(
        default=None, metadata={"help": "the warmup's starting lr factor (recipe field warmup_ratio)"}
    )
    schedule_style: str | None = field(default=None, metadata={"help": "mmcv (authors' code) or mmengine (mmseg 1.x)"})
    crop_size: int | None = field(default=None)
    train_scale: list[int] | None = field(default=None, metadata={"help": "RandomResize target: long short"})
    ratio_range: list[float] | None = field(default=None)
    cat_max_ratio: float | None = field(default=None)
    photometric: bool | None = field(default=None)
    auxiliary_loss_weight: float | None = field(default=None)
    loss: str | None = field(
        default=None,
        metadata={"help": "loss per head, e.g. 'ce:1.0+dice:3.0', 'ohem(thresh=0.7,min_kept=100000)', "
                          "'decode=ce+lovasz:0.5;aux=ce:0.4' (losses: ce, ohem, dice, lovasz, focal, bce; see the "
                          "README); default: the model's own cross-entropy"},
    )
    class_weights: str | None = field(
        default=None,
        metadata={"help": "inverse_frequency or median_frequency: class weights from the training split's label maps, "
                          "given to every loss term that takes them (printed, saved in recipe.json)"},
    )


def _explicit_fields(parser: HfArgumentParser, argv: list[str]) -> set[str]:
    """Names of the options given on the command line (a second parse where every default is suppressed)."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for action in parser._actions:
        if action.dest == "help" or not action.option_strings:
            continue
        kwargs = dict(dest=action.dest, default=argparse.SUPPRESS)
        if action.nargs == 0:
            probe.add_argument(*action.option_strings, action="store_const", const=True, **kwargs)
        else:
            probe.add_argument(*action.option_strings, nargs=action.nargs, **kwargs)
    namespace, _ = probe.parse_known_args(argv)
    return set(vars(namespace))


def parse_train_args(argv: list[str] | None = None):
    """`(model_args, data_args, recipe_args, training_args_dict)`: the dict holds only the explicitly given
    `TrainingArguments` fields, with their parsed values."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, RecipeArguments, TrainingArguments), prog="hf-seg train")
    model_args, data_args, recipe_args, training_args = parser.parse_args_into_dataclasses(
        args=argv, look_for_args_file=False
    )
    given = _explicit_fields(parser, argv)
    training_fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    namespace, _ = parser.parse_known_args(argv)
    training = {name: getattr(namespace, name) for name in sorted(given & training_fields)}
    return model_args, data_args, recipe_args, training


def _json(value, what):
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--{what}: not valid JSON ({error}): {value!r}")


def recipe_overrides_from_args(recipe_args: RecipeArguments) -> dict:
    overrides = {
        key: value for key, value in dataclasses.asdict(recipe_args).items()
        if key not in ("recipe", "custom_keys", "warmup_ratio_start", "class_weights") and value is not None
    }
    if recipe_args.warmup_ratio_start is not None:
        overrides["warmup_ratio"] = recipe_args.warmup_ratio_start
    if recipe_args.custom_keys is not None:
        overrides["custom_keys"] = _json(recipe_args.custom_keys, "custom_keys")
    return overrides


def train_main(argv: list[str] | None = None) -> int:
    """`hf-seg train --model NAME --dataset DATA --output_dir DIR [TrainingArguments flags] [recipe flags]`."""
    from .trainer import train

    model_args, data_args, recipe_args, training = parse_train_args(argv)
    if recipe_args.loss is not None:
        from .losses import LossSpecError, parse_head_losses

        try:
            parse_head_losses(recipe_args.loss)
        except LossSpecError as error:  # named wrong on the command line: exit 2 before anything is loaded
            print(f"hf-seg train: error: --loss: {error}", file=sys.stderr)
            return 2
    if recipe_args.class_weights is not None:
        from .losses import CLASS_WEIGHT_METHODS

        if recipe_args.class_weights not in CLASS_WEIGHT_METHODS:
            print(f"hf-seg train: error: --class_weights must be one of {', '.join(CLASS_WEIGHT_METHODS)}, got "
                  f"{recipe_args.class_weights!r}", file=sys.stderr)
            return 2
    processor = None
    if model_args.image_processor:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(model_args.image_processor)
    eval_split = None if (data_args.eval_split or "").lower() in ("", "none") else data_args.eval_split
    resume = training.pop("resume_from_checkpoint", None)
    do_eval = eval_split is not None
    result = train(
        model_args.model,
        data_args.dataset,
        training_args=training,
        recipe=recipe_args.recipe,
        recipe_overrides=recipe_overrides_from_args(recipe_args),
        pretrained_encoder=model_args.pretrained_encoder,
        image_processor=processor,
        config_overrides=_json(model_args.config_overrides, "config_overrides"),
        train_split=data_args.train_split,
        eval_split=eval_split,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        id2label=data_args.id2label,
        reduce_labels=data_args.reduce_labels,
        label_ids=data_args.label_ids,
        eval_mode=data_args.eval_mode,
        eval_crop_size=data_args.eval_crop_size,
        eval_stride=data_args.eval_stride,
        eval_scales=data_args.eval_scales,
        eval_flip=data_args.eval_flip,
        eval_aug_test=data_args.eval_aug_test,
        max_eval_examples=data_args.max_eval_examples,
        resume_from_checkpoint=_resume_value(resume),
        do_eval=do_eval,
        allow_non_finite=data_args.allow_non_finite,
        class_weights=recipe_args.class_weights,
        streaming=data_args.streaming,
        shuffle_buffer_size=data_args.shuffle_buffer_size,
        lora_rank=model_args.lora_rank,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
    )
    if result.trainer.is_world_process_zero():
        from .evaluation import json_ready

        per_class = ("eval_iou_", "eval_accuracy_")
        shown = {k: v for k, v in result.metrics.items() if data_args.per_class_metrics or not k.startswith(per_class)}
        print(json.dumps(json_ready(shown), indent=2))
        print(f"model folder: {result.output_dir}")
    return 0


def _resume_value(value):
    if value in (None, "", "False", "false"):
        return None
    if value in ("True", "true", True):
        return True
    return value


@dataclass
class EvaluateArguments:
    model: str = field(metadata={"help": "checkpoint folder, Hub id or preset name"})
    dataset: str = field(metadata={"help": "Hub id, save_to_disk folder or images/ + annotations/ folder"})
    split: str = field(default="validation")
    image_column: str | None = field(default=None)
    label_column: str | None = field(default=None)
    reduce_labels: bool | None = field(
        default=None, metadata={"help": "default: the model folder's do_reduce_labels (its training data's setting)"}
    )
    label_ids: str | None = field(
        default=None,
        metadata={"help": "the label maps hold a data set's raw label ids: cityscapes (*_gtFine_labelIds.png), "
                          "coco_stuff164k, coco_stuff10k, pascal_context_459; none: read them as they are (default: "
                          "what the file names say, else the model folder's saved label_ids)"},
    )
    mode: str | None = field(default=None, metadata={"help": "whole or slide (default: the model's test protocol)"})
    crop_size: int | None = field(default=None)
    stride: int | None = field(default=None)
    scales: list[float] | None = field(
        default=None, metadata={"help": "multi-scale test: scales multiplying the test resize, e.g. 0.5 1.0 1.5"}
    )
    flip: bool | None = field(default=None, metadata={"help": "also run horizontally flipped copies"})
    aug_test: bool = field(
        default=False,
        metadata={"help": "the model's multi-scale + flip settings (config.test_protocol aug_test: the papers' MS+flip; "
                          "SETR's short-side rule included)"},
    )
    batch_size: int = field(default=4, metadata={"help": "windows / variants per model call"})
    max_examples: int | None = field(default=None)
    streaming: bool = field(
        default=False, metadata={"help": "read the split as a stream (datasets' streaming=True), without downloading "
                                         "it first; each process scores its own share"}
    )
    dtype: str | None = field(default=None, metadata={"help": "autocast dtype: bfloat16 or float16"})
    device: str | None = field(default=None, metadata={"help": "e.g. cuda; default: the local accelerator or cpu"})
    output_file: str | None = field(default=None, metadata={"help": "write the metrics as JSON here"})
    save_confusion: str | None = field(
        default=None, metadata={"help": "write the confusion matrix (JSON, with the class names) here, for "
                                        "`hf-seg analyze confusion --confusion FILE`"}
    )


def evaluate_main(argv: list[str] | None = None) -> int:
    """`hf-seg evaluate --model DIR --dataset DATA [--split validation] [--mode slide --crop_size 512 --stride 341]`.
    Runs unchanged under `torchrun` / `accelerate launch` (the confusion matrices are summed over processes)."""
    from accelerate import PartialState

    from .evaluation import json_ready
    from .trainer import evaluate_model

    (args,) = HfArgumentParser(EvaluateArguments, prog="hf-seg evaluate").parse_args_into_dataclasses(
        args=list(sys.argv[1:] if argv is None else argv), look_for_args_file=False
    )
    state = PartialState()  # initialises torch.distributed under torchrun / accelerate launch
    dtypes = {None: None, "bfloat16": "bfloat16", "float16": "float16", "bf16": "bfloat16", "fp16": "float16"}
    if args.dtype not in dtypes:
        raise SystemExit(f"--dtype must be bfloat16 or float16, got {args.dtype!r}")
    import torch

    autocast_dtype = getattr(torch, dtypes[args.dtype]) if dtypes[args.dtype] else None
    metrics = evaluate_model(
        args.model, args.dataset, split=args.split, image_column=args.image_column, label_column=args.label_column,
        reduce_labels=args.reduce_labels, label_ids=args.label_ids, mode=args.mode, crop_size=args.crop_size,
        stride=args.stride,
        scales=args.scales, flip=args.flip, aug_test=args.aug_test,
        batch_size=args.batch_size, max_examples=args.max_examples, autocast_dtype=autocast_dtype,
        device=args.device or str(state.device), save_confusion=args.save_confusion, streaming=args.streaming,
    )
    if state.is_main_process:
        text = json.dumps(json_ready(metrics), indent=2)
        print(text)
        if args.output_file:
            with open(args.output_file, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 0


def quickstart_main(argv: list[str] | None = None) -> int:
    """`hf-seg quickstart [--output_dir DIR]`: see `hf_seg.training.quickstart`."""
    from .quickstart import quickstart_main as main

    return main(argv)


__all__ = [
    "DataArguments",
    "EvaluateArguments",
    "ModelArguments",
    "RecipeArguments",
    "evaluate_main",
    "parse_train_args",
    "quickstart_main",
    "train_main",
]
