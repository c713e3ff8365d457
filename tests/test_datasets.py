"""hf_seg.data.datasets: the label-id tables against their published sources, the data sets' own folder layouts read
through the real loading code (small generated files named and laid out as the data sets distribute them), detection
of label ids, and the seam to a saved model's evaluation."""

import importlib.util
import json
import sys
import types
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

import hf_seg
from hf_seg.data import SegmentationTrainTransform, load_segmentation_dataset
from hf_seg.data.datasets import (
    LABEL_ID_TABLES,
    apply_label_ids,
    evaluation_label_ids,
    train_ids_to_label_ids,
)
from hf_seg.data.labels import DataLabels, scan_label_values
from hf_seg.data.transforms import decode_example, reduce_zero_label
from hf_seg.labels import load_label_set
from hf_seg.training.evaluation import evaluate_segmentation
from hf_seg.training.trainer import decide_labels, evaluate_model

# The published Cityscapes table, written out from cityscapesscripts 2.3.0 `cityscapesscripts/helpers/labels.py`
# (`labels`: name, id, trainId). cityscapesscripts itself is not a test dependency: it requires the `typing` backport
# (an sdist that installs a top-level typing.py) and matplotlib; `test_cityscapes_table_equals_cityscapesscripts`
# compares against it where it is installed.
CITYSCAPES_PUBLISHED = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15), ("caravan", 29, 255),
    ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18), ("license plate", -1, -1),
]


def _mmseg_converter(name: str):
    """mmsegmentation's own dataset converter module (shipped in the wheel under mmseg/.mim/tools)."""
    import mmseg

    path = Path(mmseg.__file__).parent / ".mim" / "tools" / "dataset_converters" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mmseg_converter_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ the tables


def test_cityscapes_table_is_the_published_one():
    table = LABEL_ID_TABLES["cityscapes"]
    for _, label_id, train_id in CITYSCAPES_PUBLISHED:
        assert table.mapping[label_id] == (255 if train_id < 0 else train_id), label_id
    names = load_label_set("cityscapes")[0]
    trained = {train_id: name for name, _, train_id in CITYSCAPES_PUBLISHED if 0 <= train_id < 255}
    assert trained == names  # the 19 train ids are hf_seg's cityscapes label set, name by name

    every_id = np.array([[label_id for _, label_id, _ in CITYSCAPES_PUBLISHED if label_id >= 0] + [255]])
    expected = [255 if t < 0 else t for _, i, t in CITYSCAPES_PUBLISHED if i >= 0] + [255]  # 255: -1 as uint8
    assert apply_label_ids(every_id, "cityscapes").tolist() == [expected]
    for bad in (34, 100, 254):
        with pytest.raises(ValueError, match=rf"example 3 \(a.png\): label values \[{bad}\] are not Cityscapes"):
            apply_label_ids(np.array([[7, bad]]), "cityscapes", "example 3", "a.png")


def test_cityscapes_inverse_gives_the_label_ids_for_the_evaluation_server():
    train_ids = np.array([[*range(19), 255]])
    first_defined = {}  # cityscapesscripts' trainId2label: the label defined first wins
    for _, label_id, train_id in CITYSCAPES_PUBLISHED:
        first_defined.setdefault(train_id, label_id)
    assert train_ids_to_label_ids(train_ids).tolist() == [[first_defined[t] for t in train_ids[0]]]
    assert train_ids_to_label_ids(np.array([255]))[0] == 0  # 'unlabeled'
    assert (apply_label_ids(train_ids_to_label_ids(train_ids), "cityscapes") == train_ids).all()
    with pytest.raises(ValueError, match=r"training ids \[19\]"):
        train_ids_to_label_ids(np.array([19]))


def test_cityscapes_table_equals_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    for label in labels.labels:
        assert LABEL_ID_TABLES["cityscapes"].mapping[label.id] == (255 if label.trainId < 0 else label.trainId)


