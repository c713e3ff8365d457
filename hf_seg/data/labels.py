"""Where a data set's class names come from, and how many classes its label maps hold.

One rule, used by `hf-seg train`, `hf_seg.training.train` and the evaluation, so that the classes a model is trained
with are the data's own (DESIGN.md principle 0). Class names are taken, in this order, from:

1. the user's ``id2label`` (a dict, a list of names, a JSON file of either, or a bundled label-set name such as
   ``"ade20k"``);
2. a ``ClassLabel`` of the **label column itself** (e.g. ``Sequence(Sequence(ClassLabel))``) — never a
   ``ClassLabel`` of another column (the Hub's ADE20K carries a ``scene_category`` one);
3. an ``id2label.json`` (or hf_seg's ``{"names": [...]}`` label-set file) inside a ``save_to_disk`` folder or beside
   an image folder's ``images/``;
4. a folder in a known data set's own layout (Cityscapes, Pascal VOC, Pascal Context, COCO-Stuff:
   `hf_seg.data.datasets.find_layout`): that data set's label set and reduce-labels convention;
5. a Hub data set whose label set hf_seg ships (`KNOWN_HUB_DATASETS`), or the ``id2label.json`` of the Hub data set's
   repository (as transformers' semantic-segmentation example reads it).

When none exists, `scan_label_values` counts the label values of the training split and the classes are named
``class_0 …``. The conventions of a known data set (ADE20K's "0 = other", i.e. reduce-labels) come with its names.
Label maps that hold a data set's raw label ids (Cityscapes ``*_gtFine_labelIds.png``, ...) are looked up in its
table (`hf_seg.data.datasets`) as they are decoded, before reduce-labels: the scans here take that ``label_ids``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Sequence

from ..labels import LABEL_SETS, load_label_set
from .datasets import LABEL_ID_TABLES, apply_label_ids
from .transforms import IGNORE_INDEX, _open, _processor, _source_name, _where, reduce_zero_label


#: Hub data set ids -> (bundled label set, reduce_labels of that data set's label maps)
KNOWN_HUB_DATASETS = {
    "scene_parse_150": ("ade20k", True),
    "zhoubolei/scene_parse_150": ("ade20k", True),
}
#: label set -> reduce_labels of the data set it comes from (ADE20K stores "0 = other" and classes as 1..150;
#: COCO-Stuff: the 164k convention, mmseg's COCOStuffDataset default; the 10k layout brings its own, True)
LABEL_SET_REDUCE_LABELS = {
    "ade20k": True, "cityscapes": False, "pascal_context_60": False, "pascal_context_59": True, "coco_stuff": False,
    "pascal_voc": False,
}
ID2LABEL_FILE = "id2label.json"


@dataclass
class DataLabels:
    """The class names a data set brings (``id2label`` is None when it brings none), where they came from (said in
    messages, recipe.json and the model card), and the data set's own reduce-labels convention when it has one."""

    id2label: dict[int, str] | None
    source: str
    reduce_labels: bool | None = None


