# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""LoRA fine-tuning (peft) of the three families: where the adapters go, which heads train in full, merge-and-save.

`train(..., lora_rank=R)` / `hf-seg train --lora-rank R` wrap the model with `peft.get_peft_model` right before the
Trainer is built, train the adapters and the heads, and merge them into the weights at the end (`merge_and_unload`):
the saved folder is a plain model that loads with `AutoModelForSemanticSegmentation.from_pretrained` without peft.

What is adapted (one `LoraSpec` per family, looked up by `config.model_type`, in `LORA_SPECS`):
- every attention and MLP `nn.Linear` of the encoder's transformer blocks (SETR's ViT layers: q, k, v, out, fc1,
  fc2; SegFormer's MiT blocks: q, k, v, out and the Mix-FFN's fc1, fc2; MPViT's factorized-attention layers: the
  fused qkv, proj, fc1, fc2), matched by one anchored regular expression, so that no convolution is ever targeted
  (MPViT's `pos_encoding.proj` and SegFormer's `dwconv` are depthwise: peft refuses them or cannot merge them);
- the decode head, and the auxiliary heads, neck and new layers where the model has them, train in full
  (`modules_to_save`). SETR's auxiliary heads are an `nn.ModuleList`, which peft refuses as a whole: each entry is
  named (`auxiliary_heads.0`, `auxiliary_heads.1`, ...).
The frozen encoder's BatchNorm layers (MPViT's convolutional stem, patch embeddings and local branches; the SETR
Hybrid's ResNet) keep their statistics (they run in eval mode, as mmseg's `norm_eval`), so that the adapters and the
heads are the whole trained state: a Trainer checkpoint (peft's `adapter_model.safetensors` + `adapter_config.json`,
the optimizer, the schedule, `hf_seg_lora.json`) and the base model give back the model exactly.

Resuming rebuilds the base model (the same `--model`, `--pretrained_encoder`, `--config_overrides` and seed) and
loads the checkpoint's adapters into it; `hf_seg_lora.json` records the LoRA settings and a SHA-256 of the frozen base
weights, and a resume with other settings or on another base is refused naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback


PEFT_INSTALL_HINT = 'pip install "hf_seg[peft]"'
#: written into every checkpoint of a LoRA run, beside peft's adapter files
CHECKPOINT_FILE = "hf_seg_lora.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json")


@dataclass(frozen=True)
class LoraSpec:
    """Where LoRA goes in one family.

    Args:
        family: the family's name, as the model card says it.
        blocks: a regular expression of the encoder's transformer blocks' module paths.
        linears: the `nn.Linear` layers of a block that get adapters (paths relative to the block).
        heads: modules trained in full; each must exist.
        optional_heads: modules trained in full where the model has them (absent or None: skipped).
        head_lists: `nn.ModuleList`s whose every entry is trained in full (named one by one: peft refuses a list).
        new_modules: `(module, config field)`: a module trained in full when the config field is set, because it is
            new there rather than pretrained (the SETR Hybrid's 1x1 projection of the ResNet map).
    """

    family: str
    blocks: str
    linears: tuple[str, ...]
    heads: tuple[str, ...] = ("decode_head",)
    optional_heads: tuple[str, ...] = ()
    head_lists: tuple[str, ...] = ()
    new_modules: tuple[tuple[str, str], ...] = field(default=())

    @property
    def target_modules(self) -> str:
        """peft's `target_modules` as one regular expression (peft full-matches it against each module path)."""
        return rf"{self.blocks}\.(?:{'|'.join(re.escape(name) for name in self.linears)})"

    def modules_to_save(self, model) -> list[str]:
        """The module paths of `model` trained in full."""
        names = []
        for name in self.heads:
            if _submodule(model, name) is None:
                raise ValueError(f"{type(model).__name__} has no {name}: the {self.family} LoRA recipe trains it")
            names.append(name)
        names += [name for name in self.optional_heads if _submodule(model, name) is not None]
        for name in self.head_lists:
            entries = _submodule(model, name)
            names += [f"{name}.{index}" for index in range(len(entries or ()))]
        for name, config_field in self.new_modules:
            if getattr(model.config, config_field, None) is not None and _submodule(model, name) is not None:
                names.append(name)
        return names


def _submodule(model, name: str):
    module = model
    for part in name.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


_ATTENTION = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj")
SETR_LORA = LoraSpec(
    family="setr", blocks=r"setr\.layers\.\d+", linears=(*_ATTENTION, "mlp.fc1", "mlp.fc2"),
    optional_heads=("neck",), head_lists=("auxiliary_heads",),
    new_modules=(("setr.embeddings.projection", "backbone_config"),),
)
SEGFORMER_LORA = LoraSpec(
    family="segformer", blocks=r"segformer\.stages\.\d+\.blocks\.\d+", linears=(*_ATTENTION, "mlp.fc1", "mlp.fc2"),
)
MPVIT_LORA = LoraSpec(
    family="mpvit", blocks=r"backbone\.encoder\.stages\.\d+\.paths\.\d+\.layers\.\d+",
    linears=("attention.qkv", "attention.proj", "mlp.fc1", "mlp.fc2"), optional_heads=("auxiliary_head",),
)
#: `config.model_type` -> its family's LoRA spec (transformers' SegFormer and hf_seg's mmseg-head SegFormer share one)
LORA_SPECS: dict[str, LoraSpec] = {
    "setr": SETR_LORA, "segformer": SEGFORMER_LORA, "segformer-mmseg": SEGFORMER_LORA, "mpvit": MPVIT_LORA,
}


