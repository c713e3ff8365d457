# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""`hf-seg demo`: a Gradio app that segments an uploaded image in the browser, and the Hugging Face Space that runs it.

`build_demo(model)` returns the `gradio.Blocks` (the model is loaded once, as `hf-seg predict --model` loads it: a
save_pretrained folder, a Hub id or a preset name); `launch(demo, host, port)` serves it with the demo's theme and
style sheet (Gradio 6 takes those at launch). The page offers:

- an image input (upload, paste, or one of the `examples`) and the inference mode: **whole** (one pass on the resized
  image), **slide** (overlapping windows) or **multi-scale + flip** (the model's saved `aug_test` settings, else
  mmsegmentation's six ratios 0.5 ... 1.75 and a horizontal flip), all through `hf_seg.segment`;
- the overlay of the prediction on the image (its opacity re-blends without running the model again), the colour
  legend of the classes present with each one's share of the image's pixels, and the label map as a PNG download
  whose pixel values are the class ids, exactly `hf_seg.segment`'s map (a palette PNG, as `hf-seg predict` writes;
  16-bit grey above 255 classes).

A file that is not an image, a truncated one, an empty file or an image without pixels is answered with one clear
sentence on the page (a `gradio.Warning` and the status line; the outputs are cleared), never a traceback; any other
failure is one line too (`gradio.Error`; the traceback goes to the server's log). Nothing reaches the internet: analytics and Gradio's version
check are off, and the theme's fonts are Gradio's bundled ones.

`write_space(model, directory)` writes a Hugging Face Space (`app.py`, `requirements.txt`, `README.md` with the
Space's YAML header) that runs the same app. gradio itself is needed only to serve the app, not to write a Space.
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
import weakref
from pathlib import Path

import numpy as np


__all__ = ["MODES", "build_demo", "gradio_missing_message", "launch", "write_space"]

MODES = ("whole", "slide", "multi-scale + flip")
DEFAULT_AUG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmsegmentation's MultiScaleFlipAug img_ratios
GRADIO_REQUIREMENT = "gradio>=6.31.0,<7"  # the `demo` extra (setup.cfg)
GRADIO_MIN_VERSION = "6.31.0"  # a written Space's sdk_version when gradio is not installed here
INSTALL_HINT = 'pip install "hf_seg[demo]"'

logger = logging.getLogger(__name__)

_CSS = """
#hf-seg-legend .legend-title { font-weight: 600; margin: 0 0 6px 0; font-size: 15px; }
#hf-seg-legend ol { list-style: none; margin: 0; padding: 0; max-height: 340px; overflow-y: auto; }
#hf-seg-legend li { display: grid; grid-template-columns: 22px minmax(0, 1fr) 64px; align-items: center;
                    column-gap: 10px; padding: 3px 2px; font-size: 15px; line-height: 1.35; }
#hf-seg-legend .swatch { width: 20px; height: 20px; border-radius: 4px; border: 1px solid rgba(0, 0, 0, 0.35); }
#hf-seg-legend .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#hf-seg-legend .class-id { opacity: 0.6; font-size: 13px; margin-left: 4px; }
#hf-seg-legend .share { text-align: right; font-variant-numeric: tabular-nums; }
#hf-seg-legend .bar { grid-column: 2 / 4; height: 4px; border-radius: 2px; margin-top: 2px; }
#hf-seg-legend .empty { opacity: 0.7; font-size: 14px; }
"""


def gradio_missing_message(what: str = "hf-seg demo") -> str:
    return f"`{what}` needs gradio, which is not installed: {INSTALL_HINT}"


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, no version check (unless asked)
    try:
        import gradio
    except ImportError as error:
        raise ModuleNotFoundError(gradio_missing_message(), name="gradio") from error
    return gradio


class DemoInputError(ValueError):
    """An upload the demo cannot segment; its message is shown on the page as it is."""


# -------------------------------------------------------------------------------------------- the model, no gradio


class Segmenter:
    """A loaded model with its processor, palette and class names; `run(image, mode)` is `hf_seg.segment`'s map."""

    def __init__(self, loaded, device=None):
        self.loaded = loaded
        self.model = loaded.model.eval()
        if device is not None:
            self.model = self.model.to(device)
        self.processor = loaded.processor
        self.palette = [tuple(int(c) for c in colour) for colour in loaded.palette]
        config = self.model.config
        self.num_labels = int(getattr(config, "num_labels", 0) or 0)
        id2label = {int(key): str(value) for key, value in (getattr(config, "id2label", None) or {}).items()}
        if self.num_labels == 1:  # one output channel (binary masks): segment predicts background 0, foreground 1
            self.names = ["background", id2label.get(0, "foreground")]
        else:
            self.names = [id2label.get(index, f"class_{index}") for index in range(self.num_labels)]
        self.protocol = dict(getattr(config, "test_protocol", None) or {})

    # The keyword arguments of `hf_seg.segment` for each mode.
    def settings(self, mode: str) -> dict:
        if mode == "whole":
            return {"mode": "whole"}
        if mode == "slide":
            return {"mode": "slide", **self._slide_window()}
        if mode == "multi-scale + flip":
            base = {"mode": self.protocol.get("mode", "whole")}
            if base["mode"] == "slide":
                base.update(self._slide_window())
            aug_test = dict(self.protocol.get("aug_test") or {})
            if not aug_test:
                return {**base, "scales": list(DEFAULT_AUG_SCALES), "flip": True}
            # the protocol's aug_test read as `hf-seg evaluate --aug_test` reads it (hf_seg.training.trainer's
            # evaluation_settings, not imported here: it brings transformers' Trainer): SETR's `setr_multi_scale`
            # keeps every scale's short side at least the crop
            if aug_test.pop("short_side_at_least_crop", False):
                crop = base.get("crop_size", getattr(self.model.config, "image_size", None))  # SETR: its own
                if crop is None:
                    raise DemoInputError("the model's aug_test keeps the short side at least the crop size, but its "
                                         "test protocol names no crop_size")
                aug_test["min_short_side"] = min(crop) if isinstance(crop, (list, tuple)) else int(crop)
            return {**base, **aug_test}
        raise DemoInputError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")

    def _slide_window(self) -> dict:
        """The saved protocol's crop and stride; else SETR's own (`segment` defaults); else a crop of the processor's
        short resize side (512 without one) and `segment`'s default stride of 2/3 of it."""
        from .models.setr import SetrConfig

        if self.protocol.get("crop_size") is not None:
            return {key: self.protocol[key] for key in ("crop_size", "stride") if self.protocol.get(key) is not None}
        if isinstance(self.model.config, SetrConfig):
            return {}
        size = getattr(self.processor, "size", None)
        size = size if isinstance(size, dict) else {key: getattr(size, key, None) for key in
                                                     ("shortest_edge", "height", "width")}
        sides = [size.get(key) for key in ("shortest_edge", "height", "width") if size.get(key)]
        return {"crop_size": int(min(sides)) if sides else 512}

    def describe(self, mode: str) -> str:
        settings = self.settings(mode)
        text = settings.get("mode", "whole")
        if text == "slide":
            crop = settings.get("crop_size", getattr(self.model.config, "image_size", None))
            text += f" (windows {crop}" + (f", stride {settings['stride']})" if settings.get("stride") else ")")
        if settings.get("scales"):
            scales = ", ".join(f"{scale:g}" for scale in settings["scales"])
            text += f", scales {scales}" + (" + flip" if settings.get("flip") else "")
        return text

    def run(self, image, mode: str) -> np.ndarray:
        from .inference import segment

        settings = self.settings(mode)
        try:
            (label_map,) = segment(self.model, self.processor, image, **settings)
        except ValueError as error:  # the processor's refusals: unsupported channels, NaN, ...
            raise DemoInputError(f"cannot segment this image: {error}") from error
        return label_map.numpy()

    def legend(self, label_map: np.ndarray) -> list[tuple[int, str, tuple[int, int, int], float]]:
        """`(class id, name, colour, share of the pixels)` of every class present, the largest share first."""
        counts = np.bincount(label_map.reshape(-1), minlength=len(self.names))
        total = max(int(label_map.size), 1)
        present = [int(index) for index in np.flatnonzero(counts)]
        present.sort(key=lambda index: (-counts[index], index))
        return [(index, self.names[index] if index < len(self.names) else f"class_{index}",
                 self.palette[index] if index < len(self.palette) else (0, 0, 0), counts[index] / total)
                for index in present]


def read_upload(path, name: str | None = None):
    """The uploaded file as an upright PIL image, or a `DemoInputError` saying in one sentence what is wrong."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if path is None:
        raise DemoInputError("no image: upload one first")
    path = Path(path)
    name = name or path.name
    try:
        size = path.stat().st_size
    except OSError as error:
        raise DemoInputError(f"the upload {name!r} cannot be read: {error.strerror or error}") from error
    if size == 0:
        raise DemoInputError(f"{name!r} is empty (0 bytes): upload an image file (PNG, JPEG, WebP, BMP, TIFF)")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise DemoInputError(f"{name!r} is too large to segment here: {error}") from error
    except UnidentifiedImageError as error:
        raise DemoInputError(f"{name!r} cannot be read as an image ({size:,} bytes that no image format recognises: "
                             "not an image, or a damaged one); upload a PNG, JPEG, WebP, BMP or TIFF file") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise DemoInputError(f"{name!r} is a damaged or truncated image and cannot be decoded ({error})") from error
    if image.width == 0 or image.height == 0:
        raise DemoInputError(f"{name!r} has no pixels ({image.width} x {image.height})")
    return image


def legend_html(rows, num_labels: int) -> str:
    """The colour legend: a swatch, the class name (and id) and its share of the image, largest first."""
    if not rows:
        return '<div id="hf-seg-legend-body"><p class="empty">Upload an image to see the classes it contains.</p></div>'
    items = []
    for index, name, colour, share in rows:
        rgb = f"rgb({colour[0]}, {colour[1]}, {colour[2]})"
        percent = "<0.1 %" if 0 < share < 0.0005 else f"{100 * share:.1f} %"
        items.append(
            f'<li data-class-id="{index}" data-share="{share:.6f}">'
            f'<span class="swatch" style="background: {rgb}"></span>'
            f'<span class="name" title="{html.escape(name)}">{html.escape(name)}<span class="class-id">#{index}</span>'
            f'</span><span class="share">{percent}</span>'
            f'<span class="bar" style="background: {rgb}; width: {max(100 * share, 0.5):.2f}%"></span></li>'
        )
    title = f"{len(rows)} of {num_labels} classes in this image, by share of its pixels"
    return f'<div id="hf-seg-legend-body"><p class="legend-title">{title}</p><ol>{"".join(items)}</ol></div>'


def save_label_map(label_map: np.ndarray, palette, path: Path) -> Path:
    """The class ids as a PNG: a palette PNG (pixel value = class id, coloured) up to 255 classes, else 16-bit grey."""
    from PIL import Image

    from .visualize import colorize

    if int(label_map.max(initial=0)) <= 255 and len(palette) <= 255:
        picture = colorize(label_map, palette)
    else:
        picture = Image.fromarray(label_map.astype(np.uint16))
    picture.save(path, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------------- the app


def _model_title(name: str) -> str:
    path = Path(name).expanduser()
    return path.resolve().name if path.is_dir() else name


def build_demo(model: str, *, examples=None, title: str | None = None, device=None, trust_remote_code: bool = False):
    """The demo app (`gradio.Blocks`) for `model`: a save_pretrained folder, a Hub id or a preset name (random
    weights). `examples`: image files offered under the input. `device`: a torch device (default: the model's)."""
    gr = _import_gradio()
    from .cli import load_model
    from .visualize import overlay

    loaded = load_model(str(model), trust_remote_code=trust_remote_code)
    if "SemanticSegmentation" not in type(loaded.model).__name__:
        raise ValueError(f"{loaded.source} is a {type(loaded.model).__name__}, not a semantic-segmentation model")
    segmenter = Segmenter(loaded, device=device)
    name = _model_title(str(model))
    title = title or f"{name} · semantic segmentation"
    examples = [str(Path(example).expanduser()) for example in (examples or [])]
    for example in examples:
        read_upload(example)  # refuse a bad example now, not when someone clicks it

    output_root = Path(tempfile.mkdtemp(prefix="hf_seg_demo_"))  # label-map PNGs offered for download
    default_mode = "slide" if segmenter.protocol.get("mode") == "slide" else "whole"

    def segment_upload(upload, mode, alpha):
        if upload is None:
            return None, legend_html([], segmenter.num_labels), None, "", None
        path, shown_name = _upload_path(upload)
        try:
            image = read_upload(path, shown_name)
            started = time.perf_counter()
            label_map = segmenter.run(image, mode)
            seconds = time.perf_counter() - started
            rgb = _rgb(image, segmenter.processor)
            picture = overlay(rgb, label_map, segmenter.palette, alpha=float(alpha))
            folder = output_root / uuid.uuid4().hex
            folder.mkdir()
            label_file = save_label_map(label_map, segmenter.palette, folder / f"{Path(shown_name).stem}_labels.png")
        except DemoInputError as error:  # the user's file: a warning and the reason on the page, outputs cleared
            gr.Warning(html.escape(str(error), quote=False))
            reason = f"**Cannot segment this upload:** {_markdown_text(str(error))}"
            return None, legend_html([], segmenter.num_labels), None, reason, None
        except Exception as error:  # noqa: BLE001 - anything else: one line on the page, the traceback in the log
            logger.exception("hf-seg demo: segmenting %s failed", shown_name)
            raise gr.Error(f"segmenting {shown_name!r} failed: {type(error).__name__}: {error}",
                           title="Segmentation failed") from None
        status = (f"**{segmenter.describe(mode)}** · {image.width} × {image.height} px · {seconds:.2f} s · "
                  f"{len(np.unique(label_map))} classes found")
        rows = segmenter.legend(label_map)
        return picture, legend_html(rows, segmenter.num_labels), str(label_file), status, (rgb, label_map)

    def reblend(state, alpha):
        if state is None:
            return gr.skip()
        rgb, label_map = state
        return overlay(rgb, label_map, segmenter.palette, alpha=float(alpha))

    model_line = f"`{type(loaded.model).__name__}` · {segmenter.num_labels} classes"
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## {_markdown_text(title)}\n{model_line}. Upload an image (or pick an example), choose how to "
                    "run the model, and download the label map: a PNG whose pixel values are the class ids.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                image_input = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"],
                                       height=380, elem_id="hf-seg-input")
                mode_input = gr.Radio(list(MODES), value=default_mode, label="Inference",
                                      info="whole: one pass on the resized image · slide: overlapping windows · "
                                      "multi-scale + flip: averaged over scales and a mirrored copy",
                                      elem_id="hf-seg-mode")
                with gr.Row():
                    alpha_input = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity",
                                            elem_id="hf-seg-alpha", scale=3)
                    run_button = gr.Button("Segment", variant="primary", elem_id="hf-seg-run", scale=1)
                if examples:
                    gr.Examples(examples=[[example] for example in examples], inputs=[image_input],
                                label="Examples", cache_examples=False)
            with gr.Column(scale=1):
                overlay_output = gr.Image(label="Prediction overlay", type="pil", format="png", interactive=False,
                                          height=380, elem_id="hf-seg-overlay")
                status_output = gr.Markdown(elem_id="hf-seg-status")
                legend_output = gr.HTML(legend_html([], segmenter.num_labels), label="Legend",
                                        elem_id="hf-seg-legend")
                label_output = gr.File(label="Label map (PNG, pixel value = class id)", interactive=False,
                                       elem_id="hf-seg-label-map")
        state = gr.State(None)
        outputs = [overlay_output, legend_output, label_output, status_output, state]
        # preprocess=False: the upload reaches segment_upload as Gradio's file record (path checked to lie in its
        # upload folder), so a file that is no image gets this demo's message instead of a failure inside Gradio.
        for trigger in (image_input.change, mode_input.change, run_button.click):
            trigger(segment_upload, inputs=[image_input, mode_input, alpha_input], outputs=outputs,
                    preprocess=False, show_progress="minimal")
        alpha_input.release(reblend, inputs=[state, alpha_input], outputs=[overlay_output], show_progress="hidden")
    demo.queue(default_concurrency_limit=1)  # one image at a time through the model
    weakref.finalize(demo, shutil.rmtree, output_root, True)
    demo.hf_seg_segmenter = segmenter
    return demo


