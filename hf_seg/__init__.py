"""hf_seg: SETR, SegFormer and MPViT semantic segmentation as first-class transformers models.

Importing the package registers its configurations, models and image processors with transformers' Auto classes,
and marks them for `register_for_auto_class`, so that `save_pretrained` / `push_to_hub` ship the model code and a
saved folder loads with `trust_remote_code=True` where hf_seg is not installed.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    SegformerConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING, AutoVideoProcessor

from .inference import segment
from .optimize import optimize_for_inference
from .models.segformer import SegformerMmsegConfig, SegformerMmsegForSemanticSegmentation
from .models.mpvit import (
    MPViTBackbone,
    MPViTConfig,
    MPViTForImageClassification,
    MPViTForSemanticSegmentation,
    MPViTModel,
    MPViTPreTrainedModel,
)
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

# SegFormer as mmsegmentation 1.x builds it (its own head on transformers' MiT encoder); its processor is SETR's,
# which expresses the papers' keep-ratio test resize.
AutoConfig.register(SegformerMmsegConfig.model_type, SegformerMmsegConfig)
AutoModelForSemanticSegmentation.register(SegformerMmsegConfig, SegformerMmsegForSemanticSegmentation)
AutoImageProcessor.register(SegformerMmsegConfig, image_processor_classes={"pil": SetrImageProcessor})
SegformerMmsegConfig.register_for_auto_class()
SegformerMmsegForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

# MPViT: one configuration for the backbone, the ImageNet classifier and MPViT + UperNet. The UperNet presets use
# SETR's processor (the same keep-ratio test resize); the ImageNet presets transformers' ConvNext processor.
AutoConfig.register(MPViTConfig.model_type, MPViTConfig)
AutoModel.register(MPViTConfig, MPViTModel)
AutoBackbone.register(MPViTConfig, MPViTBackbone)
AutoModelForImageClassification.register(MPViTConfig, MPViTForImageClassification)
AutoModelForSemanticSegmentation.register(MPViTConfig, MPViTForSemanticSegmentation)
AutoImageProcessor.register(MPViTConfig, image_processor_classes={"pil": SetrImageProcessor})
MPViTConfig.register_for_auto_class()
MPViTModel.register_for_auto_class("AutoModel")
MPViTBackbone.register_for_auto_class("AutoBackbone")
MPViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
MPViTForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

# `pipeline("image-segmentation", model=folder)` makes two look-ups that the registrations above do not reach:
# - it also tries `AutoVideoProcessor` on the folder (`_resolve_video_processor` in transformers/pipelines/__init__.py),
#   which derives a remote "image_processing_setr.SetrVideoProcessor" from the `AutoImageProcessor` entry of the
#   processor's `auto_map` and, when the model's configuration has no video processor registered, asks "Do you wish
#   to run the custom code?" (`AutoVideoProcessor.from_pretrained`). Registering an empty set of video processors
#   says that the configuration is handled in-process and has none: the look-up then fails without a prompt and the
#   pipeline drops it. SegFormer presets pair transformers' `SegformerConfig` (which has no video processor either)
#   with `SetrImageProcessor`; a built-in configuration is only registered with `exist_ok=True`, and only while
#   transformers maps it to no video processor itself.
# - `ImageSegmentationPipeline` checks the model's class name against a merged copy of transformers' static
#   segmentation name lists, and the copy loses the models registered with `AutoModelForSemanticSegmentation`; hf_seg's
#   models are therefore also listed there under their (non-transformers) model types, so that the pipeline does not
#   log "... is not supported for image-segmentation".
for _config_class in (SetrConfig, SegformerMmsegConfig, MPViTConfig):
    AutoVideoProcessor.register(_config_class, video_processor_classes={})
if SegformerConfig not in VIDEO_PROCESSOR_MAPPING:
    AutoVideoProcessor.register(SegformerConfig, video_processor_classes={}, exist_ok=True)
for _config_class, _model_class in (
    (SetrConfig, SetrForSemanticSegmentation),
    (SegformerMmsegConfig, SegformerMmsegForSemanticSegmentation),
    (MPViTConfig, MPViTForSemanticSegmentation),
):
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(_config_class.model_type, _model_class.__name__)
del _config_class, _model_class

__all__ = [
    "MPViTBackbone",
    "MPViTConfig",
    "MPViTForImageClassification",
    "MPViTForSemanticSegmentation",
    "MPViTModel",
    "MPViTPreTrainedModel",
    "SegformerMmsegConfig",
    "SegformerMmsegForSemanticSegmentation",
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
    "optimize_for_inference",
    "segment",
]
