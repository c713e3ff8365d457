# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""`train(...)`: model + processor + datasets + `TrainingArguments` + `transformers.Trainer` for semantic segmentation.

What hf_seg adds to `Trainer` (`SegmentationTrainer`) is what the papers' recipes need and `Trainer` lacks:
- the optimizer over mmseg-style parameter groups (head lr multiplier, weight-decay exclusions) and mmseg's poly
  schedule with linear warmup (`recipes.py`);
- the papers' evaluation protocol (keep-ratio test resize, whole or sliding-window inference, logits resized back and
  scored at the original label resolution) in place of `Trainer.evaluate`'s batched loop, which compares at the
  processed size (`evaluation.py`);
- per-epoch reseeding of the seeded mmseg augmentations (`hf_seg.data.SegmentationTrainTransform`);
- configurable losses per head (`losses.py`: mmseg 1.x's CE, OHEM, Dice, Lovász, focal and their sums), computed
  from the heads' logits so that the model files stay plain.
Everything else (mixed precision, gradient accumulation and checkpointing, checkpoints and `resume_from_checkpoint`,
DDP / FSDP / DeepSpeed through `accelerate launch` or `torchrun`, logging) is `Trainer`'s own.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import IterableDataset, IterableDatasetDict
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.utils import logging

from .evaluation import evaluate_segmentation, json_ready
from .lora import check_lora_checkpoint, lora_settings
from .recipes import (
    Recipe,
    create_optimizer,
    get_recipe,
    per_device_batch_size,
    poly_schedule,
    recipe_name_for_preset,
)


logger = logging.get_logger(__name__)

#: the source code bases' licenses (model cards state them; hf_seg's own code is Apache-2.0)
FAMILY_LICENSES = {
    "setr": ("mit", "SETR (fudan-zvg/SETR): MIT license."),
    "segformer": (
        "other",
        "SegFormer (NVlabs/SegFormer): NVIDIA Source Code License for SegFormer, non-commercial use only.",
    ),
    "mpvit": ("gpl-3.0", "MPViT (youngwanLEE/MPViT): GPL-3.0 (or ETRI's commercial license)."),
}
#: TrainingArguments fields a recipe fills unless the caller sets them
RECIPE_ARGUMENT_FIELDS = (
    "learning_rate", "weight_decay", "max_steps", "per_device_train_batch_size", "warmup_steps", "adam_beta1",
    "adam_beta2",
)


def model_family(model) -> str:
    """"setr", "segformer" or "mpvit" (from the config's model type and backbone)."""
    config = model.config
    model_type = getattr(config, "model_type", "")
    if model_type == "setr":
        return "setr"
    if model_type.startswith("segformer"):
        return "segformer"
    if model_type == "mpvit":
        return "mpvit"
    backbone = getattr(config, "backbone_config", None)
    if model_type == "upernet" and backbone is not None and "mpvit" in getattr(backbone, "model_type", ""):
        return "mpvit"
    return model_type or "unknown"


def default_recipe_name(model) -> str:
    """A recipe for a model that does not come from a preset: its family's ADE20K recipe."""
    family = model_family(model)
    if family == "setr":
        return f"setr-{model.config.decoder_type}-ade20k-512"
    if family == "segformer":
        return "segformer-ade20k-512"
    if family == "mpvit":
        return "upernet-mpvit-ade20k-512"
    raise ValueError(f"no default recipe for a {type(model).__name__}; pass recipe=...")


# --------------------------------------------------------------------------------------------------------- trainer


class AugmentationEpochCallback(TrainerCallback):
    """Gives the seeded training transform the epoch number, so every epoch draws new augmentations (also after a
    resume in the middle of an epoch: the epoch comes from the restored `state.epoch`).

    A stream (`count_passes=True`) has no length, so Trainer counts its epochs in units of `max_steps` and
    `state.epoch` stays below 1; the epoch it gives the data loader's `set_epoch` (which reseeds the shuffle buffer)
    starts at 0 in every `train()` call and grows by one per pass over the stream. The callback counts the same
    passes, so the order and the augmentations change together."""

    def __init__(self, transform, count_passes: bool = False):
        self.transform = transform
        self.count_passes = count_passes
        self.passes = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.passes = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.count_passes:
            self.transform.set_epoch(self.passes)
            self.passes += 1
        else:
            self.transform.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-6)))


def _without_fsdp2_input_embedding_unit(model) -> None:
    """accelerate's FSDP2 preparation (`fsdp2_prepare_model`) gives a language model's token embedding its own FSDP
    unit and calls `model.get_input_embeddings()` to find it; transformers raises `NotImplementedError` for models
    that have none (Segformer, SETR, UperNet-MPViT), which stops FSDP2 before training. Such a model gets an instance
    attribute answering None (no embedding unit; the auto-wrap policy's units and the root are unchanged)."""
    try:
        model.get_input_embeddings()
    except NotImplementedError:
        model.get_input_embeddings = _no_input_embeddings


def _no_input_embeddings():
    return None


class NonFiniteTrainingError(RuntimeError):
    """The loss or the weights became NaN / inf: training stops and no weights are saved from then on."""