def lora_spec(model) -> LoraSpec:
    """The LoRA spec of `model` (by `config.model_type`)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in LORA_SPECS:
        raise ValueError(f"--lora-rank (lora_rank=): no LoRA recipe for a {type(model).__name__} (model type "
                         f"{model_type!r}); hf_seg has one for the model types {', '.join(sorted(LORA_SPECS))}")
    return LORA_SPECS[model_type]


@dataclass(frozen=True)
class LoraSettings:
    """`rank` (peft's `r`), `alpha` (default 2 x rank: the adapters' update is scaled by alpha / rank = 2) and
    `dropout` on the adapters' input (default 0, peft's)."""

    rank: int
    alpha: float | None = None
    dropout: float = 0.0

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"--lora-rank (lora_rank=) must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"--lora-alpha (lora_alpha=) must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--lora-dropout (lora_dropout=) must be in [0, 1), got {self.dropout!r}")

    @property
    def lora_alpha(self) -> float:
        return float(2 * self.rank if self.alpha is None else self.alpha)

    def to_dict(self) -> dict:
        return dict(rank=self.rank, alpha=self.lora_alpha, dropout=self.dropout)


def require_peft():
    """The `peft` module, or an ImportError saying how to install it."""
    try:
        import peft
    except ImportError as error:
        raise ImportError(f"LoRA fine-tuning (--lora-rank) needs peft, which is not installed: {PEFT_INSTALL_HINT}"
                          ) from error
    return peft


def lora_settings(rank: int | None, alpha: float | None = None, dropout: float | None = None) -> LoraSettings | None:
    """`LoraSettings` from `train()`'s / the command line's values (None: no LoRA), checked before anything loads:
    alpha or dropout without a rank, a rank <= 0, an alpha <= 0, a dropout outside [0, 1) and a missing peft are
    errors naming the flag."""
    if rank is None:
        given = [flag for flag, value in (("--lora-alpha", alpha), ("--lora-dropout", dropout)) if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} set without --lora-rank (lora_rank=): pass --lora-rank R for a "
                             "LoRA fine-tune")
        return None
    settings = LoraSettings(rank, alpha, 0.0 if dropout is None else float(dropout))
    require_peft()
    return settings


def _keep_statistics(module, args):
    module.training = False  # a frozen BatchNorm normalises with its running statistics and does not update them


def base_fingerprint(peft_model) -> str:
    """SHA-256 of the frozen base weights and buffers of a peft model (names and bytes; adapters and the heads
    trained in full left out): the checkpoint records it and a resume compares."""
    digest = hashlib.sha256()
    for name, tensor in peft_model.state_dict().items():
        if "lora_" in name or ".modules_to_save." in name or ".original_module." in name:
            continue
        data = tensor.detach().to("cpu").contiguous()
        digest.update(name.replace(".base_layer.", ".").encode())
        digest.update(str(data.dtype).encode() + str(tuple(data.shape)).encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


class LoraRun:
    """A model wrapped for LoRA training (`apply_lora`): `model` is the `peft.PeftModel` to train; `merge()` returns
    the plain model with the adapters merged into its weights."""

    def __init__(self, model, settings: LoraSettings, spec: LoraSpec, modules_to_save: list[str], targeted: list[str],
                 hooks: list):
        self.model = model
        self.settings = settings
        self.spec = spec
        self.modules_to_save = modules_to_save
        self.targeted = targeted
        self._hooks = hooks
        self.frozen_batch_norms = len(hooks)
        self.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.base_sha256 = base_fingerprint(model)
        self.merged = False

    def record(self) -> dict:
        """The run's LoRA facts, as recipe.json and the checkpoints' `hf_seg_lora.json` hold them."""
        return dict(**self.settings.to_dict(), target_modules=self.spec.target_modules,
                    modules_to_save=list(self.modules_to_save), adapted_layers=len(self.targeted),
                    trainable_parameters=self.trainable_parameters, frozen_batch_norms=self.frozen_batch_norms,
                    base_sha256=self.base_sha256,
                    peft_version=require_peft().__version__, merged=self.merged)

    def describe(self) -> str:
        norms = (f"; {self.frozen_batch_norms} frozen BatchNorm layers keep their statistics"
                 if self.frozen_batch_norms else "")
        return (f"LoRA rank {self.settings.rank} (alpha {self.settings.lora_alpha:g}, dropout "
                f"{self.settings.dropout:g}) on {len(self.targeted)} {self.spec.family} encoder linears; trained in "
                f"full: {', '.join(self.modules_to_save)}; {self.trainable_parameters:,} trainable parameters{norms}")

    def callback(self) -> TrainerCallback:
        """Writes `hf_seg_lora.json` (the settings and the base's fingerprint) into every checkpoint."""
        return _LoraCheckpointCallback(self)

    def merge(self):
        """Merge the adapters into the weights (`merge_and_unload`) and return the plain model (the heads trained in
        full take their trained weights); the frozen BatchNorms train normally again from here on."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        merged = self.model.merge_and_unload()
        from peft.tuners.tuners_utils import BaseTunerLayer

        left = [name for name, module in merged.named_modules() if isinstance(module, BaseTunerLayer)]
        if left:
            raise RuntimeError(f"merge_and_unload left peft layers in the model: {left[:3]}")
        self.model = merged
        self.merged = True
        return merged


class _LoraCheckpointCallback(TrainerCallback):
    def __init__(self, run: LoraRun):
        self.run = run

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                record = {key: value for key, value in self.run.record().items() if key != "merged"}
                (folder / CHECKPOINT_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")


def apply_lora(model, rank: int = 8, alpha: float | None = None, dropout: float = 0.0) -> LoraRun:
    """Wrap `model` (SETR, SegFormer, mmseg-head SegFormer or MPViT for semantic segmentation) for LoRA training with
    its family's spec (`LORA_SPECS`): adapters of `rank` on the encoder's attention and MLP linears, the heads
    trained in full, everything else frozen (BatchNorm statistics included). `LoraRun.model` is the `PeftModel`."""
    settings = rank if isinstance(rank, LoraSettings) else LoraSettings(rank, alpha, dropout)
    peft = require_peft()
    spec = lora_spec(model)
    modules_to_save = spec.modules_to_save(model)  # a model without the family's decode head fails here
    pattern = re.compile(spec.target_modules)
    targeted = [name for name, _ in model.named_modules() if pattern.fullmatch(name)]
    if not targeted:
        raise ValueError(f"{type(model).__name__}: no module matches the {spec.family} LoRA targets "
                         f"{spec.target_modules!r}")
    not_linear = [name for name in targeted if type(model.get_submodule(name)) is not torch.nn.Linear]
    if not_linear:
        raise ValueError(f"the {spec.family} LoRA targets must be nn.Linear layers; not: {', '.join(not_linear[:4])}")
    config = peft.LoraConfig(
        r=settings.rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.dropout, bias="none",
        target_modules=spec.target_modules, modules_to_save=modules_to_save,
    )
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        wrapped = peft.get_peft_model(model, config)
    hooks = [
        module.register_forward_pre_hook(_keep_statistics)
        for name, module in wrapped.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        and ".modules_to_save." not in f".{name}." and ".original_module." not in f".{name}."
    ]
    return LoraRun(wrapped, settings, spec, modules_to_save, targeted, hooks)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"resume_from_checkpoint: {path} is unreadable ({error})") from error


def check_lora_checkpoint(folder: str, run: LoraRun | None) -> None:
    """Before resuming: a LoRA checkpoint needs a LoRA run with the same settings on the same base model, a full
    checkpoint a run without LoRA; anything else is a ValueError naming what differs."""
    path = Path(folder)
    record_file = path / CHECKPOINT_FILE
    has_adapter = any((path / name).is_file() for name in ADAPTER_FILES)
    if run is None:
        if has_adapter or record_file.is_file():
            rank = _read_json(record_file).get("rank") if record_file.is_file() else "R"
            raise ValueError(f"resume_from_checkpoint: {folder} holds LoRA adapters (rank {rank}), not the whole "
                             f"model: resume it with --lora-rank {rank} (lora_rank=) and the run's other LoRA flags")
        return
    if not has_adapter:
        raise ValueError(f"resume_from_checkpoint: {folder} holds no LoRA adapters (adapter_model.safetensors): it is "
                         "a full fine-tune's checkpoint; resume it without --lora-rank")
    if not record_file.is_file():
        raise ValueError(f"resume_from_checkpoint: {folder} has no {CHECKPOINT_FILE}: not a checkpoint of hf_seg's "
                         "LoRA training, whose settings and base model it would record")
    saved = _read_json(record_file)
    current = run.record()
    flags = dict(rank="--lora-rank", alpha="--lora-alpha", dropout="--lora-dropout",
                 target_modules="the LoRA targets", modules_to_save="the heads trained in full")
    differ = [f"{flags[key]}: checkpoint {saved.get(key)!r}, now {current[key]!r}" for key in flags
              if saved.get(key) != current[key]]
    if differ:
        raise ValueError(f"resume_from_checkpoint: {folder} was trained with other LoRA settings ({'; '.join(differ)})")
    if saved.get("base_sha256") != current["base_sha256"]:
        raise ValueError(
            f"resume_from_checkpoint: {folder} holds adapters trained on another base model (weights SHA-256 "
            f"{str(saved.get('base_sha256'))[:12]}..., now {current['base_sha256'][:12]}...): resume with the run's "
            "--model, --pretrained_encoder, --config_overrides and --seed"
        )


__all__ = [
    "LORA_SPECS",
    "LoraRun",
    "LoraSettings",
    "LoraSpec",
    "apply_lora",
    "check_lora_checkpoint",
    "lora_settings",
    "lora_spec",
]
