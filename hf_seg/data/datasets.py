"""The data sets the papers and their successors train with: their on-disk layouts, label-id tables and detection.

Everything hf_seg knows about a particular data set beyond its class names and palette (those are the label-set
files in ``hf_seg/labels/``) lives here:

- **label-id tables** (`LABEL_ID_TABLES`): data sets whose distributed label maps do not hold the training ids:

  ============================  ==============================================================================
  ``cityscapes``                ``*_gtFine_labelIds.png``: the 34 official ids (and -1, license plate) -> the 19
                                train ids or 255, as ``cityscapesscripts.helpers.labels`` defines them
  ``coco_stuff164k``            the raw ``stuffthingmaps`` PNGs: 182 ids (0-based; 11 unused) + 255 -> 171 classes,
                                as mmsegmentation's ``tools/dataset_converters/coco_stuff164k.py`` (never detected:
                                the raw maps are named as any folder's; ``--label_ids coco_stuff164k``)
  ``coco_stuff10k``             the raw ``.mat`` maps (``S``, 1-based, 0 = unlabelled) -> 0 (unlabelled) and
                                1..171, as ``coco_stuff10k.py``; the data set's reduce-labels then gives 0..170
  ``pascal_context_459``        the 459-class release (``trainval/*.mat``, ``LabelMap``) -> the 60-class ids of
                                ``pascal_context.py`` (background 0 + 59 classes; every other class is background);
                                the 59-class setting is reduce-labels on top
  ============================  ==============================================================================

  A table is a lookup table applied once, when a label map is decoded (``lut[label]``: the training transform, the
  label scan and the evaluation), before reduce-labels. Values a table does not define are refused, naming them
  (mmsegmentation's COCO-Stuff converters would leave them unchanged, i.e. silently alias another class).
- **layouts** (`find_layout`): the folder structures as mmsegmentation expects them, each with its data set's rule
  for pairing images and label maps (Cityscapes ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` +
  ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` or ``*_gtFine_labelIds.png``; Pascal VOC ``JPEGImages`` +
  ``SegmentationClass`` (+ SBD's ``SegmentationClassAug``) + ``ImageSets/Segmentation/*.txt``; Pascal Context
  ``JPEGImages`` + ``SegmentationClassContext`` or the raw ``trainval/*.mat`` + ``ImageSets/SegmentationContext``;
  COCO-Stuff ``images/<split>`` + ``annotations/<split>/*_labelTrainIds.png`` or the raw maps).
- **detection** of label ids: from the file names (``*_gtFine_labelIds.png``; the ``.mat`` files of COCO-Stuff 10k's
  and PASCAL-Context's releases) or from the value range (values above the classes' range in a data set whose
  classes are the table's: `detect_label_ids`); what decides is said in one line by ``hf-seg train`` / ``evaluate``.

The decision is saved with a trained model (``config.label_ids``, ``recipe.json``) and applied again by
``hf-seg evaluate``; `train_ids_to_label_ids` is the inverse (for writing predictions in a data set's own ids).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: the value ``--label_ids`` takes to read label maps as they are
NO_LABEL_IDS = "none"


# ------------------------------------------------------------------------------------------------ label-id tables


@dataclass(frozen=True)
class LabelIdTable:
    """One data set's raw label id -> training id table (255: ignored)."""

    name: str
    label_sets: tuple[str, ...]  # the bundled label sets whose classes the training ids index
    mapping: Mapping[int, int]
    description: str  # "Cityscapes label ids", said in messages
    source: str  # where the table comes from
    detect_above: int | None = None  # value-range detection: raw maps hold values above this, training-id maps never

    @functools.cached_property
    def lut(self) -> np.ndarray:
        """The lookup table over 0..max raw id (int64, read-only); -1 marks values that are no raw id."""
        size = max(key for key in self.mapping if key >= 0) + 1
        lut = np.full(size, -1, dtype=np.int64)
        for raw, train in self.mapping.items():
            if raw >= 0:
                lut[raw] = train
        lut.flags.writeable = False
        return lut

    def apply(self, label: np.ndarray, where: str = "", name: str | None = None) -> np.ndarray:
        """``lut[label]`` for an integer label map; values that are no raw id are a ValueError naming them."""
        lut = self.lut
        label = np.asarray(label)
        if label.size and (label.min() < 0 or label.max() >= len(lut)):
            bad = np.unique(label[(label < 0) | (label >= len(lut))])
        else:
            mapped = lut[label]
            if not label.size or mapped.min() >= 0:
                return mapped
            bad = np.unique(label[mapped < 0])
        raise ValueError(
            f"{where}{f' ({name})' if name else ''}: label values {bad[:10].tolist()} are not {self.description} "
            f"(label_ids={self.name!r}, {self.source}); pass --label_ids {NO_LABEL_IDS} if these maps hold training "
            "ids already"
        )

    def inverse(self) -> dict[int, int]:
        """Training id -> raw id: the smallest raw id with that training id (for Cityscapes that is the label
        ``cityscapesscripts`` defines first, as its ``trainId2label``; 255 -> 0 'unlabeled')."""
        inverse: dict[int, int] = {}
        for raw, train in sorted(self.mapping.items()):
            if raw >= 0:
                inverse.setdefault(train, raw)
        return inverse