class SegmentationTrainer(Trainer):
    """`Trainer` with the recipe's optimizer and schedule and the papers' evaluation protocol.

    Args (besides `Trainer`'s):
        recipe: the `Recipe`; its optimizer type, momentum, lr multipliers, decay exclusions, poly power, `min_lr` and
            warmup ratio are used. Learning rate, weight decay, betas, epsilon, warmup steps and the number of steps
            come from `args`. `recipe=None` leaves optimizer and schedule to `Trainer` (`args.lr_scheduler_type`).
        eval_settings: keyword arguments of `evaluate_segmentation` (mode, crop_size, stride, reduce_labels,
            image_column, label_column, id2label, ...). `eval_dataset` holds raw examples (image + label columns).
        stop_on_non_finite: a NaN / inf training loss stops training with `NonFiniteTrainingError` naming the step
            and the loss, and weights holding NaN / inf are never saved (neither checkpoints nor the result).
            False keeps transformers' behaviour (non-finite losses are left out of the logged average).
        loss: a per-head loss spec (`hf_seg.training.losses.parse_head_losses`, e.g. "ce:1.0+dice:3.0"): computed
            here from the heads' logits (captured with forward hooks, so the model files stay plain) in place of the
            model's own loss. None keeps the model's own loss.
    """

    def __init__(self, *args, recipe: Recipe | None = None, eval_settings: dict | None = None,
                 stop_on_non_finite: bool = True, loss=None, **kwargs):
        super().__init__(*args, **kwargs)
        from .losses import parse_head_losses

        self.head_losses = None if loss is None else parse_head_losses(loss)
        if self.head_losses is not None:
            self.head_losses.head_specs(self.model)  # a spec naming heads the model lacks fails before training
        self.stop_on_non_finite = stop_on_non_finite
        # The segmentation models take `**kwargs` but their losses are per-batch means that ignore
        # `num_items_in_batch`. Trainer would then neither divide the loss by the accumulation steps nor leave it
        # unscaled across processes; declaring the loss not token-normalised restores mmseg's semantics (mean over
        # the micro-batch, averaged over accumulation steps and over processes).
        self.model_accepts_loss_kwargs = False
        self.recipe = recipe
        self.eval_settings = dict(eval_settings or {})
        if self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) == 2:
            _without_fsdp2_input_embedding_unit(self.model)  # FSDP2 of accelerate 1.x needs it for vision models

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The configured per-head losses (`loss=`) on the heads' logits, else `Trainer`'s (the model's own loss).
        The labels still go to the model: its label checks run and SETR runs its auxiliary heads only then."""
        if self.head_losses is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        unwrapped = self.accelerator.unwrap_model(model)
        with self.head_losses.capture(unwrapped) as captured:
            outputs = model(**inputs)
        loss = captured.loss(inputs["labels"], getattr(unwrapped.config, "semantic_loss_ignore_index", 255))
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.stop_on_non_finite and not bool(torch.isfinite(loss).all()):
            raise NonFiniteTrainingError(
                f"step {self.state.global_step + 1}: the training loss is {loss.item()}; training stopped and nothing "
                f"more is saved ({self._last_checkpoint_note()}). Lower the learning rate or clip gradients "
                "(max_grad_norm); --allow_non_finite keeps transformers' behaviour."
            )
        return loss

    def _last_checkpoint_note(self) -> str:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        return f"the last checkpoint, all finite, is {last}" if last else "no checkpoint had been written"

    def _refuse_non_finite_weights(self, what: str) -> None:
        if not self.stop_on_non_finite:
            return
        bad = None
        with torch.no_grad():  # DeepSpeed ZeRO-3's partitioned parameters refuse isfinite under autograd
            for name, tensor in [*self.model.named_parameters(), *self.model.named_buffers()]:
                tensor = getattr(tensor, "ds_tensor", tensor)  # ZeRO-3: this process's partition (FSDP2: DTensors)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = name
                    break
            if self.is_deepspeed_enabled and self.args.world_size > 1:  # ZeRO-3: every process decides the same
                flag = self.accelerator.reduce(torch.tensor(float(bad is not None), device=self.args.device), "sum")
                bad = bad or ("a parameter partition of another process (DeepSpeed)" if flag.item() > 0 else None)
        if bad is not None:
            raise NonFiniteTrainingError(
                f"step {self.state.global_step}: {bad} holds NaN / inf values; {what} is not saved "
                f"({self._last_checkpoint_note()}). --allow_non_finite keeps transformers' behaviour."
            )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """`Trainer.save_model` (also what every checkpoint calls), refusing weights that hold NaN / inf."""
        self._refuse_non_finite_weights(output_dir or self.args.output_dir)
        if self.is_fsdp_enabled and not _internal_call and "FULL_STATE_DICT" not in str(
                self.accelerator.state.fsdp_plugin.state_dict_type):
            # FSDP with SHARDED_STATE_DICT (`accelerate config`'s default for FSDP2): `Trainer.save_model` writes
            # nothing, checkpoints keep their sharded files (for resuming); the model folder gets the full, unsharded
            # weights, gathered on every process (rank 0 writes), so that it loads with `from_pretrained`
            self._save(output_dir, state_dict=self.accelerator.get_state_dict(self.model))
            if self.args.push_to_hub:
                self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)
            return
        super().save_model(output_dir, _internal_call)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.recipe is not None:
            opt_model = self.model if model is None else model
            recipe = self.recipe.replace(betas=(self.args.adam_beta1, self.args.adam_beta2))
            self.optimizer = create_optimizer(
                opt_model, recipe, self.args.learning_rate, self.args.weight_decay, self.args.adam_epsilon
            )
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.recipe is not None:
            self.lr_scheduler = poly_schedule(
                self.optimizer if optimizer is None else optimizer,
                total_steps=num_training_steps,
                power=self.recipe.poly_power,
                min_lr=self.recipe.min_lr,
                warmup_steps=self.args.get_warmup_steps(num_training_steps),
                warmup_ratio=self.recipe.warmup_ratio,
                style=self.recipe.schedule_style,
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", per_category=None):
        """The papers' protocol (`evaluate_segmentation`) on `eval_dataset` (or the trainer's), logged as
        `{prefix}_mean_iou`, ... Runs on every process; the result is that of the whole set on each."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if dataset is None:
            raise ValueError("evaluation needs an eval_dataset (raw examples with image and label columns)")
        if isinstance(dataset, dict):
            metrics = {}
            for name, part in dataset.items():
                metrics.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}", per_category))
            return metrics
        settings = dict(self.eval_settings)
        if per_category is not None:
            settings["per_category"] = per_category
        if self.args.bf16 or self.args.fp16:
            settings.setdefault("autocast_dtype", torch.bfloat16 if self.args.bf16 else torch.float16)
        start = time.time()
        result = evaluate_segmentation(self.model, self.processing_class, dataset, **settings)
        runtime = time.time() - start
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in result.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(runtime, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


# --------------------------------------------------------------------------------------------------------- building


def _has_pooled_batch_norm(model) -> bool:
    """True for models with BatchNorm after a global (1x1) pooling, as UperNet's pyramid pooling module has."""
    modules = list(model.modules())
    pooled = any(isinstance(m, torch.nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)) for m in modules)
    return pooled and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in modules)


def check_checkpoint(checkpoint: str | bool, output_dir: str) -> str:
    """The checkpoint folder to resume from (`True`: the newest in `output_dir`), after reading each of its files
    (JSON parsed, safetensors tensors sliced, torch archives CRC-checked; no pickle is run), so that a truncated file
    is named here instead of failing inside `Trainer` with an `OSError`."""
    from safetensors import safe_open
    from transformers.trainer_utils import get_last_checkpoint

    if checkpoint is True:
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise ValueError(f"resume_from_checkpoint: no checkpoint-* folder in {output_dir}")
        checkpoint = last
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise ValueError(f"resume_from_checkpoint: {folder} is not a folder")
    if not (folder / "trainer_state.json").is_file():
        raise ValueError(f"resume_from_checkpoint: {folder} has no trainer_state.json: not a Trainer checkpoint")
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        handle.get_slice(key)
            elif path.suffix in (".pt", ".pth", ".bin"):  # torch.save's zip archives: check every member's CRC
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise ValueError(f"member {bad} fails its CRC check")
        except Exception as error:  # noqa: BLE001 - safetensors, zipfile, pickle and json fail in many ways
            raise ValueError(f"resume_from_checkpoint: {path} is unreadable ({type(error).__name__}: {error}); "
                             "resume from an earlier checkpoint or delete this one") from error
    return str(folder)


def _resolve_recipe(recipe, model, preset_name, overrides) -> Recipe:
    if isinstance(recipe, Recipe):
        resolved = recipe
    elif isinstance(recipe, str):
        resolved = get_recipe(recipe)
    elif preset_name is not None:
        resolved = get_recipe(recipe_name_for_preset(preset_name))
    else:
        resolved = get_recipe(default_recipe_name(model))
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    return resolved.replace(**overrides) if overrides else resolved


def _say(message: str) -> None:
    """One line for the user on stderr, from the main process only."""
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
        print(f"hf_seg: {message}", file=sys.stderr, flush=True)


@torch.no_grad()
def relabel_classifiers(model, id2label: dict[int, str]) -> list[str]:
    """Give `model` the classes `id2label`: every classifier (a `...classifier` convolution or linear layer with one
    output per class, in the decode and auxiliary heads) is re-initialised with `len(id2label)` outputs; nothing
    else changes. Returns (and says) the names of the re-initialised layers."""
    old = model.config.num_labels
    new = len(id2label)
    names = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != "classifier" or not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        if module.weight.shape[0] != old:
            continue
        weight = module.weight
        module.weight = torch.nn.Parameter(weight.new_empty((new, *weight.shape[1:])))
        if module.bias is not None:
            module.bias = torch.nn.Parameter(module.bias.new_empty(new))
        if isinstance(module, torch.nn.Conv2d):
            module.out_channels = new
        else:
            module.out_features = new
        model._init_weights(module)
        names.append(name)
    if not names:
        raise ValueError(f"{type(model).__name__} has no classifier layer with {old} outputs to re-initialise")
    model.config.id2label = dict(id2label)
    model.config.label2id = {label: index for index, label in id2label.items()}
    model.config.num_labels = new
    _say(f"new label set ({old} -> {new} classes): re-initialised {', '.join(names)}; every other weight is kept")
    return names


