"""Checkpoint conversion. The key mappings are pure functions (`setr.py`, `segformer.py`, `mpvit.py`, on the
shared strict machinery of `common.py`); `io.py` reads checkpoint files and `cli.py` is the command line of
`conversion/convert_<family>.py` (`main(family, argv)`), which writes the Hub-ready folder."""

from .common import ConversionError, ConvertedCheckpoint
from .mpvit import check_shared_aliases, convert_mpvit_checkpoint, detect_mpvit_layout
from .segformer import convert_segformer_checkpoint, detect_segformer_layout
from .setr import (
    MMSEG_SETR_DEFAULTS,
    convert_mmseg_setr_state_dict,
    convert_original_setr_state_dict,
    convert_setr_checkpoint,
    detect_mmseg_setr_decoder,
    detect_original_setr_decoder,
    detect_setr_layout,
    setr_config_overrides_for_mmseg,
    setr_config_overrides_for_original,
    setr_target_shapes,
)


__all__ = [
    "ConversionError",
    "ConvertedCheckpoint",
    "MMSEG_SETR_DEFAULTS",
    "check_shared_aliases",
    "convert_mmseg_setr_state_dict",
    "convert_mpvit_checkpoint",
    "convert_original_setr_state_dict",
    "convert_segformer_checkpoint",
    "convert_setr_checkpoint",
    "detect_mmseg_setr_decoder",
    "detect_mpvit_layout",
    "detect_original_setr_decoder",
    "detect_segformer_layout",
    "detect_setr_layout",
    "setr_config_overrides_for_mmseg",
    "setr_config_overrides_for_original",
    "setr_target_shapes",
]