def read_id2label(value, what: str = "id2label") -> tuple[dict[int, str], bool | None]:
    """``(id2label, reduce_labels)`` from a dict, a list of names, a JSON file of either (or of hf_seg's
    ``{"names": [...]}`` layout) or a bundled label-set name; ``reduce_labels`` is the label set's convention (None
    for the user's own names). Bad input is a ValueError naming the file, the key or the value."""
    reduce_labels = None
    if isinstance(value, str) and value in LABEL_SETS:
        return load_label_set(value)[0], LABEL_SET_REDUCE_LABELS[value]
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise ValueError(
                f"{what} {str(value)!r} is neither a JSON file nor a bundled label set ({', '.join(LABEL_SETS)})"
            )
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{what} file {path} is not valid JSON: {error}") from error
        what = f"{what} file {path}"
        if isinstance(value, dict) and isinstance(value.get("names"), list):
            value = value["names"]  # hf_seg/labels/*.json layout
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a dict, a list of class names or a JSON file, got {type(value).__name__}")
    try:
        id2label = {int(key): str(name) for key, name in value.items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: keys must be integer class ids, got {list(value)[:5]}") from error
    if not id2label:
        raise ValueError(f"{what} names no classes")
    if sorted(id2label) != list(range(len(id2label))):
        missing = sorted(set(range(max(id2label) + 1)) - set(id2label))
        raise ValueError(f"{what}: class ids must be 0..{len(id2label) - 1} without gaps; missing {missing[:10]}")
    return dict(sorted(id2label.items())), reduce_labels


def _class_label_of(feature) -> ClassLabel | None:
    """The ClassLabel of a label column: the feature itself or the innermost one of nested sequences / lists."""
    while True:
        if isinstance(feature, ClassLabel):
            return feature
        if isinstance(feature, Sequence):
            feature = feature.feature
        elif isinstance(feature, list) and len(feature) == 1:
            feature = feature[0]
        else:
            return None


def find_class_names(source, dataset, label_column: str, id2label=None, layout=None) -> DataLabels:
    """The data set's class names by the module's rule (``id2label`` is None when none is found).

    ``source`` is what the user named (a folder or a Hub id, or None for an in-memory data set); ``dataset`` a
    ``Dataset`` (or one split of it) whose ``label_column`` holds the label maps; ``layout`` the
    `hf_seg.data.datasets.Layout` the folder was found in (its label set; its reduce-labels convention also when the
    user names that same label set, e.g. COCO-Stuff 10k's)."""
    if id2label is not None:
        names, reduce_labels = read_id2label(id2label)
        if layout is not None and isinstance(id2label, str) and id2label == layout.label_set:
            reduce_labels = layout.reduce_labels
        where = f"the label set {id2label!r}" if isinstance(id2label, str) and id2label in LABEL_SETS else "id2label"
        if isinstance(id2label, (str, os.PathLike)) and where == "id2label":
            where = f"id2label file {id2label}"
        return DataLabels(names, where, reduce_labels)
    class_label = _class_label_of(dataset.features.get(label_column))
    if class_label is not None:
        return DataLabels(dict(enumerate(class_label.names)), f"the ClassLabel of column {label_column!r}")
    if source is not None and Path(source).is_dir():
        candidate = Path(source) / ID2LABEL_FILE  # inside a save_to_disk folder, or beside images/ + annotations/
        if candidate.is_file():
            return DataLabels(read_id2label(candidate)[0], f"{candidate}")
        if layout is not None:
            return DataLabels(load_label_set(layout.label_set)[0],
                              f"hf_seg's {layout.label_set} label set ({layout.description} layout in {source})",
                              layout.reduce_labels)
    elif source is not None and str(source) in KNOWN_HUB_DATASETS:
        label_set, reduce_labels = KNOWN_HUB_DATASETS[str(source)]
        return DataLabels(load_label_set(label_set)[0], f"hf_seg's {label_set} label set (data set {source})",
                          reduce_labels)
    elif source is not None:
        path = _hub_id2label_file(str(source))
        if path is not None:
            return DataLabels(read_id2label(path)[0], f"{ID2LABEL_FILE} of the Hub data set {source}")
    return DataLabels(None, "no class names in the data")


def _hub_id2label_file(repo_id: str) -> str | None:
    """The ``id2label.json`` of a Hub data set repository (as transformers' segmentation example reads it), or None
    when the repository has none or the Hub cannot be reached."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return hf_hub_download(repo_id, ID2LABEL_FILE, repo_type="dataset")
    except (EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, ValueError, OSError):
        return None


def _label_array(value, index, label_ids: str | None = None) -> np.ndarray:
    """One label map decoded (and looked up in the ``label_ids`` table when given)."""
    name = _source_name(value)
    try:
        label = _processor().convert_segmentation_map(_open(value), 0)
    except Exception as error:  # noqa: BLE001 - re-raised with the example and file
        raise ValueError(f"{_where(index)}{f' ({name})' if name else ''}: cannot read label map: {error}") from error
    return apply_label_ids(label, label_ids, _where(index), name)


def scan_label_values(dataset, label_column: str, reduce_labels: bool = False, split: str = "train",
                      progress: bool = True, label_ids: str | None = None) -> np.ndarray:
    """Pixel count of every label value of ``dataset``'s label maps (index = value, after the ``label_ids`` table and
    reduce-labels; the ignore index 255 is left out). Exact: every map is decoded once; counting is one ``bincount``
    per map."""
    from tqdm.auto import tqdm

    counts = np.zeros(256, dtype=np.int64)
    column = dataset.select_columns([label_column]) if hasattr(dataset, "select_columns") else dataset
    for index in tqdm(range(len(column)), desc=f"scanning the {split} label maps", unit="map",
                      disable=not progress or len(column) < 200):
        label = _label_array(column[index][label_column], f"{split} example {index}", label_ids)
        if reduce_labels:
            label = reduce_zero_label(label)
        values = label[label != IGNORE_INDEX].ravel()
        if values.size and (values.min() < 0 or values.max() > IGNORE_INDEX):
            bad = np.unique(values[(values < 0) | (values > IGNORE_INDEX)])[:10].tolist()
            raise ValueError(f"{split} example {index}: label values {bad} are not class ids (0..254, 255 = ignore)")
        counts += np.bincount(values.astype(np.int64), minlength=256)[:256]
    counts[IGNORE_INDEX] = 0
    return counts[: int(np.flatnonzero(counts).max()) + 1] if counts.any() else counts[:0]


def check_label_values(counts: np.ndarray, id2label: dict, split: str, dataset, label_column: str,
                       reduce_labels: bool, label_ids: str | None = None) -> None:
    """Refuse label values the classes cannot hold, naming the values, the split and an example index (and the
    ``--label_ids`` table when the classes are one whose raw ids the values could be). One class is a binary
    foreground mask (a model with one output channel): values 0 and 1."""
    num_labels = max(len(id2label), 2)
    if len(counts) <= num_labels:
        return
    bad = [int(v) for v in np.flatnonzero(counts[num_labels:]) + num_labels]
    example = next(
        (i for i in range(len(dataset))
         if np.isin(_reduced(_label_array(dataset[i][label_column], i, label_ids), reduce_labels), bad).any()),
        None,
    )
    hint = "" if reduce_labels else " If 0 means 'other' / unlabelled in this data, pass --reduce_labels true."
    names = [id2label[index] for index in sorted(id2label)]
    for table in LABEL_ID_TABLES.values():
        if label_ids is None and any(names == list(load_label_set(s)[0].values()) for s in table.label_sets):
            hint += f" If the maps hold {table.description}, pass --label_ids {table.name}."
    raise ValueError(
        f"split {split!r} holds label values {bad[:10]} (e.g. example {example}) outside the {num_labels} classes "
        f"0..{num_labels - 1}{' after reduce_labels' if reduce_labels else ''}; fix id2label or the data.{hint}"
    )


def _reduced(label, reduce_labels):
    return reduce_zero_label(label) if reduce_labels else label


def class_names_from_counts(counts: np.ndarray) -> dict[int, str]:
    """``class_0 …`` for the values a scan found (0 .. max)."""
    return {index: f"class_{index}" for index in range(len(counts))}


__all__ = [
    "DataLabels",
    "KNOWN_HUB_DATASETS",
    "LABEL_SET_REDUCE_LABELS",
    "check_label_values",
    "class_names_from_counts",
    "find_class_names",
    "read_id2label",
    "scan_label_values",
]
