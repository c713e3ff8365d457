"""A user's journey, end to end, through the real `hf-seg` command line in subprocesses.

Each journey brings data of one shape hf_seg accepts, then: `hf-seg train` (a preset with a tiny configuration) ->
`hf-seg evaluate` of the saved folder **with no flags** -> `hf-seg predict` -> `transformers.pipeline` -> a reload in
a Python where hf_seg cannot be imported. At every step it asserts the class names and count and the reduce-labels
setting, and that the saved folder's evaluation equals the training run's final evaluation exactly (DESIGN.md
principle 0: the facts travel with the model).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

import hf_seg
from hf_seg.labels import load_label_set
from test_datasets import coco_stuff_folder, pascal_context_folder  # the data sets' layouts, as their loading tests


TRAIN_FLAGS = [
    "--max_steps", "3", "--warmup_steps", "1", "--per_device_train_batch_size", "2", "--crop_size", "64",
    "--train_scale", "128", "64", "--save_strategy", "no", "--logging_steps", "1", "--seed", "0", "--use_cpu",
    "--disable_tqdm", "true", "--report_to", "none",
]
TINY = {
    "segformer": {"hidden_sizes": [8, 8, 16, 16], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
                  "decoder_hidden_size": 16},
    "setr": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
             "image_size": 64, "decoder_channels": 16},
    "mpvit": {"hidden_sizes": [16, 16, 24, 32], "depths": [1, 1, 1, 1], "num_paths": [1, 1, 1, 1],
              "mlp_ratios": [2, 2, 2, 2], "decoder_hidden_size": 16, "auxiliary_channels": 8},
}


def hf_seg_command(*args) -> list[str]:
    """The installed `hf-seg` console script (beside this Python), else `python -m hf_seg`."""
    script = Path(sys.executable).with_name("hf-seg")
    return [str(script), *args] if script.is_file() else [sys.executable, "-m", "hf_seg", *args]


def _start(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a step with its output in files (no pipe can fill up while the steps run side by side). One thread
    each: most of a step is single-threaded start-up."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", **(env or {}))
    logs = cwd / "logs"
    logs.mkdir(exist_ok=True)
    number = len(list(logs.iterdir())) // 2
    stdout, stderr = open(logs / f"{number}.out", "w+"), open(logs / f"{number}.err", "w+")
    process = subprocess.Popen(command, cwd=str(cwd), env=full_env, stdin=subprocess.DEVNULL, stdout=stdout,
                               stderr=stderr, text=True)
    process.logs = (stdout, stderr)
    return process


def _finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    if hasattr(process, "result"):
        return process.result
    try:
        process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    texts = []
    for handle in process.logs:
        handle.seek(0)
        texts.append(handle.read())
        handle.close()
    stdout, stderr = texts
    result = process.result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert result.returncode == 0, f"{' '.join(map(str, process.args))[:600]}\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return result


def run(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return _finish(_start(command, cwd, env))


def run_side_by_side(*steps) -> list[subprocess.CompletedProcess]:
    """Run independent `(command, cwd[, env])` steps at the same time; each must succeed."""
    processes = [_start(*step) for step in steps]
    return [_finish(process) for process in processes]


# ------------------------------------------------------------------------------------------------------ the data


def _scene(rng, size=48, num_classes=4, first_class=0):
    """A noisy image with a square of each class 1.. on a class-0 background; label values first_class + k."""
    label = np.zeros((size, size), np.uint8)
    for value in range(1, num_classes):
        y, x = rng.integers(0, size - 16, 2)
        label[y : y + 16, x : x + 16] = value
    image = (rng.integers(0, 40, (size, size, 3)) + label[..., None] * 50).astype(np.uint8)
    return image, (label + first_class).astype(np.uint8)


def image_folder(root: Path, id2label: list[str] | None = None) -> Path:
    """`images/{train,validation}/*.jpg` + `annotations/...png` with label values 0..3 (0 = background, a class)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("validation", 3)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for index in range(count):
            image, label = _scene(rng)
            Image.fromarray(image).save(root / "images" / split / f"{split}_{index}.jpg", quality=95)
            Image.fromarray(label).save(root / "annotations" / split / f"{split}_{index}.png")
    if id2label is not None:
        (root / "id2label.json").write_text(json.dumps(dict(enumerate(id2label))))
    return root