# cityscapesscripts/helpers/labels.py `labels`: (name, id, trainId); trainId 255 and -1 are not trained on.
_CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
    ("license plate", -1, -1),
)


def _cityscapes_mapping() -> dict[int, int]:
    mapping = {label_id: 255 if train_id < 0 else train_id for _, label_id, train_id in _CITYSCAPES_LABELS}
    mapping[255] = 255  # the license plate's -1 as an 8-bit PNG stores it
    return mapping


# COCO-Stuff's raw ids are COCO's category ids minus 1 (0..90 things, 91..181 stuff); these 11 belong to no category.
# mmsegmentation's converters map the other 171, in increasing order, to 0..170 (164k: 0-based, 255 unlabelled) and
# to 1..171 (10k: 1-based, 0 unlabelled, which its LoadAnnotations(reduce_zero_label=True) then ignores).
_COCO_STUFF_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
_COCO_STUFF_IDS = tuple(raw for raw in range(182) if raw not in _COCO_STUFF_UNUSED_IDS)


def _coco_stuff_mapping(one_based: bool) -> dict[int, int]:
    if one_based:
        return {0: 0, **{raw + 1: index + 1 for index, raw in enumerate(_COCO_STUFF_IDS)}, 255: 255}
    return {**{raw: index for index, raw in enumerate(_COCO_STUFF_IDS)}, 255: 255}


# mmsegmentation tools/dataset_converters/pascal_context.py `_mapping` (sorted): the 59 classes' ids among the 459
# of the PASCAL-Context release; they become 1..59 in this order, background (0) and every other class 0.
_PASCAL_CONTEXT_59_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158, 159,
    162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397,
    415, 416, 420, 424, 427, 440, 445, 454, 458,
)


def _pascal_context_mapping() -> dict[int, int]:
    mapping = dict.fromkeys(range(460), 0)
    mapping.update({raw: index + 1 for index, raw in enumerate(_PASCAL_CONTEXT_59_IDS)})
    return mapping


LABEL_ID_TABLES: dict[str, LabelIdTable] = {
    table.name: table
    for table in (
        LabelIdTable("cityscapes", ("cityscapes",), _cityscapes_mapping(), "Cityscapes label ids",
                     "cityscapesscripts' id -> trainId table", detect_above=18),
        LabelIdTable("coco_stuff164k", ("coco_stuff",), _coco_stuff_mapping(one_based=False),
                     "raw COCO-Stuff 164k ids", "mmsegmentation's coco_stuff164k.py conversion"),
        LabelIdTable("coco_stuff10k", ("coco_stuff",), _coco_stuff_mapping(one_based=True),
                     "raw COCO-Stuff 10k ids", "mmsegmentation's coco_stuff10k.py conversion"),
        LabelIdTable("pascal_context_459", ("pascal_context_60", "pascal_context_59"), _pascal_context_mapping(),
                     "PASCAL-Context 459-class ids", "mmsegmentation's pascal_context.py 459 -> 60 mapping",
                     detect_above=59),
    )
}


def get_label_id_table(name: str) -> LabelIdTable:
    if name not in LABEL_ID_TABLES:
        raise ValueError(f"unknown label_ids {name!r}; valid: {', '.join(LABEL_ID_TABLES)} or {NO_LABEL_IDS!r}")
    return LABEL_ID_TABLES[name]


def check_label_ids(value) -> str | None:
    """``None`` (decide from the data), ``"none"`` (read the maps as they are) or a table name; else ValueError."""
    if value is None:
        return None
    value = str(value)
    if value.lower() == NO_LABEL_IDS:
        return NO_LABEL_IDS
    return get_label_id_table(value).name