def _markdown_text(text: str) -> str:
    """`text` shown literally in Markdown (a file name with `*` or `_` stays as it is)."""
    text = html.escape(text, quote=False)
    for character in "\\`*_[]#|~":
        text = text.replace(character, "\\" + character)
    return text


def _upload_path(upload) -> tuple[str, str]:
    """(path on the server, the name the user gave it) from Gradio's file record (or a plain path)."""
    if isinstance(upload, dict):
        path = upload.get("path")
        name = upload.get("orig_name") or (Path(path).name if path else "upload")
        return path, name
    return str(upload), Path(str(upload)).name


def _rgb(image, processor) -> np.ndarray:
    from .cli import _rgb_array

    return _rgb_array(image, processor)


def _theme(gr):
    # Gradio's bundled fonts (LocalFont): nothing is fetched from a font CDN.
    return gr.themes.Default(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate")


def launch(demo, host: str | None = None, port: int | None = None, share: bool = False, **kwargs):
    """Serve `demo` (Gradio's `launch` with the demo's theme and style sheet). `host`/`port` None: Gradio's
    defaults and environment (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, as on a Space)."""
    gr = _import_gradio()
    return demo.launch(server_name=host, server_port=port, share=share, theme=_theme(gr), css=_CSS, **kwargs)


# --------------------------------------------------------------------------------------------------------- Space


class SpaceError(ValueError):
    """A Space that cannot be written where it was asked for (named wrong on the command line)."""


def _model_card_metadata(model: str, local: Path | None) -> dict:
    """The YAML header of the model's card (README.md) where it can be read: the folder's, or the Hub's."""
    from huggingface_hub import metadata_load

    card = None
    if local is not None:
        card = local / "README.md"
    else:
        try:
            from huggingface_hub import hf_hub_download

            card = Path(hf_hub_download(model, "README.md"))
        except Exception as error:  # noqa: BLE001 - offline, no card, private repository, ...
            logger.info("no model card for %s: %s", model, error)
            return {}
    try:
        return dict(metadata_load(card) or {}) if card.is_file() else {}
    except Exception as error:  # noqa: BLE001 - a malformed YAML header
        logger.warning("cannot read the YAML header of %s: %s", card, error)
        return {}


def _space_requirements() -> list[str]:
    """hf_seg's own requirements (the vendored copy needs them); gradio comes from the Space's sdk_version."""
    requirements = []
    for requirement in importlib.metadata.requires("hf_seg") or []:
        if "extra ==" in requirement:
            continue
        requirements.append(requirement.split(";")[0].strip())
    return requirements


def _gradio_version() -> str:
    try:
        return importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        return GRADIO_MIN_VERSION


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _copy_package(target: Path) -> None:
    source = Path(__file__).resolve().parent
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))