def ade20k_like(root: Path) -> Path:
    """A `save_to_disk` DatasetDict shaped like the Hub's scene_parse_150: `image`, `annotation` with 0 = other and
    classes 1..3, and the distracting `scene_category` ClassLabel."""
    rng = np.random.default_rng(1)
    features = datasets.Features({
        "image": datasets.Image(), "annotation": datasets.Image(),
        "scene_category": datasets.ClassLabel(names=["airport_terminal", "art_gallery", "badlands"]),
    })
    splits = {}
    for split, count in (("train", 6), ("validation", 3)):
        pairs = [_scene(rng) for _ in range(count)]
        splits[split] = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(i) for i, _ in pairs], "annotation": [Image.fromarray(m) for _, m in pairs],
             "scene_category": [index % 3 for index in range(count)]}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


def class_label_column(root: Path, names: list[str]) -> Path:
    """A `datasets` DatasetDict whose label column is typed `Sequence(Sequence(ClassLabel(names)))`."""
    rng = np.random.default_rng(2)
    features = datasets.Features({
        "image": datasets.Image(),
        "segmentation": datasets.Sequence(datasets.Sequence(datasets.ClassLabel(names=names))),
    })
    splits = {}
    for split, count in (("train", 6), ("validation", 3)):
        pairs = [_scene(rng) for _ in range(count)]
        splits[split] = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(i) for i, _ in pairs], "segmentation": [m.tolist() for _, m in pairs]},
            features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


# Cityscapes label ids (cityscapesscripts): unlabeled, ego vehicle, road, building, vegetation, sky, car
_CITYSCAPES_SCENE_IDS = (0, 1, 7, 11, 21, 23, 26)


def cityscapes_as_distributed(root: Path) -> Path:
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png (the official zips:
    label ids, not train ids; the color maps beside them), for `hf-seg train` to map with cityscapesscripts' table."""
    rng = np.random.default_rng(3)
    for split, city, count in (("train", "aachen", 6), ("val", "frankfurt", 3)):
        (root / "leftImg8bit" / split / city).mkdir(parents=True)
        (root / "gtFine" / split / city).mkdir(parents=True)
        for frame in range(count):
            image, label = _scene(rng, size=32, num_classes=len(_CITYSCAPES_SCENE_IDS))
            label_ids = np.asarray(_CITYSCAPES_SCENE_IDS, np.uint8)[label]
            label_ids[-4:] = 1  # the ego vehicle's bonnet: ignored (train id 255)
            image, label_ids = np.concatenate([image, image[:, ::-1]], 1), np.concatenate([label_ids] * 2, 1)
            base = f"{city}_000000_{frame + 19:06d}"
            Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png")
            Image.fromarray(label_ids).save(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png")
            Image.fromarray(image).save(root / "gtFine" / split / city / f"{base}_gtFine_color.png")
    return root


def voc_with_sbd(root: Path) -> Path:
    """VOCdevkit/VOC2012: JPEGImages, palette-PNG SegmentationClass (255 around objects), SBD's SegmentationClassAug
    and ImageSets/Segmentation/{train,val,aug}.txt, as mmsegmentation's voc_aug converter leaves it."""
    rng = np.random.default_rng(4)
    base = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True)
    lists = {"train": [f"2007_{i:06d}" for i in range(3)], "val": [f"2007_{i:06d}" for i in range(3, 6)],
             "aug": [f"2008_{i:06d}" for i in range(3)]}
    palette = [value for index in range(256) for value in ((index * 37) % 256, (index * 91) % 256, index)]
    for split, ids in lists.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            image, label = _scene(rng, num_classes=4)
            label = np.asarray([0, 15, 12, 7], np.uint8)[label]  # background, person, dog, car
            label[1:-1][(label[1:-1] != label[:-2]) | (label[1:-1] != label[2:])] = 255  # VOC's object edges
            Image.fromarray(image).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
            picture = Image.fromarray(label, mode="P")
            picture.putpalette(palette)
            folders = ("SegmentationClassAug",) if split == "aug" else ("SegmentationClass", "SegmentationClassAug")
            for folder in folders:
                picture.save(base / folder / f"{image_id}.png")
    return root / "VOCdevkit"