def apply_label_ids(label: np.ndarray, label_ids: str | None, where: str = "", name: str | None = None) -> np.ndarray:
    """The training ids of a decoded label map (``label_ids`` None or "none": the map as it is)."""
    if label_ids is None or label_ids == NO_LABEL_IDS:
        return label
    return get_label_id_table(label_ids).apply(label, where, name)


def train_ids_to_label_ids(train_ids, label_ids: str = "cityscapes") -> np.ndarray:
    """A map of training ids (a prediction) in the data set's own ids, e.g. Cityscapes' label ids for its evaluation
    server (train id k -> the label with trainId k; 255 -> 0 'unlabeled'). Values with no raw id are a ValueError."""
    table = get_label_id_table(label_ids)
    inverse = table.inverse()
    lut = np.full(max(inverse) + 1, -1, dtype=np.int64)
    for train, raw in inverse.items():
        lut[train] = raw
    train_ids = np.asarray(train_ids, dtype=np.int64)
    bad = (train_ids < 0) | (train_ids >= len(lut))
    if not bad.any():
        out = lut[train_ids]
        bad = out < 0
        if not bad.any():
            return out
    raise ValueError(f"training ids {np.unique(train_ids[bad])[:10].tolist()} have no {table.description} "
                     f"(label_ids={table.name!r})")


def describe_label_ids(label_ids: str, source: str) -> str:
    """The line said when label ids were detected."""
    table = get_label_id_table(label_ids)
    return (f"the label maps hold {table.description} ({source}): each is mapped once, as it is decoded, by "
            f"{table.source} (label_ids={table.name!r}, saved with the model); --label_ids {NO_LABEL_IDS} reads them "
            "as they are")


def detect_label_ids(dataset, label_column: str, id2label: Mapping[int, str] | None, split: str = "train",
                     max_maps: int = 8) -> tuple[str, str] | None:
    """``(table name, reason)`` when ``dataset``'s classes are a table's label set and one of up to ``max_maps``
    evenly spaced label maps (a stream's first ``max_maps``) holds a value above the classes' range other than 255;
    else None."""
    from datasets import IterableDataset

    from ..labels import load_label_set
    from .labels import _label_array

    streamed = isinstance(dataset, IterableDataset)
    if not id2label or (not streamed and len(dataset) == 0):
        return None
    names = [id2label[index] for index in sorted(id2label)]
    tables = [table for table in LABEL_ID_TABLES.values() if table.detect_above is not None and any(
        names == list(load_label_set(label_set)[0].values()) for label_set in table.label_sets)]
    if not tables:
        return None
    column = dataset.select_columns([label_column]) if hasattr(dataset, "select_columns") else dataset
    if streamed:
        rows = enumerate(column.take(max_maps))
    else:
        picks = sorted({int(i) for i in np.linspace(0, len(column) - 1, num=min(max_maps, len(column)))})
        rows = ((index, column[index]) for index in picks)
    highest = -1
    for index, row in rows:
        label = _label_array(row[label_column], f"{split} example {index}")
        values = label[label != 255]
        if values.size:
            highest = max(highest, int(values.max()))
    maps = f"the first {max_maps} label maps of split {split!r} hold" if streamed else f"split {split!r} holds"
    for table in tables:
        if highest > table.detect_above:
            return table.name, (f"the value range: {maps} label values up to {highest}, above the "
                                f"{table.detect_above + 1} classes' 0..{table.detect_above}")
    return None



def evaluation_label_ids(info: Mapping, saved: str | None, dataset, model_id2label: Mapping[int, str] | None,
                         split: str = "validation") -> tuple[str | None, str | None]:
    """The label-id table to evaluate a saved model with, and a line to say (None: nothing to say). In this order:
    what was asked (``info`` of `load_segmentation_dataset`); what the data's files or value range say; the model's
    saved ``config.label_ids`` (``saved``); the value range read with the model's classes, when the data names none."""
    found, source = info["label_ids"], info["label_ids_source"]
    if source == "asked":
        if found != saved:
            return found, (f"label_ids={found or NO_LABEL_IDS} as asked, although the model was saved with "
                           f"label_ids={saved or NO_LABEL_IDS}")
        return found, None
    if source is not None:
        if found == saved:
            return found, None
        if found:
            saved_note = f"; the model was saved with label_ids={saved!r}" if saved else ""
            return found, describe_label_ids(found, source) + saved_note
        return None, (f"the label maps hold training ids ({source}), although the model was saved with "
                      f"label_ids={saved!r}: they are read as they are")
    if saved:
        return saved, None
    detected = detect_label_ids(dataset, info["label_column"], model_id2label, split) if info["id2label"] is None \
        else None
    return (detected[0], describe_label_ids(*detected)) if detected else (None, None)

