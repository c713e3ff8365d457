# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""The papers' training recipes as data, the optimizer parameter groups and the learning-rate schedules they use.

A `Recipe` holds what the authors' configs fix for one family and dataset: optimizer, learning rate, head lr multiplier
and weight-decay exclusions (mmsegmentation's `paramwise_cfg.custom_keys`), warmup, poly decay, iterations, batch size,
crop and the training augmentation's scale. Sources: SETR `fudan-zvg/SETR: configs/SETR/*.py`, SegFormer
`NVlabs/SegFormer: local_configs/segformer/B*/*.py`, MPViT `youngwanLEE/MPViT: semantic_segmentation/configs/mpvit/
upernet/*.py` (numbers collected in the project's `MODELS.md` §2.6, §3.4, §4.4).

Parameter groups follow mmengine's `DefaultOptimWrapperConstructor`: every custom key is matched as a substring of
the full parameter name, longer keys first and ties alphabetically, the first match wins. hf_seg's parameter names
keep the words the keys look for: the heads are `decode_head.*` / `auxiliary_heads.*` (SETR, SegFormer, UperNet), the
SETR MLA neck is `neck.*` (base lr, as in both SETR sources), norms are `*layer_norm*` / `*layernorm*` /
`*batch_norm*`. One difference to mmseg's names: the SegFormer decode head's BatchNorm is `decode_head.batch_norm`
(mmseg `decode_head.linear_fuse.bn`); `'head'` and `'norm'` tie at 4 characters and `'head'` wins alphabetically, so
it gets lr x 10 and full weight decay exactly as in the authors' code.

Schedules (`poly_schedule`): transformers' `get_polynomial_decay_schedule_with_warmup` is *not* mmseg's poly schedule
when the head has an lr multiplier and `min_lr > 0` (SETR): it scales every group by one factor computed from the
optimizer's default lr, so the head's floor becomes `lr_mult * min_lr` instead of `min_lr`; its warmup starts at 0
instead of `warmup_ratio`; and it decays over `total` steps where mmengine's PolyLR reaches `eta_min` one step earlier.
`poly_schedule` is a `LambdaLR` with one exact lambda per group in two flavours: ``"mmcv"`` (the authors' mmseg 0.x
forks: poly over all iterations from step 0, warmup multiplies it) and ``"mmengine"`` (mmsegmentation 1.x:
`LinearLR(start_factor, end=warmup)` then `PolyLR(begin=warmup, end=total)`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Recipe:
    """One training recipe. `batch_size` is the total over all devices (the papers' 8 GPUs x samples per GPU)."""

    name: str
    optimizer: str  # "sgd" or "adamw"
    learning_rate: float
    weight_decay: float
    max_steps: int
    batch_size: int
    crop_size: int | tuple[int, int]  # (height, width) when not square (the authors' B0 512x1024 Cityscapes setting)
    train_scale: tuple[int, int] = (2048, 512)  # RandomResize target (long, short) before the ratio range
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    photometric: bool = True
    momentum: float = 0.9  # SGD
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    custom_keys: dict = field(default_factory=dict)  # mmseg paramwise_cfg.custom_keys: key -> {lr_mult, decay_mult}
    poly_power: float = 1.0
    min_lr: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: float = 1e-6
    schedule_style: str = "mmcv"  # "mmcv" (authors' code) or "mmengine" (mmsegmentation 1.x)
    auxiliary_loss_weight: float | None = None  # written into the model config when the model has auxiliary heads
    reduce_labels: bool = False
    # per-head loss spec (`hf_seg.training.losses`, e.g. "ce:1.0+dice:3.0"); None: the model's own loss
    loss: str | None = None

    def replace(self, **overrides) -> Recipe:
        """A copy with some fields changed; unknown names raise a `ValueError` listing the valid ones."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown recipe field(s) {unknown}; valid fields: {sorted(valid)}")
        for key in ("train_scale", "ratio_range", "betas"):
            if key in overrides and overrides[key] is not None:
                overrides[key] = tuple(overrides[key])
        if isinstance(overrides.get("crop_size"), (list, tuple)):
            overrides["crop_size"] = tuple(int(size) for size in overrides["crop_size"])
        if overrides.get("loss") is not None:  # checked and written in one canonical form (recipe.json, card)
            from .losses import parse_head_losses

            overrides["loss"] = str(parse_head_losses(overrides["loss"]))
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- the papers' recipes ---------------------------------------------------------------------------------------------

_SETR_BASE = dict(
    optimizer="sgd", weight_decay=0.0, momentum=0.9, custom_keys={"head": {"lr_mult": 10.0}}, poly_power=0.9,
    min_lr=1e-4, warmup_steps=0, auxiliary_loss_weight=0.4,
)
# dataset -> (crop, train scale, iterations, reduce labels)
_SETR_DATASETS = {
    "ade20k-512": (512, (2048, 512), 160_000, True),
    "cityscapes-768": (768, (2049, 1025), 80_000, False),
    "pascal-context-480": (480, (520, 520), 80_000, False),
}
# (decoder, dataset) -> (lr, total batch) from the authors' configs (MODELS.md §2.1). MLA: the bs-8 configs whose
# weights the authors released; Naive Pascal Context: the README's bs 16.
_SETR_LR_BATCH = {
    ("naive", "ade20k-512"): (0.01, 16), ("pup", "ade20k-512"): (0.001, 16), ("mla", "ade20k-512"): (0.001, 8),
    ("naive", "cityscapes-768"): (0.01, 8), ("pup", "cityscapes-768"): (0.01, 8), ("mla", "cityscapes-768"): (0.002, 8),
    ("naive", "pascal-context-480"): (0.01, 16), ("pup", "pascal-context-480"): (0.001, 16),
    ("mla", "pascal-context-480"): (0.001, 8),
}
_SETR_BATCH_16 = {("mla", "ade20k-512"), ("mla", "pascal-context-480")}

_ADAMW_POLY = dict(
    optimizer="adamw", learning_rate=6e-5, weight_decay=0.01, betas=(0.9, 0.999), poly_power=1.0, min_lr=0.0,
    warmup_steps=1500, warmup_ratio=1e-6, max_steps=160_000,
)
_SEGFORMER_KEYS = {"head": {"lr_mult": 10.0}, "norm": {"decay_mult": 0.0}, "pos_block": {"decay_mult": 0.0}}


def _build_recipes() -> dict[str, Recipe]:
    recipes = {}
    for (decoder, dataset), (lr, batch) in _SETR_LR_BATCH.items():
        crop, scale, steps, reduce_labels = _SETR_DATASETS[dataset]
        name = f"setr-{decoder}-{dataset}"
        recipes[name] = Recipe(
            name=name, learning_rate=lr, batch_size=batch, max_steps=steps, crop_size=crop, train_scale=scale,
            reduce_labels=reduce_labels, **_SETR_BASE,
        )
        if dataset == "cityscapes-768":  # the authors' 40k Cityscapes configs: the 80k ones, half as long
            recipes[f"{name}-40k"] = recipes[name].replace(name=f"{name}-40k", max_steps=40_000)
        if (decoder, dataset) in _SETR_BATCH_16:  # the MLA "bs_16" configs (ViT-L, and every DeiT MLA one)
            recipes[f"{name}-bs16"] = recipes[name].replace(name=f"{name}-bs16", batch_size=16)
    # (dataset, crop, train scale, total batch, reduce labels, iterations). ADE20K and Cityscapes: the authors'
    # configs (the B0-only 768 / 512x1024 / 640x1280 Cityscapes ones: local_configs/segformer/B0/, 8 x 1 images).
    # The successors' data sets have no SegFormer config, neither the authors' nor mmsegmentation 1.x's: their
    # pipelines are mmseg 1.x's dataset configs (configs/_base_/datasets/{coco-stuff164k,coco-stuff10k,
    # pascal_voc12_aug,pascal_context,pascal_context_59}.py), batch 16 their models' 4 x 4 images, iterations the
    # SegFormer ADE20K schedule's 160k for COCO-Stuff 164k (mmseg 1.x: 80k / 160k / 320k) and mmseg 1.x's longer
    # schedule for the others (COCO-Stuff 10k 40k, VOC aug 40k, Context 80k); optimizer and warmup are SegFormer's.
    for dataset, crop, scale, batch, reduce_labels, steps in (
        ("ade20k-512", 512, (2048, 512), 16, True, 160_000),
        ("ade20k-640", 640, (2048, 640), 16, True, 160_000),
        ("cityscapes-1024", 1024, (2048, 1024), 8, False, 160_000),
        ("cityscapes-768", 768, (1536, 768), 8, False, 160_000),
        ("cityscapes-512x1024", (512, 1024), (1024, 512), 8, False, 160_000),
        ("cityscapes-640x1280", (640, 1280), (1280, 640), 8, False, 160_000),
        ("coco-stuff164k-512", 512, (2048, 512), 16, False, 160_000),
        ("coco-stuff10k-512", 512, (2048, 512), 16, True, 40_000),
        ("voc12aug-512", 512, (2048, 512), 16, False, 40_000),
        ("pascal-context-480", 480, (520, 520), 16, False, 80_000),
        ("pascal-context-59-480", 480, (520, 520), 16, True, 80_000),
    ):
        name = f"segformer-{dataset}"
        recipes[name] = Recipe(
            name=name, batch_size=batch, crop_size=crop, train_scale=scale, custom_keys=_SEGFORMER_KEYS,
            reduce_labels=reduce_labels, **dict(_ADAMW_POLY, max_steps=steps),
        )
    recipes["upernet-mpvit-ade20k-512"] = Recipe(
        name="upernet-mpvit-ade20k-512", batch_size=16, crop_size=512, train_scale=(2048, 512),
        auxiliary_loss_weight=0.4, reduce_labels=True, **_ADAMW_POLY,
    )
    return recipes


RECIPES: dict[str, Recipe] = _build_recipes()


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str, **overrides) -> Recipe:
    """A recipe by name (`list_recipes()`), with fields overridden (`get_recipe("segformer-ade20k-512", max_steps=1000)`)."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; valid names: {list_recipes()}")
    recipe = RECIPES[name]
    return recipe.replace(**overrides) if overrides else recipe


def recipe_name_for_preset(preset_name: str) -> str:
    """The recipe of a model preset: the one it names (`Preset.recipe`), else the one of its family and data set:
    `setr-pup-vit-large-ade20k-512` -> `setr-pup-ade20k-512`, `segformer-b2-ade20k-512` -> `segformer-ade20k-512`,
    `upernet-mpvit-small-ade20k-512` -> `upernet-mpvit-ade20k-512`."""
    from ..presets import PRESETS

    if preset_name in PRESETS and PRESETS[preset_name].recipe is not None:
        return PRESETS[preset_name].recipe
    name = re.sub(r"^(setr-(?:naive|pup|mla))-(?:vit-large|vit-base|deit-base|r50-vit-base)-", r"\1-", preset_name)
    name = re.sub(r"^segformer-b\d-", "segformer-", name)
    name = re.sub(r"^upernet-mpvit-(?:tiny|xsmall|small|base)-", "upernet-mpvit-", name)
    if name not in RECIPES:
        raise KeyError(f"no training recipe for the preset {preset_name!r}; pass recipe=... (one of {list_recipes()})")
    return name


# --- optimizer parameter groups ----------------------------------------------------------------------------------------


def parameter_settings(model: torch.nn.Module, learning_rate: float, weight_decay: float, custom_keys: dict):
    """`{name: (lr, weight_decay)}` for every trainable parameter, by mmengine's custom-key rule."""
    sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
    settings = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lr, decay = learning_rate, weight_decay
        for key in sorted_keys:
            if key in name:
                lr = learning_rate * custom_keys[key].get("lr_mult", 1.0)
                decay = weight_decay * custom_keys[key].get("decay_mult", 1.0)
                break
        settings[name] = (lr, decay)
    return settings


def build_parameter_groups(model: torch.nn.Module, learning_rate: float, weight_decay: float, custom_keys: dict):
    """Optimizer parameter groups: parameters with equal (lr, weight decay) share a group, in first-seen order.
    Each group also records `lr_mult` / `decay_mult` and its parameter names (`param_names`) for inspection."""
    settings = parameter_settings(model, learning_rate, weight_decay, custom_keys)
    parameters = dict(model.named_parameters())
    groups: dict[tuple[float, float], dict] = {}
    for name, (lr, decay) in settings.items():
        group = groups.get((lr, decay))
        if group is None:
            group = groups[(lr, decay)] = {
                "params": [], "param_names": [], "lr": lr, "weight_decay": decay,
                "lr_mult": lr / learning_rate if learning_rate else 1.0,
                "decay_mult": decay / weight_decay if weight_decay else 1.0,
            }
        group["params"].append(parameters[name])
        group["param_names"].append(name)
    return list(groups.values())


def create_optimizer(model: torch.nn.Module, recipe: Recipe, learning_rate=None, weight_decay=None, adam_epsilon=1e-8):
    """The recipe's optimizer over `build_parameter_groups` (learning rate / weight decay overridable)."""
    lr = recipe.learning_rate if learning_rate is None else learning_rate
    decay = recipe.weight_decay if weight_decay is None else weight_decay
    groups = build_parameter_groups(model, lr, decay, recipe.custom_keys)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, weight_decay=decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(recipe.betas), eps=adam_epsilon, weight_decay=decay)
    raise ValueError(f"recipe {recipe.name!r}: optimizer must be 'sgd' or 'adamw', got {recipe.optimizer!r}")


# --- learning-rate schedules ---------------------------------------------------------------------------------------------


def poly_learning_rate(
    step: int,
    base_lr: float,
    total_steps: int,
    power: float,
    min_lr: float = 0.0,
    warmup_steps: int = 0,
    warmup_ratio: float = 1e-6,
    style: str = "mmcv",
) -> float:
    """The learning rate of one parameter group (initial lr `base_lr`) during optimizer step `step` (0-based).

    ``"mmcv"`` (mmcv 1.x `PolyLrUpdaterHook` with `warmup='linear'`): ``(base - min) * (1 - step/total)**power + min``;
    while ``step < warmup_steps`` times ``1 - (1 - step/warmup) * (1 - warmup_ratio)``.
    ``"mmengine"`` (`LinearLR(start_factor=warmup_ratio, end=warmup)` + `PolyLR(eta_min=min, begin=warmup,
    end=total)`): the warmup factor ``ratio + (1 - ratio) * step / (warmup - 1)``, then
    ``(base - min) * (1 - (step - warmup) / (total - warmup - 1))**power + min``, constant after the end.
    """
    if style == "mmcv":
        progress = min(step, total_steps) / total_steps
        lr = (base_lr - min_lr) * (1.0 - progress) ** power + min_lr
        if warmup_steps and step < warmup_steps:
            lr *= 1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio)
        return lr
    if style == "mmengine":
        if warmup_steps and step < warmup_steps:
            span = warmup_steps - 1
            return base_lr * (warmup_ratio + (1.0 - warmup_ratio) * (step / span if span > 0 else 1.0))
        span = total_steps - warmup_steps - 1
        progress = min(step - warmup_steps, span) / span if span > 0 else 1.0
        return (base_lr - min_lr) * (1.0 - progress) ** power + min_lr
    raise ValueError(f"schedule style must be 'mmcv' or 'mmengine', got {style!r}")


