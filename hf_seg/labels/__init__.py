"""Class names and colour palettes of the datasets the presets are trained on.

Each label set is a JSON data file next to this module, ``{"names": [...], "palette": [[r, g, b], ...]}``, indexed
by training id (the id the model predicts, after any ``reduce_labels``). Names are kept exactly as in the source
code bases, e.g. ADE20K class 7 is ``"bed "`` with a trailing space.

- ``ade20k``: 150 classes of ADE20K / SceneParsing (``reduce_labels``: on-disk 0 is ignored).
- ``cityscapes``: 19 Cityscapes train ids.
- ``pascal_context_60``: Pascal Context with background as class 0 (SETR's 60-class setting), mmseg 1.x names.
- ``pascal_context_59``: Pascal Context without background (mmseg 1.x ``PascalContextDataset59``); its palette is
  the 60-class palette without the first row.
- ``coco_stuff``: the 171 classes of COCO-Stuff 164k / 10k (mmseg 1.x ``COCOStuffDataset``, whose palette repeats some
  colours).
- ``pascal_voc``: Pascal VOC 2012 (+ SBD), background and the 20 object classes (mmseg 1.x ``PascalVOCDataset``).

How a data set's files become these ids (raw label-id tables, layouts) is `hf_seg.data.datasets`.
"""

import json
from importlib import resources

LABEL_SETS = ("ade20k", "cityscapes", "pascal_context_60", "pascal_context_59", "coco_stuff", "pascal_voc")


def load_label_set(name: str) -> tuple[dict[int, str], list[tuple[int, int, int]]]:
    """Return ``(id2label, palette)`` of the label set ``name`` (one of ``LABEL_SETS``)."""
    if name not in LABEL_SETS:
        raise KeyError(f"Unknown label set {name!r}; valid names: {', '.join(LABEL_SETS)}")
    data = json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))
    id2label = dict(enumerate(data["names"]))
    palette = [tuple(rgb) for rgb in data["palette"]]
    return id2label, palette