# ------------------------------------------------------------------------------------------------ layouts

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Layout:
    """A data set found on disk in its own layout: the pairs of each split and what its label files hold."""

    name: str  # "cityscapes", "pascal_voc", "pascal_context", "coco_stuff164k", "coco_stuff10k"
    description: str
    root: Path
    label_set: str
    reduce_labels: bool
    splits: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # split -> {"image": [...], "label": [...]}
    label_ids: str | None = None  # the table the chosen label files need (None: they hold training ids)
    label_ids_source: str = ""  # which files say so

    def dataset_dict(self):
        import datasets

        mat = any(path.endswith(".mat") for pairs in self.splits.values() for path in pairs["label"])
        features = datasets.Features({
            "image": datasets.Image(), "label": datasets.Value("string") if mat else datasets.Image()})
        return datasets.DatasetDict(
            {split: datasets.Dataset.from_dict(pairs, features=features) for split, pairs in self.splits.items()})


def _split_name(name: str) -> str:
    """The Hub's split names for the data sets' own ("val" -> "validation")."""
    return {"val": "validation"}.get(name, name)


def _pairs(images: dict, labels: dict, where: str) -> dict[str, list[str]]:
    """Images and label maps paired by key; images or maps without a partner are a ValueError naming them."""
    only_images = sorted(set(images) - set(labels))
    only_labels = sorted(set(labels) - set(images))
    if only_images or only_labels:
        parts = []
        if only_images:
            parts.append(f"{len(only_images)} image(s) without a label map: {[str(k) for k in only_images[:10]]}")
        if only_labels:
            parts.append(f"{len(only_labels)} label map(s) without an image: {[str(k) for k in only_labels[:10]]}")
        raise ValueError(f"{where}: " + "; ".join(parts))
    keys = sorted(images)
    return {"image": [str(images[k]) for k in keys], "label": [str(labels[k]) for k in keys]}


def _with_suffix(folder: Path, suffix: str, pattern: str = "*") -> dict:
    """``{key: path}`` of the files ``folder/pattern + suffix``; key: the path below ``folder`` without the suffix."""
    found = {}
    for path in sorted(folder.glob(pattern + suffix)):
        if path.is_file():
            found[str(path.relative_to(folder))[: -len(suffix)]] = path
    return found


def _choose(complete, asked: str | None, raw_table: str, files: dict[str, str], where: str):
    """Which label files of a data set to read, ``("train" | "raw" | None, label_ids)``: the training-id files
    (mmsegmentation's default suffix) unless only the raw ones are complete or the raw ids are asked for (then the
    raw files, which must exist). ``complete(kind)``: every image has a label file of that kind."""
    if asked not in (None, NO_LABEL_IDS, raw_table):
        raise ValueError(f"{where}: label_ids {asked!r} does not apply to this data set (its raw ids: {raw_table!r})")
    if asked == raw_table:
        if complete("raw"):
            return "raw", raw_table
        if complete("train"):
            raise ValueError(f"{where}: label_ids {raw_table!r} asked, but the folder holds the training-id files "
                             f"({files['train']}), not the raw ones ({files['raw']})")
        return None, None
    for kind in ("train", "raw"):
        if complete(kind):
            return kind, raw_table if kind == "raw" and asked is None else None
    return None, None


