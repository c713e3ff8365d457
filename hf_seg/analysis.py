# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""`hf-seg analyze`: pictures and tables that tell what a segmentation model does, for every family.

- **Confusion** (`analyze_confusion`): the confusion matrix of an evaluation (a file written by
  `hf-seg evaluate --save-confusion FILE`, or computed here) as a row-normalised heat map with the class names, the
  per-class IoU and accuracy as bars sorted by IoU, and the worst confused pairs; PNG + CSV.
- **Effective receptive field** (`effective_receptive_field`, Luo et al. 2016 as in the SegFormer paper's figure): the
  absolute input gradient of the centre position of each encoder stage's output (its ReLU summed over the channels,
  as RepLKNet's ERF code does: a LayerNorm'd output's plain channel sum is constant and would have no gradient;
  summed over the input's colour channels too), averaged over N images. One map per stage and one for the model's
  output (logits); each is drawn divided by its own maximum, so every panel shares one colour scale.
- **Attention maps** (`attention_maps`): the attention weights of one query point, per transformer layer, through
  `output_attentions` (SETR's ViT layers, SegFormer's blocks, whose keys are the spatially reduced map). MPViT's
  factorized attention has no token-to-token matrix: `out_i = scale * q_i (softmax_N(K)^T V)` equals
  `sum_j w_ij v_j` with `w_ij = scale * q_i . softmax_N(K)_j` (per head), and those effective weights (which can be
  negative, and do not sum to 1) are what is drawn; its convolutional relative position term `q * conv(v)` is a local
  3x3 .. 7x7 window and is left out.

matplotlib (the `analysis` extra) is imported only by the functions that draw. The figures are drawn with
`matplotlib.figure.Figure` directly (no pyplot, no global state, no display needed).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch


CONFUSION_FORMAT = "hf_seg.confusion_matrix"


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "drawing needs matplotlib: pip install 'hf_seg[analysis]' (or pip install matplotlib)"
        ) from error
    from matplotlib.figure import Figure

    return Figure


# ------------------------------------------------------------------------------------------------ confusion matrices


def save_confusion_matrix(path, matrix, id2label: Mapping[int, str], ignore_index: int = 255,
                          reduce_labels: bool = False, source: Mapping | None = None) -> Path:
    """Write `matrix[reference, prediction]` (pixel counts) with its class names as JSON (what
    `hf-seg evaluate --save-confusion` writes and `load_confusion_matrix` reads)."""
    counts = torch.as_tensor(matrix).detach().cpu().to(torch.int64).numpy()
    names = [str(id2label[i]) for i in range(counts.shape[0])]
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": CONFUSION_FORMAT,
        "version": 1,
        "rows": "reference",
        "columns": "prediction",
        "id2label": {str(i): name for i, name in enumerate(names)},
        "ignore_index": int(ignore_index),
        "reduce_labels": bool(reduce_labels),
        "source": dict(source or {}),
        "matrix": counts.tolist(),
    }
    path.write_text(json.dumps(document) + "\n", encoding="utf-8")
    return path


