"""The `hf-seg` command line (hf_seg.cli) and the pictures it draws (hf_seg.visualize)."""

import importlib.metadata
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hf_seg
from hf_seg import cli, presets
from hf_seg.labels import load_label_set
from hf_seg.visualize import colorize, default_palette, overlay


REPO = Path(__file__).resolve().parents[1]
TINY_SETR = dict(
    image_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    decoder_channels=16, auxiliary_in_indices=[0, 1],
    initializer_range=0.5,  # wide weights: a random model then predicts several classes, not one everywhere
)
PROCESSOR_SIZE = {"shortest_edge": 64, "longest_edge": 128}


def _image(height, width, seed):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def setr_folder(tmp_path_factory):
    """A tiny SETR-PUP labelled with ADE20K's 150 classes, saved as a user would (model + processor)."""
    torch.manual_seed(0)
    model = hf_seg.create_model("setr-pup-vit-large-ade20k-512", **TINY_SETR).eval()
    processor = hf_seg.create_image_processor("setr-pup-vit-large-ade20k-512", size=PROCESSOR_SIZE)
    folder = tmp_path_factory.mktemp("tiny-setr")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    _image(70, 90, 0).save(folder / "wide.png")
    _image(100, 60, 1).save(folder / "tall.jpg", quality=95)
    return folder


def _run(capsys, *argv):
    status = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _assert_one_line_error(err, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hf-seg: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ----------------------------------------------------------------------------------------------------------- predict


def test_predict_writes_palette_pngs_equal_to_segment(setr_folder, images, tmp_path, capsys):
    folder, model, processor = setr_folder
    status, out, err = _run(capsys, "predict", "--model", folder, images, "--output-dir", tmp_path, "--overlay")
    assert status == 0, err
    assert "wrote 2 label maps" in out
    _, ade_palette = load_label_set("ade20k")
    classes_seen = set()
    for name in ("wide.png", "tall.jpg"):
        with Image.open(images / name) as source:
            image = source.convert("RGB")
        expected = hf_seg.segment(model, processor, image)[0].numpy()
        with Image.open(tmp_path / f"{Path(name).stem}.png") as label_png:
            assert label_png.mode == "P"
            assert label_png.size == image.size
            np.testing.assert_array_equal(np.asarray(label_png), expected)
            palette = np.asarray(label_png.getpalette()[: 3 * 150]).reshape(150, 3)
        np.testing.assert_array_equal(palette, np.asarray(ade_palette))
        classes_seen |= set(np.unique(expected).tolist())
        with Image.open(tmp_path / f"{Path(name).stem}_overlay.png") as picture:
            assert picture.mode == "RGB" and picture.size == image.size
            np.testing.assert_array_equal(np.asarray(picture), np.asarray(overlay(image, expected, ade_palette)))
    assert len(classes_seen) > 1  # the comparison would be weak if the model predicted one class everywhere


def test_predict_slide_mode_equals_segment_slide(setr_folder, images, tmp_path, capsys):
    folder, model, processor = setr_folder
    status, _, err = _run(capsys, "predict", "--model", folder, images / "wide.png", "--output-dir", tmp_path,
                          "--mode", "slide", "--crop-size", 64, "--stride", 32, 48, "--quiet")
    assert status == 0, err
    with Image.open(images / "wide.png") as image:
        expected = hf_seg.segment(model, processor, image.convert("RGB"), mode="slide", crop_size=64, stride=(32, 48))
    with Image.open(tmp_path / "wide.png") as label_png:
        np.testing.assert_array_equal(np.asarray(label_png), expected[0].numpy())
    assert not (tmp_path / "wide_overlay.png").exists()  # no --overlay


def test_predict_writes_the_test_servers_formats(setr_folder, images, tmp_path, capsys):
    """--format ade20k: class id + 1 (the challenge's 1..150); --format cityscapes: the 34 label ids of the published
    table (train id -> labelId), both single-channel PNGs named after the image."""
    folder, model, processor = setr_folder
    status, out, err = _run(capsys, "predict", "--model", folder, images / "wide.png", "--output-dir",
                            tmp_path / "ade", "--format", "ade20k")
    assert status == 0, err
    assert "ADE20K challenge PNG" in out
    with Image.open(images / "wide.png") as image:
        expected = hf_seg.segment(model, processor, image.convert("RGB"))[0].numpy()
    with Image.open(tmp_path / "ade" / "wide.png") as png:
        assert png.mode == "L"
        np.testing.assert_array_equal(np.asarray(png), expected + 1)

    torch.manual_seed(1)
    city = hf_seg.create_model("setr-naive-vit-base-cityscapes-768", **TINY_SETR).eval()
    city_folder = tmp_path / "city-model"
    city.save_pretrained(city_folder)
    processor.save_pretrained(city_folder)
    status, _, err = _run(capsys, "predict", "--model", city_folder, images / "tall.jpg", "--output-dir",
                          tmp_path / "city", "--format", "cityscapes", "--quiet")
    assert status == 0, err
    with Image.open(images / "tall.jpg") as image:
        train_ids = hf_seg.segment(city, processor, image.convert("RGB"))[0].numpy()
    # cityscapesscripts' labels.py: trainId -> id (road 7, sidewalk 8, building 11, ..., motorcycle 32, bicycle 33)
    label_ids = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])
    with Image.open(tmp_path / "city" / "tall.png") as png:
        assert png.mode == "L"
        np.testing.assert_array_equal(np.asarray(png), label_ids[train_ids])
    assert len(np.unique(train_ids)) > 1

    status, _, err = _run(capsys, "predict", "--model", folder, images / "wide.png", "--output-dir",
                          tmp_path / "refused", "--format", "cityscapes")
    assert status == 2
    _assert_one_line_error(err, "--format cityscapes needs a model of the 19 cityscapes classes", "has 150")
    assert not (tmp_path / "refused").exists()


