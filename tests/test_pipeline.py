"""transformers.pipeline("image-segmentation") with hf_seg models and processors.

The pipeline preprocesses one image at a time with the processor, runs the model and calls the processor's
`post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])`; it returns one binary mask per class
present. Put back together, the masks must be `hf_seg.segment`'s label map (whole mode: same resize, padding and
bilinear resizes). transformers logs "The model 'SetrForSemanticSegmentation' is not supported for
image-segmentation" for every model outside its static name list; that message is cosmetic (the pipeline runs).
"""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SegformerImageProcessor, pipeline

import hf_seg
from tiny_models import tiny_mpvit, tiny_segformer, tiny_setr


PROCESSOR_SIZE = {"shortest_edge": 64, "longest_edge": 128}


def _images():
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8)) for shape in [(70, 90, 3), (100, 60, 3)]]


def _label_map_from_pipeline(results, model, size):
    """The pipeline's per-class masks back into one label map (-1 where no mask claims a pixel)."""
    label_map = np.full(size[::-1], -1, dtype=np.int64)
    for result in results:
        assert result["score"] is None
        mask = np.asarray(result["mask"])
        assert mask.shape == label_map.shape and set(np.unique(mask)) <= {0, 255}
        assert (label_map[mask == 255] == -1).all(), "masks overlap"
        label_map[mask == 255] = model.config.label2id[result["label"]]
    return label_map


@pytest.mark.parametrize("family", ["setr", "segformer", "mpvit"])
def test_pipeline_masks_equal_segment(family):
    model = {"setr": lambda: tiny_setr("mla"), "segformer": tiny_segformer, "mpvit": tiny_mpvit}[family]()
    processor = hf_seg.SetrImageProcessor(size=PROCESSOR_SIZE, size_divisor=16 if family == "setr" else 1)
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    images = _images()
    all_results = segmenter(images)
    classes_seen = set()
    for image, results in zip(images, all_results, strict=True):
        expected = hf_seg.segment(model, processor, image)[0].numpy()
        label_map = _label_map_from_pipeline(results, model, image.size)
        np.testing.assert_array_equal(label_map, expected)
        classes_seen |= set(np.unique(expected).tolist())
    assert len(classes_seen) > 1  # several masks per image set, so the reassembly is really checked


def test_pipeline_transformers_segformer_with_its_own_processor():
    """Control: transformers' own SegFormer and SegformerImageProcessor give the masks of calling the processor and
    the model by hand, so the pipeline plumbing is what the SETR test above relies on."""
    model = tiny_segformer()
    processor = SegformerImageProcessor(size={"height": 64, "width": 64})
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    for image in _images():
        results = segmenter(image)
        with torch.no_grad():
            outputs = model(**processor(images=image, return_tensors="pt"))
        expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        np.testing.assert_array_equal(_label_map_from_pipeline(results, model, image.size), expected.numpy())


def test_pipeline_loads_a_saved_setr_folder_by_path(tmp_path):
    """`pipeline(model=folder)` resolves model and processor through the Auto classes hf_seg registers."""
    model = tiny_setr("mla")
    processor = hf_seg.SetrImageProcessor(size=PROCESSOR_SIZE)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    assert isinstance(segmenter.model, hf_seg.SetrForSemanticSegmentation)
    assert isinstance(segmenter.image_processor, hf_seg.SetrImageProcessor)
    image = _images()[0]
    np.testing.assert_array_equal(
        _label_map_from_pipeline(segmenter(image), model, image.size), hf_seg.segment(model, processor, image)[0].numpy()
    )
