"""hf_seg: SETR, SegFormer and MPViT semantic segmentation as first-class transformers models.

Importing the package registers its configurations, models and image processors with transformers' Auto classes,
and marks them for `register_for_auto_class`, so that `save_pretrained` / `push_to_hub` ship the model code and a
saved folder loads with `trust_remote_code=True` where hf_seg is not installed.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation

from .inference import segment
from .models.setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor, SetrModel, SetrPreTrainedModel
from .presets import create_config, create_image_processor, create_model, get_preset, list_models


__version__ = "0.1.0"

AutoConfig.register(SetrConfig.model_type, SetrConfig)
AutoModel.register(SetrConfig, SetrModel)
AutoModelForSemanticSegmentation.register(SetrConfig, SetrForSemanticSegmentation)
AutoImageProcessor.register(SetrConfig, image_processor_classes={"pil": SetrImageProcessor})

SetrConfig.register_for_auto_class()
SetrModel.register_for_auto_class("AutoModel")
SetrForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
SetrImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "SetrConfig",
    "SetrForSemanticSegmentation",
    "SetrImageProcessor",
    "SetrModel",
    "SetrPreTrainedModel",
    "create_config",
    "create_image_processor",
    "create_model",
    "get_preset",
    "list_models",
    "segment",
]