def load_confusion_matrix(path) -> tuple[np.ndarray, list[str], dict]:
    """`(matrix [K, K] int64, class names, the file's other fields)` from a `save_confusion_matrix` file; ValueError
    naming the file and the key for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such confusion-matrix file (write one with hf-seg evaluate "
                                f"--save-confusion {path})")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file ({error})") from error
    if not isinstance(document, dict) or document.get("format") != CONFUSION_FORMAT:
        raise ValueError(f"{path}: not a confusion-matrix file: expected the key 'format' to be {CONFUSION_FORMAT!r}, "
                         f"got {document.get('format') if isinstance(document, dict) else type(document).__name__!r}")
    for key in ("matrix", "id2label"):
        if key not in document:
            raise ValueError(f"{path}: the key {key!r} is missing")
    try:
        matrix = np.asarray(document["matrix"])
    except ValueError as error:
        raise ValueError(f"{path}: 'matrix' is not a K x K table of counts ({error})") from error
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(f"{path}: 'matrix' must be a square K x K table, got shape {matrix.shape}")
    if matrix.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'matrix' must hold integer pixel counts, got {matrix.dtype} values")
    if (matrix < 0).any():
        rows, cols = np.nonzero(matrix < 0)
        raise ValueError(f"{path}: 'matrix' holds negative counts, e.g. at [{rows[0]}, {cols[0]}] = "
                         f"{matrix[rows[0], cols[0]]}")
    id2label = document["id2label"]
    if not isinstance(id2label, dict) or sorted(id2label, key=str) != sorted((str(i) for i in range(len(matrix))),
                                                                              key=str):
        raise ValueError(f"{path}: 'id2label' must name the classes 0..{len(matrix) - 1} of the {len(matrix)} x "
                         f"{len(matrix)} matrix, got {len(id2label) if isinstance(id2label, dict) else id2label!r} "
                         f"entries")
    names = [str(id2label[str(i)]) for i in range(len(matrix))]
    meta = {key: value for key, value in document.items() if key not in ("matrix", "id2label")}
    return matrix.astype(np.int64), names, meta


def confusion_report(matrix, names: Sequence[str], top: int = 20) -> dict:
    """Per-class rows (`name`, `iou`, `accuracy`, `reference_pixels`, `predicted_pixels`, mmseg's definitions: NaN
    for a class absent from the reference (accuracy) or from both (IoU)) and the `top` worst confused pairs:
    off-diagonal `(reference, prediction)` cells by the share of the reference class's pixels they take."""
    from .metrics.confusion import metrics_from_confusion_matrix

    m = np.asarray(matrix, dtype=np.int64)
    if m.shape != (len(names), len(names)):
        raise ValueError(f"the matrix is {m.shape[0]} x {m.shape[1]} but there are {len(names)} class names")
    metrics = metrics_from_confusion_matrix(m)
    rows = [
        {"class": names[i], "iou": float(metrics["per_category_iou"][i]),
         "accuracy": float(metrics["per_category_accuracy"][i]), "reference_pixels": int(m[i].sum()),
         "predicted_pixels": int(m[:, i].sum())}
        for i in range(len(names))
    ]
    reference = m.sum(axis=1)
    off = m.astype(np.float64).copy()
    np.fill_diagonal(off, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(reference[:, None] > 0, off / reference[:, None], 0.0)
    order = np.argsort(-share, axis=None, kind="stable")
    pairs = []
    for flat in order[: max(0, int(top))]:
        i, j = divmod(int(flat), len(names))
        if off[i, j] == 0:
            break
        pairs.append({"reference": names[i], "prediction": names[j], "pixels": int(m[i, j]),
                      "share_of_reference": float(share[i, j])})
    return {"mean_iou": metrics["mIoU"], "mean_accuracy": metrics["mAcc"], "overall_accuracy": metrics["aAcc"],
            "per_class": rows, "confused_pairs": pairs}


def _label_font(count: int) -> float:
    return float(np.clip(900.0 / max(count, 1), 5.5, 10.0))


def plot_confusion_matrix(matrix, names: Sequence[str], path, title: str = "Confusion matrix") -> Path:
    """Heat map of the row-normalised matrix (each reference class's pixels as shares of its predictions), class
    names on both axes (about 0.15 inch a class: legible at 150 classes), a colour bar, the title."""
    Figure = _require_matplotlib()
    m = np.asarray(matrix, dtype=np.float64)
    k = len(names)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(m.sum(axis=1, keepdims=True) > 0, m / m.sum(axis=1, keepdims=True), np.nan)
    from matplotlib.colors import PowerNorm

    cell = 0.15 if k > 40 else 0.32
    side = max(6.0, 2.8 + cell * k)
    fig = Figure(figsize=(side + 1.2, side), dpi=120 if k > 40 else 100, layout="constrained")
    ax = fig.subplots()
    # square-root colour scale: the small confusions, which are what one looks for, stay visible
    image = ax.imshow(normalised, cmap="viridis", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), interpolation="nearest")
    font = _label_font(k) if k > 40 else 10.0
    ax.set_xticks(range(k), labels=list(names), rotation=90, fontsize=font)
    ax.set_yticks(range(k), labels=list(names), fontsize=font)
    ax.set_xlabel("predicted class", fontsize=11)
    ax.set_ylabel("reference class", fontsize=11)
    ax.set_title(title, fontsize=13)
    if k <= 25:  # small matrices: the percentages in the cells
        for i in range(k):
            for j in range(k):
                if np.isfinite(normalised[i, j]) and normalised[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * normalised[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="black" if normalised[i, j] > 0.5 else "white")
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01, shrink=min(1.0, 6.0 / side + 0.3))
    bar.set_label("share of the reference class's pixels (square-root scale)", fontsize=10)
    return _save(fig, path)