def test_coco_stuff_164k_table_is_mmsegmentations_conversion(tmp_path):
    converter = _mmseg_converter("coco_stuff164k")
    raw = np.array(sorted(converter.clsID_to_trID), dtype=np.uint8)  # every id the converter knows, 255 included
    mask = np.resize(raw, (12, 16))
    Image.fromarray(mask).save(tmp_path / "000000000009.png")
    (tmp_path / "out" / "train2017").mkdir(parents=True)
    converter.convert_to_trainID(str(tmp_path / "000000000009.png"), str(tmp_path / "out"), is_train=True)
    expected = np.asarray(Image.open(tmp_path / "out" / "train2017" / "000000000009_labelTrainIds.png"))
    assert (apply_label_ids(mask.astype(np.int64), "coco_stuff164k") == expected).all()
    assert sorted(set(LABEL_ID_TABLES["coco_stuff164k"].mapping.values()) - {255}) == list(range(171))
    with pytest.raises(ValueError, match=r"label values \[11, 182\] are not raw COCO-Stuff 164k ids"):
        apply_label_ids(np.array([[0, 11, 182]]), "coco_stuff164k")  # no category (mmseg would leave them as they are)


def test_coco_stuff_10k_table_is_mmsegmentations_conversion_of_the_mat_files(tmp_path):
    from scipy.io import savemat

    converter = _mmseg_converter("coco_stuff10k")
    raw = np.array(sorted(converter.clsID_to_trID), dtype=np.uint8)  # 0 (unlabelled), 1-based ids up to 182
    mask = np.resize(raw, (12, 16))
    for folder in ("images", "annotations", "out_images/train2014", "out_masks/train2014"):
        (tmp_path / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "images" / "COCO_train2014_000000000077.jpg")
    savemat(tmp_path / "annotations" / "COCO_train2014_000000000077.mat", {"S": mask})
    converter.convert_to_trainID(("COCO_train2014_000000000077.jpg", "COCO_train2014_000000000077.mat"),
                                 str(tmp_path / "images"), str(tmp_path / "annotations"), str(tmp_path / "out_images"),
                                 str(tmp_path / "out_masks"), is_train=True)
    expected = np.asarray(Image.open(tmp_path / "out_masks/train2014/COCO_train2014_000000000077_labelTrainIds.png"))
    _, label, _ = decode_example(str(tmp_path / "images" / "COCO_train2014_000000000077.jpg"),
                                 str(tmp_path / "annotations" / "COCO_train2014_000000000077.mat"), 0, "coco_stuff10k")
    assert (label == expected).all()
    # then the data set's reduce-labels (mmseg: LoadAnnotations(reduce_zero_label=True)): the same 171 ids as 164k
    as_164k = apply_label_ids(np.where(mask == 0, 255, mask - 1).astype(np.int64), "coco_stuff164k")
    assert (reduce_zero_label(label) == as_164k).all()


def test_pascal_context_459_table_is_mmsegmentations_conversion(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "detail", types.SimpleNamespace(Detail=None))  # the Detail API is not on PyPI
    converter = _mmseg_converter("pascal_context")
    mask = np.resize(converter._mapping, (12, 16))  # the 60 ids the Detail API's masks hold

    class Detail:
        def getMask(self, img_id):
            return mask

    converter.generate_labels({"file_name": "2008_000002.jpg"}, Detail(), str(tmp_path))
    expected = np.asarray(Image.open(tmp_path / "2008_000002.png"))
    assert (apply_label_ids(mask.astype(np.int64), "pascal_context_459") == expected).all()
    # the 459-class release's other 400 classes are background in the 60-class setting; 59 = reduce-labels on top
    assert apply_label_ids(np.array([[1, 3, 255, 459, 2, 458]]), "pascal_context_459").tolist() == [[0, 0, 0, 0, 1, 59]]
    with pytest.raises(ValueError, match=r"\[460\]"):
        apply_label_ids(np.array([[460]]), "pascal_context_459")


# ------------------------------------------------------------------------------------------------ the layouts


def _image(rng, height=16, width=32):
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


CITYSCAPES_IDS = np.array([0, 1, 7, 8, 11, 21, 23, 24, 26, 33], np.uint8)  # unlabeled, ego vehicle, road, ..., bicycle


