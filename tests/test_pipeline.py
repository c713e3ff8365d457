"""transformers.pipeline("image-segmentation") with hf_seg models and processors.

The pipeline preprocesses one image at a time with the processor, runs the model and calls the processor's
`post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])`; it returns one binary mask per class
present. Put back together, the masks must be `hf_seg.segment`'s label map (whole mode: same resize, padding and
bilinear resizes).

`pipeline(model=folder)` is run in a child process with stdin closed, for a folder of every family, so that a "Do you
wish to run the custom code?" prompt shows in its output (the pipeline's video-processor look-up used to ask it) and
so does transformers' "... is not supported for image-segmentation" error log; with hf_seg imported neither may
appear. Where hf_seg cannot be imported the folder's own code loads with `trust_remote_code=True`; transformers' static
name list then still logs "not supported" (only an imported hf_seg can add its models to it), which is cosmetic.
"""

import json
import subprocess
import sys
from pathlib import Path

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


FAMILIES = ("setr", "mpvit", "segformer", "segformer-mmseg")
ID2LABEL = {0: "wall", 1: "building", 2: "sky", 3: "floor", 4: "tree"}
TINY_SEGFORMER = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
                      decoder_hidden_size=16)
PROMPT_TEXTS = ("Do you wish to run the custom code", "contains custom code")
NOT_SUPPORTED = "is not supported for image-segmentation"


def _labelled(model):
    model.config.id2label = dict(ID2LABEL)
    model.config.label2id = {label: index for index, label in ID2LABEL.items()}
    return model


def _family_model_and_processor(family):
    """A tiny model of the family and its preset's processor (SegFormer: transformers' model from an hf_seg preset)."""
    preset = {"setr": "setr-mla-vit-large-ade20k-512", "mpvit": "upernet-mpvit-small-ade20k-512",
              "segformer": "segformer-b0-ade20k-512", "segformer-mmseg": "segformer-b0-ade20k-512"}[family]
    torch.manual_seed(0)
    if family == "setr":
        model = tiny_setr("mla")
    elif family == "mpvit":
        model = tiny_mpvit()
    elif family == "segformer":
        model = hf_seg.create_model(preset, **TINY_SEGFORMER, id2label=ID2LABEL).eval()
    else:
        config = hf_seg.SegformerMmsegConfig(**{**hf_seg.get_preset(preset).config, **TINY_SEGFORMER},
                                             id2label=ID2LABEL)
        model = hf_seg.SegformerMmsegForSemanticSegmentation(config).eval()
    return _labelled(model), hf_seg.create_image_processor(preset, size=PROCESSOR_SIZE)


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory):
    """family -> (model, processor, folder written by `model.save_pretrained` + `processor.save_pretrained`)."""
    folders = {}
    for family in FAMILIES:
        model, processor = _family_model_and_processor(family)
        folder = tmp_path_factory.mktemp("pipeline-folder") / family
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[family] = (model, processor, folder)
    return folders


# Runs `pipeline("image-segmentation", model=folder)` for every folder, marking each folder's part of stdout and
# stderr; mode "remote": `import hf_seg` fails (a meta-path finder refuses it) and the folders' code is trusted.
PIPELINE_CHILD = """
import json, sys
mode, folders, images, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
if mode == "remote":
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "hf_seg" or name.startswith("hf_seg."):
                raise ImportError("hf_seg is blocked in this test")
    sys.meta_path.insert(0, Refuse())
else:
    import hf_seg
import numpy as np
from PIL import Image
from transformers import pipeline
images = [Image.fromarray(array) for array in np.load(images).values()]
kwargs = {"trust_remote_code": True} if mode == "remote" else {}
runs = {}
for family, folder in folders.items():
    for stream in (sys.stdout, sys.stderr):  # on a line of its own: a prompt ends without a newline
        print("\\n@@@", family, file=stream, flush=True)
    segmenter = pipeline("image-segmentation", model=folder, **kwargs)
    runs[family] = {
        "model": type(segmenter.model).__module__ + "." + type(segmenter.model).__name__,
        "processor": type(segmenter.image_processor).__module__ + "." + type(segmenter.image_processor).__name__,
        "results": [[{"label": r["label"], "score": r["score"], "mask": np.asarray(r["mask"]).tolist()} for r in rs]
                    for rs in segmenter(images)],
    }
runs["hf_seg imported"] = "hf_seg" in sys.modules
json.dump(runs, open(out, "w"))
"""


def _split_by_family(text):
    parts, family = {}, None
    for line in text.splitlines():
        if line.startswith("@@@ "):
            family = line[4:].strip()
            parts[family] = ""
        elif family is not None:
            parts[family] += line + "\n"
    return parts


@pytest.fixture(scope="module", params=["hf_seg", "remote"])
def pipeline_runs(request, saved_folders, tmp_path_factory):
    """One child process per mode over all folders: (mode, its runs, per-family stdout + stderr)."""
    work = tmp_path_factory.mktemp(f"pipeline-{request.param}")
    np.savez(work / "images.npz", *[np.asarray(image) for image in _images()])
    folders = {family: str(folder) for family, (_, _, folder) in saved_folders.items()}
    # stdin closed: a prompt reads EOF at once instead of waiting; the timeout covers a hang anyway
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE_CHILD, request.param, json.dumps(folders), str(work / "images.npz"),
         str(work / "runs.json")],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, cwd=str(work),
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(work), "HF_HOME": str(work / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stdout, stderr = _split_by_family(result.stdout), _split_by_family(result.stderr)
    output = {family: stdout.get(family, "") + stderr.get(family, "") for family in FAMILIES}
    return request.param, json.loads(Path(work / "runs.json").read_text()), output


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_by_path_in_a_fresh_process(pipeline_runs, saved_folders, family):
    """`pipeline("image-segmentation", model=folder)` asks nothing, and its masks are `hf_seg.segment`'s label map
    with the configuration's label names; with hf_seg imported it also logs no "not supported"."""
    mode, runs, output = pipeline_runs
    model, processor, _ = saved_folders[family]
    for text in PROMPT_TEXTS:
        assert text not in output[family], output[family][-3000:]
    assert runs["hf_seg imported"] is (mode == "hf_seg")
    run = runs[family]
    model_name = f"{type(model).__module__}.{type(model).__name__}"
    if mode == "hf_seg" or model_name.startswith("transformers."):
        assert run["model"] == model_name
    else:
        assert run["model"].startswith("transformers_modules.") and run["model"].endswith(type(model).__name__)
    assert run["processor"].endswith(".SetrImageProcessor")
    assert run["processor"].startswith("hf_seg." if mode == "hf_seg" else "transformers_modules.")
    if mode == "hf_seg":
        assert NOT_SUPPORTED not in output[family], output[family][-3000:]

    for image, results in zip(_images(), run["results"], strict=True):
        expected = hf_seg.segment(model, processor, image)[0].numpy()
        assert {r["label"] for r in results} == {ID2LABEL[index] for index in np.unique(expected).tolist()}
        label_map = _label_map_from_pipeline(
            [{**r, "mask": np.asarray(r["mask"], dtype=np.uint8)} for r in results], model, image.size)
        np.testing.assert_array_equal(label_map, expected)
