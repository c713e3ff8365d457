"""Checkpoint conversion: pure functions that map source state dicts (authors' code bases, mmsegmentation 1.x) onto
hf_seg's models. File reading and writing live in the `conversion/` scripts; nothing here does I/O."""

from .setr import (
    MMSEG_SETR_DEFAULTS,
    convert_mmseg_setr_state_dict,
    detect_mmseg_setr_decoder,
    setr_config_overrides_for_mmseg,
    setr_target_shapes,
)


__all__ = [
    "MMSEG_SETR_DEFAULTS",
    "convert_mmseg_setr_state_dict",
    "detect_mmseg_setr_decoder",
    "setr_config_overrides_for_mmseg",
    "setr_target_shapes",
]