def write_space(model: str, directory, *, examples=None, title: str | None = None) -> list[Path]:
    """Write a Hugging Face Space running `build_demo(model)` into the empty (or new) `directory`.

    - A local model folder is copied into the Space (`model/`, its top-level files: a save_pretrained folder is
      flat; subfolders such as training checkpoints are left out), so the Space is self-contained; a Hub id is loaded
      from the Hub by the Space and named in the README's `models:`; a preset name gives random weights.
    - hf_seg itself is copied beside `app.py` (`hf_seg/`, this installation's code), so the Space runs the code that
      wrote it; `requirements.txt` holds hf_seg's requirements; gradio comes from `sdk_version` (this gradio's).
    - The README's `license` is the model card's where it has one.
    Returns the files written (top level). Refuses, writing nothing, a `directory` that is a file or a non-empty
    folder, that is the model folder or lies inside it, and example images that cannot be read.
    """
    from . import presets
    from .cli import _HUB_ID

    target = Path(directory).expanduser()
    resolved = target.resolve()
    if target.exists() and not target.is_dir():
        raise SpaceError(f"--write-space {directory} is a file, not a folder")
    model_path = Path(model).expanduser()
    local = model_path.resolve() if model_path.is_dir() else None
    if local is not None:
        if resolved == local:
            raise SpaceError(f"--write-space {directory} is the model folder itself; choose a new, empty folder")
        if _is_within(resolved, local):
            raise SpaceError(f"--write-space {directory} lies inside the model folder {model}, which is copied into "
                             "the Space; choose a folder outside it")
        if not (local / "config.json").is_file():
            raise SpaceError(f"model folder {model} has no config.json: it is not a folder written by save_pretrained")
    elif model_path.exists():
        raise SpaceError(f"--model {model} is a file; pass the folder that holds config.json")
    elif model not in presets.PRESETS and not _HUB_ID.fullmatch(model):
        raise SpaceError(f"--model {model!r} is neither a model folder, a Hub id (owner/name) nor a preset name")
    if target.is_dir() and any(target.iterdir()):
        raise SpaceError(f"--write-space {directory} is not empty; a Space is written only into a new or empty "
                         "folder (nothing there is overwritten)")
    example_paths = [Path(example).expanduser() for example in (examples or [])]
    for example in example_paths:
        try:
            read_upload(example)
        except DemoInputError as error:
            raise SpaceError(f"example {example}: {error}") from error
    names = [path.name for path in example_paths]
    if len(set(names)) != len(names):
        raise SpaceError(f"two examples share a file name ({', '.join(sorted(names))}); rename one")

    metadata = _model_card_metadata(model, local)
    license_ = metadata.get("license")
    name = _model_title(model)
    title = title or f"{name} segmentation"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    if local is not None:
        (target / "model").mkdir()
        for file in sorted(local.iterdir()):
            if file.is_file() and not file.name.startswith("."):
                shutil.copy2(file, target / "model" / file.name)
        written.append(target / "model")
        model_expression = 'os.path.join(os.path.dirname(os.path.abspath(__file__)), "model")'
    else:
        model_expression = json.dumps(model)
    if example_paths:
        (target / "examples").mkdir()
        for example in example_paths:
            shutil.copy2(example, target / "examples" / example.name)
        written.append(target / "examples")
    _copy_package(target / "hf_seg")
    written.append(target / "hf_seg")

    example_list = ", ".join(f'os.path.join(HERE, "examples", {json.dumps(n)})' for n in names)
    app = f'''"""Hugging Face Space: {title}. Written by `hf-seg demo --write-space`; hf_seg is the copy beside this file."""

import os

from hf_seg.demo import build_demo, launch


HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = {model_expression}
EXAMPLES = [{example_list}]

demo = build_demo(MODEL, examples=EXAMPLES, title={json.dumps(title)})

if __name__ == "__main__":
    launch(demo)  # the Space sets the host and port (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT)
'''
    (target / "app.py").write_text(app, encoding="utf-8")
    requirements = "\n".join(["# hf_seg's requirements (hf_seg itself is the copy in hf_seg/); gradio: sdk_version",
                              *_space_requirements()]) + "\n"
    (target / "requirements.txt").write_text(requirements, encoding="utf-8")

    header = {
        "title": title,
        "emoji": "🧩",
        "colorFrom": "indigo",
        "colorTo": "blue",
        "sdk": "gradio",
        "sdk_version": _gradio_version(),
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "app_file": "app.py",
        "pinned": False,
    }
    if license_:
        header["license"] = license_
    if local is None and model not in presets.PRESETS:
        header["models"] = [model]
    short = f"Semantic segmentation with {name}"
    header["short_description"] = short if len(short) <= 60 else short[:57] + "..."
    lines = ["---"]
    for key, value in header.items():  # JSON scalars and lists are valid YAML
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"  - {json.dumps(item)}" for item in value)
        else:
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    lines.append("---")
    if local is not None:
        source = f"the model folder `{name}`, copied into `model/`"
    elif model in presets.PRESETS:
        source = f"the preset `{model}` with **random weights** (its predictions are noise)"
    else:
        source = f"[{model}](https://huggingface.co/{model}) on the Hub"
    body = f"""
# {title}

Semantic segmentation in the browser with {source}: upload an image, choose whole, slide or multi-scale + flip
inference, and see the overlay, the classes present with their share of the image, and the label map as a PNG of
class ids. Written by `hf-seg demo --write-space` (hf_seg's code is in `hf_seg/`, Apache-2.0{
    f"; the model's license: {license_}" if license_ else ""}).

Run it locally: `pip install -r requirements.txt "{GRADIO_REQUIREMENT}" && python app.py`.
"""
    (target / "README.md").write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
    written = [target / "app.py", target / "requirements.txt", target / "README.md", *written]
    return written