def plot_per_class(report: Mapping, path, title: str = "Per-class IoU and accuracy") -> Path:
    """Two bar charts side by side, classes sorted by IoU (best at the top), the same order in both; absent
    classes (NaN) last, marked 'absent'."""
    Figure = _require_matplotlib()
    rows = list(report["per_class"])
    order = sorted(range(len(rows)), key=lambda i: (math.isnan(rows[i]["iou"]), -np.nan_to_num(rows[i]["iou"])))
    k = len(rows)
    height = max(3.0, 1.6 + 0.15 * k)
    fig = Figure(figsize=(11, height), dpi=120 if k > 40 else 100, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    labels = [rows[i]["class"] for i in order]
    font = _label_font(k)
    for ax, key, colour in zip(axes, ("iou", "accuracy"), ("tab:blue", "tab:orange")):
        values = np.array([rows[i][key] for i in order], dtype=np.float64)
        ax.barh(range(k), np.nan_to_num(values) * 100, color=colour, height=0.8)
        for y, value in enumerate(values):
            if math.isnan(value):
                ax.text(1, y, "absent", va="center", fontsize=font, color="grey")
        ax.set_xlim(0, 100)
        ax.set_xlabel(f"{'IoU' if key == 'iou' else 'accuracy'} (%)")
        ax.grid(axis="x", alpha=0.3)
        mean = report["mean_iou" if key == "iou" else "mean_accuracy"]
        ax.set_title(f"{'IoU' if key == 'iou' else 'accuracy'} (mean {100 * mean:.1f}%)", fontsize=11)
    axes[0].set_yticks(range(k), labels=labels, fontsize=font)
    axes[0].set_ylim(k - 0.5, -0.5)
    fig.suptitle(title, fontsize=13)
    return _save(fig, path)


def _grid(count: int, widest: int = 5) -> tuple[int, int]:
    """(rows, columns) for `count` panels, at most `widest` a row, the rows as even as they can be."""
    rows = math.ceil(count / widest)
    return rows, math.ceil(count / rows)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _write_csv(path: Path, header: Sequence[str], rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def analyze_confusion(matrix, names: Sequence[str], output_dir, title: str | None = None, top: int = 20) -> dict:
    """Everything of the confusion analysis into `output_dir`: confusion_matrix.png / .csv (counts),
    per_class.png / .csv, confused_pairs.csv, report.json. Returns the report with the paths under `files`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = confusion_report(matrix, names, top)
    title = title or "Confusion matrix"
    m = np.asarray(matrix, dtype=np.int64)
    files = {
        "confusion_png": plot_confusion_matrix(m, names, output_dir / "confusion_matrix.png", title),
        "per_class_png": plot_per_class(report, output_dir / "per_class.png",
                                        f"{title}: per-class IoU and accuracy"),
        "confusion_csv": _write_csv(output_dir / "confusion_matrix.csv", ["reference \\ prediction", *names],
                                    ([names[i], *m[i].tolist()] for i in range(len(names)))),
        "per_class_csv": _write_csv(
            output_dir / "per_class.csv", ["class", "iou", "accuracy", "reference_pixels", "predicted_pixels"],
            ([r["class"], _num(r["iou"]), _num(r["accuracy"]), r["reference_pixels"], r["predicted_pixels"]]
             for r in sorted(report["per_class"], key=lambda r: -np.nan_to_num(r["iou"], nan=-1.0)))),
        "confused_pairs_csv": _write_csv(
            output_dir / "confused_pairs.csv", ["reference", "prediction", "pixels", "share_of_reference"],
            ([p["reference"], p["prediction"], p["pixels"], f"{p['share_of_reference']:.6f}"]
             for p in report["confused_pairs"])),
    }
    report["files"] = {key: str(value) for key, value in files.items()}
    (output_dir / "report.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n", encoding="utf-8")
    return report


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_confused_pairs(report: Mapping, limit: int = 10) -> str:
    """The worst confused pairs as a plain table."""
    pairs = report["confused_pairs"][:limit]
    if not pairs:
        return "no confused pairs (the matrix is diagonal)"
    width = max(len(p["reference"]) for p in pairs)
    lines = [f"{'reference':<{width}}  ->  prediction (share of the reference's pixels)"]
    lines += [f"{p['reference']:<{width}}  ->  {p['prediction']} ({100 * p['share_of_reference']:.1f}%)" for p in pairs]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- images for the model


def _normalisation(processor):
    mean = getattr(processor, "image_mean", None) or [0.485, 0.456, 0.406]
    std = getattr(processor, "image_std", None) or [0.229, 0.224, 0.225]
    factor = getattr(processor, "rescale_factor", None) or 1 / 255
    return np.asarray(mean, np.float32), np.asarray(std, np.float32), float(factor)


def prepare_pixels(image, processor, size: int | tuple[int, int], square: bool, multiple: int = 32) -> torch.Tensor:
    """An RGB image (PIL or uint8 array) as normalised `[1, 3, H, W]` pixel values with the processor's mean / std:
    `square`: resized (short side `size`, keeping the ratio) and centre-cropped to `size x size`; else resized so
    its short side is `size` (a `(height, width)` pair: exactly that), both sides rounded to a multiple of
    `multiple`."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    width, height = image.size
    if isinstance(size, (tuple, list)):
        target = (int(size[0]), int(size[1]))
    else:
        scale = int(size) / min(width, height)
        target = (round(height * scale), round(width * scale))
        if not square:
            target = tuple(max(multiple, round(side / multiple) * multiple) for side in target)
    resized = image.resize((target[1], target[0]), Image.BILINEAR)
    if square and not isinstance(size, (tuple, list)):
        top, left = (target[0] - int(size)) // 2, (target[1] - int(size)) // 2
        resized = resized.crop((left, top, left + int(size), top + int(size)))
    mean, std, factor = _normalisation(processor)
    pixels = (np.asarray(resized, np.float32) * factor - mean) / std
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def _as_grid(state: torch.Tensor, height: int, width: int, patch: int | None) -> torch.Tensor | None:
    """A hidden state as a `[B, C, h, w]` map: maps stay, token sequences `[B, N, C]` (an optional class token
    first) are laid out on the grid of the input's aspect ratio."""
    if state.ndim == 4:
        return state
    if state.ndim != 3:
        return None
    tokens = state.shape[1]
    if patch:
        grid = (height // patch, width // patch)
    else:
        side = math.sqrt(tokens * width / height) if height else 0
        grid = (round(tokens / side), round(side)) if side else (0, 0)
    count = grid[0] * grid[1]
    if tokens == count + 1:
        state = state[:, 1:]
    elif tokens != count:
        return None
    return state.transpose(1, 2).reshape(state.shape[0], state.shape[2], *grid)


def _stage_names(model, count: int) -> list[str]:
    model_type = getattr(model.config, "model_type", "")
    if model_type == "segformer":
        return [f"stage {i + 1}" for i in range(count)]
    if model_type == "mpvit":
        return ["stem", *(f"stage {i}" for i in range(1, count))]
    if model_type == "setr":
        return ["embeddings", *(f"layer {i}" for i in range(1, count))]
    return ["embeddings", *(f"stage {i}" for i in range(1, count))]


def encoder_feature_maps(model, pixel_values: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """`(name, [B, C, h, w])` for every encoder stage the model reports with `output_hidden_states=True` (SegFormer's
    four stages, MPViT's stem and stages, SETR's embeddings and layers, a transformers UperNet backbone's hidden
    states) and `("output", logits)` last."""
    outputs = model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
    states = [s for s in (getattr(outputs, "hidden_states", None) or ()) if s is not None]
    patch = getattr(model.config, "patch_size", None) if getattr(model.config, "model_type", "") == "setr" else None
    height, width = pixel_values.shape[-2:]
    grids = [_as_grid(state, height, width, patch) for state in states]
    names = _stage_names(model, len(states))
    maps = [(name, grid) for name, grid in zip(names, grids) if grid is not None]
    maps.append(("output", outputs.logits))
    return maps


def effective_receptive_field(
    model,
    images: Sequence,
    processor=None,
    size: int = 512,
    stages: Sequence[str] | None = None,
    feature_maps: Callable[[torch.Tensor], list[tuple[str, torch.Tensor]]] | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """`{stage name: [size, size] float64 map}`: the absolute gradient of the centre position of each stage's output
    (ReLU, summed over its channels) with respect to the input pixels, summed over the colour channels and averaged over
    `images` (each resized and centre-cropped to `size x size`; a `[3, H, W]` / `[1, 3, H, W]` tensor is used as it
    is). `feature_maps(pixel_values)` gives the stages (default: `encoder_feature_maps`); `stages` keeps those
    names only. The model is run in eval mode; its parameters get no gradient."""
    feature_maps = feature_maps or (lambda pixels: encoder_feature_maps(model, pixels))
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    parameters = list(model.parameters()) if hasattr(model, "parameters") else []
    flags = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    device = parameters[0].device if parameters else torch.device("cpu")
    sums: dict[str, np.ndarray] = {}
    bar = _progress(len(images), "receptive field", progress)
    try:
        for image in images:
            if isinstance(image, torch.Tensor):
                pixels = image if image.ndim == 4 else image[None]
            else:
                pixels = prepare_pixels(image, processor, size, square=True)
            pixels = pixels.to(device=device, dtype=torch.float32).clone().requires_grad_(True)
            with torch.enable_grad():
                maps = feature_maps(pixels)
                unknown = [name for name in (stages or ()) if name not in [n for n, _ in maps]]
                if unknown:
                    raise ValueError(f"stages {unknown} are not the model's; it has {[n for n, _ in maps]}")
                maps = [(name, m) for name, m in maps if stages is None or name in stages]
                for position, (name, feature) in enumerate(maps):
                    h, w = feature.shape[-2:]
                    centre = torch.relu(feature[:, :, h // 2, w // 2]).sum()  # RepLKNet's ERF code: the ReLU
                    # keeps a LayerNorm'd output (whose plain channel sum is constant) from giving no gradient
                    (grad,) = torch.autograd.grad(centre, pixels, retain_graph=position < len(maps) - 1)
                    contribution = grad.abs().sum(dim=(0, 1)).double().cpu().numpy()
                    sums[name] = sums.get(name, 0) + contribution
            bar.update(1)
    finally:
        bar.close()
        for p, flag in zip(parameters, flags):
            p.requires_grad_(flag)
        if hasattr(model, "train"):
            model.train(was_training)
    return {name: total / max(len(images), 1) for name, total in sums.items()}


def erf_extent(erf: np.ndarray, fraction: float) -> int:
    """The side of the smallest square around the centre that holds `fraction` of the map's total (1.0: the side of
    the support)."""
    total = float(erf.sum())
    if total <= 0:
        return 0
    h, w = erf.shape
    cy, cx = h // 2, w // 2
    for radius in range(0, max(h, w)):
        window = erf[max(0, cy - radius): cy + radius + 1, max(0, cx - radius): cx + radius + 1]
        if window.sum() >= fraction * total * (1 - 1e-9):
            return 2 * radius + 1
    return max(h, w)


def plot_receptive_fields(erf: Mapping[str, np.ndarray], path, title: str = "Effective receptive field",
                          log: bool = False) -> Path:
    """One panel per stage, each map divided by its own maximum (`log`: log10 of that, clipped at 1e-3) on one
    colour scale and one colour bar; the panel titles say the side of the centred square holding 50% / 90%."""
    Figure = _require_matplotlib()
    count = len(erf)
    rows, columns = _grid(count)
    fig = Figure(figsize=(2.9 * columns + 1.0, 3.1 * rows + 0.6), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
    image = None
    for ax, (name, values) in zip(axes, erf.items()):
        scaled = values / values.max() if values.max() > 0 else values
        if log:
            scaled = np.log10(np.clip(scaled, 1e-3, None))
        image = ax.imshow(scaled, cmap="magma", vmin=-3.0 if log else 0.0, vmax=0.0 if log else 1.0)
        ax.set_title(f"{name}\n50%: {erf_extent(values, 0.5)} px, 90%: {erf_extent(values, 0.9)} px", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[count:]:
        ax.set_visible(False)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes[:count]), fraction=0.03, pad=0.01)
        bar.set_label("log10 (gradient / stage maximum)" if log else "gradient / stage maximum")
    side = next(iter(erf.values())).shape
    fig.suptitle(f"{title} ({side[0]} x {side[1]} input)", fontsize=12)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- attention maps


def _query_index(point: tuple[float, float], image_size: tuple[int, int], grid: tuple[int, int]) -> int:
    """Row-major index of the token holding `point` (y, x in the image's pixels) on a `grid` of tokens."""
    y = min(grid[0] - 1, max(0, int(point[0] * grid[0] / image_size[0])))
    x = min(grid[1] - 1, max(0, int(point[1] * grid[1] / image_size[1])))
    return y * grid[1] + x


def _with_eager_attention(model):
    """A context manager: the eager attention (the one that returns its weights) while inside."""
    import contextlib

    @contextlib.contextmanager
    def manager():
        before = getattr(model.config, "_attn_implementation", None)
        switch = before not in (None, "eager") and hasattr(model, "set_attn_implementation")
        if switch:
            model.set_attn_implementation("eager")
        try:
            yield
        finally:
            if switch:
                model.set_attn_implementation(before)

    return manager()


def _mpvit_attention(model, pixel_values: torch.Tensor, point, image_size):
    """Effective per-token weights of MPViT's factorized attention for the query token at `point`, per
    (stage, path, block), through forward hooks (the model has no `output_attentions`)."""
    found = []

    def hook_for(name):
        parts = name.split(".")
        label = (f"stage {int(parts[parts.index('stages') + 1]) + 1} path {int(parts[parts.index('paths') + 1]) + 1}"
                 f" block {int(parts[parts.index('layers') + 1]) + 1}")

        def hook(module, args, output):
            hidden_states, size = args[0], args[1]
            batch, tokens, channels = hidden_states.shape
            query, key, _ = module.qkv(hidden_states).chunk(3, dim=-1)
            heads = (batch, tokens, module.num_heads, module.head_dim)
            key = key.reshape(heads).softmax(dim=1)
            index = _query_index(point, image_size, tuple(size))
            q = query.reshape(heads)[:, index]  # [B, heads, d]
            weights = torch.einsum("bhd,bnhd->bhn", q, key) * module.scale
            found.append((label, weights.mean(dim=1)[0].reshape(size).float().cpu().numpy()))

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in model.named_modules()
               if type(module).__name__ == "MPViTFactorizedAttention"]
    try:
        model(pixel_values=pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    return found


def attention_maps(model, image, point: tuple[float, float], processor=None, size: int = 512) -> dict:
    """The attention of the query at `point` (y, x in the original image's pixels) in every transformer layer:
    `{"pixel_values_size": (H, W), "signed": bool, "maps": [(layer name, [h, w] weights over the keys' grid)]}`,
    weights averaged over the heads. SETR: its ViT layers (keys: the patch grid; the class token's weight is left
    out). SegFormer: every block of every stage (keys: the map reduced by the stage's `sr_ratio`). MPViT: the
    effective weights of its factorized attention (module docstring), `signed`. The image is resized so its short
    side is `size` (sides rounded to multiples of 32)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    original = (image.size[1], image.size[0])
    if not (0 <= point[0] < original[0] and 0 <= point[1] < original[1]):
        raise ValueError(f"the query point (y={point[0]}, x={point[1]}) is outside the image of height {original[0]} "
                         f"and width {original[1]}")
    pixels = prepare_pixels(image, processor, size, square=False)
    device = next(model.parameters()).device
    pixels = pixels.to(device)
    height, width = pixels.shape[-2:]
    scaled_point = (point[0] * height / original[0], point[1] * width / original[1])
    model_type = getattr(model.config, "model_type", "")
    was_training = model.training
    model.eval()
    maps = []
    try:
        with torch.no_grad():
            if model_type == "mpvit":
                return {"pixel_values_size": (height, width), "signed": True,
                        "maps": _mpvit_attention(model, pixels, scaled_point, (height, width))}
            with _with_eager_attention(model):
                outputs = model(pixel_values=pixels, output_attentions=True, output_hidden_states=True,
                                return_dict=True)
            attentions = [a for a in (getattr(outputs, "attentions", None) or ()) if a is not None]
            if not attentions:
                raise ValueError(f"the model ({type(model).__name__}) returns no attention weights with "
                                 f"output_attentions=True")
            if model_type == "setr":
                patch = model.config.patch_size
                grid = (height // patch, width // patch)
                index = _query_index(scaled_point, (height, width), grid)
                for layer, weights in enumerate(attentions, start=1):
                    extra = weights.shape[-1] - grid[0] * grid[1]  # the class token
                    row = weights[0, :, extra + index, extra:].mean(dim=0)
                    maps.append((f"layer {layer}", row.reshape(grid).float().cpu().numpy()))
            elif model_type == "segformer":
                config = model.config
                grids = [tuple(h.shape[-2:]) for h in outputs.hidden_states]  # each stage's query grid
                position = 0
                for stage, (depth, grid, sr) in enumerate(zip(config.depths, grids, config.sr_ratios)):
                    keys = (grid[0] // sr, grid[1] // sr) if sr > 1 else grid  # the reduction: a stride-sr conv
                    index = _query_index(scaled_point, (height, width), grid)
                    for block in range(depth):
                        weights = attentions[position]
                        position += 1
                        if weights.shape[-1] != keys[0] * keys[1] or weights.shape[-2] != grid[0] * grid[1]:
                            raise ValueError(f"stage {stage + 1}: attention of shape {tuple(weights.shape)} does not "
                                             f"fit the query grid {grid} and key grid {keys}")
                        row = weights[0, :, index].mean(dim=0)
                        maps.append((f"stage {stage + 1} block {block + 1}" + (f" (keys 1/{sr})" if sr > 1 else ""),
                                     row.reshape(keys).float().cpu().numpy()))
            else:
                raise ValueError(f"attention maps are drawn for SETR, SegFormer and MPViT; {type(model).__name__} "
                                 f"(model_type {model_type!r}) is not one of them")
    finally:
        model.train(was_training)
    return {"pixel_values_size": (height, width), "signed": False, "maps": maps}


def select_layers(count: int, asked: Sequence[int] | None = None, limit: int = 12) -> list[int]:
    """0-based layer positions to draw: those asked (1-based numbers), else all when at most `limit`, else `limit`
    evenly spaced ones ending with the last."""
    if asked:
        bad = [n for n in asked if not 1 <= n <= count]
        if bad:
            raise ValueError(f"--layers {bad}: the model has layers 1..{count}")
        return [n - 1 for n in asked]
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def plot_attention(image, point: tuple[float, float], result: Mapping, path, layers: Sequence[int] | None = None,
                   title: str = "Attention of the query point") -> Path:
    """The image with the query point, then one panel per layer: its weights (softmax attention: from the layer's
    minimum to its maximum, printed in the title; MPViT's signed weights: divided by the largest absolute one)
    resized onto the image (nearest: one block per key), over a grey copy of it; one colour bar."""
    Figure = _require_matplotlib()
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    maps = result["maps"]
    chosen = [maps[i] for i in select_layers(len(maps), layers)]
    count = len(chosen) + 1
    rows, columns = _grid(count)
    aspect = image.size[1] / image.size[0]
    panel = 3.0
    fig = Figure(figsize=(panel * columns + 1.0, panel * aspect * rows + 0.5 * rows + 0.6), dpi=100,
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
    grey = np.asarray(image.convert("L"), np.float32) / 255.0
    axes[0].imshow(image)
    axes[0].set_title("image and query", fontsize=9)
    signed = bool(result.get("signed"))
    heat = None
    for ax, (name, weights) in zip(axes[1:], chosen):
        if signed:  # effective weights: their sign matters, 0 stays the middle of the scale
            scaled = weights / (float(np.abs(weights).max()) or 1.0)
            span = f"|w| <= {np.abs(weights).max():.2g}"
        else:  # softmax weights: the layer's own range, so that near-uniform attention still shows its structure
            low, high = float(weights.min()), float(weights.max())
            scaled = (weights - low) / (high - low) if high > low else np.zeros_like(weights)
            span = f"{low:.2g} .. {high:.2g}"
        resized = np.asarray(Image.fromarray(scaled.astype(np.float32)).resize(image.size, Image.NEAREST))
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
        heat = ax.imshow(resized, cmap="coolwarm" if signed else "inferno", vmin=-1.0 if signed else 0.0, vmax=1.0,
                         alpha=0.7)
        ax.set_title(f"{name}\n{span}", fontsize=9)
    for ax in axes[:count]:
        ax.plot([point[1]], [point[0]], marker="x", color="cyan", markersize=9, markeredgewidth=2)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[count:]:
        ax.set_visible(False)
    if heat is not None:
        bar = fig.colorbar(heat, ax=list(axes[:count]), fraction=0.03, pad=0.01)
        bar.set_label("effective weight / layer's largest |weight|" if signed
                      else "attention: layer minimum (0) to maximum (1)")
    fig.suptitle(f"{title} (y={point[0]:g}, x={point[1]:g})", fontsize=12)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- the command


def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, disable=not enabled, unit="image")


def _images_from(paths: Sequence[str]) -> list[Path]:
    extensions = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
    found = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in extensions)
            if not files:
                raise FileNotFoundError(f"{path}: no images ({', '.join(extensions)}) in this folder")
            found += files
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    return found


def _open_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from error


def _load(model_name: str):
    from .training.trainer import build_model_and_processor, check_model_source
    from . import presets

    if model_name not in presets.PRESETS:
        check_model_source(model_name)
    model, processor, preset_name = build_model_and_processor(model_name)
    return model, processor, preset_name


def _dataset_images(dataset: str, split: str, count: int, image_column: str | None):
    from .data import load_segmentation_dataset
    from .data.transforms import decode_example

    data, info = load_segmentation_dataset(dataset, split=split, image_column=image_column, decode=False)
    images = []
    for index in range(min(count, len(data))):
        row = data[index]
        image, _, _ = decode_example(row[info["image_column"]], row[info["label_column"]], index, None)
        images.append(image)
    return images


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="hf-seg analyze", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    def option(sub, name, **kwargs):
        sub.add_argument(f"--{name}", *([f"--{name.replace('_', '-')}"] if "_" in name else []), **kwargs)

    confusion = commands.add_parser("confusion", help="confusion heat map, per-class bars, worst confused pairs")
    option(confusion, "confusion", metavar="FILE", help="a file from hf-seg evaluate --save-confusion FILE")
    option(confusion, "model", help="or compute it: checkpoint folder, Hub id or preset")
    option(confusion, "dataset", help="with --model: the data set (as hf-seg evaluate takes it)")
    option(confusion, "split", default="validation")
    option(confusion, "max_examples", type=int)
    option(confusion, "top", type=int, default=20, help="how many confused pairs (default 20)")
    option(confusion, "title")

    erf = commands.add_parser("erf", help="effective receptive field of every encoder stage")
    option(erf, "model", required=True)
    option(erf, "images", nargs="+", metavar="PATH", help="image files or folders")
    option(erf, "dataset", help="or the images of a data set split")
    option(erf, "split", default="validation")
    option(erf, "num_images", type=int, default=16, help="images averaged (default 16)")
    option(erf, "size", type=int, help="square input side (default: the model's crop size, else 512)")
    option(erf, "stages", nargs="+", help="stage names to keep, e.g. 'stage 4' output")
    option(erf, "log", action="store_true", help="draw log10 of the normalised gradients")
    option(erf, "device")

    attention = commands.add_parser("attention", help="attention maps of a query point, per transformer layer")
    option(attention, "model", required=True)
    option(attention, "image", required=True)
    option(attention, "point", type=float, nargs=2, required=True, metavar=("Y", "X"),
           help="the query point in the image's pixels (row, column)")
    option(attention, "size", type=int, help="short side the image is resized to (default: the model's crop "
                                              "size, else 512)")
    option(attention, "layers", type=int, nargs="+", help="1-based layer numbers to draw (default: up to 12)")
    option(attention, "device")
    for sub in (confusion, erf, attention):
        option(sub, "output_dir", required=True, help="where the PNG / CSV / JSON files go")
    return parser


def _model_size(model, preset_name, given):
    if given:
        return int(given)
    from .training.trainer import test_protocol

    protocol = test_protocol(model, preset_name)
    crop = protocol.get("crop_size")
    if crop:
        return int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    return 512


def analyze_main(argv: list[str] | None = None) -> int:
    """`hf-seg analyze confusion|erf|attention ... --output_dir DIR` (see `--help`)."""
    import sys

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    output_dir = Path(args.output_dir)
    if args.analysis == "confusion":
        if (args.confusion is None) == (args.model is None):
            raise SystemExit("hf-seg analyze confusion: give either --confusion FILE or --model and --dataset")
        if args.confusion is not None:
            matrix, names, meta = load_confusion_matrix(args.confusion)
            title = args.title or f"Confusion matrix: {Path(args.confusion).name}"
        else:
            if args.dataset is None:
                raise SystemExit("hf-seg analyze confusion: --model needs --dataset")
            from .training.trainer import evaluate_model

            saved = output_dir / "confusion.json"
            evaluate_model(args.model, args.dataset, split=args.split, max_examples=args.max_examples,
                           save_confusion=str(saved))
            matrix, names, meta = load_confusion_matrix(saved)
            title = args.title or f"Confusion matrix: {args.model} on {Path(args.dataset).name} {args.split}"
        report = analyze_confusion(matrix, names, output_dir, title=title, top=args.top)
        print(f"mIoU {100 * report['mean_iou']:.2f}  mAcc {100 * report['mean_accuracy']:.2f}  "
              f"aAcc {100 * report['overall_accuracy']:.2f}")
        print(format_confused_pairs(report))
        for path in report["files"].values():
            print(path)
        return 0

    model, processor, preset_name = _load(args.model)
    if args.device:
        model.to(args.device)
    size = _model_size(model, preset_name, args.size)
    if args.analysis == "erf":
        if (args.images is None) == (args.dataset is None):
            raise SystemExit("hf-seg analyze erf: give either --images PATH... or --dataset DATA")
        if args.num_images < 1:
            raise SystemExit(f"hf-seg analyze erf: --num_images must be at least 1, got {args.num_images}")
        if args.images is not None:
            images = [_open_rgb(p) for p in _images_from(args.images)[: args.num_images]]
        else:
            images = _dataset_images(args.dataset, args.split, args.num_images, None)
        erf = effective_receptive_field(model, images, processor, size=size, stages=args.stages, progress=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(output_dir / "erf.npz", **{name.replace(" ", "_"): v for name, v in erf.items()})
        summary = {name: {"extent_50": erf_extent(v, 0.5), "extent_90": erf_extent(v, 0.9),
                          "extent_99": erf_extent(v, 0.99)} for name, v in erf.items()}
        summary = {"model": args.model, "input_size": size, "num_images": len(images), "stages": summary}
        (output_dir / "erf.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        png = plot_receptive_fields(erf, output_dir / "erf.png", f"Effective receptive field: {args.model}",
                                    log=args.log)
        for name, values in summary["stages"].items():
            print(f"{name:>14}: 50% within {values['extent_50']} px, 90% within {values['extent_90']} px")
        print(png)
        return 0

    image = _open_rgb(Path(args.image)) if Path(args.image).is_file() else None
    if image is None:
        raise SystemExit(f"hf-seg analyze attention: {args.image}: no such image file")
    point = (args.point[0], args.point[1])
    result = attention_maps(model, image, point, processor, size=size)
    output_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output_dir / "attention.npz",
                        **{f"{i:03d}_{name.replace(' ', '_')}": v for i, (name, v) in enumerate(result["maps"])})
    png = plot_attention(image, point, result, output_dir / "attention.png", args.layers,
                         f"Attention: {args.model}")
    print(f"{len(result['maps'])} layers; {png}")
    return 0


__all__ = [
    "analyze_confusion",
    "analyze_main",
    "attention_maps",
    "confusion_report",
    "effective_receptive_field",
    "encoder_feature_maps",
    "erf_extent",
    "load_confusion_matrix",
    "plot_attention",
    "plot_confusion_matrix",
    "plot_per_class",
    "plot_receptive_fields",
    "prepare_pixels",
    "save_confusion_matrix",
]