def validation_image(data: Path, folder: Path) -> Path:
    """One validation image as a file (the image folder's own, or written from the save_to_disk set)."""
    if (data / "images").is_dir():
        return sorted((data / "images" / "validation").iterdir())[0]
    in_layout = sorted(data.glob("leftImg8bit/val/*/*_leftImg8bit.png")) or sorted(data.glob("VOC2012/JPEGImages/*"))
    if in_layout:
        return in_layout[0]
    image = datasets.load_from_disk(str(data))["validation"][0]["image"]
    path = folder / "photo.png"
    image.save(path)
    return path


# ------------------------------------------------------------------------------------------- the other processes

PIPELINE = """
import json, sys
import numpy as np
from PIL import Image
import hf_seg
import hf_seg.cli
from transformers import pipeline
folder, image_path, segmented_path, predicted_dir = sys.argv[1:5]
# `hf-seg predict` as its console script runs it (hf_seg.cli.main), in this process to save a start-up
assert hf_seg.cli.main(["predict", "--model", folder, image_path, "--output-dir", predicted_dir, "--quiet"]) == 0
segmenter = pipeline("image-segmentation", model=folder)
image = Image.open(image_path).convert("RGB")
config, processor = segmenter.model.config, segmenter.image_processor
ids = {name: int(index) for index, name in config.id2label.items()}
from_pipeline = np.full(image.size[::-1], -1)
results = segmenter(image)
for result in results:
    from_pipeline[np.asarray(result["mask"]) > 0] = ids[result["label"]]
whole = hf_seg.segment(segmenter.model, processor, [image], mode="whole")[0].numpy()
np.save(segmented_path, hf_seg.segment(segmenter.model, processor, [image])[0].numpy())  # the saved protocol
print(json.dumps({
    "labels": sorted(result["label"] for result in results),
    "names": [config.id2label[i] for i in range(config.num_labels)],
    "do_reduce_labels": processor.do_reduce_labels,
    "pipeline_equals_segment": bool((from_pipeline == whole).all()),
}))
"""

WITHOUT_HF_SEG = """
import json, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_seg" or name.startswith("hf_seg."):
            raise ImportError("hf_seg is blocked in this test")
sys.meta_path.insert(0, Refuse())
import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
folder = sys.argv[1]
model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = model(pixel_values=torch.rand(1, 3, 64, 64)).logits
print(json.dumps({
    "names": [model.config.id2label[i] for i in range(model.config.num_labels)],
    "logit_channels": logits.shape[1],
    "do_reduce_labels": processor.do_reduce_labels,
    "ignore_index": model.config.semantic_loss_ignore_index,
    "test_protocol": model.config.test_protocol,
    "hf_seg_imported": "hf_seg" in sys.modules,
}))
"""


def _single_scale(protocol: dict) -> dict:
    return {key: value for key, value in protocol.items() if key != "aug_test"}


def printed_json(stdout: str) -> dict:
    """The JSON object a command printed (from its first line that is `{` to the matching `}`)."""
    lines = stdout.splitlines()
    start = lines.index("{")
    end = lines.index("}", start)
    return json.loads("\n".join(lines[start : end + 1]))


# ------------------------------------------------------------------------------------------------- the journeys

JOURNEYS = {
    # name: (preset, family, data builder, extra train flags, expected names, expected reduce_labels, protocol)
    "image-folder-without-names": (
        "segformer-b0-ade20k-512", "segformer", lambda root: image_folder(root), [],
        ["class_0", "class_1", "class_2", "class_3"], False, {"mode": "whole"},
    ),
    "image-folder-with-id2label-json": (
        "setr-naive-vit-large-ade20k-512", "setr",
        lambda root: image_folder(root, ["background", "road", "tree", "roof"]),
        ["--eval_crop_size", "128", "--eval_stride", "96"],
        ["background", "road", "tree", "roof"], False, {"mode": "slide", "crop_size": 128, "stride": 96},
    ),
    "save-to-disk-ade20k-like-0-is-other": (
        "upernet-mpvit-tiny-ade20k-512", "mpvit", ade20k_like, ["--reduce_labels", "true"],
        ["class_0", "class_1", "class_2"], True, {"mode": "whole"},
    ),
    "datasets-classlabel-label-column": (
        "setr-pup-vit-large-pascal-context-480", "setr",
        lambda root: class_label_column(root, ["sky", "grass", "water", "rock"]), [],
        ["sky", "grass", "water", "rock"], False, {"mode": "slide", "crop_size": 480, "stride": 320},
    ),
    # the data sets' own layouts; the last entry: the label-id table the run must detect and save
    "cityscapes-gtfine-label-ids": (
        "segformer-b0-cityscapes-512x1024", "segformer", cityscapes_as_distributed, [],
        list(load_label_set("cityscapes")[0].values()), False, {"mode": "whole"}, "cityscapes",
    ),
    "pascal-voc-with-sbd": (
        "segformer-b0-voc12aug-512", "segformer", voc_with_sbd, ["--train_split", "trainaug"],
        list(load_label_set("pascal_voc")[0].values()), False, {"mode": "whole"}, None,
    ),
    "pascal-context-459-class-mat-files": (
        "segformer-b0-pascal-context-480", "segformer", lambda root: pascal_context_folder(root, raw=True), [],
        list(load_label_set("pascal_context_60")[0].values()), False,
        {"mode": "slide", "crop_size": 480, "stride": 320}, "pascal_context_459",
    ),
    "coco-stuff-164k-label-train-ids": (
        "segformer-b0-coco-stuff164k-512", "segformer", lambda root: coco_stuff_folder(root, prepared=True), [],
        list(load_label_set("coco_stuff")[0].values()), False, {"mode": "whole"}, None,
    ),
}