def cityscapes_folder(root: Path, train_ids: bool = False, rng=None) -> Path:
    """leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png + gtFine/... as the official zips hold them
    (with the color / instanceIds / polygons files beside the labelIds); ``train_ids`` adds mmseg's labelTrainIds."""
    rng = rng or np.random.default_rng(0)
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            for frame in (19, 20):
                base = f"{city}_000000_{frame:06d}"
                (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
                (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
                _image(rng).save(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png")
                label_ids = rng.choice(CITYSCAPES_IDS, (16, 32)).astype(np.uint8)
                gt = root / "gtFine" / split / city
                Image.fromarray(label_ids).save(gt / f"{base}_gtFine_labelIds.png")
                Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(gt / f"{base}_gtFine_color.png")
                instances = Image.fromarray(label_ids.astype(np.uint16) * 1000)  # 16 bit: id * 1000 + instance
                instances.save(gt / f"{base}_gtFine_instanceIds.png")
                (gt / f"{base}_gtFine_polygons.json").write_text("{}")
                if train_ids:
                    train = apply_label_ids(label_ids.astype(np.int64), "cityscapes").astype(np.uint8)
                    Image.fromarray(train).save(gt / f"{base}_gtFine_labelTrainIds.png")
    return root


def test_cityscapes_as_distributed_loads_with_its_label_ids(tmp_path):
    root = cityscapes_folder(tmp_path / "cityscapes")
    data, info = load_segmentation_dataset(root, decode=False)
    assert sorted(data) == ["train", "validation"] and len(data["train"]) == 4 and len(data["validation"]) == 2
    assert info["layout"] == "cityscapes" and info["label_ids"] == "cityscapes"
    assert info["label_ids_source"] == "the file names (*_gtFine_labelIds.png)"
    assert info["id2label"] == load_label_set("cityscapes")[0] and info["reduce_labels"] is False
    first = data["train"][0]
    assert first["image"]["path"].endswith("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    assert first["label"]["path"].endswith("gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
    raw = np.asarray(Image.open(first["label"]["path"])).astype(np.int64)
    _, label, _ = decode_example(first["image"], first["label"], 0, info["label_ids"])
    assert (label == LABEL_ID_TABLES["cityscapes"].lut[raw]).all() and set(np.unique(label)) <= {0, 1, 2, 8, 10, 11,
                                                                                                    13, 18, 255}
    counts = scan_label_values(data["train"], "label", label_ids="cityscapes", progress=False)
    assert len(counts) == 19 and counts.sum() > 0

    transform = SegmentationTrainTransform(crop_size=16, scale=(32, 16), ratio_range=(1.0, 1.0), num_labels=19,
                                           label_ids=info["label_ids"], photometric=False, flip_prob=0.0)
    out = transform({"image": [first["image"]], "label": [first["label"]], "__index__": [0]})
    assert set(out["labels"][0].unique().tolist()) <= set(range(19)) | {255}


def test_cityscapes_prefers_mmsegs_label_train_ids_unless_the_label_ids_are_asked_for(tmp_path):
    root = cityscapes_folder(tmp_path / "cityscapes", train_ids=True)
    data, info = load_segmentation_dataset(root, split="validation", decode=False)
    assert data[0]["label"]["path"].endswith("_gtFine_labelTrainIds.png") and info["label_ids"] is None
    assert info["label_ids_source"] == "the file names (*_gtFine_labelTrainIds.png)"
    data, info = load_segmentation_dataset(root, split="validation", decode=False, label_ids="cityscapes")
    assert data[0]["label"]["path"].endswith("_gtFine_labelIds.png") and info["label_ids"] == "cityscapes"
    assert info["label_ids_source"] == "asked"
    same = [decode_example(data[i]["image"], data[i]["label"], i, "cityscapes")[1] for i in range(len(data))]
    prepared, _ = load_segmentation_dataset(root, split="validation", decode=False)
    assert all((a == decode_example(b["image"], b["label"], 0)[1]).all() for a, b in zip(same, prepared))

    (root / "gtFine/val/frankfurt/frankfurt_000000_000020_gtFine_labelTrainIds.png").unlink()
    (root / "gtFine/val/frankfurt/frankfurt_000000_000020_gtFine_labelIds.png").unlink()
    with pytest.raises(ValueError, match=r"split 'val'.*1 image\(s\) without a label map: \['frankfurt/frankfurt_"
                                         r"000000_000020'\]"):
        load_segmentation_dataset(root)
    with pytest.raises(ValueError, match="unknown label_ids 'cityscape'"):
        load_segmentation_dataset(root, label_ids="cityscape")


def _voc_palette_png(array: np.ndarray, path: Path) -> None:
    """A label map as VOC stores it: a palette PNG whose pixel values are the class indices (255: object edges)."""
    image = Image.fromarray(array, mode="P")
    palette = [value for rgb in load_label_set("pascal_voc")[1] for value in rgb]
    image.putpalette(palette + [224, 224, 192] * (256 - 21))
    image.save(path)


def voc_folder(root: Path, rng=None) -> Path:
    """VOCdevkit/VOC2012: JPEGImages/*.jpg, SegmentationClass/*.png, SBD's SegmentationClassAug/*.png and
    ImageSets/Segmentation/{train,val,aug}.txt (aug: SBD's images outside VOC's train and val, as mmseg writes it)."""
    rng = rng or np.random.default_rng(1)
    base = root / "VOCdevkit" / "VOC2012"
    lists = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"], "aug": ["2008_000002", "2008_000003"]}
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True)
    for split, ids in lists.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            _image(rng).save(base / "JPEGImages" / f"{image_id}.jpg")
            label = np.zeros((16, 32), np.uint8)
            label[4:12, 8:20] = rng.integers(1, 21)
            label[3, 8:20] = 255  # the boundary band VOC draws around objects
            folders = ("SegmentationClassAug",) if split == "aug" else ("SegmentationClass", "SegmentationClassAug")
            for folder in folders:
                _voc_palette_png(label, base / folder / f"{image_id}.png")
    return root / "VOCdevkit"


def test_pascal_voc_with_sbd_loads_from_its_image_set_lists(tmp_path):
    root = voc_folder(tmp_path)
    data, info = load_segmentation_dataset(root, decode=False)
    assert sorted(data) == ["train", "trainaug", "validation"] and info["layout"] == "pascal_voc"
    assert [len(data[s]) for s in ("train", "trainaug", "validation")] == [2, 4, 1]
    assert info["id2label"] == load_label_set("pascal_voc")[0] and info["reduce_labels"] is False
    assert info["label_ids"] is None and "SegmentationClass" in info["label_ids_source"]
    labels = [Path(row["label"]["path"]) for row in data["trainaug"]]
    assert [p.parent.name for p in labels] == ["SegmentationClass"] * 2 + ["SegmentationClassAug"] * 2
    _, label, _ = decode_example(data["validation"][0]["image"], data["validation"][0]["label"], 0)
    assert 255 in label and label.max() == 255 and set(np.unique(label)) - {255} <= set(range(21))  # indices, no RGB

    (root / "VOC2012" / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.raises(ValueError, match=r"train.txt: 1 image\(s\) missing in .*JPEGImages: \['2007_000039'\]"):
        load_segmentation_dataset(root)


def pascal_context_folder(root: Path, raw: bool, rng=None) -> Path:
    """VOC2010/JPEGImages + ImageSets/SegmentationContext/{train,val}.txt, with mmseg's SegmentationClassContext PNGs
    (60-class ids) or the 459-class release's trainval/*.mat (``LabelMap``)."""
    from scipy.io import savemat

    rng = rng or np.random.default_rng(2)
    base = root / "VOC2010"
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (base / "JPEGImages").mkdir()
    (base / ("trainval" if raw else "SegmentationClassContext")).mkdir()
    for split, ids in (("train", ["2008_000002", "2008_000003"]), ("val", ["2008_000008"])):
        (base / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for image_id in ids:
            _image(rng).save(base / "JPEGImages" / f"{image_id}.jpg")
            if raw:
                savemat(base / "trainval" / f"{image_id}.mat",
                        {"LabelMap": rng.choice([2, 9, 284, 360, 458, 1, 100], (16, 32)).astype(np.uint16)})
            else:
                Image.fromarray(rng.integers(0, 60, (16, 32), dtype=np.uint8)).save(
                    base / "SegmentationClassContext" / f"{image_id}.png")
    return base


def test_pascal_context_60_59_and_the_459_class_release(tmp_path):
    base = pascal_context_folder(tmp_path / "prepared", raw=False)
    data, info = load_segmentation_dataset(base.parent, decode=False)
    assert sorted(data) == ["train", "validation"] and info["layout"] == "pascal_context"
    assert len(info["id2label"]) == 60 and info["reduce_labels"] is False and info["label_ids"] is None
    _, info59 = load_segmentation_dataset(base, id2label="pascal_context_59")
    assert len(info59["id2label"]) == 59 and info59["reduce_labels"] is True  # background ignored, k -> k - 1

    raw = pascal_context_folder(tmp_path / "raw", raw=True)
    data, info = load_segmentation_dataset(raw, decode=False)
    assert info["label_ids"] == "pascal_context_459" and "trainval/*.mat" in info["label_ids_source"]
    assert isinstance(data["train"].features["label"], datasets.Value) and data["train"][0]["label"].endswith(".mat")
    _, label, _ = decode_example(data["train"][0]["image"], data["train"][0]["label"], 0, info["label_ids"])
    names = load_label_set("pascal_context_60")[0]
    assert {names[int(v)] for v in np.unique(label)} <= {"background", "aeroplane", "bag", "person", "sky", "wood"}
    assert [names[v] for v in apply_label_ids(np.array([2, 9, 284, 360, 458, 1, 100]), "pascal_context_459")] == [
        "aeroplane", "bag", "person", "sky", "wood", "background", "background"]  # 459 ids 1 and 100: not among the 59


def coco_stuff_folder(root: Path, prepared: bool, rng=None) -> Path:
    """images/{train2017,val2017}/*.jpg + annotations/{train2017,val2017}/*.png (the raw stuffthingmaps), with mmseg's
    *_labelTrainIds.png written beside them when ``prepared`` (its converter writes into the same folder)."""
    rng = rng or np.random.default_rng(3)
    raw_ids = np.array([0, 1, 12, 26, 90 - 1, 91, 150, 181, 255], np.uint8)  # person, bicycle, ..., wood, unlabelled
    for split, count in (("train2017", 2), ("val2017", 1)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for index in range(count):
            stem = f"{index + 9:012d}"
            _image(rng).save(root / "images" / split / f"{stem}.jpg")
            label = rng.choice(raw_ids, (16, 32)).astype(np.uint8)
            Image.fromarray(label).save(root / "annotations" / split / f"{stem}.png")
            if prepared:
                train = apply_label_ids(label.astype(np.int64), "coco_stuff164k").astype(np.uint8)
                Image.fromarray(train).save(root / "annotations" / split / f"{stem}_labelTrainIds.png")
    return root


def test_coco_stuff_164k_raw_maps_and_mmsegs_label_train_ids(tmp_path):
    raw = coco_stuff_folder(tmp_path / "raw", prepared=False)
    _, info = load_segmentation_dataset(raw, decode=False)  # <image>.png: any folder's names, so not detected
    assert info["layout"] is None and info["label_ids"] is None and info["id2label"] is None
    with pytest.raises(ValueError, match=r"values \[181\].*pass --label_ids coco_stuff164k"):
        names = DataLabels(load_label_set("coco_stuff")[0], "asked")
        decide_labels(names, load_segmentation_dataset(raw)[0]["train2017"], "label", "train2017", None, False,
                      from_checkpoint=False, reduce_labels=None)
    data, info = load_segmentation_dataset(raw, decode=False, label_ids="coco_stuff164k")
    assert sorted(data) == ["train", "validation"] and info["layout"] == "coco_stuff164k"
    assert info["label_ids"] == "coco_stuff164k" and len(info["id2label"]) == 171 and info["reduce_labels"] is False
    prepared = coco_stuff_folder(tmp_path / "prepared", prepared=True)
    data_p, info_p = load_segmentation_dataset(prepared, decode=False)
    assert info_p["label_ids"] is None and data_p["train"][0]["label"]["path"].endswith("_labelTrainIds.png")
    for a, b in zip(data["train"], data_p["train"]):
        assert (decode_example(a["image"], a["label"], 0, "coco_stuff164k")[1] == decode_example(
            b["image"], b["label"], 0)[1]).all()


def test_coco_stuff_10k_release_layout(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(4)
    root = tmp_path / "cocostuff-10k-v1.1"
    for folder in ("images", "annotations", "imageLists"):
        (root / folder).mkdir(parents=True)
    for split, names in (("train", ["COCO_train2014_000000000077", "COCO_train2014_000000000078"]),
                         ("test", ["COCO_train2014_000000000139"])):
        (root / "imageLists" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            _image(rng).save(root / "images" / f"{name}.jpg")
            savemat(root / "annotations" / f"{name}.mat", {"S": rng.choice([0, 1, 13, 182], (16, 32)).astype(np.uint8)})
    data, info = load_segmentation_dataset(root, decode=False)
    assert sorted(data) == ["test", "train"] and info["layout"] == "coco_stuff10k"
    assert info["label_ids"] == "coco_stuff10k" and info["reduce_labels"] is True and len(info["id2label"]) == 171
    counts = scan_label_values(data["train"], "label", reduce_labels=True, label_ids="coco_stuff10k", progress=False)
    assert np.flatnonzero(counts).tolist() == [0, 11, 170]  # person, traffic light (13 -> 12 -> 11), wood


def test_value_range_detection_in_a_plain_folder_of_cityscapes_classes(tmp_path):
    rng = np.random.default_rng(5)
    for split in ("train", "validation"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
        for index in range(3):
            _image(rng).save(tmp_path / "images" / split / f"{index}.png")
            Image.fromarray(rng.choice(CITYSCAPES_IDS, (16, 32)).astype(np.uint8)).save(
                tmp_path / "annotations" / split / f"{index}.png")
    _, info = load_segmentation_dataset(tmp_path, id2label="cityscapes")
    assert info["label_ids"] == "cityscapes" and info["label_ids_source"].startswith("the value range")
    _, info = load_segmentation_dataset(tmp_path)  # no Cityscapes classes: the maps are the user's own
    assert info["label_ids"] is None and info["label_ids_source"] is None
    _, info = load_segmentation_dataset(tmp_path, id2label="cityscapes", label_ids="none")
    assert info["label_ids"] is None and info["label_ids_source"] == "asked"


def test_evaluation_takes_the_asked_then_the_files_then_the_saved_label_ids():
    def info(label_ids=None, source=None):
        return {"label_ids": label_ids, "label_ids_source": source, "id2label": None, "label_column": "label"}

    assert evaluation_label_ids(info(), "cityscapes", None, None) == ("cityscapes", None)  # the saved one, silently
    assert evaluation_label_ids(info("cityscapes", "the file names (x)"), "cityscapes", None, None) == (
        "cityscapes", None)
    found, line = evaluation_label_ids(info(None, "the file names (*_gtFine_labelTrainIds.png)"), "cityscapes", None,
                                       None)
    assert found is None and "hold training ids" in line and "saved with label_ids='cityscapes'" in line
    found, line = evaluation_label_ids(info(None, "asked"), "cityscapes", None, None)
    assert found is None and "label_ids=none as asked, although the model was saved with label_ids=cityscapes" in line


def test_a_saved_model_evaluates_raw_label_ids_with_its_saved_table(tmp_path, capsys):
    """The seam: `config.label_ids` in a saved folder makes `evaluate_model` read *_gtFine_labelIds.png as train ids,
    exactly as mmseg's *_gtFine_labelTrainIds.png of the same frames."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 1, 1],
                             decoder_hidden_size=16, id2label=load_label_set("cityscapes")[0])
    model = SegformerForSemanticSegmentation(config).eval()
    processor = hf_seg.create_image_processor("segformer-b0-cityscapes-512x1024", size={"shortest_edge": 64,
                                                                                          "longest_edge": 128})
    model.config.label_ids = "cityscapes"
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["label_ids"] == "cityscapes"

    root = cityscapes_folder(tmp_path / "cityscapes", train_ids=True)
    plain = tmp_path / "plain"  # the same label-id maps in a plain folder: no file-name evidence, the saved table
    for split in ("train", "val"):
        (plain / "images" / split).mkdir(parents=True)
        (plain / "annotations" / split).mkdir(parents=True)
        for path in sorted((root / "leftImg8bit" / split).glob("*/*.png")):
            stem = path.name[: -len("_leftImg8bit.png")]
            (plain / "images" / split / f"{stem}.png").write_bytes(path.read_bytes())
            (plain / "annotations" / split / f"{stem}.png").write_bytes(
                (path.parent.parent.parent.parent / "gtFine" / split / path.parent.name /
                 f"{stem}_gtFine_labelIds.png").read_bytes())
    from hf_seg.training.evaluation import json_ready

    from_plain = json_ready(evaluate_model(str(tmp_path / "model"), str(plain), split="val"))
    assert "hf_seg:" not in capsys.readouterr().err  # the saved table, applied silently
    prepared = json_ready(evaluate_model(str(tmp_path / "model"), str(root)))  # mmseg's labelTrainIds files
    assert "the label maps hold training ids (the file names (*_gtFine_labelTrainIds.png)), although the model was " \
           "saved with label_ids='cityscapes': they are read as they are" in capsys.readouterr().err
    raw = json_ready(evaluate_model(str(tmp_path / "model"), str(root), label_ids="cityscapes"))
    assert from_plain == prepared == raw and from_plain["num_examples"] == 2

    data, _ = load_segmentation_dataset(root, split="validation", label_ids="cityscapes")
    direct = evaluate_segmentation(model, processor, data, label_ids="cityscapes", id2label=model.config.id2label)
    assert json_ready(direct) == prepared