def _cityscapes(root: Path, asked: str | None) -> Layout | None:
    images_root, labels_root = root / "leftImg8bit", root / "gtFine"
    if not (images_root.is_dir() and labels_root.is_dir()):
        return None
    suffixes = {"train": "_gtFine_labelTrainIds.png", "raw": "_gtFine_labelIds.png"}
    found = {}
    for split_dir in sorted(p for p in images_root.iterdir() if p.is_dir()):
        if not (labels_root / split_dir.name).is_dir():
            continue  # e.g. leftImg8bit/test without its (dummy) labels
        images = _with_suffix(split_dir, "_leftImg8bit.png", "*/*")
        labels = {kind: _with_suffix(labels_root / split_dir.name, suffix, "*/*") for kind, suffix in suffixes.items()}
        found[split_dir.name] = (images, labels)
    if not found:
        raise ValueError(f"{root}: Cityscapes layout (leftImg8bit/ + gtFine/) without a split present in both")

    def complete(kind):
        return all(images and set(images) <= set(labels[kind]) for images, labels in found.values())

    kind, label_ids = _choose(complete, asked, "cityscapes", {k: f"*{s}" for k, s in suffixes.items()}, f"{root}")
    if kind is None:  # name what is missing for the kind there is most of
        kind = max(suffixes, key=lambda k: sum(len(labels[k]) for _, labels in found.values()))
    splits = {
        _split_name(name): _pairs(images, labels[kind], f"{root}: Cityscapes split {name!r} (leftImg8bit/{name}/*/"
                                  f"*_leftImg8bit.png vs gtFine/{name}/*/*{suffixes[kind]})")
        for name, (images, labels) in found.items()
    }
    return Layout("cityscapes", "Cityscapes", root, "cityscapes", False, splits, label_ids,
                  f"the file names (*{suffixes[kind]})")


def _read_list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _listed(ids, image_dir: Path, image_suffix: str, label_dir: Path, label_suffix: str, where: str):
    """Pairs of the ids a split list names; None when none of them has a label map (an unlabelled test split)."""
    images = {i: image_dir / f"{i}{image_suffix}" for i in ids}
    labels = {i: label_dir / f"{i}{label_suffix}" for i in ids}
    have = {i for i, path in labels.items() if path.is_file()}
    if not have:
        return None
    missing_images = [i for i, path in images.items() if not path.is_file()]
    missing_labels = [i for i in ids if i not in have]
    if missing_images or missing_labels:
        parts = []
        if missing_images:
            parts.append(f"{len(missing_images)} image(s) missing in {image_dir}: {missing_images[:10]}")
        if missing_labels:
            parts.append(f"{len(missing_labels)} label map(s) missing in {label_dir}: {missing_labels[:10]}")
        raise ValueError(f"{where}: " + "; ".join(parts))
    return {"image": [str(images[i]) for i in ids], "label": [str(labels[i]) for i in ids]}


def _descend(root: Path, marker, *names: str) -> Path | None:
    """``root`` or the first of ``root/name`` ... (e.g. VOCdevkit/VOC2012) for which ``marker(path)`` holds."""
    for candidate in (root, *(root / name for name in names)):
        if candidate.is_dir() and marker(candidate):
            return candidate
    return None


