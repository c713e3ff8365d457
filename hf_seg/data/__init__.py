"""Dataset loading, mmsegmentation-equal training augmentations, evaluation transform and collator; the data sets'
own layouts and label-id tables (`hf_seg.data.datasets`)."""

from .datasets import LABEL_ID_TABLES, apply_label_ids, train_ids_to_label_ids
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
    "LABEL_ID_TABLES",
    "SegmentationEvalTransform",
    "SegmentationTrainTransform",
    "add_index_column",
    "apply_label_ids",
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
    "train_ids_to_label_ids",
]
