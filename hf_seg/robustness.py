# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""`hf-seg robustness`: a model's mIoU under the 16 corruptions of the SegFormer paper's Cityscapes-C table.

The corruptions are the ImageNet-C ones (Hendrycks & Dietterich 2019) as the `imagecorruptions` package implements
them for images of any size (Michaelis et al. 2019; the maintained fork `imagecorruptions-imaug` on PyPI, the
`robustness` extra, installs with numpy 2): blur (motion, defocus, glass, Gaussian), noise (Gaussian, impulse, shot,
speckle), digital (brightness, contrast, saturate, JPEG), weather (snow, spatter, fog, frost); severities 1-5, the
noise ones 1-3 as the paper (following Kamann & Rother 2020) reports them.

- **Deterministic.** Each corrupted image depends on (image, corruption, severity, seed) only: the random state is
  seeded from a hash of the four (the image by its file name, else its position in the split) for every image, so
  the result is the same for any number of processes, DataLoader workers or batch size, and for the same image in
  another subset (`--max_examples`).
- **On the fly.** DataLoader workers decode and corrupt the images while the model segments the previous ones;
  nothing is written unless `save_corrupted` (a folder): then every corrupted image is also saved losslessly (PNG
  data under the source file's name) beside a copy of its label map at the same place relative to the data set's
  root, one folder per corruption and severity, so `hf-seg evaluate --dataset DIR/<corruption>/<severity>` reads it
  as the original data set.
- **The model's own protocol.** `hf_seg.training.trainer.prepare_evaluation` decides what `hf-seg evaluate` decides
  (test resize, whole / slide, labels, label ids, reduce-labels) and `hf_seg.segment` runs it, image by image.
- **Distributed.** Under `torchrun` / `accelerate launch` each process takes every `world_size`-th image of every
  run and the confusion matrices of all runs are summed with one `all_reduce`.

Where this differs from Hendrycks' `make_imagenet_c.py` (written for 224 x 224 crops), all of it imagecorruptions'
doing and what the segmentation robustness literature (Michaelis et al., Kamann & Rother) runs:

- motion blur, and the snow layer's streaks: ImageMagick's `MotionBlurImage` through Wand in the reference; here
  its NumPy reimplementation: the same one-sided Gaussian kernel of width 2 * radius + 1 and the same whole-pixel
  offsets along the angle (`ceil(i * sin / hypot - 0.5)`), borders repeated (ImageMagick's default "edge" virtual
  pixels), computed in float64 instead of ImageMagick's 16-bit quanta; only where an offset would reach past the
  whole image is the kernel cut (not renormalised). The snow layer is rounded to 8 bits where the reference
  round-trips it through a PNG (the same quantisation).
- frost: the reference crops 224 x 224 from one of its six frost photographs (shipped with the package); here the
  photograph is first scaled (bicubic, 1.1 x the factor that makes it cover the image) so a crop covers any size,
  which makes the ice coarser on large images.
- fog: the plasma fractal is made at the next power of two above the image's longer side (256 in the reference)
  and cropped, so its structure grows with the image.
- glass blur: the reference's loop, `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on NumPy views, is not a swap (each
  visited pixel takes its source's current value); `glass_blur` here computes exactly that, vectorised.
- the reference draws from NumPy's unseeded global state; here every image's draw is seeded (see above), so the
  exact pixels of the SegFormer authors' Cityscapes-C (never released) cannot be reproduced, only its definition.

The summary is the paper's: per corruption the mean mIoU over its severities, per category the mean of its
corruptions', and the mean over all corruptions (with its ratio to the clean mIoU, the "retention").
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Corruption:
    name: str  # imagecorruptions' function name
    label: str  # the paper's column
    category: str


CORRUPTIONS = (
    Corruption("motion_blur", "Motion", "blur"),
    Corruption("defocus_blur", "Defocus", "blur"),
    Corruption("glass_blur", "Glass", "blur"),
    Corruption("gaussian_blur", "Gauss", "blur"),
    Corruption("gaussian_noise", "Gauss", "noise"),
    Corruption("impulse_noise", "Impulse", "noise"),
    Corruption("shot_noise", "Shot", "noise"),
    Corruption("speckle_noise", "Speckle", "noise"),
    Corruption("brightness", "Bright", "digital"),
    Corruption("contrast", "Contrast", "digital"),
    Corruption("saturate", "Saturate", "digital"),
    Corruption("jpeg_compression", "JPEG", "digital"),
    Corruption("snow", "Snow", "weather"),
    Corruption("spatter", "Spatter", "weather"),
    Corruption("fog", "Fog", "weather"),
    Corruption("frost", "Frost", "weather"),
)
CORRUPTION_NAMES = tuple(c.name for c in CORRUPTIONS)
CATEGORIES = ("blur", "noise", "digital", "weather")
SEVERITIES = (1, 2, 3, 4, 5)
NOISE_SEVERITIES = (1, 2, 3)
CLEAN = ("clean", 0)
_SEEDED = ("impulse_noise", "glass_blur")  # they take their seed as an argument; the others use np.random
_BY_NAME = {c.name: c for c in CORRUPTIONS}


def _corruptions_module():
    try:
        import imagecorruptions
    except ImportError as error:
        raise ImportError(
            "the corruptions need the imagecorruptions package: pip install 'hf_seg[robustness]' "
            "(or pip install imagecorruptions-imaug)"
        ) from error
    return imagecorruptions


def resolve_corruptions(names: Sequence[str] | None = None) -> list[str]:
    """Corruption names in the paper's order from names and / or categories (blur, noise, digital, weather); all 16
    when `names` is empty."""
    if not names:
        return list(CORRUPTION_NAMES)
    wanted = set()
    for name in names:
        if name in CATEGORIES:
            wanted.update(c.name for c in CORRUPTIONS if c.category == name)
        elif name in _BY_NAME:
            wanted.add(name)
        else:
            close = difflib.get_close_matches(name, [*CORRUPTION_NAMES, *CATEGORIES], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown corruption {name!r}{hint} Corruptions: {', '.join(CORRUPTION_NAMES)}; "
                             f"categories: {', '.join(CATEGORIES)}")
    return [name for name in CORRUPTION_NAMES if name in wanted]


def _check_severities(values: Sequence[int], what: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    bad = [v for v in values if v not in SEVERITIES]
    if bad or not values:
        raise ValueError(f"{what} must be among 1..5, got {list(values)}")
    return tuple(sorted(set(values)))


def plan_runs(corruptions: Sequence[str] | None = None, severities: Sequence[int] = SEVERITIES,
              noise_severities: Sequence[int] = NOISE_SEVERITIES, clean: bool = True) -> list[tuple[str, int]]:
    """The `(corruption, severity)` runs, the clean one (`("clean", 0)`) first."""
    severities = _check_severities(severities, "severities")
    noise_severities = _check_severities(noise_severities, "noise severities")
    runs = [CLEAN] if clean else []
    for name in resolve_corruptions(corruptions):
        chosen = noise_severities if _BY_NAME[name].category == "noise" else severities
        runs += [(name, severity) for severity in chosen]
    return runs


def corruption_seed(key: str, corruption: str, severity: int, seed: int = 0) -> int:
    """The 32-bit seed of one corrupted image: a hash of (seed, corruption, severity, image key)."""
    digest = hashlib.sha256(f"{int(seed)}|{corruption}|{int(severity)}|{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def corrupt_image(image, corruption: str, severity: int, seed: int = 0, key: str = "") -> np.ndarray:
    """`image` (an (H, W, 3) uint8 array or a PIL image, at least 32 x 32) under `corruption` at `severity`, as an
    (H, W, 3) uint8 array; the same for the same (image `key`, corruption, severity, seed). The caller's NumPy random
    state is left as it was."""
    module = _corruptions_module()
    if corruption not in _BY_NAME:
        resolve_corruptions([corruption])  # raises, with a suggestion
        raise ValueError(f"{corruption!r} is a category; corrupt_image takes one corruption")
    if int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity}")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {array.shape} and dtype {array.dtype}")
    if min(array.shape[:2]) < 32:
        raise ValueError(f"the corruptions need images of at least 32 x 32 pixels, got {array.shape[0]} x "
                         f"{array.shape[1]}{f' ({key})' if key else ''}")
    derived = corruption_seed(key, corruption, severity, seed)
    if corruption == "glass_blur":
        out = glass_blur(array, int(severity), derived)
    else:
        state = np.random.get_state()
        try:
            np.random.seed(derived)
            extra = {"seed": derived} if corruption in _SEEDED else {}
            out = module.corrupt(np.ascontiguousarray(array), severity=int(severity), corruption_name=corruption,
                                 **extra)
        finally:
            np.random.set_state(state)
    out = np.asarray(out)
    if out.shape != array.shape:  # imagecorruptions keeps the size; refuse rather than score a wrong-size image
        raise RuntimeError(f"{corruption} severity {severity} returned shape {out.shape} for an image of shape "
                           f"{array.shape}")
    return np.ascontiguousarray(out, dtype=np.uint8)


_GLASS = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # sigma, max_delta, iterations


def _glass_shuffle(image: np.ndarray, delta: int, random: np.random.RandomState) -> np.ndarray:
    """One pass of glass blur's local shuffle, vectorised. The definition visits the pixels from the bottom right,
    row by row, and runs `x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]` on NumPy views, which is not a
    swap: pixel (h, w) takes the value its source (offsets in [-delta, delta)) has at that moment, and the source
    keeps it. So every visited pixel is written once, at its own step; a source visited earlier gives its new value,
    any other its old one. Following the chains of earlier sources (pointer jumping) gives every pixel's value at
    once, equal to the sequential loop for the same random draws."""
    height, width = image.shape[:2]
    rows = np.arange(height - delta, delta, -1)
    columns = np.arange(width - delta, delta, -1)
    steps = rows.size * columns.size
    if steps == 0:
        return image
    draws = random.randint(-delta, delta, size=(steps, 2))  # (dx, dy) per step, in the loop's order
    target = (rows[:, None] * width + columns[None, :]).reshape(-1)
    source = target + draws[:, 1] * width + draws[:, 0]
    visited_at = np.full(height * width, steps, dtype=np.int64)
    visited_at[target] = np.arange(steps)
    step = np.arange(steps)
    link = np.where(visited_at[source] < step, visited_at[source], step)  # the step whose value this one takes
    while True:
        jumped = link[link]
        if np.array_equal(jumped, link):
            break
        link = jumped
    flat = image.reshape(height * width, -1)
    out = flat.copy()
    out[target] = flat[source[link]]
    return out.reshape(image.shape)


def glass_blur(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """imagecorruptions' (and make_imagenet_c.py's) glass blur, with its local shuffle vectorised
    (`_glass_shuffle`): equal to `imagecorruptions.corrupt(image, severity, "glass_blur", seed=seed)` without its
    numba loop (and the seconds numba takes to compile it in every process)."""
    from skimage.filters import gaussian

    sigma, delta, iterations = _GLASS[severity - 1]
    shuffled = np.uint8(gaussian(image / 255.0, sigma=sigma, channel_axis=-1) * 255)
    random = np.random.RandomState(seed)
    for _ in range(iterations):
        shuffled = _glass_shuffle(shuffled, delta, random)
    return np.uint8(np.clip(gaussian(shuffled / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255)


# ------------------------------------------------------------------------------------------- the corrupted split


def _path_of(value) -> str | None:
    if isinstance(value, dict):
        return value.get("path") or None
    if isinstance(value, str):
        return value
    return None


def image_key(value, index: int) -> str:
    """What names an image in its corruption seed: its file name, else its position in the split."""
    path = _path_of(value)
    return os.path.basename(path) if path else f"#{index}"


class CorruptedSplit(torch.utils.data.Dataset):
    """Item `i` of `runs x indices` (run-major): `{"run", "index", "image", "label"}` with the decoded example's
    label map and its image corrupted by run `runs[run]` (`("clean", 0)`: as it is). With `save_dir`, each corrupted
    image and a copy of its label map are also written (see the module docstring)."""

    def __init__(self, data, image_column: str, label_column: str, label_ids: str | None,
                 runs: Sequence[tuple[str, int]], indices: Sequence[int], seed: int = 0, save_dir=None,
                 split: str = "validation"):
        self.data, self.image_column, self.label_column, self.label_ids = data, image_column, label_column, label_ids
        self.runs, self.indices, self.seed, self.split = list(runs), list(indices), int(seed), split
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.root = self._common_root() if self.save_dir is not None else None

    def __len__(self) -> int:
        return len(self.runs) * len(self.indices)

    def _common_root(self) -> Path | None:
        """The folder the split's image and label files share (the data set's root), None when any has no path."""
        paths = []
        columns = [self.image_column, self.label_column]
        rows = self.data.select_columns(columns) if hasattr(self.data, "select_columns") else self.data
        for row in rows:  # row by row: a column of embedded images is never read whole
            for value in (row[column] for column in columns):
                path = _path_of(value)
                if path is None or (isinstance(value, dict) and value.get("bytes") is not None):
                    return None
                paths.append(os.path.abspath(path))
        return Path(os.path.commonpath(paths)) if paths else None

    def __getitem__(self, position: int) -> dict:
        from .data.transforms import decode_example

        run, slot = divmod(position, len(self.indices))
        index = self.indices[slot]
        name, severity = self.runs[run]
        try:
            row = self.data[index]
            image, label, _ = decode_example(row[self.image_column], row[self.label_column], index, self.label_ids)
            if (name, severity) != CLEAN:
                key = image_key(row[self.image_column], index)
                image = corrupt_image(image, name, severity, self.seed, key)
                if self.save_dir is not None:
                    self._save(image, row, index, key, self.save_dir / name / str(severity))
        except (ValueError, OSError) as error:  # handed to the main process as a message: a DataLoader worker's
            # exception reaches it wrapped in the worker's traceback text
            return {"run": run, "index": index, "error": f"{name} severity {severity}: {error}"}
        return {"run": run, "index": index, "image": image, "label": label}

    def _save(self, image: np.ndarray, row, index: int, key: str, folder: Path) -> None:
        from PIL import Image

        image_value, label_value = row[self.image_column], row[self.label_column]
        if self.root is not None:
            image_path = folder / os.path.relpath(os.path.abspath(_path_of(image_value)), self.root)
            label_source = Path(_path_of(label_value))
            label_path = folder / os.path.relpath(os.path.abspath(label_source), self.root)
        else:  # no files to mirror: an images/ + annotations/ folder
            stem = os.path.splitext(key)[0].lstrip("#")
            image_path = folder / "images" / self.split / f"{stem}.png"
            label_path = folder / "annotations" / self.split / f"{stem}.png"
            label_source = None
        _atomic_write(image_path, lambda handle: Image.fromarray(image).save(handle, format="PNG"))
        if label_path.exists():
            return
        if label_source is not None:
            _atomic_write(label_path, lambda handle: _copy_into(label_source, handle))
        elif isinstance(label_value, dict) and label_value.get("bytes") is not None:
            _atomic_write(label_path, lambda handle: handle.write(label_value["bytes"]))
        else:
            raise ValueError(f"example {index}: --save-corrupted copies label maps stored as image files or bytes; "
                             f"this one is a {type(label_value).__name__}")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so concurrent workers never leave a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
    os.replace(temporary, path)


def _copy_into(source: Path, handle) -> None:
    with open(source, "rb") as original:
        shutil.copyfileobj(original, handle)


def _as_list(batch):
    return batch


# ----------------------------------------------------------------------------------------------- the evaluation


@dataclass
class RobustnessResult:
    """`runs`: `(corruption, severity)` in order; `metrics[run]`: mean_iou / mean_accuracy / overall_accuracy /
    per_class_iou; `summary`: the paper's averages (`robustness_summary`); `settings`: what was evaluated how;
    `matrices[run]`: the summed [K, K] confusion matrix (reference x prediction pixel counts, e.g. for
    `hf_seg.analysis.analyze_confusion`)."""

    runs: list[tuple[str, int]]
    metrics: dict[tuple[str, int], dict]
    summary: dict
    settings: dict = field(default_factory=dict)
    matrices: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    def rows(self) -> list[dict]:
        """One row per corrupted run (16 x severities for all corruptions), the long table."""
        return [
            {"corruption": name, "category": _BY_NAME[name].category, "severity": severity,
             **{k: v for k, v in self.metrics[(name, severity)].items() if k != "per_class_iou"}}
            for name, severity in self.runs if (name, severity) != CLEAN
        ]

    def to_dict(self) -> dict:
        clean = self.metrics.get(CLEAN)
        return _json_safe({
            "settings": self.settings,
            "clean": clean,
            "summary": self.summary,
            "rows": [dict(row, per_class_iou=self.metrics[(row["corruption"], row["severity"])]["per_class_iou"])
                     for row in self.rows()],
        })


def robustness_summary(metrics: dict[tuple[str, int], dict]) -> dict:
    """The paper's numbers from per-run metrics: `per_corruption` (mean mIoU over the severities run),
    `per_category` (mean of its corruptions'), `mean_corrupted` (over all corruptions run) and `retention`
    (`mean_corrupted / clean`)."""
    per_corruption = {}
    for name in CORRUPTION_NAMES:
        values = [m["mean_iou"] for (n, _), m in metrics.items() if n == name]
        if values:
            per_corruption[name] = float(np.mean(values))
    per_category = {}
    for category in CATEGORIES:
        values = [v for name, v in per_corruption.items() if _BY_NAME[name].category == category]
        if values:
            per_category[category] = float(np.mean(values))
    clean = metrics.get(CLEAN, {}).get("mean_iou")
    mean_corrupted = float(np.mean(list(per_corruption.values()))) if per_corruption else None
    retention = mean_corrupted / clean if mean_corrupted is not None and clean else None
    return {"clean": clean, "per_corruption": per_corruption, "per_category": per_category,
            "mean_corrupted": mean_corrupted, "retention": retention}


@torch.no_grad()
def evaluate_robustness(
    model,
    dataset,
    *,
    split: str = "validation",
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    noise_severities: Sequence[int] = NOISE_SEVERITIES,
    seed: int = 0,
    num_workers: int = 0,
    batch_size: int = 4,
    max_examples: int | None = None,
    save_corrupted=None,
    autocast_dtype=None,
    device: str | None = None,
    progress: bool = True,
    image_processor=None,
    image_column: str | None = None,
    label_column: str | None = None,
    reduce_labels: bool | None = None,
    label_ids: str | None = None,
    mode: str | None = None,
    crop_size=None,
    stride=None,
    **load_kwargs,
) -> RobustnessResult:
    """mIoU of `model` (a folder / Hub id / preset / model) on `dataset`'s `split`, clean and under every
    (corruption, severity) of `plan_runs(corruptions, severities, noise_severities)`, with the model's test protocol
    (as `hf-seg evaluate`; `mode` / `crop_size` / `stride` override it). `num_workers` DataLoader workers corrupt
    the images; see the module docstring for determinism, `save_corrupted` and distribution."""
    from .inference import segment
    from .metrics import SegmentationConfusionMatrix, metrics_from_confusion_matrix
    from .training.evaluation import _distributed, broadcast_buffers
    from .training.trainer import prepare_evaluation

    runs = plan_runs(corruptions, severities, noise_severities)
    _corruptions_module()  # fail before loading anything when the package is missing
    rank, world_size = _distributed()
    if save_corrupted is not None:
        save_corrupted = Path(save_corrupted)
        if save_corrupted.exists() and (not save_corrupted.is_dir() or any(save_corrupted.iterdir())):
            raise FileExistsError(f"--save-corrupted {save_corrupted}: exists and is not an empty folder; name a new "
                                  f"one")
        if world_size > 1:  # every process has looked before any writes
            torch.distributed.barrier()
    model, processor, data, settings = prepare_evaluation(
        model, dataset, split=split, image_processor=image_processor, image_column=image_column,
        label_column=label_column, reduce_labels=reduce_labels, label_ids=label_ids, mode=mode, crop_size=crop_size,
        stride=stride, device=device, **load_kwargs,
    )
    protocol = {key: settings[key] for key in ("mode", "crop_size", "stride", "scales", "flip", "min_short_side")
                if key in settings}
    # one output channel (a binary mask) scores background and foreground, as evaluate_segmentation does
    num_labels = max(model.config.num_labels, 2)
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if model.config.num_labels == 1:
        classes = ["background", *classes]
    confusions = [SegmentationConfusionMatrix(num_labels, settings["ignore_index"], settings["reduce_labels"])
                  for _ in runs]
    broadcast_buffers(model)
    total = len(data) if max_examples is None else min(len(data), max_examples)
    split_data = CorruptedSplit(data, settings["image_column"], settings["label_column"], settings["label_ids"], runs,
                                range(rank, total, world_size), seed, save_corrupted, split)
    loader = torch.utils.data.DataLoader(
        split_data, batch_size=max(1, batch_size), num_workers=num_workers, collate_fn=_as_list,
        prefetch_factor=2 if num_workers else None,
    )
    from tqdm.auto import tqdm

    bar = tqdm(total=len(split_data), desc="robustness", unit="image", disable=not progress or rank != 0)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            for item in batch:
                if "error" in item:
                    raise ValueError(item["error"])
            predictions = segment(model, processor, [item["image"] for item in batch], batch_size=batch_size,
                                  autocast_dtype=autocast_dtype, **protocol)
            for item, prediction in zip(batch, predictions):
                name, severity = runs[item["run"]]
                try:
                    confusions[item["run"]].update(prediction, torch.from_numpy(np.ascontiguousarray(item["label"])))
                except ValueError as error:
                    raise ValueError(f"example {item['index']} ({name}, severity {severity}): {error}; the labels "
                                     f"were read with reduce_labels={settings['reduce_labels']}") from error
                bar.set_postfix_str(f"{name} {severity}" if severity else name, refresh=False)
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    stacked = torch.stack([c.matrix.cpu() for c in confusions])
    if world_size > 1:  # one all_reduce for all runs, through the matrix class's (it moves NCCL's to the GPU)
        holder = SegmentationConfusionMatrix(1)
        holder.matrix = stacked
        stacked = holder.all_reduce().matrix.cpu()
    metrics = {}
    for run, matrix in zip(runs, stacked):
        result = metrics_from_confusion_matrix(matrix)
        metrics[run] = {"mean_iou": result["mIoU"], "mean_accuracy": result["mAcc"],
                        "overall_accuracy": result["aAcc"],
                        "per_class_iou": [float(v) for v in result["per_category_iou"]]}
    module = _corruptions_module()
    described = {
        "model": str(getattr(model, "name_or_path", "") or type(model).__name__), "dataset": str(dataset),
        "split": split, "num_examples": total, "seed": int(seed), "protocol": _json_safe(protocol),
        "classes": classes,
        "corruptions_package": f"imagecorruptions {getattr(module, '__version__', '')}".strip(),
    }
    try:
        from importlib.metadata import PackageNotFoundError, version

        for distribution in ("imagecorruptions-imaug", "imagecorruptions"):
            try:
                described["corruptions_package"] = f"{distribution} {version(distribution)}"
                break
            except PackageNotFoundError:
                continue
    except ImportError:  # pragma: no cover
        pass
    matrices = {run: matrix.numpy() for run, matrix in zip(runs, stacked)}
    return RobustnessResult(runs, metrics, robustness_summary(metrics), described, matrices)


# ------------------------------------------------------------------------------------------------- the reports


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def format_tables(result: RobustnessResult) -> str:
    """Markdown: the paper's row (clean, every corruption's mean over its severities, grouped by category, the
    category means and the overall mean), then mIoU per corruption and severity."""
    summary = result.summary
    names = [n for n in CORRUPTION_NAMES if n in summary["per_corruption"]]
    header = ["Clean", *(f"{_BY_NAME[n].category.title()}: {_BY_NAME[n].label}" for n in names),
              *(f"{c.title()} mean" for c in summary["per_category"]), "Mean", "Retention"]
    values = [_pct(summary["clean"]), *(_pct(summary["per_corruption"][n]) for n in names),
              *(_pct(v) for v in summary["per_category"].values()), _pct(summary["mean_corrupted"]),
              "-" if summary["retention"] is None else f"{summary['retention']:.3f}"]
    lines = ["mIoU (%) as the SegFormer paper's Cityscapes-C table reports it (each corruption: the mean over its "
             "severities)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             "| " + " | ".join(values) + " |", ""]
    severities = sorted({s for _, s in result.runs if s})
    lines += ["mIoU (%) per corruption and severity", "",
              "| corruption | category | " + " | ".join(f"severity {s}" for s in severities) + " | mean |",
              "|" + "---|" * (len(severities) + 3)]
    for name in names:
        cells = [_pct(result.metrics[(name, s)]["mean_iou"]) if (name, s) in result.metrics else "" for s in severities]
        lines.append(f"| {name} | {_BY_NAME[name].category} | " + " | ".join(cells)
                     + f" | {_pct(summary['per_corruption'][name])} |")
    return "\n".join(lines) + "\n"


def plot_robustness(result: RobustnessResult, path, title: str | None = None) -> Path:
    """mIoU against severity, one panel per category, one line per corruption, the clean mIoU dashed."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the plot needs matplotlib: pip install 'hf_seg[analysis]'") from error
    summary = result.summary
    categories = [c for c in CATEGORIES if c in summary["per_category"]]
    columns = min(len(categories), 2) or 1
    rows = math.ceil(len(categories) / columns) or 1
    fig = Figure(figsize=(5.2 * columns, 3.6 * rows + 0.6), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, sharey=True)).reshape(-1)
    clean = summary["clean"]
    for ax, category in zip(axes, categories):
        for name in (n for n in CORRUPTION_NAMES if _BY_NAME[n].category == category and n in summary["per_corruption"]):
            points = sorted((s, m["mean_iou"]) for (n, s), m in result.metrics.items() if n == name)
            ax.plot([s for s, _ in points], [100 * np.nan_to_num(v) for _, v in points], marker="o",
                    label=f"{name.replace('_', ' ')} ({_pct(summary['per_corruption'][name])})")
        if clean is not None:
            ax.axhline(100 * clean, color="black", linestyle="--", linewidth=1, label=f"clean ({_pct(clean)})")
        ax.set_title(f"{category} (mean {_pct(summary['per_category'][category])})", fontsize=11)
        ax.set_xlabel("severity")
        ax.set_xticks(SEVERITIES)
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(categories):]:
        ax.set_visible(False)
    axes[0].set_ylim(bottom=0)
    model = result.settings.get("model", "")
    fig.suptitle(title or f"Robustness of {model}: mean over corruptions {_pct(summary['mean_corrupted'])}, clean "
                 f"{_pct(clean)} mIoU", fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_reports(result: RobustnessResult, output_dir, plot: bool = True) -> dict[str, Path]:
    """robustness.json (everything), robustness.csv (the long table, one row per corruption and severity),
    robustness.md (`format_tables`) and robustness.png (`plot_robustness`) in `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": output_dir / "robustness.json", "csv": output_dir / "robustness.csv",
             "markdown": output_dir / "robustness.md"}
    files["json"].write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    with open(files["csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["corruption", "category", "severity", "mean_iou", "mean_accuracy", "overall_accuracy"])
        clean = result.metrics.get(CLEAN)
        if clean:
            writer.writerow(["clean", "", 0, clean["mean_iou"], clean["mean_accuracy"], clean["overall_accuracy"]])
        for row in result.rows():
            writer.writerow([row["corruption"], row["category"], row["severity"], row["mean_iou"],
                             row["mean_accuracy"], row["overall_accuracy"]])
    files["markdown"].write_text(format_tables(result), encoding="utf-8")
    if plot:
        files["png"] = plot_robustness(result, output_dir / "robustness.png")
    return files


# ------------------------------------------------------------------------------------------------- the command


@dataclass
class RobustnessArguments:
    model: str = field(metadata={"help": "checkpoint folder, Hub id or preset name"})
    dataset: str = field(metadata={"help": "Hub id, save_to_disk folder or a data-set folder (e.g. Cityscapes)"})
    output_dir: str = field(metadata={"help": "robustness.json / .csv / .md / .png go here"})
    split: str = field(default="validation")
    corruptions: list[str] | None = field(
        default=None, metadata={"help": f"corruptions or categories (default: all 16): {', '.join(CORRUPTION_NAMES)}; "
                                        f"{', '.join(CATEGORIES)}"}
    )
    severities: list[int] = field(default_factory=lambda: list(SEVERITIES), metadata={"help": "default 1 2 3 4 5"})
    noise_severities: list[int] = field(
        default_factory=lambda: list(NOISE_SEVERITIES), metadata={"help": "for the noise corruptions (the paper: 1 2 3)"}
    )
    seed: int = field(default=0, metadata={"help": "with the image, corruption and severity: the corrupted image"})
    num_workers: int | None = field(default=None, metadata={"help": "DataLoader workers corrupting images (default: "
                                                                    "the CPUs per process, at most 8)"})
    save_corrupted: str | None = field(
        default=None, metadata={"help": "also write the corrupted images (and their label maps) to this new folder, "
                                        "DIR/<corruption>/<severity>/ in the data set's layout"}
    )
    image_column: str | None = field(default=None)
    label_column: str | None = field(default=None)
    reduce_labels: bool | None = field(default=None, metadata={"help": "default: the model folder's"})
    label_ids: str | None = field(default=None, metadata={"help": "as hf-seg evaluate's --label_ids"})
    mode: str | None = field(default=None, metadata={"help": "whole or slide (default: the model's test protocol)"})
    crop_size: int | None = field(default=None)
    stride: int | None = field(default=None)
    batch_size: int = field(default=4, metadata={"help": "images per step, windows per model call"})
    max_examples: int | None = field(default=None)
    dtype: str | None = field(default=None, metadata={"help": "autocast dtype: bfloat16 or float16"})
    device: str | None = field(default=None, metadata={"help": "default: the local accelerator or cpu"})
    no_plot: bool = field(default=False, metadata={"help": "no robustness.png (no matplotlib needed)"})


def robustness_main(argv: list[str] | None = None) -> int:
    """`hf-seg robustness --model M --dataset D --output_dir DIR [...]`; runs unchanged under `torchrun` /
    `accelerate launch`."""
    import sys

    from accelerate import PartialState
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(RobustnessArguments, prog="hf-seg robustness").parse_args_into_dataclasses(
        args=list(sys.argv[1:] if argv is None else argv), look_for_args_file=False
    )
    dtypes = {None: None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
              "fp16": torch.float16}
    if args.dtype not in dtypes:
        raise SystemExit(f"--dtype must be bfloat16 or float16, got {args.dtype!r}")
    try:
        plan_runs(args.corruptions, args.severities, args.noise_severities)
    except ValueError as error:
        raise SystemExit(f"hf-seg robustness: {error}") from error
    from .training.evaluation import _distributed

    state = PartialState()  # initialises torch.distributed under torchrun / accelerate launch
    # torch.distributed's rank, not state.is_main_process: accelerate reports one process (DistributedType.NO) for a
    # CPU torchrun whose process group it has initialised, and every process would write the reports
    rank, world_size = _distributed()
    workers = args.num_workers
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 1) // world_size))
    if workers < 0:
        raise SystemExit(f"--num_workers must be >= 0, got {workers}")
    result = evaluate_robustness(
        args.model, args.dataset, split=args.split, corruptions=args.corruptions, severities=args.severities,
        noise_severities=args.noise_severities, seed=args.seed, num_workers=workers, batch_size=args.batch_size,
        max_examples=args.max_examples, save_corrupted=args.save_corrupted, autocast_dtype=dtypes[args.dtype],
        device=args.device or str(state.device), image_column=args.image_column, label_column=args.label_column,
        reduce_labels=args.reduce_labels, label_ids=args.label_ids, mode=args.mode, crop_size=args.crop_size,
        stride=args.stride,
    )
    if rank == 0:
        files = write_reports(result, args.output_dir, plot=not args.no_plot)
        print(format_tables(result))
        for path in files.values():
            print(path)
    return 0


__all__ = [
    "CATEGORIES",
    "CORRUPTIONS",
    "CORRUPTION_NAMES",
    "CorruptedSplit",
    "RobustnessResult",
    "corrupt_image",
    "corruption_seed",
    "evaluate_robustness",
    "format_tables",
    "plan_runs",
    "plot_robustness",
    "resolve_corruptions",
    "robustness_main",
    "robustness_summary",
    "write_reports",
]
