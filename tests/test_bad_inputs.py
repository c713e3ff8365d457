"""Bad input, table by table: every case names the exact error class (or, for the command line, the exit status and
the one `hf-seg: error:` line) and a substring that names the offending file, key, value or shape. Inputs that
hf_seg handles rather than refuses (16-bit, CMYK, RGBA, extreme aspect ratios) are asserted to give a label map of
the image's size. Design principle 5, "Strict at the edges"."""

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from safetensors.torch import save_file
from transformers import SegformerConfig, SegformerForImageClassification

import hf_seg
from hf_seg import cli, presets
from hf_seg.metrics import SegmentationConfusionMatrix
from hf_seg.presets import UnknownPresetError
from tiny_models import tiny_setr


REPO = Path(__file__).resolve().parents[1]
SETR = "setr-pup-vit-large-ade20k-512"
PROCESSOR_SIZE = {"shortest_edge": 64, "longest_edge": 128}
# A tiny MiT ImageNet classifier preset: the smallest family whose authors' layout the test can write by hand.
TINY_MIT = presets.Preset(
    name="tiny-mit-test", family="mit",
    config=dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
                sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=16, reshape_last_stage=False,
                num_labels=5),
    processor=dict(size={"shortest_edge": 32}, crop_pct=0.875), label_set=None,
)


