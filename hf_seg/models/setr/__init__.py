from .configuration_setr import SetrConfig
from .image_processing_setr import SetrImageProcessor
from .modeling_setr import SetrForSemanticSegmentation, SetrModel, SetrPreTrainedModel


__all__ = ["SetrConfig", "SetrForSemanticSegmentation", "SetrImageProcessor", "SetrModel", "SetrPreTrainedModel"]