def test_predict_recursive_takes_the_subfolders_images(setr_folder, images, tmp_path, capsys):
    """Cityscapes keeps its images in a folder per city: --recursive finds them, the outputs stay flat."""
    for city in ("aachen", "bonn"):
        (tmp_path / "in" / city).mkdir(parents=True)
        shutil.copy(images / "wide.png", tmp_path / "in" / city / f"{city}_000000_leftImg8bit.png")
    status, _, err = _run(capsys, "predict", "--model", setr_folder[0], tmp_path / "in", "--output-dir", tmp_path / "o")
    assert status == 2
    _assert_one_line_error(err, "holds no image files", "pass --recursive")
    status, out, err = _run(capsys, "predict", "--model", setr_folder[0], tmp_path / "in", "--output-dir",
                            tmp_path / "o", "--recursive")
    assert status == 0, err
    assert sorted(path.name for path in (tmp_path / "o").iterdir()) == [
        "aachen_000000_leftImg8bit.png", "bonn_000000_leftImg8bit.png"]


def test_predict_with_a_preset_name_warns_that_weights_are_random(images, tmp_path, capsys, monkeypatch):
    tiny = presets.Preset(
        name="setr-tiny-test", family="setr", config=dict(TINY_SETR, decoder_type="naive"),
        processor=dict(size=PROCESSOR_SIZE, size_divisor=16), label_set="cityscapes",
        inference=dict(mode="slide", crop_size=64, stride=48),
    )
    monkeypatch.setitem(presets.PRESETS, tiny.name, tiny)
    status, _, err = _run(capsys, "predict", "--model", "setr-tiny-test", images / "tall.jpg", "--output-dir",
                          tmp_path, "--mode", "slide", "--quiet")
    assert status == 0, err
    assert "randomly initialised" in err
    _, cityscapes_palette = load_label_set("cityscapes")
    with Image.open(tmp_path / "tall.png") as label_png:
        assert label_png.size == (60, 100)
        assert np.asarray(label_png).max() < 19
        np.testing.assert_array_equal(np.asarray(label_png.getpalette()[:57]).reshape(19, 3), cityscapes_palette)


