"""Load a semantic-segmentation dataset from the Hub, a ``save_to_disk`` folder, a known data set's own folder layout
(Cityscapes, Pascal VOC, Pascal Context, COCO-Stuff: `hf_seg.data.datasets`) or a folder of images + label PNGs."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from datasets import Image as ImageFeature

from .datasets import (
    NO_LABEL_IDS,
    check_label_ids,
    detect_label_ids,
    find_layout,
    _pairs,
    label_ids_from_file_names,
)
from .labels import find_class_names
from .transforms import add_index_column

IMAGE_COLUMN_NAMES = ("image", "pixel_values", "img", "images")
LABEL_COLUMN_NAMES = (
    "label", "annotation", "semantic_map", "mask", "segmentation_map", "labels", "gt_seg_map", "seg", "segmentation",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")
#: shards of a local split read as a stream: enough for the processes and DataLoader workers of a node to read
#: disjoint shards (accelerate gives each process whole shards when there are at least as many as processes)
LOCAL_STREAM_SHARDS = 64

__all__ = ["load_segmentation_dataset", "SegmentationDatasetInfo"]


class SegmentationDatasetInfo(dict):
    """Plain dict with ``image_column``, ``label_column``, ``id2label`` (None when the data names no classes),
    ``labels_source`` (where the names came from), ``reduce_labels`` (the data set's own convention, or None),
    ``label_ids`` (the label-id table the maps need, e.g. ``"cityscapes"``, or None: they hold training ids),
    ``label_ids_source`` (what decided it: "asked", the file names, the value range; None when nothing did) and
    ``layout`` (the data set whose folder layout was read, or None)."""


def _list_files(folder: Path, extensions) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in extensions:
            if path.stem in files:
                raise ValueError(f"{folder}: two files share the stem {path.stem!r} ({files[path.stem].name}, {path.name}).")
            files[path.stem] = path
    return files


def _pair_folder(image_dir: Path, label_dir: Path) -> dict[str, list[str]]:
    return _pairs(_list_files(image_dir, IMAGE_EXTENSIONS), _list_files(label_dir, LABEL_EXTENSIONS),
                  f"image and label file stems in {image_dir} and {label_dir} do not match")


def _load_image_folder(root: Path) -> tuple[DatasetDict, list[str]]:
    """The splits of an images/ + annotations/ folder and the label files' paths."""
    image_root, label_root = root / "images", root / "annotations"
    if not label_root.is_dir() and (root / "labels").is_dir():
        label_root = root / "labels"
    if not image_root.is_dir() or not label_root.is_dir():
        raise ValueError(f"{root}: expected the sub-folders 'images/' and 'annotations/' (or 'labels/').")
    features = datasets.Features({"image": ImageFeature(), "label": ImageFeature()})
    split_dirs = sorted(p.name for p in image_root.iterdir() if p.is_dir())
    pairs = {}
    if split_dirs:
        for name in split_dirs:
            if not (label_root / name).is_dir():
                raise ValueError(f"{root}: split {name!r} has images but no folder {label_root / name}.")
            pairs[name] = _pair_folder(image_root / name, label_root / name)
    else:
        pairs["train"] = _pair_folder(image_root, label_root)
    splits = {name: Dataset.from_dict(columns, features=features) for name, columns in pairs.items()}
    return DatasetDict(splits), [path for columns in pairs.values() for path in columns["label"]]


def _is_2d_sequence(feature) -> bool:
    """A feature of nested sequences (a label map stored as lists of lists)."""
    depth = 0
    while isinstance(feature, (datasets.Sequence, datasets.List, list)):
        feature = feature.feature if not isinstance(feature, list) else feature[0]
        depth += 1
    return depth == 2


def _detect_column(dataset: Dataset, given: str | None, names, what: str, exclude=None) -> str:
    columns = dataset.column_names
    if given is not None:
        if given not in columns:
            raise ValueError(f"{what} column {given!r} not found; columns: {columns}.")
        return given
    for name in names:
        if name in columns and name != exclude:
            return name
    image_like = [c for c, f in dataset.features.items() if isinstance(f, ImageFeature) and c != exclude]
    if image_like:
        return image_like[0]
    maps = [c for c, f in dataset.features.items() if c != exclude and _is_2d_sequence(f)]  # e.g. of ClassLabel ids
    if maps:
        return maps[0]
    raise ValueError(f"Cannot detect the {what} column among {columns}; pass {what}_column=.")


def load_segmentation_dataset(
    source,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id2label=None,
    decode: bool = True,
    label_ids: str | None = None,
    streaming: bool = False,
    **load_dataset_kwargs,
):
    """
    Load a semantic-segmentation dataset and find its image / label columns and class names.

    ``source`` is (checked in this order) a ``Dataset`` / ``DatasetDict`` in memory, a folder written by
    ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, a known data set's folder in the layout mmsegmentation
    expects (`hf_seg.data.datasets.find_layout`: Cityscapes ``leftImg8bit/`` + ``gtFine/``, Pascal VOC
    ``JPEGImages`` + ``SegmentationClass`` (+ SBD's ``SegmentationClassAug``: split ``trainaug``) +
    ``ImageSets/Segmentation``, Pascal Context, COCO-Stuff 164k / 10k; images and maps paired by that data set's
    naming rule, split ``val`` loaded as ``validation``), a local folder ``<root>/images/<split>/*`` + ``<root>/annotations/<split>/*.png`` (or
    flat ``images/`` + ``annotations/``, loaded as split ``train``; images and maps are paired by file stem), or a
    Hub dataset id (``datasets.load_dataset(source, **load_dataset_kwargs)``).

    ``label_ids``: the maps hold a data set's raw label ids (``"cityscapes"``: ``*_gtFine_labelIds.png``,
    ``"coco_stuff164k"``, ``"coco_stuff10k"``, ``"pascal_context_459"``; `hf_seg.data.datasets.LABEL_ID_TABLES`) or
    ``"none"`` (read them as they are). By default it is detected from the file names, else from the value range
    (values above the classes' range in a data set whose classes are Cityscapes' / Pascal Context's); the result is
    ``info["label_ids"]``, for the transforms and the evaluation to apply as they decode each map.

    Returns ``(dataset, info)``: a ``Dataset`` when ``split`` is given, else a ``DatasetDict``; ``info`` is a dict with
    ``image_column``, ``label_column``, ``id2label`` (``None`` when the data names no classes), ``labels_source`` and
    ``reduce_labels``, found by `hf_seg.data.labels.find_class_names`: the given ``id2label`` (a dict, a list of
    names, a JSON file or a bundled label-set name), a ``ClassLabel`` of the label column, an ``id2label.json`` in
    the folder, or a known Hub data set.

    ``decode=False`` casts the image and label columns (when they are ``Image`` features) to ``Image(decode=False)``:
    the hf_seg transforms then decode each file themselves, so an unreadable or truncated file becomes a
    ``ValueError`` naming the example and file (or is skipped with ``on_bad_example="skip"``) instead of an error
    inside ``datasets``.

    ``streaming=True`` returns ``IterableDataset`` / ``IterableDatasetDict`` splits, for the sets too large to
    download first: a Hub id is loaded with ``load_dataset(..., streaming=True)``; a local split is read as a stream
    of up to `LOCAL_STREAM_SHARDS` shards carrying each example's index (``__index__``), so that it draws the same
    augmentations as the map-style split. A stream passed in is used as it is. Class names and label ids are found
    as above, the value range from a stream's first label maps.
    """
    label_ids = check_label_ids(label_ids)
    in_memory = isinstance(source, (Dataset, DatasetDict, IterableDataset, IterableDatasetDict))
    path = None if in_memory else Path(source)
    layout = file_evidence = None
    if in_memory:
        data = source
    elif path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (
            path / "state.json"
        ).is_file():
            data = datasets.load_from_disk(str(path))
        elif (layout := find_layout(path, label_ids)) is not None:
            data = layout.dataset_dict()
            file_evidence = (layout.label_ids, layout.label_ids_source)
        else:
            data, label_files = _load_image_folder(path)
            file_evidence = label_ids_from_file_names(label_files)
    else:
        if path.exists():
            raise ValueError(f"dataset {source} is a file; pass a save_to_disk folder, an images/ + annotations/ "
                             "folder or a Hub dataset id")
        if str(source).startswith((".", "/", "~")) or path.is_absolute() or len(path.parts) > 2:
            raise FileNotFoundError(f"dataset folder {source} does not exist")
        if split is not None:
            load_dataset_kwargs.setdefault("split", split)
        data = datasets.load_dataset(str(source), **{"streaming": streaming, **load_dataset_kwargs})
    where = "the data set" if in_memory else str(source)
    if isinstance(data, Dataset):
        data = DatasetDict({split or "train": data})
    elif isinstance(data, IterableDataset):
        data = IterableDatasetDict({split or "train": data})
    if split is not None:
        if split not in data:
            raise ValueError(f"Split {split!r} not found in {where}; available: {list(data)}.")
        data = data[split]
        parts = {split: data}
    else:
        parts = dict(data)
    for name, part in parts.items():
        if isinstance(part, IterableDataset):
            if part.features is None:  # a stream whose source declares no features: read them from its first example
                part = parts[name] = part._resolve_features()
            if next(iter(part.decode(False).take(1)), None) is None:
                raise ValueError(f"Split {name!r} of {where} is empty (the stream yields no example).")
        elif len(part) == 0:
            raise ValueError(f"Split {name!r} of {where} is empty.")
        elif streaming:
            parts[name] = add_index_column(part).to_iterable_dataset(num_shards=min(len(part), LOCAL_STREAM_SHARDS))
    streamed = any(isinstance(part, IterableDataset) for part in parts.values())
    if streamed and split is None:
        data = IterableDatasetDict(parts)
    elif streamed:
        data = parts[split]
    first = next(iter(parts.values()))
    image_col = _detect_column(first, image_column, IMAGE_COLUMN_NAMES, "image")
    label_col = _detect_column(first, label_column, LABEL_COLUMN_NAMES, "label", exclude=image_col)
    if image_col == label_col:
        raise ValueError(f"The image and label columns are the same ({image_col!r}); pass them explicitly.")
    if not decode:
        for name in list(parts):
            for column in (image_col, label_col):
                if isinstance(parts[name].features.get(column), ImageFeature):
                    parts[name] = parts[name].cast_column(column, ImageFeature(decode=False))
        data = parts[split] if split is not None else (IterableDatasetDict if streamed else DatasetDict)(parts)
    labels = find_class_names(None if in_memory else source, first, label_col, id2label, layout=layout)
    if label_ids is not None:
        chosen = (None if label_ids == NO_LABEL_IDS else label_ids, "asked")
    else:
        chosen = file_evidence or detect_label_ids(first, label_col, labels.id2label, next(iter(parts))) or (None, None)
    info = SegmentationDatasetInfo(
        image_column=image_col, label_column=label_col, id2label=labels.id2label, labels_source=labels.source,
        reduce_labels=labels.reduce_labels, label_ids=chosen[0], label_ids_source=chosen[1],
        layout=layout.name if layout is not None else None,
    )
    return data, info
