# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""I/O-free machinery shared by the converters: strict application of key-rename rules, layout detection.

A converter is a list of `Rule`s (source-key regex -> target key, or a transform) plus the target model's key ->
shape table. `apply_rules` consumes every source key or fails: keys that no rule maps, target keys nobody fills,
target keys filled twice and shape mismatches are all reported at once, by name, in one `ConversionError`. Source
keys that have no place at inference are dropped only through an explicit `drop` table (pattern -> reason), and the
dropped keys are returned grouped by reason so that the caller can list them.
"""

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch


Converted = list[tuple[str, torch.Tensor]]


class ConversionError(ValueError):
    """A checkpoint that does not map onto the target model (unconsumed / missing keys, shapes, wrong layout)."""


@dataclass(frozen=True)
class Rule:
    """A source-key pattern (full match, named groups) and either a target template filled from the groups or a
    transform `(groups, tensor) -> [(target key, tensor), ...]`. A transform returning `[]` leaves the key
    unconsumed (it is then reported). An optional group that takes no part in the match reads "0" (e.g. mmseg's
    single `auxiliary_head.*` is auxiliary head 0)."""

    pattern: str
    target: str | Callable[[dict, torch.Tensor], Converted]

    def apply(self, key: str, tensor: torch.Tensor) -> Converted | None:
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return None
        groups = match.groupdict(default="0")
        if callable(self.target):
            return self.target(groups, tensor)
        return [(self.target.format(**groups), tensor)]


def listing(keys: Iterable[str], limit: int = 20) -> str:
    """Sorted, comma-separated key names, cut after `limit` with a count of the rest."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def model_shapes(model_class, config) -> dict[str, torch.Size]:
    """Key -> shape of `model_class(config).state_dict()`, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = model_class(config)
    return {key: tensor.shape for key, tensor in model.state_dict().items()}


def apply_rules(
    state_dict: Mapping[str, torch.Tensor],
    rules: Sequence[Rule],
    expected_shapes: Mapping[str, Sequence[int]],
    *,
    what: str,
    drop: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Map `state_dict` with the first matching rule per key; return `(converted, dropped)`.

    `converted` holds exactly the keys of `expected_shapes`, in that order. `drop` maps source-key patterns (full
    match) to the reason they are discarded; `dropped` is `{reason: [source keys]}`. Raises `ConversionError`
    (message prefixed with `what`) naming every unconsumed source key, converted key the target lacks, target key
    filled twice, target key left empty and shape mismatch.
    """
    drop = drop or {}
    converted: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    dropped: dict[str, list[str]] = {}
    unconsumed, duplicated = [], []
    for key, tensor in state_dict.items():
        reason = next((why for pattern, why in drop.items() if re.fullmatch(pattern, key)), None)
        if reason is not None:
            dropped.setdefault(reason, []).append(key)
            continue
        outputs = next((out for rule in rules if (out := rule.apply(key, tensor)) is not None), None)
        if not outputs:
            unconsumed.append(key)
            continue
        for target_key, target_tensor in outputs:
            if target_key in converted:
                duplicated.append(f"{target_key} (from {sources[target_key]} and {key})")
            converted[target_key], sources[target_key] = target_tensor, key

    missing = [key for key in expected_shapes if key not in converted]
    unexpected = [f"{key} (from {sources[key]})" for key in converted if key not in expected_shapes]
    mismatched = [
        f"{key} (from {sources[key]}): {tuple(converted[key].shape)} vs {tuple(expected_shapes[key])}"
        for key in converted
        if key in expected_shapes and tuple(converted[key].shape) != tuple(expected_shapes[key])
    ]
    problems = [
        (unconsumed, "unconsumed source keys"),
        (unexpected, "converted keys the target model does not have"),
        (duplicated, "target keys filled twice"),
        (missing, "missing target keys (the source does not provide them)"),
        (mismatched, "shape mismatches (source vs target)"),
    ]
    message = "; ".join(f"{len(keys)} {description}: {listing(keys)}" for keys, description in problems if keys)
    if message:
        raise ConversionError(f"{what}: {message}")
    return {key: converted[key] for key in expected_shapes}, dropped


def keys_matching(state_dict: Mapping[str, torch.Tensor], pattern: str) -> list[str]:
    return [key for key in state_dict if re.fullmatch(pattern, key)]


def detect_layout(state_dict: Mapping[str, torch.Tensor], signatures: Mapping[str, str], what: str) -> str:
    """The one layout whose signature pattern (full match) some key matches; `ConversionError` if none or several
    do. `signatures` maps layout name -> key pattern characteristic of that layout."""
    found = [layout for layout, pattern in signatures.items() if keys_matching(state_dict, pattern)]
    if len(found) == 1:
        return found[0]
    sample = listing(list(state_dict)[:8], limit=8)
    if not found:
        raise ConversionError(f"not a {what} checkpoint in any known layout ({', '.join(signatures)}); "
                              f"its keys begin {sample}")
    raise ConversionError(f"{what} checkpoint matches several layouts ({', '.join(found)}); pass --source")


def indexed(state_dict: Mapping[str, torch.Tensor], pattern: str) -> dict[int, torch.Tensor]:
    """{index: tensor} for the keys matching `pattern` (full match), whose first group is an integer index."""
    found = {}
    for key, tensor in state_dict.items():
        match = re.fullmatch(pattern, key)
        if match:
            found[int(match.group(1))] = tensor
    return dict(sorted(found.items()))


def require(state_dict: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(f"not a {what} state dict: key {key!r} is missing")
    return state_dict[key]


@dataclass
class ConvertedCheckpoint:
    """What a family converter returns: the target configuration and model class, the target state dict, the
    detected source layout and the source keys dropped on purpose (`{reason: [keys]}`)."""

    config: object
    model_class: type
    state_dict: dict[str, torch.Tensor]
    source: str
    dropped: dict[str, list[str]]

    def build_model(self):
        """The target model in eval mode holding the converted tensors (built on the meta device: no random init of
        big models)."""
        with torch.device("meta"):
            model = self.model_class(self.config)
        model.load_state_dict(self.state_dict, strict=True, assign=True)
        left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
        if left:
            raise ConversionError(f"tensors not filled by the checkpoint: {', '.join(left[:10])}")
        return model.eval()


def check_fits_preset(read: Mapping, preset_config: Mapping, preset_name: str) -> None:
    """Refuse a checkpoint whose architecture (fields read from its shapes) differs from the preset's."""
    differences = [
        f"{name} {read[name]!r} (checkpoint) vs {preset_config[name]!r} (preset)"
        for name in read
        if name in preset_config and _normalised(read[name]) != _normalised(preset_config[name])
    ]
    if differences:
        raise ConversionError(f"the checkpoint is not a {preset_name!r} checkpoint: {'; '.join(differences)}")


def _normalised(value):
    return list(value) if isinstance(value, (list, tuple)) else value