@dataclass
class LabelContract:
    """The classes, reduce-labels setting, ignore index and label-id table of a training run: decided once
    (`decide_labels`), saved with the model (config `id2label`, `semantic_loss_ignore_index` and `label_ids`,
    processor `do_reduce_labels`, recipe.json, model card) and read from there by every later step. `label_ids`
    names the table (`hf_seg.data.datasets.LABEL_ID_TABLES`) the data's raw ids went through, None for none."""

    id2label: dict[int, str]
    reduce_labels: bool
    source: str
    reduce_labels_reason: str
    ignore_index: int = 255
    label_ids: str | None = None

    def describe(self) -> str:
        names = list(self.id2label.values())
        shown = ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ..., {names[-1]}"
        kind = (f"1 class ({shown}): binary masks, label 1 = {shown} and 0 = background, one output channel"
                if len(names) == 1 else f"{len(names)} classes ({shown})")
        return (f"{kind} from {self.source}; reduce_labels={self.reduce_labels} "
                f"({self.reduce_labels_reason}); ignore index {self.ignore_index}"
                + (f"; label ids mapped by the {self.label_ids!r} table" if self.label_ids else ""))

    def to_dict(self) -> dict:
        return dict(num_labels=len(self.id2label), labels_source=self.source, reduce_labels=self.reduce_labels,
                    ignore_index=self.ignore_index, label_ids=self.label_ids)


def decide_labels(data_labels, train_data, label_column: str, split: str, model_id2label: dict | None,
                  model_reduce_labels: bool, from_checkpoint: bool, reduce_labels: bool | None,
                  label_ids: str | None = None) -> LabelContract:
    """The label contract of a run (see `LabelContract`).

    Class names: the data's own (`hf_seg.data.labels.find_class_names`); else a checkpoint's when the data's label
    values are exactly its classes; else `class_0 ...` for the values a scan of the training split finds. A preset's
    label set is never used unless the data is that data set or the user names it (`id2label="ade20k"`).
    Reduce-labels: the explicit flag; else the data set's convention (ADE20K's "0 = other"); else a kept
    checkpoint's; else False: a folder of the user's own label maps is taken as it is.
    Label values outside the classes are a ValueError naming the values, the split and an example. `label_ids`: the
    data's label-id table (`hf_seg.data.load_segmentation_dataset`'s `info["label_ids"]`), applied by every scan.
    A streamed training split (an `IterableDataset`) cannot be scanned before training: without class names in the
    data it is a ValueError asking for `id2label`, and its label values are checked as each example is augmented."""
    from datasets import IterableDataset

    from ..data.labels import check_label_values, class_names_from_counts, scan_label_values

    reason = "as asked" if reduce_labels is not None else None
    id2label, source, counts = data_labels.id2label, data_labels.source, None
    if id2label is not None:
        if reduce_labels is None and data_labels.reduce_labels is not None:
            reduce_labels, reason = data_labels.reduce_labels, f"the convention of {source}"
        if reduce_labels is None and from_checkpoint and id2label == model_id2label:
            reduce_labels, reason = model_reduce_labels, "the checkpoint's, whose classes these are"
    elif train_data is None:
        id2label, source = dict(model_id2label), "the model (no training data to read classes from)"
        if reduce_labels is None:
            reduce_labels, reason = model_reduce_labels, "the model's"
    elif isinstance(train_data, IterableDataset):
        raise ValueError(
            f"split {split!r} is streamed and the data names no classes ({source}): the classes would come from a "
            "scan of every label map, which a stream cannot give before training (a scan of its first maps could miss "
            "classes). Pass --id2label (id2label=): a JSON file of the class names or a bundled label set (ade20k, "
            "cityscapes, coco_stuff, ...)"
        )
    else:
        if from_checkpoint and reduce_labels in (None, model_reduce_labels):
            counts = scan_label_values(train_data, label_column, model_reduce_labels, split, label_ids=label_ids)
            if len(counts) == len(model_id2label):
                id2label, source = dict(model_id2label), (
                    f"the checkpoint (split {split!r} holds label values 0..{len(counts) - 1}, its classes)")
                if reduce_labels is None:
                    reduce_labels, reason = model_reduce_labels, "the checkpoint's"
            elif reduce_labels is None:
                counts = None
        if id2label is None:
            if reduce_labels is None:
                reduce_labels, reason = False, "the data's own label maps, taken as they are"
            if counts is None:
                counts = scan_label_values(train_data, label_column, reduce_labels, split, label_ids=label_ids)
            if not len(counts):
                raise ValueError(f"split {split!r} holds no labelled pixel (every label value is the ignore index)")
            id2label = class_names_from_counts(counts)
            source = (f"a scan of split {split!r} (label values 0..{len(counts) - 1}; no class names in the data, "
                      "pass id2label to name them)")
    if reduce_labels is None:
        reduce_labels, reason = False, "the data's own label maps, taken as they are"
    if model_reduce_labels and not reduce_labels and reason != "as asked":
        reason += "; the model's do_reduce_labels=True is ADE20K's convention and does not apply here"
    if train_data is not None and not isinstance(train_data, IterableDataset):
        if counts is None:
            counts = scan_label_values(train_data, label_column, reduce_labels, split, label_ids=label_ids)
        check_label_values(counts, id2label, split, train_data, label_column, reduce_labels, label_ids)
    return LabelContract(dict(id2label), bool(reduce_labels), source, reason, label_ids=label_ids)


def check_streaming_arguments(training_args, class_weights: str | None, shuffle_buffer_size: int) -> None:
    """Refuse, before any data is read, what a stream cannot do: count epochs (it has no length, so `max_steps` is
    required, and `num_train_epochs` without it would be silently replaced by the recipe's steps) or compute class
    weights (a scan of the whole training split)."""
    if isinstance(training_args, TrainingArguments):
        max_steps, epochs_given = training_args.max_steps, False
    else:
        given = dict(training_args or {})
        max_steps, epochs_given = given.get("max_steps"), "num_train_epochs" in given
    if (max_steps is not None and max_steps <= 0) or (max_steps is None and epochs_given):
        raise ValueError(
            "a streamed training split has no length, so its epochs cannot be counted: pass --max_steps N "
            "(max_steps in training_args), the number of optimiser steps"
            + (", in place of --num_train_epochs" if epochs_given else f" (got max_steps={max_steps})")
        )
    if class_weights is not None:
        raise ValueError("--class_weights are computed from every label map of the training split, which a stream "
                         "cannot read before training; give the weights in the loss instead (--loss 'ce(class_weight="
                         "[...])')")
    if shuffle_buffer_size < 0:
        raise ValueError(f"--shuffle_buffer_size must be 0 (the stream's order) or more, got {shuffle_buffer_size}")


def describe_stream(stream, split: str, shuffle_buffer_size: int, args: TrainingArguments) -> str:
    """The line said about a streamed training split: its shards, the shuffle buffer and how processes share it."""
    processes = max(1, args.world_size)
    if processes == 1:
        sharing = "one process"
    elif stream.num_shards >= processes:
        sharing = f"{processes} processes, each reading its own shards"
    else:
        sharing = (f"{processes} processes but {stream.num_shards} shards: every process reads the whole stream and "
                   "keeps its own batches")
    order = (f"a shuffle buffer of {shuffle_buffer_size} examples (seed {args.seed}, reshuffled every pass)"
             if shuffle_buffer_size else "the stream's own order (no shuffle buffer)")
    return (f"split {split!r} is streamed ({stream.num_shards} shards, {sharing}) through {order}; "
            f"max_steps={args.max_steps}")


def check_model_source(source: str) -> None:
    """Before `from_pretrained`: a local folder must hold a config and readable weights (a truncated
    `*.safetensors` is named); a name that is neither a folder nor a Hub id (`owner/name`) is an `UnknownModelError`
    with "did you mean" instead of a Hub connection error."""
    import re

    from safetensors import safe_open

    from ..presets import UnknownModelError

    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {source} has no config.json: not a folder written by save_pretrained")
        for file in sorted(path.glob("*.safetensors")):
            try:
                with safe_open(str(file), framework="pt") as handle:
                    handle.keys()
            except Exception as error:  # noqa: BLE001 - SafetensorError, OSError, ...
                raise ValueError(f"weights file {file} ({file.stat().st_size:,} bytes) is truncated or not a "
                                 f"safetensors file: {error}") from error
    elif path.exists():
        raise ValueError(f"model {source} is a file; pass the folder that holds config.json")
    elif not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source):
        if "/" in source or source.startswith((".", "~")):
            raise FileNotFoundError(f"model folder {source} does not exist")
        raise UnknownModelError(source)