#: the data sets' own layouts: `hf-seg train` + `hf-seg evaluate` only (predict, the pipeline and the Hub code are the
#: same seams as above, whatever layout the data came in)
LAYOUT_JOURNEYS = ("cityscapes-gtfine-label-ids", "pascal-voc-with-sbd", "pascal-context-459-class-mat-files",
                   "coco-stuff-164k-label-train-ids")


@pytest.fixture(scope="module")
def trainings(tmp_path_factory):
    """Every journey's data and `hf-seg train` run, started side by side; {journey: (folder, data, process)}."""
    started = {}
    for journey, (preset, family, make_data, flags, *_) in JOURNEYS.items():
        folder = tmp_path_factory.mktemp(journey)
        data = make_data(folder / "data")
        overrides = dict(TINY[family], **({"auxiliary_in_indices": [1, 2]} if family == "setr" else {}))
        command = hf_seg_command("train", "--model", preset, "--dataset", str(data), "--output_dir",
                                 str(folder / "model"), "--config_overrides", json.dumps(overrides), *TRAIN_FLAGS,
                                 *flags)
        started[journey] = (folder, data, _start(command, folder))
    yield started
    for _, _, process in started.values():
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("journey", list(JOURNEYS))
def test_journey(journey, trainings):
    preset, _, _, _, names, reduce_labels, protocol, *table = JOURNEYS[journey]
    label_ids = table[0] if table else None
    folder, data, training = trainings[journey]
    out = folder / "model"

    # 1. train: one line says what was decided; the final JSON has the evaluation
    trained = _finish(training)
    decided = [line for line in trained.stderr.splitlines() if line.startswith("hf_seg: ") and " classes (" in line]
    assert len(decided) == 1, trained.stderr[-3000:]
    shown = ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ..., {names[-1]}"
    assert decided[0].startswith(f"hf_seg: {len(names)} classes ({shown})")
    detected = [line for line in trained.stderr.splitlines() if line.startswith("hf_seg: the label maps hold")]
    assert len(detected) == (1 if label_ids else 0), trained.stderr[-3000:]
    assert f"reduce_labels={reduce_labels} " in decided[0]
    final = printed_json(trained.stdout)
    assert not any(key.startswith(("eval_iou_", "eval_accuracy_")) for key in final)  # per-class: neither, by default

    # 2. the saved folder records what was used
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(names))] == names and len(config["id2label"]) == len(names)
    assert config["semantic_loss_ignore_index"] == 255 and _single_scale(config["test_protocol"]) == protocol
    # the papers' multi-scale + flip settings travel too
    assert config["test_protocol"].get("aug_test") == hf_seg.get_preset(preset).inference.get("aug_test")
    assert json.loads((out / "preprocessor_config.json").read_text())["do_reduce_labels"] is reduce_labels
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["reduce_labels"] is reduce_labels and recipe["labels"]["reduce_labels"] is reduce_labels
    assert recipe["labels"]["num_labels"] == len(names) and _single_scale(recipe["test_protocol"]) == protocol
    assert config.get("label_ids") == label_ids and recipe["labels"]["label_ids"] == label_ids
    card = (out / "README.md").read_text()
    assert f"{len(names)} classes from" in card and f"reduce_labels={reduce_labels}" in card
    assert all(f"| {index} | {name} |" in card for index, name in enumerate(names))
    assert "datasets:" not in card and str(folder) not in card.split("---")[1]  # no local path in the metadata
    results = json.loads((out / "all_results.json").read_text())

    # 3-6, side by side: evaluate the folder with no flags; predict with its saved test protocol and transformers'
    # pipeline, with hf_seg imported; the shipped code where hf_seg cannot be imported
    evaluate = (hf_seg_command("evaluate", "--model", str(out), "--dataset", str(data)), folder)
    if journey in LAYOUT_JOURNEYS:
        _check_evaluation(run(*evaluate), results, names)
        return
    image = validation_image(data, folder)
    predicted = folder / "predicted"
    evaluated, piped, bare = run_side_by_side(
        evaluate,
        ([sys.executable, "-c", PIPELINE, str(out), str(image), str(folder / "segmented.npy"), str(predicted)],
         folder),
        ([sys.executable, "-c", WITHOUT_HF_SEG, str(out)], folder,
         {"HF_HOME": str(folder / "bare_hf_home"), "PYTHONPATH": ""}),
    )
    _check_evaluation(evaluated, results, names)

    predicted_map = np.asarray(Image.open(predicted / f"{image.stem}.png"))
    assert set(np.unique(predicted_map).tolist()) <= set(range(len(names)))
    assert (predicted_map == np.load(folder / "segmented.npy")).all()  # predict = hf_seg.segment, saved protocol

    assert "Do you wish to run the custom code" not in piped.stderr + piped.stdout
    assert "not supported for image-segmentation" not in piped.stderr
    report = json.loads(piped.stdout.strip().splitlines()[-1])
    assert report["names"] == names and set(report["labels"]) <= set(names) and report["labels"]
    assert report["do_reduce_labels"] is reduce_labels and report["pipeline_equals_segment"]

    report = json.loads(bare.stdout.strip().splitlines()[-1])
    report["test_protocol"] = _single_scale(report["test_protocol"])
    assert report == {"names": names, "logit_channels": len(names), "do_reduce_labels": reduce_labels,
                      "ignore_index": 255, "test_protocol": protocol, "hf_seg_imported": False}


