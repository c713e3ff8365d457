from .configuration_mpvit import MPViTConfig
from .modeling_mpvit import (
    MPViTBackbone,
    MPViTForImageClassification,
    MPViTForSemanticSegmentation,
    MPViTModel,
    MPViTPreTrainedModel,
)


__all__ = [
    "MPViTBackbone",
    "MPViTConfig",
    "MPViTForImageClassification",
    "MPViTForSemanticSegmentation",
    "MPViTModel",
    "MPViTPreTrainedModel",
]