# ------------------------------------------------------------------------------------------------------------ errors


def test_missing_image_is_a_one_line_usage_error(setr_folder, tmp_path, capsys):
    status, _, err = _run(capsys, "predict", "--model", setr_folder[0], tmp_path / "nope.jpg", "--output-dir", tmp_path)
    assert status == 2
    _assert_one_line_error(err, "no such file or folder", "nope.jpg")


def test_unknown_model_names_close_presets(images, tmp_path, capsys):
    status, _, err = _run(capsys, "predict", "--model", "setr-pup-vit-large-ade20k", images, "--output-dir", tmp_path)
    assert status == 2
    _assert_one_line_error(err, "unknown model 'setr-pup-vit-large-ade20k'", "hf-seg list",
                           "Did you mean 'setr-pup-vit-large-ade20k-512'")


def test_missing_model_folder_and_folder_without_config(images, tmp_path, capsys):
    status, _, err = _run(capsys, "predict", "--model", tmp_path / "no-such-dir", images, "--output-dir", tmp_path)
    assert status == 2
    _assert_one_line_error(err, "does not exist", "no-such-dir")
    (tmp_path / "empty").mkdir()
    status, _, err = _run(capsys, "predict", "--model", tmp_path / "empty", images, "--output-dir", tmp_path)
    assert status == 2
    _assert_one_line_error(err, "has no config.json")


def test_hub_id_offline_is_one_line(images, tmp_path, capsys):
    status, _, err = _run(capsys, "predict", "--model", "some-org/no-such-model", images, "--output-dir", tmp_path)
    assert status == 1
    _assert_one_line_error(err, "cannot load the model 'some-org/no-such-model' from the Hugging Face Hub")