def build_model_and_processor(
    model,
    id2label: dict | None = None,
    config_overrides: dict | None = None,
    pretrained_encoder: str | None = None,
    image_processor=None,
    **from_pretrained_kwargs,
):
    """`(model, processor, preset_name)` from a preset name (random init, optionally with a pretrained encoder), a
    checkpoint folder / Hub id, or a model instance. `id2label` relabels the model (new classifier for checkpoints)."""
    from .. import presets
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    config_overrides = dict(config_overrides or {})
    label_kwargs = {}
    if id2label:
        id2label = {int(k): str(v) for k, v in id2label.items()}
        label_kwargs = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    preset_name = None
    if isinstance(model, PreTrainedModel):
        if label_kwargs:
            relabel_classifiers(model, id2label)
        processor = image_processor
    elif isinstance(model, str) and model in presets.PRESETS:
        preset_name = model
        built = presets.create_model(model, **label_kwargs, **config_overrides)
        processor = image_processor if image_processor is not None else presets.create_image_processor(model)
        if pretrained_encoder:
            from .pretrained import load_pretrained_encoder

            load_pretrained_encoder(built, pretrained_encoder, **from_pretrained_kwargs)
        model = built
    elif isinstance(model, (str, os.PathLike)):
        source = str(model)
        check_model_source(source)
        model = AutoModelForSemanticSegmentation.from_pretrained(
            source, **dict(from_pretrained_kwargs, **config_overrides)
        )
        if label_kwargs:
            relabel_classifiers(model, id2label)
        processor = (
            image_processor
            if image_processor is not None
            else AutoImageProcessor.from_pretrained(source, **from_pretrained_kwargs)
        )
    else:
        raise TypeError(f"model must be a preset name, a folder / Hub id or a PreTrainedModel, got {type(model)}")
    if processor is None:
        from ..models.setr import SetrImageProcessor

        processor = SetrImageProcessor()
    return model, processor, preset_name


def build_training_arguments(
    training_args: TrainingArguments | dict | None, recipe: Recipe, output_dir: str | None
) -> TrainingArguments:
    """`TrainingArguments` from the recipe's defaults and the caller's values.

    A dict (or the CLI's explicitly given flags) overrides the recipe field by field; a `TrainingArguments` instance
    is taken as it is (its learning rate, batch size, steps ... win over the recipe's). `remove_unused_columns` is
    always False: the transforms need the image and label columns.
    """
    if isinstance(training_args, TrainingArguments):
        args = training_args
        if output_dir is not None and args.output_dir != output_dir:
            args.output_dir = output_dir
        args.remove_unused_columns = False
        return args
    given = dict(training_args or {})
    if output_dir is not None:
        given["output_dir"] = output_dir
    if "output_dir" not in given:
        raise ValueError("train needs an output_dir")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = int(given.get("gradient_accumulation_steps", 1))
    defaults = dict(
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        max_steps=recipe.max_steps,
        warmup_steps=recipe.warmup_steps,
        adam_beta1=recipe.betas[0],
        adam_beta2=recipe.betas[1],
        save_steps=min(recipe.max_steps, 16_000),
        logging_steps=50,
        dataloader_drop_last=True,
        save_total_limit=2,
        report_to="none",
    )
    if "per_device_train_batch_size" not in given:
        defaults["per_device_train_batch_size"] = per_device_batch_size(recipe.batch_size, world_size, accumulation)
    if "max_steps" in given and "save_steps" not in given:
        defaults["save_steps"] = max(1, min(int(given["max_steps"]), 16_000))
    merged = {**defaults, **given, "remove_unused_columns": False}
    return TrainingArguments(**merged)


def build_datasets(
    dataset,
    recipe: Recipe,
    processor,
    num_labels: int,
    seed: int,
    train_split: str = "train",
    eval_split: str | None = "validation",
    image_column: str | None = None,
    label_column: str | None = None,
    id2label=None,
    reduce_labels: bool = False,
    label_ids: str | None = None,
    shuffle_buffer_size: int = 1000,
    batch_size: int = 1,
    drop_last: bool = True,
    **load_kwargs,
):
    """`(train_dataset, eval_dataset, transform, info)`: the training split with the seeded mmseg augmentation of the
    recipe (crop, scale, ratio range, cat_max_ratio, flip, photometric distortion), the raw evaluation split.
    `label_ids`: the data's label-id table (e.g. "cityscapes") or "none", applied by the transform as it decodes
    each map; None: detected as `load_segmentation_dataset` does.

    A streamed training split (`streaming=True`, or an `IterableDataset` passed in) goes through a shuffle buffer of
    `shuffle_buffer_size` examples (seeded with `seed`; `set_epoch` reshuffles; 0: the stream's order) and the same
    transform, `batch_size` (the per-device batch) examples at a time; `drop_last` drops the incomplete batch at the
    end of each process's (and DataLoader worker's) pass, as `dataloader_drop_last` does for a map-style split. An
    example's draws come from its `__index__` (a local split read as a stream) or its files (`content_key`)."""
    from ..data import SegmentationTrainTransform, add_index_column, load_segmentation_dataset

    data, info = load_segmentation_dataset(
        dataset, image_column=image_column, label_column=label_column, id2label=id2label, decode=False,
        label_ids=label_ids, **load_kwargs
    )
    for split in (train_split, eval_split):
        if split is not None and split not in data:
            raise ValueError(f"split {split!r} not in the data set (splits: {list(data)})")
    transform = SegmentationTrainTransform(
        crop_size=recipe.crop_size,
        scale=recipe.train_scale,
        ratio_range=recipe.ratio_range,
        cat_max_ratio=recipe.cat_max_ratio,
        reduce_labels=reduce_labels,
        mean=getattr(processor, "image_mean", None) or (0.485, 0.456, 0.406),
        std=getattr(processor, "image_std", None) or (0.229, 0.224, 0.225),
        seed=seed,
        num_labels=num_labels,
        photometric=recipe.photometric,
        image_column=info["image_column"],
        label_column=info["label_column"],
        label_ids=info["label_ids"],
        seed_by_content=True,  # for streams from the Hub; map-style splits and local streams carry __index__
    )
    train_dataset = None
    if train_split is not None and isinstance(data[train_split], IterableDataset):
        stream = data[train_split]
        if shuffle_buffer_size:
            stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        train_dataset = stream.map(transform, batched=True, batch_size=batch_size, drop_last_batch=drop_last,
                                   remove_columns=stream.column_names)
    elif train_split is not None:
        train_dataset = add_index_column(data[train_split])
        train_dataset.set_transform(transform)
    eval_dataset = data[eval_split] if eval_split is not None else None
    return train_dataset, eval_dataset, transform, info


# --------------------------------------------------------------------------------------------------------- outputs


def _metric_rows(metrics: dict, prefix: str = "eval_") -> list[tuple[str, Any]]:
    rows = []
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        if f"{prefix}{key}" in metrics and metrics[f"{prefix}{key}"] is not None:
            rows.append((key, metrics[f"{prefix}{key}"]))
    return rows