def _check_evaluation(evaluated, results, names):
    metrics = printed_json(evaluated.stdout)  # exactly the training run's final evaluation
    assert "reduce_labels=" not in evaluated.stderr  # nothing contradicts the saved folder: nothing to warn about
    assert sorted(key[len("iou_"):] for key in metrics if key.startswith("iou_")) == sorted(names)
    for key, value in metrics.items():
        assert results[f"eval_{key}"] == value, key


def test_fine_tuning_a_saved_folder_on_new_classes_reinitialises_only_the_classifiers(trainings, tmp_path):
    """`--model FOLDER --id2label new.json`: new classifiers, the rest kept; the same data without names keeps the
    checkpoint's classes (their number equals the data's label values)."""
    folder, data, training = trainings["image-folder-without-names"]
    _finish(training)
    first = folder / "model"
    new_names = ["water", "sand", "rock", "weed", "fish"]
    (tmp_path / "new.json").write_text(json.dumps(new_names))
    second, third = tmp_path / "second", tmp_path / "third"
    relabelled, kept = run_side_by_side(
        (hf_seg_command("train", "--model", str(first), "--dataset", str(data), "--id2label",
                        str(tmp_path / "new.json"), "--output_dir", str(second), "--eval_split", "none",
                        *TRAIN_FLAGS), tmp_path),
        (hf_seg_command("train", "--model", str(first), "--dataset", str(data), "--output_dir", str(third),
                        "--eval_split", "none", *TRAIN_FLAGS), tmp_path),
    )
    assert "new label set (4 -> 5 classes): re-initialised decode_head.classifier;" in relabelled.stderr
    config = json.loads((second / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(5)] == new_names

    from safetensors.torch import load_file

    before, after = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert after["decode_head.classifier.weight"].shape[0] == 5 and before["decode_head.classifier.weight"].shape[0] == 4
    assert set(before) == set(after)

    assert "4 classes (class_0, class_1, class_2, class_3) from the checkpoint" in kept.stderr
    assert "re-initialised" not in kept.stderr
