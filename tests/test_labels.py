from importlib import resources

import pytest

from hf_seg.labels import LABEL_SETS, load_label_set

EXPECTED_SIZES = {"ade20k": 150, "cityscapes": 19, "pascal_context_60": 60, "pascal_context_59": 59, "coco_stuff": 171,
                  "pascal_voc": 21}


def test_label_set_files_match_names():
    files = {p.name for p in resources.files("hf_seg.labels").iterdir() if p.name.endswith(".json")}
    assert files == {f"{name}.json" for name in LABEL_SETS}
    assert set(EXPECTED_SIZES) == set(LABEL_SETS)


@pytest.mark.parametrize("name", LABEL_SETS)
def test_label_set_shape(name):
    id2label, palette = load_label_set(name)
    assert list(id2label) == list(range(EXPECTED_SIZES[name]))
    assert len(palette) == EXPECTED_SIZES[name]
    assert len(set(id2label.values())) == len(id2label), "duplicate class names"
    assert all(len(rgb) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgb) for rgb in palette)


def test_known_entries():
    ade, ade_palette = load_label_set("ade20k")
    assert (ade[0], ade_palette[0]) == ("wall", (120, 120, 120))
    assert ade[7] == "bed "  # trailing space, as in every source code base
    assert (ade[149], ade_palette[149]) == ("flag", (92, 0, 255))

    city, city_palette = load_label_set("cityscapes")
    assert (city[0], city_palette[0]) == ("road", (128, 64, 128))
    assert (city[18], city_palette[18]) == ("bicycle", (119, 11, 32))

    pc60, pc60_palette = load_label_set("pascal_context_60")
    pc59, pc59_palette = load_label_set("pascal_context_59")
    assert pc60[0] == "background" and pc60[1] == "aeroplane" and pc60[59] == "wood"
    assert pc59_palette == pc60_palette[1:]
    assert list(pc59.values()) == list(pc60.values())[1:]

    coco, coco_palette = load_label_set("coco_stuff")
    assert (coco[0], coco[79], coco[80], coco[170]) == ("person", "toothbrush", "banner", "wood")  # 80 things, 91 stuff
    voc, voc_palette = load_label_set("pascal_voc")
    assert (voc[0], voc_palette[0], voc[20], voc_palette[20]) == ("background", (0, 0, 0), "tvmonitor", (0, 64, 128))


def test_unknown_label_set():
    with pytest.raises(KeyError, match="valid names: ade20k, cityscapes"):
        load_label_set("coco")


def test_results_are_independent_copies():
    id2label, palette = load_label_set("cityscapes")
    id2label[0] = "changed"
    palette.clear()
    assert load_label_set("cityscapes")[0][0] == "road"
    assert len(load_label_set("cityscapes")[1]) == 19


DATASET_CLASSES = {
    "ade20k": "ADE20KDataset",
    "cityscapes": "CityscapesDataset",
    "pascal_context_60": "PascalContextDataset",
    "pascal_context_59": "PascalContextDataset59",
    "coco_stuff": "COCOStuffDataset",
    "pascal_voc": "PascalVOCDataset",
}


@pytest.mark.parametrize("name", LABEL_SETS)
def test_label_sets_match_mmsegmentation(name):
    from mmseg_reference import import_mmseg

    mmseg = import_mmseg()
    metainfo = getattr(mmseg.datasets, DATASET_CLASSES[name]).METAINFO
    id2label, palette = load_label_set(name)
    assert list(id2label.values()) == list(metainfo["classes"])
    assert palette == [tuple(rgb) for rgb in metainfo["palette"]]