def write_model_card(
    output_dir: str,
    model,
    metrics: dict | None = None,
    recipe: Recipe | None = None,
    dataset_name: str | None = None,
    preset_name: str | None = None,
    pretrained_encoder: str | None = None,
    training_args: TrainingArguments | None = None,
    eval_settings: dict | None = None,
    model_name: str | None = None,
    labels: LabelContract | None = None,
    lora: dict | None = None,
) -> str:
    """A Hub model card (`README.md`) with the evaluation metrics, the classes, the recipe and the source's license.
    Only a Hub id goes into the card's `datasets:` metadata (a local path is named in the text only); the usage
    snippet loads `model_name` (the Hub id) when given, else the folder itself. `lora`: the LoRA facts of a LoRA
    fine-tune (`hf_seg.training.lora.LoraRun.record()`), stated in the card."""
    family = model_family(model)
    license_id, license_note = FAMILY_LICENSES.get(family, ("apache-2.0", ""))
    if family == "segformer" and not pretrained_encoder:
        license_note += " This model was trained here from random initialisation with transformers' SegFormer code."
    name = model_name or Path(output_dir).name
    load_from = model_name or str(output_dir)
    hub_dataset = dataset_name if dataset_name and _is_hub_id(dataset_name) else None
    metrics = metrics or {}
    rows = _metric_rows(metrics)
    front = ["---", f"license: {license_id}", "library_name: transformers", "pipeline_tag: image-segmentation",
             "tags:", "- image-segmentation", "- semantic-segmentation", "- hf_seg", f"- {family}"]
    if hub_dataset:
        front += ["datasets:", f"- {hub_dataset}"]
    if rows:
        front += ["model-index:", f"- name: {name}", "  results:", "  - task:", "      type: image-segmentation",
                  "      name: Semantic Segmentation"]
        if hub_dataset:
            front += ["    dataset:", f"      name: {hub_dataset}", f"      type: {hub_dataset}"]
        front += ["    metrics:"]
        for key, value in rows:
            front += [f"    - type: {key}", f"      value: {value:.4f}", f"      name: {key.replace('_', ' ')}"]
    front.append("---")

    body = [f"# {name}", "",
            f"A {family.upper() if family == 'setr' else family.capitalize()} semantic-segmentation model "
            f"({type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{model.config.num_labels} classes) fine-tuned with hf_seg on top of "
            "`transformers.Trainer`."]
    if preset_name:
        body.append(f"Architecture preset: `{preset_name}`.")
        from ..presets import PRESETS

        note = PRESETS[preset_name].note if preset_name in PRESETS else None
        if note:
            body.append(note)
    if pretrained_encoder:
        body.append(f"Encoder initialised from `{pretrained_encoder}`.")
    if lora:
        body.append(f"LoRA-fine-tuned: rank {lora['rank']} adapters (alpha {lora['alpha']:g}, dropout "
                    f"{lora['dropout']:g}) on the encoder's {lora['adapted_layers']} attention and MLP linear layers, "
                    f"the heads ({', '.join(f'`{name}`' for name in lora['modules_to_save'])}) trained in full, "
                    f"{lora['trainable_parameters']:,} parameters trained in all; the adapters are merged into these "
                    "weights, so this is a plain model (peft is not needed to load it).")
    if dataset_name:
        body.append(f"Data set: `{dataset_name}`.")
    body += ["", "## Evaluation", ""]
    if rows:
        protocol = ", ".join(f"{k}={v}" for k, v in (eval_settings or {}).items() if k in ("mode", "crop_size", "stride"))
        body += [f"Protocol: keep-ratio test resize, {protocol or 'mode=whole'}, logits resized back to the original "
                 "label size; metrics are fractions (mmsegmentation's IoUMetric definitions).", "",
                 "| metric | value |", "|---|---|"]
        body += [f"| {key} | {value:.4f} |" for key, value in rows]
        per_class = [(k[len("eval_iou_"):], v) for k, v in metrics.items() if k.startswith("eval_iou_")]
        if per_class:
            body += ["", "| class | IoU |", "|---|---|"]
            body += [f"| {label} | {'n/a' if v is None or v != v else f'{v:.4f}'} |" for label, v in per_class]
    else:
        body.append("Not evaluated.")
    if labels is not None:
        body += ["", "## Classes", "",
                 f"{len(labels.id2label)} classes from {labels.source}; reduce_labels={labels.reduce_labels} "
                 f"({labels.reduce_labels_reason}); label value {labels.ignore_index} is ignored. The image "
                 "processor's `do_reduce_labels` and the config's `semantic_loss_ignore_index` record them."
                 + (f" The label maps hold raw label ids, mapped to these classes by hf_seg's `{labels.label_ids}` "
                    "table (config `label_ids`; `hf_seg.data.datasets`)." if labels.label_ids else ""), "",
                 "| id | class |", "|---|---|"]
        body += [f"| {index} | {label} |" for index, label in labels.id2label.items()]
    body += ["", "## Training", ""]
    if recipe is not None:
        body.append(f"Recipe `{recipe.name}`:")
        body.append("")
        body += [f"- {key}: {value}" for key, value in recipe.to_dict().items() if key not in ("name", "loss")]
        body.append(f"- loss: {recipe.loss}" if recipe.loss else "- loss: the model's own cross-entropy (decode head "
                    "+ auxiliary_loss_weight x each auxiliary head)")
    if training_args is not None:
        body += [f"- steps: {training_args.max_steps}, per-device batch: {training_args.per_device_train_batch_size}, "
                 f"gradient accumulation: {training_args.gradient_accumulation_steps}, learning rate: "
                 f"{training_args.learning_rate}, weight decay: {training_args.weight_decay}, seed: {training_args.seed}"]
    body += ["", "## Usage", "", "```python", "import hf_seg  # or pass trust_remote_code=True without hf_seg",
             "from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation", "",
             f'model = AutoModelForSemanticSegmentation.from_pretrained("{load_from}").eval()',
             f'processor = AutoImageProcessor.from_pretrained("{load_from}")',
             'label_maps = hf_seg.segment(model, processor, images, mode="whole")', "```", "",
             "## License", "", f"{license_note} hf_seg's code is Apache-2.0.".strip(), ""]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(front + [""] + body), encoding="utf-8")
    return str(path)


def _is_hub_id(name: str) -> bool:
    """`owner/name` that is not a local path, or a known canonical Hub data set (`scene_parse_150`)."""
    import re

    from ..data.labels import KNOWN_HUB_DATASETS

    if name in KNOWN_HUB_DATASETS:
        return True
    return not Path(name).exists() and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) is not None


HUB_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "runs/**", "training_args.bin", "*.pt", "*.pth"]