def _is_pascal_voc(path: Path) -> bool:
    return all((path / name).is_dir() for name in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"))


def _is_pascal_context(path: Path) -> bool:
    return (path / "JPEGImages").is_dir() and (path / "ImageSets" / "SegmentationContext").is_dir()


def _pascal_voc(root: Path, asked: str | None) -> Layout | None:
    base = _descend(root, _is_pascal_voc, "VOC2012", "VOCdevkit/VOC2012")
    if base is None:
        return None
    if asked not in (None, NO_LABEL_IDS):
        raise ValueError(f"{base}: label_ids {asked!r} does not apply to Pascal VOC (its maps hold the class ids)")
    lists = base / "ImageSets" / "Segmentation"
    splits = {}
    for list_file in sorted(lists.glob("*.txt")):
        if list_file.stem in ("aug", "trainaug"):
            continue
        pairs = _listed(_read_list(list_file), base / "JPEGImages", ".jpg", base / "SegmentationClass", ".png",
                        f"{base}: Pascal VOC split list {list_file.name}")
        if pairs is not None:
            splits[_split_name(list_file.stem)] = pairs
    # mmsegmentation's voc12aug training set: VOC's train list + SBD's extra images (aug.txt) in SegmentationClassAug
    if (lists / "aug.txt").is_file() and (base / "SegmentationClassAug").is_dir() and "train" in splits:
        aug = _listed(_read_list(lists / "aug.txt"), base / "JPEGImages", ".jpg", base / "SegmentationClassAug",
                      ".png", f"{base}: Pascal VOC + SBD list aug.txt")
        if aug is not None:
            splits["trainaug"] = {key: splits["train"][key] + aug[key] for key in ("image", "label")}
    if not splits:
        raise ValueError(f"{base}: Pascal VOC layout without a split list whose label maps exist ({lists}/*.txt)")
    return Layout("pascal_voc", "Pascal VOC 2012", base, "pascal_voc", False, splits, None,
                  "the layout (SegmentationClass/*.png hold the class ids)")


def _pascal_context(root: Path, asked: str | None) -> Layout | None:
    base = _descend(root, _is_pascal_context, "VOC2010", "VOCdevkit/VOC2010")
    if base is None:
        return None
    lists = sorted((base / "ImageSets" / "SegmentationContext").glob("*.txt"))
    label_dirs = {"train": (base / "SegmentationClassContext", ".png"), "raw": (base / "trainval", ".mat")}

    found: dict[str, dict | None] = {}

    def pairs_of(kind):  # read only when asked for: a partial kind that is not chosen raises nothing
        if kind not in found:
            folder, suffix = label_dirs[kind]
            splits = {}
            if folder.is_dir():
                for list_file in lists:
                    pairs = _listed(_read_list(list_file), base / "JPEGImages", ".jpg", folder, suffix,
                                    f"{base}: Pascal Context split list {list_file.name}")
                    if pairs is not None:
                        splits[_split_name(list_file.stem)] = pairs
            found[kind] = splits or None
        return found[kind]

    kind, label_ids = _choose(lambda k: pairs_of(k) is not None, asked, "pascal_context_459",
                              {"train": "SegmentationClassContext/*.png", "raw": "trainval/*.mat"}, f"{base}")
    if kind is None:
        raise ValueError(f"{base}: Pascal Context layout without label maps for its split lists (expected "
                         "SegmentationClassContext/*.png as mmsegmentation's converter writes them, or the "
                         "459-class release's trainval/*.mat)")
    source = "the file names (trainval/*.mat: the 459-class release)" if kind == "raw" else (
        "the layout (SegmentationClassContext/*.png hold the 60-class ids)")
    return Layout("pascal_context", "Pascal Context", base, "pascal_context_60", False, found[kind], label_ids, source)


_COCO_SPLITS = {"coco_stuff164k": ("train2017", "val2017"), "coco_stuff10k": ("train2014", "test2014")}


def _coco_stuff(root: Path, asked: str | None) -> Layout | None:
    images_root, labels_root = root / "images", root / "annotations"
    if not (images_root.is_dir() and labels_root.is_dir()):
        return None
    for name, split_names in _COCO_SPLITS.items():
        present = [s for s in split_names if (images_root / s).is_dir() and (labels_root / s).is_dir()]
        if present:
            break
    else:
        if (root / "imageLists" / "train.txt").is_file() and any(labels_root.glob("*.mat")):
            return _coco_stuff10k_raw(root, asked)
        return None
    found = {}
    for split in present:
        images = {}
        for suffix in (".jpg", ".png"):
            images.update(_with_suffix(images_root / split, suffix))
        prepared = _with_suffix(labels_root / split, "_labelTrainIds.png")
        raw = {k: v for k, v in _with_suffix(labels_root / split, ".png").items() if not k.endswith("_labelTrainIds")}
        found[split] = (images, {"train": prepared, "raw": raw})

    def complete(kind):
        return all(images and set(images) <= set(labels[kind]) for images, labels in found.values())

    if not complete("train") and asked != name:
        # raw maps named <image>.png are what any images/ + annotations/ folder holds: read as COCO-Stuff's raw ids
        # only when asked (--label_ids coco_stuff164k); mmseg's *_labelTrainIds.png are unambiguous
        for split, (images, labels) in found.items():
            if labels["train"]:  # some prepared maps: name the missing ones
                _pairs(images, labels["train"], f"{root}: COCO-Stuff split {split!r} (*_labelTrainIds.png)")
        return None
    kind, label_ids = _choose(complete, asked, name, {"train": "*_labelTrainIds.png", "raw": "*.png"}, f"{root}")
    if kind is None:
        kind = "raw"
    splits = {_split_name({"train2017": "train", "val2017": "val", "train2014": "train", "test2014": "test"}[s]):
              _pairs(images, labels[kind], f"{root}: COCO-Stuff split {s!r}") for s, (images, labels) in found.items()}
    source = "the file names (*_labelTrainIds.png)" if kind == "train" else "the file names (raw *.png maps)"
    return Layout(name, "COCO-Stuff 164k" if name == "coco_stuff164k" else "COCO-Stuff 10k", root, "coco_stuff",
                  name == "coco_stuff10k", splits, label_ids, source)


def _coco_stuff10k_raw(root: Path, asked: str | None) -> Layout:
    """The 10k release as distributed: images/*.jpg, annotations/*.mat (``S``), imageLists/{train,test}.txt."""
    if asked not in (None, NO_LABEL_IDS, "coco_stuff10k"):
        raise ValueError(f"{root}: label_ids {asked!r} does not apply to COCO-Stuff 10k's raw .mat maps")
    splits = {}
    for list_file in sorted((root / "imageLists").glob("*.txt")):
        pairs = _listed(_read_list(list_file), root / "images", ".jpg", root / "annotations", ".mat",
                        f"{root}: COCO-Stuff 10k list {list_file.name}")
        if pairs is not None:
            splits[_split_name(list_file.stem)] = pairs
    return Layout("coco_stuff10k", "COCO-Stuff 10k", root, "coco_stuff", True, splits,
                  None if asked == NO_LABEL_IDS else "coco_stuff10k", "the file names (annotations/*.mat: the release)")


def find_layout(root, label_ids: str | None = None) -> Layout | None:
    """The data set whose layout the folder ``root`` has (None: none of them); ``label_ids`` (`check_label_ids`)
    chooses between a data set's raw and training-id label files. An incomplete layout is a ValueError naming the
    missing files."""
    root = Path(root)
    context = _descend(root, _is_pascal_context, "VOC2010", "VOCdevkit/VOC2010")
    voc = _descend(root, _is_pascal_voc, "VOC2012", "VOCdevkit/VOC2012")
    if context is not None and voc is not None and context != voc:
        raise ValueError(f"{root} holds Pascal Context ({context}) and Pascal VOC ({voc}); pass the folder to use")
    for finder in (_cityscapes, _pascal_context, _pascal_voc, _coco_stuff):
        layout = finder(root, label_ids)
        if layout is not None:
            return layout
    return None


def label_ids_from_file_names(paths) -> tuple[str | None, str] | None:
    """What the file names of label maps say (outside the layouts, e.g. an images/ + annotations/ folder):
    ``("cityscapes", reason)`` for ``*_gtFine_labelIds.png``, ``(None, reason)`` for ``*_labelTrainIds.png``."""
    names = [str(path) for path in paths]
    if names and all(name.endswith("_gtFine_labelIds.png") for name in names):
        return "cityscapes", "the file names (*_gtFine_labelIds.png)"
    if names and all(name.endswith("_labelTrainIds.png") for name in names):
        return None, "the file names (*_labelTrainIds.png)"
    return None


# ------------------------------------------------------------------------------------------------ .mat label maps

_MAT_KEYS = ("LabelMap", "S")  # PASCAL-Context 459 release, COCO-Stuff 10k


def read_mat_label_map(path) -> np.ndarray:
    """The label map of a MATLAB file: ``LabelMap`` (PASCAL-Context), ``S`` (COCO-Stuff 10k), ``GTcls.Segmentation``
    (SBD), else its only 2-D array. Needs scipy."""
    try:
        from scipy.io import loadmat
    except ImportError as error:  # pragma: no cover - scipy comes with the test extra
        raise ValueError(f"{path}: reading .mat label maps needs scipy (pip install scipy)") from error
    data = {key: value for key, value in loadmat(str(path)).items() if not key.startswith("__")}
    for key in _MAT_KEYS:
        if key in data:
            return np.asarray(data[key])
    if "GTcls" in data:
        return np.asarray(data["GTcls"][0]["Segmentation"][0])
    arrays = [value for value in data.values() if isinstance(value, np.ndarray) and value.ndim == 2
              and value.dtype.kind in "iuf"]
    if len(arrays) == 1:
        return arrays[0]
    raise ValueError(f"{path}: no label map in the .mat file (keys {sorted(data)}; expected one of "
                     f"{', '.join(_MAT_KEYS)}, GTcls)")


__all__ = [
    "LABEL_ID_TABLES",
    "Layout",
    "LabelIdTable",
    "NO_LABEL_IDS",
    "apply_label_ids",
    "check_label_ids",
    "describe_label_ids",
    "detect_label_ids",
    "evaluation_label_ids",
    "find_layout",
    "get_label_id_table",
    "label_ids_from_file_names",
    "read_mat_label_map",
    "train_ids_to_label_ids",
]