def _rgb(height=40, width=50, seed=0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _authors_mit_state_dict(model: SegformerForImageClassification) -> dict:
    """transformers' MiT classifier written back in the authors' key layout (NVlabs `mit_b*.pth`)."""
    renames = [
        (r"patch_embeddings\.proj", "patch_embed{s}.proj"), (r"patch_embeddings\.layer_norm", "patch_embed{s}.norm"),
        (r"blocks\.(\d+)\.layernorm_before", r"block{s}.\1.norm1"),
        (r"blocks\.(\d+)\.attention\.q_proj", r"block{s}.\1.attn.q"),
        (r"blocks\.(\d+)\.attention\.o_proj", r"block{s}.\1.attn.proj"),
        (r"blocks\.(\d+)\.attention\.sequence_reduction\.sequence_reduction", r"block{s}.\1.attn.sr"),
        (r"blocks\.(\d+)\.attention\.sequence_reduction\.layer_norm", r"block{s}.\1.attn.norm"),
        (r"blocks\.(\d+)\.layernorm_after", r"block{s}.\1.norm2"), (r"blocks\.(\d+)\.mlp", r"block{s}.\1.mlp"),
        (r"layer_norm", "norm{s}"),
    ]
    state, out = model.state_dict(), {}
    for key, tensor in state.items():
        if key.startswith("classifier."):
            out["head." + key.split(".", 1)[1]] = tensor
            continue
        stage, rest = re.fullmatch(r"segformer\.stages\.(\d+)\.(.*)", key).groups()
        if ".attention.k_proj." in rest or ".attention.v_proj." in rest:
            if ".k_proj." in rest:  # the authors fuse k and v into one `kv` projection
                j, param = re.fullmatch(r"blocks\.(\d+)\.attention\.k_proj\.(\w+)", rest).groups()
                value = state[key.replace("k_proj", "v_proj")]
                out[f"block{int(stage) + 1}.{j}.attn.kv.{param}"] = torch.cat([tensor, value])
            continue
        for pattern, replacement in renames:
            if re.match(pattern, rest):
                rest = re.sub(pattern, replacement.replace("{s}", str(int(stage) + 1)), rest, count=1)
                break
        out[rest] = tensor
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every file the cases need, written once: saved folders (good and broken), images of every kind, checkpoints."""
    root = tmp_path_factory.mktemp("bad-inputs")
    model = tiny_setr("pup")
    processor = hf_seg.create_image_processor(SETR, size=PROCESSOR_SIZE)
    good = root / "model"
    model.save_pretrained(good)
    processor.save_pretrained(good)
    no_config = shutil.copytree(good, root / "no-config")
    (no_config / "config.json").unlink()
    no_processor = shutil.copytree(good, root / "no-processor")
    (no_processor / "preprocessor_config.json").unlink()
    truncated = shutil.copytree(good, root / "truncated-weights")
    _truncate(truncated / "model.safetensors")

    images = root / "images"
    images.mkdir()
    _rgb().save(images / "photo.png")
    _rgb(seed=1).save(images / "a.png")
    _rgb(seed=2).save(images / "a_overlay.png")
    Image.fromarray(np.random.RandomState(3).randint(0, 65536, (30, 20), dtype=np.uint16)).save(images / "deep.png")
    _rgb(seed=4).convert("CMYK").save(images / "cmyk.jpg")
    Image.fromarray(np.random.RandomState(5).randint(0, 256, (30, 20, 4), dtype=np.uint8), "RGBA").save(
        images / "alpha.png")
    _rgb(seed=6).save(images / "cut.png")
    _truncate(images / "cut.png", 0.3)
    (images / "notes.png").write_text("not an image\n")

    torch.manual_seed(0)
    mit = SegformerForImageClassification(SegformerConfig(**TINY_MIT.config)).eval()
    source = _authors_mit_state_dict(mit)
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    torch.save({"model": source}, checkpoints / "mit.pth")
    torch.save({"model": {k: v for k, v in source.items() if k != "block1.0.attn.q.weight"}},
               checkpoints / "missing.pth")
    torch.save({"model": {**source, "block1.0.attn.extra.weight": torch.zeros(1)}}, checkpoints / "extra.pth")
    save_file({key: value.contiguous() for key, value in source.items()}, checkpoints / "cut.safetensors")
    _truncate(checkpoints / "cut.safetensors")

    class RunsCode:  # what a malicious pickle does: call a function on load
        def __reduce__(self):
            return os.makedirs, (str(root / "pickle-ran"),)

    torch.save({"model": source, "payload": RunsCode()}, checkpoints / "evil.pth")
    return types.SimpleNamespace(root=root, model=model, processor=processor, good=good, no_config=no_config,
                                 no_processor=no_processor, truncated=truncated, images=images,
                                 checkpoints=checkpoints)


@pytest.fixture
def tiny_mit_preset(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, TINY_MIT.name, TINY_MIT)


def _raises(call, error_class, *fragments):
    with pytest.raises(Exception) as info:  # noqa: PT011 - the exact class is asserted below
        call()
    assert type(info.value) is error_class, f"{type(info.value).__name__}: {info.value}"
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


# ------------------------------------------------------------------------- presets, configurations, overrides

CONFIG_CASES = [
    # unknown names: "did you mean"
    pytest.param(lambda: hf_seg.create_model("setr-pup-vit-large-ade20k-51"), UnknownPresetError,
                 ["'setr-pup-vit-large-ade20k-51'", "Did you mean 'setr-pup-vit-large-ade20k-512'"], id="preset-typo"),
    pytest.param(lambda: hf_seg.get_preset("segformer-b9-ade20k-512"), UnknownPresetError,
                 ["'segformer-b9-ade20k-512'", "Did you mean"], id="preset-unknown-size"),
    pytest.param(lambda: hf_seg.create_image_processor("mpvit-smal"), UnknownPresetError, ["'mpvit-small'"],
                 id="processor-preset-typo"),
    pytest.param(lambda: hf_seg.create_config(SETR, hiden_size=48), TypeError, ["'hiden_size'", "'hidden_size'"],
                 id="config-key-typo"),
    pytest.param(lambda: hf_seg.create_model("segformer-b0-ade20k-512", hiden_sizes=[8]), TypeError,
                 ["'hiden_sizes'", "'hidden_sizes'"], id="segformer-key-typo"),
    pytest.param(lambda: hf_seg.create_model("upernet-mpvit-small-ade20k-512", num_label=3), TypeError,
                 ["'num_label'", "'num_labels'"], id="mpvit-key-typo"),
    pytest.param(lambda: hf_seg.create_image_processor(SETR, sise=512), TypeError, ["'sise'", "'size'"],
                 id="processor-key-typo"),
    pytest.param(lambda: hf_seg.create_image_processor("mpvit-small", do_reduce_labels=True), TypeError,
                 ["'do_reduce_labels'"], id="processor-key-of-another-class"),
    # labels
    pytest.param(lambda: hf_seg.create_model(SETR, num_labels=0), ValueError, ["num_labels=0"], id="num-labels-0"),
    pytest.param(lambda: hf_seg.create_config("segformer-b0-ade20k-512", num_labels=-3), ValueError,
                 ["num_labels=-3"], id="segformer-num-labels-negative"),
    pytest.param(lambda: hf_seg.create_config("upernet-mpvit-small-ade20k-512", num_labels=3, id2label={0: "a"}),
                 ValueError, ["num_labels=3", "len(id2label)=1"], id="num-labels-vs-id2label"),
    pytest.param(lambda: hf_seg.SetrConfig(num_labels=0), ValueError, ["num_labels=0"], id="setr-config-0-labels"),
    pytest.param(lambda: hf_seg.MPViTConfig(id2label={1: "a", 2: "b"}), ValueError, ["0..1", "[1, 2]"],
                 id="mpvit-id2label-ids"),
    pytest.param(lambda: hf_seg.SegformerMmsegConfig(num_labels=2, id2label={0: "a", 1: "b", 2: "c"}), ValueError,
                 ["num_labels=2", "len(id2label)=3"], id="segformer-mmseg-labels"),
    # architectures the model cannot build
    pytest.param(lambda: hf_seg.create_model("segformer-b0-ade20k-512", hidden_sizes=[32, 64, 161, 256]),
                 ValueError, ["hidden_sizes[2]=161", "num_attention_heads[2]=5"], id="segformer-width-vs-heads"),
    pytest.param(lambda: hf_seg.create_config("mit-b0", depths=[2, 2, 2]), ValueError,
                 ["depths=[2, 2, 2]", "num_encoder_blocks=4"], id="segformer-list-length"),
    pytest.param(lambda: hf_seg.create_config(SETR, hidden_size=1000), ValueError,
                 ["hidden_size=1000", "num_attention_heads=16"], id="setr-width-vs-heads"),
    pytest.param(lambda: hf_seg.create_config("mpvit-small", num_paths=[2, 3, 3]), ValueError,
                 ["num_paths=[2, 3, 3]", "num_stages=4"], id="mpvit-list-length"),
    pytest.param(lambda: hf_seg.SetrConfig(num_attention_heads=0), StrictDataclassClassValidationError,
                 ["num_attention_heads=0"], id="setr-config-zero-heads"),
    pytest.param(lambda: hf_seg.SegformerMmsegConfig(hidden_sizes=[32, 64, 161, 256]),
                 StrictDataclassClassValidationError, ["hidden_sizes[2]=161"], id="segformer-mmseg-config-heads"),
]


@pytest.mark.parametrize(("call", "error_class", "fragments"), CONFIG_CASES)
def test_presets_and_configurations(call, error_class, fragments):
    _raises(call, error_class, *fragments)


# ------------------------------------------------------------------------------------- images through segment()

SEGMENT_CASES = [
    pytest.param(lambda f: np.zeros((0, 0, 3), np.uint8), ["image 2", "empty image", "(0, 0, 3)"], id="empty-0x0"),
    pytest.param(lambda f: str(f.images / "cut.png"), ["image 2", "cut.png"], id="truncated-file"),
    pytest.param(lambda f: str(f.images / "notes.png"), ["image 2", "notes.png"], id="not-an-image"),
    pytest.param(lambda f: str(f.images / "missing.png"), ["image 2", "missing.png"], id="missing-file"),
    pytest.param(lambda f: np.full((10, 10, 3), np.nan, np.float32), ["image 2", "NaN"], id="nan-pixels"),
    pytest.param(lambda f: np.zeros((10, 10, 5), np.uint8), ["image 2", "(10, 10, 5)"], id="five-channels"),
    pytest.param(lambda f: np.zeros((10, 10), bool), ["image 2", "bool"], id="boolean-mask"),
]


@pytest.mark.parametrize(("make", "fragments"), SEGMENT_CASES)
def test_segment_names_the_bad_image_by_its_index(files, make, fragments):
    ok = _rgb()
    _raises(lambda: hf_seg.segment(files.model, files.processor, [ok, ok, make(files)]), ValueError, *fragments)


HANDLED_IMAGES = [
    pytest.param(lambda f: Image.open(f.images / "deep.png"), (30, 20), id="16-bit"),
    pytest.param(lambda f: Image.open(f.images / "cmyk.jpg"), (40, 50), id="cmyk"),
    pytest.param(lambda f: Image.open(f.images / "alpha.png"), (30, 20), id="rgba"),
    pytest.param(lambda f: _rgb(2, 600), (2, 600), id="huge-aspect-ratio"),
]


@pytest.mark.parametrize(("make", "size"), HANDLED_IMAGES)
def test_segment_handles_every_image_mode(files, make, size):
    image = make(files)
    (label_map,) = hf_seg.segment(files.model, files.processor, [image])
    assert tuple(label_map.shape) == size, getattr(image, "mode", None)
    assert 0 <= int(label_map.min()) and int(label_map.max()) < files.model.config.num_labels


# ------------------------------------------------------------------------------------- label maps for metrics

METRIC_CASES = [
    pytest.param(lambda m: m.update(np.zeros((4, 4), np.int64), np.full((4, 4), 7)), ValueError, ["7", "[0, 5)"],
                 id="reference-out-of-range"),
    pytest.param(lambda m: m.update(np.full((4, 4), -1), np.zeros((4, 4), np.int64)), ValueError, ["-1"],
                 id="prediction-negative"),
    pytest.param(lambda m: m.update([np.zeros((2, 3), np.int64)], [np.zeros((3, 2), np.int64)]), ValueError,
                 ["(2, 3)", "(3, 2)"], id="shape-mismatch"),
    pytest.param(lambda m: m.update(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int64)), TypeError,
                 ["float32"], id="float-predictions"),
    pytest.param(lambda m: m.update(np.zeros((1, 1, 4, 4), np.int64), np.zeros((1, 1, 4, 4), np.int64)), ValueError,
                 ["(1, 1, 4, 4)"], id="four-dimensional-maps"),
    pytest.param(lambda m: SegmentationConfusionMatrix(num_labels=0), ValueError, ["num_labels", "0"],
                 id="zero-classes"),
]


@pytest.mark.parametrize(("call", "error_class", "fragments"), METRIC_CASES)
def test_confusion_matrix_refuses_bad_label_maps(call, error_class, fragments):
    _raises(lambda: call(SegmentationConfusionMatrix(num_labels=5)), error_class, *fragments)


# ---------------------------------------------------------------------------------------- the command line


def _cli(capsys, argv):
    status = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("hf-seg: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _predict(f, out, *images, extra=()):
    return ["predict", "--model", f.good, *images, "--output-dir", out, "--quiet", *extra]


CLI_CASES = [
    # predict: images
    pytest.param(lambda f, t: _predict(f, t, f.images / "cut.png"), 1, ["cannot read image", "cut.png"],
                 id="predict-truncated-image"),
    pytest.param(lambda f, t: _predict(f, t, f.images / "notes.png"), 1, ["cannot read image", "notes.png"],
                 id="predict-not-an-image"),
    pytest.param(lambda f, t: _predict(f, t, f.images / "none.png"), 2, ["no such file", "none.png"],
                 id="predict-missing-image"),
    # predict: outputs that would destroy data
    pytest.param(lambda f, t: _predict(f, f.images, f.images / "photo.png"), 2,
                 ["would overwrite the input image", "photo.png"], id="predict-output-is-the-input"),
    pytest.param(lambda f, t: _predict(f, t, f.images / "a.png", f.images / "a_overlay.png", extra=["--overlay"]), 2,
                 ["a.png", "a_overlay.png", "would both be written to"], id="predict-overlay-collides-with-label-map"),
    pytest.param(lambda f, t: _predict(f, t, f.images / "a.png", f.images / ".." / "images" / "a.png"), 2,
                 ["given twice", "a.png"], id="predict-same-image-twice"),
    pytest.param(lambda f, t: _predict(f, f.images / "photo.png", f.images / "a.png"), 2,
                 ["--output-dir", "photo.png", "is a file"], id="predict-output-dir-is-a-file"),
    # predict / export: saved folders
    pytest.param(lambda f, t: ["predict", "--model", f.no_config, f.images / "a.png", "--output-dir", t], 2,
                 ["no-config", "config.json"], id="predict-folder-without-config"),
    pytest.param(lambda f, t: ["predict", "--model", f.no_processor, f.images / "a.png", "--output-dir", t], 2,
                 ["no-processor", "preprocessor_config.json"], id="predict-folder-without-processor"),
    pytest.param(lambda f, t: ["predict", "--model", f.truncated, f.images / "a.png", "--output-dir", t], 1,
                 ["truncated-weights", "model.safetensors", "truncated"], id="predict-truncated-weights"),
    pytest.param(lambda f, t: ["predict", "--model", "setr-pup-vit-large-ade20k-51", f.images / "a.png",
                 "--output-dir", t], 2, ["Did you mean 'setr-pup-vit-large-ade20k-512'"], id="predict-model-typo"),
    pytest.param(lambda f, t: _predict(f, t, f.images / "a.png", extra=["--alpha", "1.5"]), 2, ["--alpha", "1.5"],
                 id="predict-bad-alpha"),
    pytest.param(lambda f, t: ["export", "--model", f.truncated, "--output", t / "m.onnx", "--size", 64, 64], 1,
                 ["model.safetensors", "truncated"], id="export-truncated-weights"),
    pytest.param(lambda f, t: ["export", "--model", f.no_config, "--output", t / "m.onnx", "--size", 64, 64], 2,
                 ["config.json"], id="export-folder-without-config"),
    pytest.param(lambda f, t: ["export", "--model", f.good, "--output", t / "m.onnx", "--size", 0, 64], 2,
                 ["--size", "0 64"], id="export-zero-size"),
    # list
    pytest.param(lambda f, t: ["list", "--family", "setrr"], 2, ["'setrr'", "Did you mean 'setr'"],
                 id="list-family-typo"),
    # convert: checkpoints
    pytest.param(lambda f, t: ["convert", "segformer", "--checkpoint", f.checkpoints / "cut.safetensors",
                 "--model-name", TINY_MIT.name, "--output-dir", t / "out"], 1, ["cut.safetensors", "truncated"],
                 id="convert-truncated-safetensors"),
    pytest.param(lambda f, t: ["convert", "segformer", "--checkpoint", f.checkpoints / "evil.pth",
                 "--model-name", TINY_MIT.name, "--output-dir", t / "out"], 1, ["evil.pth", "weights_only=True", "os.makedirs"],
                 id="convert-pickle-that-runs-code"),
    pytest.param(lambda f, t: ["convert", "segformer", "--checkpoint", f.checkpoints / "missing.pth",
                 "--model-name", TINY_MIT.name, "--output-dir", t / "out"], 1,
                 ["missing.pth", "segformer.stages.0.blocks.0.attention.q_proj.weight"], id="convert-missing-key"),
    pytest.param(lambda f, t: ["convert", "segformer", "--checkpoint", f.checkpoints / "extra.pth",
                 "--model-name", TINY_MIT.name, "--output-dir", t / "out"], 1,
                 ["extra.pth", "block1.0.attn.extra.weight"], id="convert-unconsumed-key"),
    pytest.param(lambda f, t: ["convert", "segformer", "--checkpoint", f.checkpoints / "none.pth",
                 "--model-name", TINY_MIT.name, "--output-dir", t / "out"], 1, ["none.pth", "does not exist"],
                 id="convert-missing-checkpoint"),
    pytest.param(lambda f, t: ["convert", "segformer", "--checkpoint", f.checkpoints / "mit.pth",
                 "--model-name", "tiny-mit-tset", "--output-dir", t / "out"], 1, ["'tiny-mit-tset'", "Did you mean 'tiny-mit-test'"],
                 id="convert-unknown-preset"),
    pytest.param(lambda f, t: ["convert", "vit", "--checkpoint", f.checkpoints / "mit.pth"], 2, ["'vit'"],
                 id="convert-unknown-family"),
]


@pytest.mark.parametrize(("argv", "status", "fragments"), CLI_CASES)
def test_command_line_refuses(files, tiny_mit_preset, tmp_path, capsys, argv, status, fragments):
    before = {path.name: path.read_bytes() for path in files.images.iterdir()}
    code, _, err = _cli(capsys, argv(files, tmp_path))
    assert code == status, err
    line = _error_line(err)
    for fragment in fragments:
        assert fragment in line, line
    assert {path.name: path.read_bytes() for path in files.images.iterdir()} == before  # no input was touched
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("*.png"))  # nothing half-written
    assert not (files.root / "pickle-ran").exists()


def test_command_line_handles_every_image_mode(files, tmp_path, capsys):
    names = ["deep.png", "cmyk.jpg", "alpha.png"]
    code, _, err = _cli(capsys, _predict(files, tmp_path, *(files.images / name for name in names),
                                         extra=["--overlay"]))
    assert code == 0, err
    for name in names:
        with Image.open(files.images / name) as source, Image.open(tmp_path / f"{Path(name).stem}.png") as label:
            assert label.size == source.size and label.mode == "P", name


def test_existing_outputs_need_overwrite(files, tmp_path, capsys):
    assert _cli(capsys, _predict(files, tmp_path, files.images / "a.png"))[0] == 0
    written = (tmp_path / "a.png").read_bytes()
    code, _, err = _cli(capsys, _predict(files, tmp_path, files.images / "a.png"))
    assert code == 2
    line = _error_line(err)
    assert str(tmp_path / "a.png") in line and "--overwrite" in line
    assert _cli(capsys, _predict(files, tmp_path, files.images / "a.png", extra=["--overwrite"]))[0] == 0
    assert (tmp_path / "a.png").read_bytes() == written
    # --overwrite never reaches an input, not even through a hard link
    os.link(files.images / "photo.png", tmp_path / "photo.png")
    code, _, err = _cli(capsys, _predict(files, tmp_path, files.images / "photo.png", extra=["--overwrite"]))
    assert code == 2 and "would overwrite the input image" in _error_line(err)


def test_convert_positive_control(files, tiny_mit_preset, tmp_path, capsys):
    """The broken checkpoints above differ from this one by one key, or by their bytes: it converts."""
    code, out, err = _cli(capsys, ["convert", "segformer", "--checkpoint", files.checkpoints / "mit.pth",
                                   "--model-name", TINY_MIT.name, "--output-dir", tmp_path / "out"])
    assert code == 0, err
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_real_hf_seg_process_refuses_to_overwrite_an_input(files):
    """One real `hf-seg` process (console script when installed): exit status 2, one error line, input intact."""
    command = [shutil.which("hf-seg")] if shutil.which("hf-seg") else [sys.executable, "-m", "hf_seg"]
    before = (files.images / "photo.png").read_bytes()
    result = subprocess.run(
        [*command, "predict", "--model", str(files.good), str(files.images / "photo.png"), "--output-dir",
         str(files.images)], capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "would overwrite the input image" in _error_line(result.stderr)
    assert (files.images / "photo.png").read_bytes() == before


@pytest.mark.parametrize(("kwargs", "fragment"), [
    pytest.param(dict(num_labels=0), "num_labels=0", id="zero"),
    pytest.param(dict(num_labels=3, id2label={0: "a"}), "len(id2label)=1", id="disagreeing"),
])
def test_saved_folder_with_bad_label_overrides(files, kwargs, fragment):
    from transformers import AutoConfig

    _raises(lambda: AutoConfig.from_pretrained(files.good, **kwargs), ValueError, fragment)
    # asking for other classes than the saved ones stays what transformers makes of it: new LABEL_i names
    assert AutoConfig.from_pretrained(files.good, num_labels=3).id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
