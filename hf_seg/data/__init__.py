"""Dataset loading, mmsegmentation-equal training augmentations, evaluation transform and collator."""

from .loading import load_segmentation_dataset
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    add_index_column,
    collate_segmentation,
    example_rng,
    hsv_to_rgb_uint8,
    photometric_distortion,
    random_crop_bbox,
    random_resize,
    reduce_zero_label,
    rescale_size,
    resize_image,
    resize_label,
    rgb_to_hsv_uint8,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SegmentationEvalTransform",
    "SegmentationTrainTransform",
    "add_index_column",
    "collate_segmentation",
    "example_rng",
    "hsv_to_rgb_uint8",
    "load_segmentation_dataset",
    "photometric_distortion",
    "random_crop_bbox",
    "random_resize",
    "reduce_zero_label",
    "rescale_size",
    "resize_image",
    "resize_label",
    "rgb_to_hsv_uint8",
]