def test_unreadable_image_is_a_one_line_failure(setr_folder, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_text("this is not a PNG")
    status, _, err = _run(capsys, "predict", "--model", setr_folder[0], broken, "--output-dir", tmp_path / "out")
    assert status == 1
    _assert_one_line_error(err, "cannot read image", "broken.png")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_bad_option_values_are_usage_errors(setr_folder, images, tmp_path, capsys):
    folder = setr_folder[0]
    status, _, err = _run(capsys, "predict", "--model", folder, images, "--output-dir", tmp_path, "--mode", "whole",
                          "--crop-size", 64)
    assert status == 2
    _assert_one_line_error(err, "--crop-size and --stride apply to --mode slide only")
    status, _, err = _run(capsys, "predict", "--model", folder, images, "--output-dir", tmp_path, "--alpha", 2)
    assert status == 2
    _assert_one_line_error(err, "--alpha must lie in [0, 1]")
    status, _, err = _run(capsys, "predict", "--model", folder, images)  # argparse: --output-dir is required
    assert status == 2
    assert "the following arguments are required: --output-dir" in err


def test_debug_shows_the_traceback(images, tmp_path, capsys):
    status, _, err = _run(capsys, "--debug", "predict", "--model", "no-such-preset", images, "--output-dir", tmp_path)
    assert status == 2
    assert "Traceback" in err and "hf-seg: error: unknown model" in err


def test_classifier_preset_is_refused_by_predict(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(presets, "create_model", lambda name: hf_seg.SetrModel(hf_seg.SetrConfig(**TINY_SETR)))
    monkeypatch.setattr(presets, "create_image_processor", lambda name: hf_seg.SetrImageProcessor())
    status, _, err = _run(capsys, "predict", "--model", "mit-b0", images, "--output-dir", tmp_path)
    assert status == 2
    assert "not a semantic-segmentation model" in err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------ help, list, delegation


@pytest.mark.parametrize(
    "argv, fragments",
    [
        ([], ["predict", "export", "train", "evaluate", "quickstart", "convert", "list", "exit status"]),
        (["predict"], ["--model", "--output-dir", "--mode", "--overlay", "palette PNG"]),
        (["export"], ["--output", "--size", "--opset", "--static", "onnxruntime"]),
        (["list"], ["--family"]),
        (["convert"], ["--checkpoint", "--model-name", "--output-dir"]),
    ],
)
def test_help(capsys, argv, fragments):
    status, out, _ = _run(capsys, *argv, "--help")
    assert status == 0
    for fragment in fragments:
        assert fragment in out


@pytest.mark.parametrize("command, function", [("train", "train_main"), ("evaluate", "evaluate_main"),
                                               ("quickstart", "quickstart_main")])
def test_training_commands_pass_their_arguments_through(capsys, monkeypatch, command, function):
    calls = []
    fake = types.ModuleType("hf_seg.training")
    setattr(fake, function, lambda argv: calls.append(argv) or 3)
    monkeypatch.setitem(sys.modules, "hf_seg.training", fake)
    assert cli.main([command, "--help"]) == 3
    assert cli.main([command, "--model", "x", "--debug", "-v"]) == 3
    assert calls == [["--help"], ["--model", "x", "--debug", "-v"]]


def test_convert_passes_family_and_arguments(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("hf_seg.convert.cli")
    fake.main = lambda family, argv, prog: calls.append((family, argv, prog)) or 0
    monkeypatch.setitem(sys.modules, "hf_seg.convert.cli", fake)
    assert cli.main(["convert", "setr", "--checkpoint", "a.pth", "--help"]) == 0
    assert calls == [("setr", ["--checkpoint", "a.pth", "--help"], "hf-seg convert setr")]
    status, _, err = _run(capsys, "convert", "vit", "--checkpoint", "a.pth")
    assert status == 2
    _assert_one_line_error(err, "unknown family 'vit'")


@pytest.mark.parametrize("argv, usage", [
    (["train", "--help"], "usage: hf-seg train"), (["evaluate", "--help"], "usage: hf-seg evaluate"),
    (["quickstart", "--help"], "usage: hf-seg quickstart"), (["convert", "mpvit", "--help"], "usage: hf-seg convert mpvit"),
])
def test_delegated_help_is_the_real_one_under_the_hf_seg_name(capsys, argv, usage):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(usage) and "--help" in out


def test_missing_delegate_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "hf_seg.training", None)  # import fails as if the module were not there
    status, _, err = _run(capsys, "train", "--model", "x")
    assert status == 1
    _assert_one_line_error(err, "`hf-seg train` is not available", "hf_seg.training")


def test_list_and_bare_command_agree(capsys):
    status, listed, _ = _run(capsys, "list")
    assert status == 0
    for name in hf_seg.list_models():
        assert f"\n{name} " in listed
    status, bare, hint = _run(capsys)
    assert status == 0 and bare == listed and "hf-seg --help" in hint
    status, setr_only, _ = _run(capsys, "list", "--family", "setr")
    assert status == 0 and len(setr_only.strip().splitlines()) == 1 + len(hf_seg.list_models("setr"))
    # the inference column leaves the training-only heads out: SETR's list and UperNet's single auxiliary head
    for line in setr_only.splitlines()[1:] + [row for row in listed.splitlines() if row.startswith("upernet-mpvit")]:
        total, inference = (int(field.replace(",", "")) for field in line.split()[1:3])
        assert inference < total, line
    assert "setr-naive-deit-base-cityscapes-768" in setr_only and " 87,619,859 " in setr_only


# ------------------------------------------------------------------------------------------------------ export


def test_export_through_the_cli(setr_folder, tmp_path, capsys):
    folder, model, _ = setr_folder
    onnx_path = tmp_path / "setr.onnx"
    status, out, err = _run(capsys, "export", "--model", folder, "--output", onnx_path, "--size", 64, 96,
                            "--exporter", "torchscript")
    assert status == 0, err
    assert "onnxruntime vs PyTorch max abs diff" in out and onnx_path.is_file()
    import onnxruntime
    pixel_values = torch.randn(2, 3, 48, 80)
    (logits,) = onnxruntime.InferenceSession(str(onnx_path)).run(None, {"pixel_values": pixel_values.numpy()})
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    assert np.abs(logits - expected.numpy()).max() < 1e-4
    status, _, err = _run(capsys, "export", "--model", folder, "--output", onnx_path, "--size", 60, 64)
    assert status == 2
    _assert_one_line_error(err, "multiples of its patch size 16")


# ------------------------------------------------------------------------------------------- real process, install


def test_console_script_is_declared():
    (entry_point,) = importlib.metadata.entry_points(group="console_scripts", name="hf-seg")
    assert entry_point.value == "hf_seg.cli:main"
    assert "hf-seg = hf_seg.cli:main" in (REPO / "setup.cfg").read_text()


def test_subprocess_exit_status_and_stderr(setr_folder, images, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_seg", "predict", "--model", setr_folder[0], str(images / "wide.png"),
         "--output-dir", str(tmp_path), "--overlay"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "wide.png").is_file() and (tmp_path / "wide_overlay.png").is_file()
    result = subprocess.run([sys.executable, "-m", "hf_seg", "predict", "--model", "nope", str(images),
                             "--output-dir", str(tmp_path / "again")], capture_output=True, text=True, cwd=REPO,
                            timeout=300)  # a new folder: the outputs of the first run would be refused first
    assert result.returncode == 2
    _assert_one_line_error(result.stderr, "unknown model 'nope'")


# -------------------------------------------------------------------------------------------------- visualize


def test_colorize_keeps_class_ids_and_draws_the_palette():
    label_map = np.array([[0, 1, 2], [255, 1, 7]])
    palette = [(10, 20, 30), (40, 50, 60), (70, 80, 90)]
    image = colorize(torch.from_numpy(label_map), palette)
    assert image.mode == "P" and image.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(image), label_map)
    rgb = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(rgb[0], palette)
    np.testing.assert_array_equal(rgb[1], [(0, 0, 0), (40, 50, 60), (0, 0, 0)])  # ids beyond the palette: black


def test_overlay_blends_with_alpha():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    label_map = np.array([[0, 1], [1, 0]])
    palette = [(0, 0, 0), (200, 100, 0)]
    blended = np.asarray(overlay(Image.fromarray(image), label_map, palette, alpha=0.25))
    np.testing.assert_array_equal(blended[0, 0], [75, 75, 75])
    np.testing.assert_array_equal(blended[0, 1], [125, 100, 75])
    np.testing.assert_array_equal(np.asarray(overlay(image, label_map, palette, alpha=0.0)), image)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: colorize(np.zeros((2, 2, 1), dtype=int), [(0, 0, 0)]), "must be 2-D"),
        (lambda: colorize(np.array([[0, 256]]), [(0, 0, 0)]), "0..255"),
        (lambda: colorize(np.zeros((2, 2), dtype=int), default_palette(256)), "at most 255 classes"),
        (lambda: overlay(np.zeros((3, 2, 3), dtype=np.uint8), np.zeros((2, 2), dtype=int), [(0, 0, 0)]), "differ"),
        (lambda: overlay(np.zeros((2, 2, 3), dtype=np.uint8), np.zeros((2, 2), dtype=int), [(0, 0, 0)], 1.5),
         "alpha"),
    ],
)
def test_visualize_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_default_palette_is_deterministic_and_distinct():
    palette = default_palette(50)
    assert palette == default_palette(50) and len(palette) == 50
    assert len(set(palette)) == 50
    assert all(0 <= channel <= 255 for colour in palette for channel in colour)
