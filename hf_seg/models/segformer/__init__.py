"""SegFormer: transformers' built-in classes are used as they are; the only model code here is the head of
mmsegmentation 1.x's SegFormer (a different structure from the authors' head), for checkpoints of its model zoo."""

from .configuration_segformer_mmseg import SegformerMmsegConfig
from .modeling_segformer_mmseg import SegformerMmsegForSemanticSegmentation, SegformerMmsegPreTrainedModel


__all__ = ["SegformerMmsegConfig", "SegformerMmsegForSemanticSegmentation", "SegformerMmsegPreTrainedModel"]