def push_folder_to_hub(folder: str, repo_id: str, token: str | None = None, private: bool | None = None,
                       commit_message: str = "Upload segmentation model trained with hf_seg"):
    """Upload the final model folder (weights, config, code, processor, model card, metrics) without checkpoints."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=folder, commit_message=commit_message, ignore_patterns=HUB_IGNORE_PATTERNS
    )


# --------------------------------------------------------------------------------------------------------- train


@dataclass
class TrainResult:
    trainer: SegmentationTrainer
    model: Any
    processor: Any
    recipe: Recipe
    metrics: dict
    output_dir: str


def train(
    model,
    dataset=None,
    *,
    output_dir: str | None = None,
    training_args: TrainingArguments | dict | None = None,
    recipe: str | Recipe | None = None,
    recipe_overrides: dict | None = None,
    pretrained_encoder: str | None = None,
    image_processor=None,
    config_overrides: dict | None = None,
    train_split: str = "train",
    eval_split: str | None = "validation",
    image_column: str | None = None,
    label_column: str | None = None,
    id2label=None,
    reduce_labels: bool | None = None,
    label_ids: str | None = None,
    eval_mode: str | None = None,
    eval_crop_size=None,
    eval_stride=None,
    eval_scales=None,
    eval_flip: bool | None = None,
    eval_aug_test: bool = False,
    max_eval_examples: int | None = None,
    callbacks: list | None = None,
    resume_from_checkpoint: str | bool | None = None,
    do_train: bool = True,
    do_eval: bool = True,
    dataset_name: str | None = None,
    dataset_kwargs: dict | None = None,
    allow_non_finite: bool = False,
    loss: str | None = None,
    class_weights: str | None = None,
    streaming: bool = False,
    shuffle_buffer_size: int = 1000,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    lora_dropout: float | None = None,
) -> TrainResult:
    """
    Fine-tune a segmentation model with `transformers.Trainer` and the papers' recipe, evaluate it with the papers'
    protocol and write a Hub-ready folder (weights, config, model code, processor, `README.md` card, metrics).

    Args:
        model: a preset name (`hf_seg.list_models()`, random init), a checkpoint folder / Hub id, or a model.
        dataset: a Hub id, a `save_to_disk` folder, an images/annotations folder (`hf_seg.data.load_segmentation_dataset`)
            or a `DatasetDict`. Splits `train_split` / `eval_split`.
        output_dir, training_args: `TrainingArguments` (instance: used as is) or a dict of its fields overriding
            the recipe's defaults (learning rate, weight decay, steps, total batch size -> per-device batch, warmup).
            `push_to_hub=True` pushes the final folder (not the checkpoints) to `hub_model_id`.
        recipe, recipe_overrides: a recipe name / `Recipe` (default: the preset's) and field overrides.
        pretrained_encoder: ImageNet weights for a preset's encoder (ViT for SETR, `mit-b*` for SegFormer, `mpvit-*`).
        image_processor: overrides the preset's / checkpoint's processor.
        config_overrides: model-configuration fields (for presets and checkpoints).
        reduce_labels: mmseg's reduce_zero_label on the data set's labels (default: the processor's
            `do_reduce_labels`, e.g. True for the ADE20K presets).
        label_ids: the label maps hold a data set's raw label ids: "cityscapes" (`*_gtFine_labelIds.png`),
            "coco_stuff164k", "coco_stuff10k", "pascal_context_459" (`hf_seg.data.datasets`), or "none" (read them as
            they are); default: detected from the file names or the value range (said in one line). Saved as
            `config.label_ids`, so that `evaluate_model` of the saved folder applies it again.
        eval_mode, eval_crop_size, eval_stride: the test protocol (default: the model's saved one, else the preset's;
            saved in `config.test_protocol`).
        eval_scales, eval_flip, eval_aug_test: multi-scale + flip evaluation (`eval_aug_test`: the protocol's
            `aug_test`, the papers' settings); default single scale.
        resume_from_checkpoint: a checkpoint folder, or True for the newest one in `output_dir` (its files are
            checked first: a truncated or unreadable one is named).
        allow_non_finite: keep transformers' behaviour on NaN / inf losses (by default training stops with
            `NonFiniteTrainingError` and weights holding NaN / inf are never saved).
        loss: the loss of each head, e.g. "ce:1.0+dice:3.0" or "decode=ohem(thresh=0.7);aux=ce:0.4"
            (`hf_seg.training.losses`; the recipe field `loss`); default: the recipe's, else the model's own
            cross-entropy. Saved in recipe.json and the model card.
        class_weights: "inverse_frequency" or "median_frequency": class weights computed from the training split's
            label maps (`hf_seg.training.losses.class_weights_from_data`), printed, given to every loss term that
            takes them (the default loss becomes the model's cross-entropy with them) and saved in recipe.json.
        streaming, shuffle_buffer_size: read the splits as streams (`datasets.load_dataset(..., streaming=True)` for
            a Hub id; an `IterableDatasetDict` passed in streams anyway), for the sets too large to download first.
            Training draws from a seeded shuffle buffer of `shuffle_buffer_size` examples, reshuffled every pass
            (0: the stream's order), with the same augmentations and label contract; `max_steps` is required (a
            stream has no length). Under `torchrun` / `accelerate launch` each process reads its own shards
            (accelerate's `dispatch_batches=False`), and the evaluation scores each example on one process.
        lora_rank, lora_alpha, lora_dropout: LoRA fine-tuning (needs peft: `pip install "hf_seg[peft]"`): adapters
            of rank `lora_rank` (scaled by `lora_alpha`, default 2 x rank; `lora_dropout` default 0) on the encoder's
            attention and MLP linears, the decode / auxiliary heads trained in full (`hf_seg.training.lora`).
            Checkpoints hold the adapters and heads; the saved folder is the merged plain model.
    """
    lora = lora_settings(lora_rank, lora_alpha, lora_dropout)  # LoRA flags checked before anything loads
    if class_weights is not None:
        from .losses import CLASS_WEIGHT_METHODS

        if class_weights not in CLASS_WEIGHT_METHODS:
            raise ValueError(f"class_weights must be one of {', '.join(CLASS_WEIGHT_METHODS)}, got {class_weights!r}")
    streaming = streaming or isinstance(dataset, (IterableDataset, IterableDatasetDict))
    if streaming:
        check_streaming_arguments(training_args, class_weights, shuffle_buffer_size)
    if loss is not None:
        recipe_overrides = {**(recipe_overrides or {}), "loss": loss}
    if (recipe_overrides or {}).get("loss") is not None:
        from .losses import parse_head_losses

        parse_head_losses(recipe_overrides["loss"])  # a bad spec fails before any data or model is loaded
    if isinstance(training_args, TrainingArguments):
        set_seed(training_args.seed)
        seed = training_args.seed
    else:
        seed = int((training_args or {}).get("seed", 42))
        set_seed(seed)  # the model's random initialisation is part of the run

    # The data first (a missing folder is reported before any model is built), then the label contract, then the
    # model with the contract's classes.
    from .. import presets
    from ..data import load_segmentation_dataset
    from ..data.labels import DataLabels

    if isinstance(model, (str, os.PathLike)) and str(model) not in presets.PRESETS:
        check_model_source(str(model))  # a misspelt name fails before any data is loaded
    labelled = sorted(set(config_overrides or {}) & {"id2label", "label2id", "num_labels"})
    if labelled:
        raise ValueError(f"config_overrides may not set {', '.join(labelled)}: the classes come from the data set or "
                         "from id2label= (--id2label), and are decided once for the whole run")
    data = info = None
    if dataset is not None:
        data, info = load_segmentation_dataset(
            dataset, image_column=image_column, label_column=label_column, id2label=id2label, decode=False,
            label_ids=label_ids, streaming=streaming, **(dataset_kwargs or {}),
        )
        for split in (train_split if do_train else None, eval_split if do_eval else None):
            if split is not None and split not in data:
                raise ValueError(f"split {split!r} not in the data set (splits: {list(data)})")
    preset_name = model if isinstance(model, str) and model in presets.PRESETS else None
    if preset_name is not None:
        preset = presets.get_preset(preset_name)
        model_id2label = presets.create_config(preset_name, **(config_overrides or {})).id2label
        model_reduce = bool(preset.processor.get("do_reduce_labels", False))
    else:
        model, processor, _ = build_model_and_processor(
            model, config_overrides=config_overrides, image_processor=image_processor
        )
        model_id2label = dict(model.config.id2label)
        model_reduce = bool(getattr(processor, "do_reduce_labels", False))
    if info is not None:
        data_labels = DataLabels(info["id2label"], info["labels_source"], info["reduce_labels"])
        label_column = info["label_column"]
    elif id2label is not None:
        from ..data.labels import read_id2label

        names, convention = read_id2label(id2label)
        data_labels = DataLabels(names, "id2label", convention)
    else:
        data_labels = DataLabels(None, "no data set")
    if info is not None:
        label_ids = info["label_ids"]
    else:
        from ..data.datasets import NO_LABEL_IDS, check_label_ids

        label_ids = None if check_label_ids(label_ids) in (None, NO_LABEL_IDS) else check_label_ids(label_ids)
    contract = decide_labels(
        data_labels, data[train_split] if data is not None and do_train else None, label_column, train_split,
        model_id2label, model_reduce, from_checkpoint=preset_name is None, reduce_labels=reduce_labels,
        label_ids=label_ids,
    )
    _say(contract.describe())
    if info is not None and contract.label_ids and info["label_ids_source"] != "asked":
        from ..data.datasets import describe_label_ids

        _say(describe_label_ids(contract.label_ids, info["label_ids_source"]))
    if preset_name is not None:
        model, processor, _ = build_model_and_processor(
            preset_name, id2label=contract.id2label, config_overrides=config_overrides,
            pretrained_encoder=pretrained_encoder, image_processor=image_processor,
        )
    elif contract.id2label != model_id2label:
        relabel_classifiers(model, contract.id2label)
    if processor is None:
        from ..models.setr import SetrImageProcessor

        processor = SetrImageProcessor()
    processor.do_reduce_labels = contract.reduce_labels
    model.config.semantic_loss_ignore_index = contract.ignore_index
    if contract.label_ids or getattr(model.config, "label_ids", None):
        model.config.label_ids = contract.label_ids  # evaluate applies the same table to the same raw data
    reduce_labels = contract.reduce_labels

    recipe = _resolve_recipe(recipe, model, preset_name, recipe_overrides).replace(reduce_labels=reduce_labels)
    if recipe.auxiliary_loss_weight is not None and hasattr(model.config, "auxiliary_loss_weight"):
        model.config.auxiliary_loss_weight = recipe.auxiliary_loss_weight
    computed_weights = None
    if class_weights is not None:
        from .losses import class_weights_from_data, parse_head_losses, with_class_weights

        if data is None or not do_train:
            raise ValueError("class_weights are computed from the training split: train needs a dataset")
        computed_weights = class_weights_from_data(
            data[train_split], info["label_column"], model.config.num_labels, class_weights, reduce_labels,
            contract.label_ids, split=train_split,
        )
        names = [model.config.id2label[index] for index in range(model.config.num_labels)]
        _say(f"class weights ({class_weights} of split {train_split!r}): "
             + ", ".join(f"{name} {weight:.4g}" for name, weight in zip(names, computed_weights)))
        # the default loss keeps the model's own averaging: transformers' Segformer over the labelled pixels only
        default = "ce(avg_non_ignore=true)" if model_family(model) == "segformer" else "ce"
        recipe = recipe.replace(loss=str(with_class_weights(parse_head_losses(recipe.loss or default),
                                                            computed_weights)))
    if recipe.loss is not None:
        _say(f"loss: {recipe.loss} (auxiliary heads without their own spec: the decode head's terms x "
             f"{getattr(model.config, 'auxiliary_loss_weight', None) or 0.4})")
    args = build_training_arguments(training_args, recipe, output_dir)
    push_to_hub, args.push_to_hub = args.push_to_hub, False  # the final folder is pushed below, with its card
    if streaming and args.accelerator_config.dispatch_batches is None:
        # accelerate's default for a stream is to read every batch on process 0 and send each process its slice;
        # each process reads its own shards instead (decoding and augmenting on every process)
        args.accelerator_config.dispatch_batches = False

    train_dataset = eval_dataset = transform = None
    info = info or {"image_column": image_column or "image", "label_column": label_column or "label"}
    if data is not None:
        train_dataset, eval_dataset, transform, info = build_datasets(
            data, recipe, processor, model.config.num_labels, args.seed,
            train_split=train_split if do_train else None, eval_split=eval_split if do_eval else None,
            image_column=info["image_column"], label_column=info["label_column"], id2label=contract.id2label,
            reduce_labels=reduce_labels, label_ids=contract.label_ids or "none",
            shuffle_buffer_size=shuffle_buffer_size, batch_size=args.per_device_train_batch_size,
            drop_last=args.dataloader_drop_last,
        )
        if streaming and do_train:
            _say(describe_stream(data[train_split], train_split, shuffle_buffer_size, args))
    protocol = test_protocol(model, preset_name, eval_mode, eval_crop_size, eval_stride)
    model.config.test_protocol = protocol  # travels with the model: evaluate / predict / segment default to it
    eval_settings = evaluation_settings(protocol, eval_scales, eval_flip, eval_aug_test)
    eval_settings.update(
        image_column=info["image_column"], label_column=info["label_column"], reduce_labels=reduce_labels,
        ignore_index=contract.ignore_index, id2label=model.config.id2label, per_category=False,
        max_examples=max_eval_examples, batch_size=max(1, args.per_device_eval_batch_size),
        label_ids=contract.label_ids,
    )
    from ..data import collate_segmentation

    all_callbacks = list(callbacks or [])
    if transform is not None:
        all_callbacks.append(AugmentationEpochCallback(transform, count_passes=streaming))
    lora_run = None
    if lora is not None:  # LoRA: the adapters and the heads train, the rest is frozen (hf_seg.training.lora)
        from .lora import apply_lora

        lora_run = apply_lora(model, lora)
        model = lora_run.model
        all_callbacks.append(lora_run.callback())
        _say(lora_run.describe())
    trainer = SegmentationTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate_segmentation,
        processing_class=processor,
        callbacks=all_callbacks,
        recipe=recipe,
        eval_settings=eval_settings,
        stop_on_non_finite=not allow_non_finite,
        loss=recipe.loss,
    )
    metrics: dict = {}
    if lora_run is not None and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        raise ValueError("--lora-rank (lora_rank=) runs on one process or DDP: with FSDP or DeepSpeed the weights are "
                         "sharded, and the merge of the adapters into them at the end is not supported")
    if do_train:
        if train_dataset is None:
            raise ValueError("training needs a dataset with a training split")
        batch = args.per_device_train_batch_size * max(1, args.world_size)
        if streaming and args.dataloader_drop_last:  # Trainer would stop at a pass with no batch, saying only a warning
            available = sum(1 for _ in data[train_split].take(batch))
            if available < batch:
                raise ValueError(
                    f"split {train_split!r} streams {available} examples, fewer than one batch of {batch} "
                    f"({args.per_device_train_batch_size} per device x {max(1, args.world_size)} processes): no step "
                    "would run; pass a smaller --per_device_train_batch_size"
                )
        elif args.dataloader_drop_last and len(train_dataset) < batch:
            raise ValueError(
                f"split {train_split!r} has {len(train_dataset)} examples, fewer than one batch of {batch} "
                f"({args.per_device_train_batch_size} per device x {max(1, args.world_size)} processes): no step "
                "would run; pass a smaller --per_device_train_batch_size"
            )
        if args.per_device_train_batch_size < 2 and _has_pooled_batch_norm(model):
            raise ValueError(
                f"{type(model).__name__} cannot train with one image per device: the pyramid pooling's 1x1 branch "
                "normalises a single value per channel with BatchNorm. Pass --per_device_train_batch_size 2 or more "
                "(with --gradient_accumulation_steps to keep the total batch)."
            )
        if resume_from_checkpoint:
            resume_from_checkpoint = check_checkpoint(resume_from_checkpoint, args.output_dir)
            check_lora_checkpoint(resume_from_checkpoint, lora_run)  # a LoRA checkpoint needs the same LoRA run
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        metrics.update({f"train_{k}" if not k.startswith("train_") else k: v for k, v in result.metrics.items()})
    if lora_run is not None:  # merge-and-save: the final evaluation and the folder are the plain merged model
        trainer.model = trainer.model_wrapped = lora_run.merge()
    if do_eval and eval_dataset is not None:
        metrics.update(trainer.evaluate(per_category=True))
    trainer.save_model(args.output_dir)  # on every process: FSDP / DeepSpeed gather the weights; rank 0 writes
    if trainer.is_world_process_zero():
        with open(Path(args.output_dir) / "all_results.json", "w", encoding="utf-8") as handle:
            json.dump(json_ready(metrics), handle, indent=2)
        with open(Path(args.output_dir) / "recipe.json", "w", encoding="utf-8") as handle:
            saved = {**recipe.to_dict(), "labels": contract.to_dict(), "test_protocol": protocol}
            if computed_weights is not None:
                saved["class_weights"] = {"method": class_weights, "split": train_split, "weights": computed_weights}
            if streaming:
                saved["streaming"] = {"shuffle_buffer_size": shuffle_buffer_size, "seed": args.seed}
            if lora_run is not None:
                saved["lora"] = lora_run.record()
            json.dump(saved, handle, indent=2)
        repo_id = (args.hub_model_id or Path(args.output_dir).name) if push_to_hub else None
        write_model_card(
            args.output_dir, trainer.model if not hasattr(trainer.model, "module") else trainer.model.module,
            metrics, recipe, dataset_name or (dataset if isinstance(dataset, str) else None), preset_name,
            pretrained_encoder, args, eval_settings, model_name=repo_id or args.hub_model_id, labels=contract,
            lora=lora_run.record() if lora_run is not None else None,
        )
        if push_to_hub:
            push_folder_to_hub(args.output_dir, repo_id, token=args.hub_token,
                               private=getattr(args, "hub_private_repo", None))
    trainer.accelerator.wait_for_everyone()
    return TrainResult(trainer, trainer.model, processor, recipe, metrics, args.output_dir)


def test_protocol(model, preset_name: str | None = None, mode: str | None = None, crop_size=None,
                  stride=None) -> dict:
    """The test protocol (`mode`, and `crop_size` / `stride` for slide; `aug_test`: the papers' multi-scale + flip
    settings) of a model: the one saved in its config (`config.test_protocol`, written by `train` and the presets),
    else its preset's, else whole-image; the given values override it."""
    settings = copy.deepcopy(getattr(model.config, "test_protocol", None) or {})
    if not settings and preset_name is not None:
        from ..presets import get_preset

        settings.update(get_preset(preset_name).inference)
    if mode is not None:
        settings["mode"] = mode
    if crop_size is not None:
        settings["crop_size"] = crop_size
    if stride is not None:
        settings["stride"] = stride
    settings.setdefault("mode", "whole")
    if settings["mode"] == "whole":
        settings.pop("crop_size", None)
        settings.pop("stride", None)
    return settings


def evaluation_settings(protocol: dict, scales=None, flip: bool | None = None, aug_test: bool = False) -> dict:
    """`evaluate_segmentation` keyword arguments from a test protocol: single scale, unless `aug_test` (the
    protocol's `aug_test`: the papers' "MS + flip" column) or explicit `scales` / `flip` ask for more."""
    settings = {key: value for key, value in protocol.items() if key != "aug_test"}
    if aug_test:
        if not protocol.get("aug_test"):
            raise ValueError("the model's test protocol has no multi-scale + flip settings (aug_test); pass scales "
                             "and flip instead")
        multi_scale = dict(protocol["aug_test"])
        if multi_scale.pop("short_side_at_least_crop", False):  # SETR's `setr_multi_scale`: short side >= the crop
            crop = settings.get("crop_size")
            if crop is None:
                raise ValueError("the test protocol's aug_test keeps each scale's short side at least the crop size, "
                                 "but the protocol has no crop_size")
            multi_scale["min_short_side"] = min(crop) if isinstance(crop, (list, tuple)) else int(crop)
        settings.update(multi_scale)
    if scales is not None:
        settings["scales"] = list(scales)
    if flip is not None:
        settings["flip"] = bool(flip)
    return settings


def prepare_evaluation(
    model,
    dataset,
    *,
    split: str = "validation",
    image_processor=None,
    image_column: str | None = None,
    label_column: str | None = None,
    reduce_labels: bool | None = None,
    label_ids: str | None = None,
    mode: str | None = None,
    crop_size=None,
    stride=None,
    scales=None,
    flip: bool | None = None,
    aug_test: bool = False,
    device: str | None = None,
    streaming: bool = False,
    **load_kwargs,
):
    """`(model, processor, data, settings)` for evaluating a checkpoint (folder / Hub id / preset / model) on a data
    set split: the loaded split (undecoded), the model on `device` and `evaluate_segmentation`'s keyword arguments
    (columns, reduce-labels, label ids, ignore index, class names, test protocol) decided as `evaluate_model`
    documents; `streaming=True`: the split as a stream (an `IterableDataset`). `hf-seg evaluate` and
    `hf-seg robustness` both start here."""
    from .. import presets
    from ..data import load_segmentation_dataset
    from ..data.datasets import evaluation_label_ids

    if isinstance(model, (str, os.PathLike)) and str(model) not in presets.PRESETS:
        check_model_source(str(model))  # a misspelt name fails before any data is loaded
    data, info = load_segmentation_dataset(
        dataset, split=split, image_column=image_column, label_column=label_column, decode=False,
        label_ids=label_ids, streaming=streaming, **load_kwargs
    )
    model, processor, preset_name = build_model_and_processor(model, image_processor=image_processor)
    if device is not None:
        model.to(device)
    model_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if info["id2label"] is not None and list(info["id2label"].values()) != model_names:
        data_names = list(info["id2label"].values())
        if len(data_names) != len(model_names):
            raise ValueError(
                f"the data set has {len(data_names)} classes ({info['labels_source']}) but the model "
                f"{len(model_names)}: evaluate a model trained on this data set's classes"
            )
        _say(f"the data set's class names ({info['labels_source']}) differ from the model's; the model's are used")
    saved = bool(getattr(processor, "do_reduce_labels", False))
    if reduce_labels is None:
        reduce_labels = saved
    elif bool(reduce_labels) != saved:
        _say(f"reduce_labels={bool(reduce_labels)} as asked, although the model was saved with "
             f"do_reduce_labels={saved} (its training data's setting)")
    label_ids, line = evaluation_label_ids(info, getattr(model.config, "label_ids", None), data,
                                           model.config.id2label, split)
    if line:
        _say(line)
    settings = evaluation_settings(test_protocol(model, preset_name, mode, crop_size, stride), scales, flip, aug_test)
    settings.update(
        image_column=info["image_column"], label_column=info["label_column"], reduce_labels=reduce_labels,
        ignore_index=getattr(model.config, "semantic_loss_ignore_index", None) or 255, id2label=model.config.id2label,
        label_ids=label_ids,
    )
    return model, processor, data, settings


def evaluate_model(
    model,
    dataset,
    *,
    split: str = "validation",
    image_processor=None,
    image_column: str | None = None,
    label_column: str | None = None,
    reduce_labels: bool | None = None,
    label_ids: str | None = None,
    mode: str | None = None,
    crop_size=None,
    stride=None,
    scales=None,
    flip: bool | None = None,
    aug_test: bool = False,
    batch_size: int = 4,
    max_examples: int | None = None,
    autocast_dtype=None,
    per_category: bool = True,
    device: str | None = None,
    save_confusion: str | None = None,
    streaming: bool = False,
    **load_kwargs,
) -> dict:
    """`hf-seg evaluate`: a checkpoint (folder / Hub id / model) on a data set split with the papers' protocol
    (the model's saved `config.test_protocol`; `aug_test=True` for its multi-scale + flip settings, or explicit
    `scales` / `flip`). Under `torchrun` / `accelerate launch` each process takes its share and the confusion matrices
    are summed. `label_ids` (a raw label-id table or "none"): default the model's saved `config.label_ids`, unless the
    data's file names say otherwise (`hf_seg.data.datasets.evaluation_label_ids`). `save_confusion`: also write the
    summed confusion matrix there (JSON, `hf_seg.analysis.save_confusion_matrix`; for `hf-seg analyze confusion`).
    `streaming=True`: read the split as a stream (not downloaded first); each example is scored on one process."""
    model, processor, data, settings = prepare_evaluation(
        model, dataset, split=split, image_processor=image_processor, image_column=image_column,
        label_column=label_column, reduce_labels=reduce_labels, label_ids=label_ids, mode=mode, crop_size=crop_size,
        stride=stride, scales=scales, flip=flip, aug_test=aug_test, device=device, streaming=streaming, **load_kwargs,
    )
    metrics, confusion = evaluate_segmentation(
        model, processor, data, batch_size=batch_size, autocast_dtype=autocast_dtype, per_category=per_category,
        max_examples=max_examples, return_confusion=True, **settings,
    )
    if save_confusion is not None:
        from ..analysis import save_confusion_matrix
        from .evaluation import _distributed

        if _distributed()[0] == 0:
            save_confusion_matrix(
                save_confusion, confusion.matrix, model.config.id2label, ignore_index=confusion.ignore_index,
                reduce_labels=confusion.reduce_labels, source={"split": split, "num_examples": metrics["num_examples"]},
            )
    return metrics


__all__ = [
    "AugmentationEpochCallback",
    "SegmentationTrainer",
    "TrainResult",
    "build_datasets",
    "build_model_and_processor",
    "build_training_arguments",
    "evaluate_model",
    "prepare_evaluation",
    "push_folder_to_hub",
    "train",
    "write_model_card",
]