class _PolyFactor:
    """Picklable per-group multiplier for `LambdaLR` (its state dict then carries the settings)."""

    def __init__(self, base_lr, total_steps, power, min_lr, warmup_steps, warmup_ratio, style):
        self.base_lr, self.total_steps, self.power, self.min_lr = base_lr, total_steps, power, min_lr
        self.warmup_steps, self.warmup_ratio, self.style = warmup_steps, warmup_ratio, style

    def __call__(self, step: int) -> float:
        if self.base_lr == 0:
            return 0.0
        lr = poly_learning_rate(
            step, self.base_lr, self.total_steps, self.power, self.min_lr, self.warmup_steps, self.warmup_ratio,
            self.style,
        )
        return lr / self.base_lr


def poly_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    power: float,
    min_lr: float = 0.0,
    warmup_steps: int = 0,
    warmup_ratio: float = 1e-6,
    style: str = "mmcv",
) -> torch.optim.lr_scheduler.LambdaLR:
    """mmseg's poly schedule (with linear warmup) as a `LambdaLR`: one lambda per group, so `min_lr` is an absolute
    floor for every group whatever its lr multiplier (see the module docstring)."""
    if total_steps <= 0:
        raise ValueError(f"the poly schedule needs a positive number of steps, got {total_steps}")
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be smaller than the number of steps ({total_steps})")
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        if group["initial_lr"] < min_lr:
            raise ValueError(f"min_lr {min_lr} is larger than a group's learning rate {group['initial_lr']}")
    factors = [
        _PolyFactor(group["initial_lr"], total_steps, power, min_lr, warmup_steps, warmup_ratio, style)
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def poly_schedule_from_recipe(optimizer, recipe: Recipe, total_steps: int | None = None, warmup_steps=None):
    return poly_schedule(
        optimizer,
        total_steps=recipe.max_steps if total_steps is None else total_steps,
        power=recipe.poly_power,
        min_lr=recipe.min_lr,
        warmup_steps=recipe.warmup_steps if warmup_steps is None else warmup_steps,
        warmup_ratio=recipe.warmup_ratio,
        style=recipe.schedule_style,
    )


def per_device_batch_size(total_batch_size: int, world_size: int, gradient_accumulation_steps: int) -> int:
    """Samples per device and step so that devices x accumulation x per-device = the recipe's total batch."""
    share = world_size * gradient_accumulation_steps
    if total_batch_size % share:
        raise ValueError(
            f"the recipe's total batch size {total_batch_size} is not divisible by {world_size} process(es) x "
            f"{gradient_accumulation_steps} accumulation step(s); set per_device_train_batch_size yourself"
        )
    return total_batch_size // share


__all__ = [
    "RECIPES",
    "Recipe",
    "build_parameter_groups",
    "create_optimizer",
    "get_recipe",
    "list_recipes",
    "parameter_settings",
    "per_device_batch_size",
    "poly_learning_rate",
    "poly_schedule",
    "poly_schedule_from_recipe",
    "recipe_name_for_preset",
]
