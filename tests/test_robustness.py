"""`hf-seg robustness`: the corruptions against their published definitions (Hendrycks & Dietterich 2019's
make_imagenet_c.py, as imagecorruptions implements them for any image size), determinism, the table against
`hf-seg evaluate` on the saved corrupted copies, DataLoader workers, the command line."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("imagecorruptions", reason="pip install 'hf_seg[robustness]'")

import hf_seg  # noqa: E402
from hf_seg import robustness  # noqa: E402
from hf_seg.labels import load_label_set  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine lose much to them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _image(seed=0, height=48, width=64):
    """Smooth gradients plus texture: every corruption has something to change, and nothing saturates."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([40 + 150 * x / width, 60 + 120 * y / height, 100 + 60 * np.sin(x / 5.0)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _rng(image_key, name, severity, seed=0):
    return np.random.RandomState(robustness.corruption_seed(image_key, name, severity, seed))


def _gaussian(x, sigma):  # skimage.filters.gaussian's defaults: mode "nearest", truncate 4, per channel
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)


def _hsv(x):
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    return rgb_to_hsv, hsv_to_rgb


def _disk(radius, alias_blur):  # the definition's anti-aliased disk
    from scipy.ndimage import correlate1d

    half = 8 if radius <= 8 else radius
    ksize = 3 if radius <= 8 else 5
    L = np.arange(-half, half + 1)
    X, Y = np.meshgrid(L, L)
    disk = ((X**2 + Y**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    taps = np.exp(-((np.arange(ksize) - ksize // 2) ** 2) / (2 * alias_blur**2))
    taps /= taps.sum()  # cv2.GaussianBlur of the kernel: separable, border reflect-101 (scipy's "mirror")
    return correlate1d(correlate1d(disk, taps, axis=0, mode="mirror"), taps, axis=1, mode="mirror")


# The definitions' parameters per severity (make_imagenet_c.py / imagecorruptions).
NOISE = {"gaussian_noise": [.08, .12, .18, .26, .38], "shot_noise": [60, 25, 12, 5, 3],
         "speckle_noise": [.15, .2, .35, .45, .6], "impulse_noise": [.03, .06, .09, .17, .27]}
GAUSS_BLUR = [1, 2, 3, 4, 6]
DEFOCUS = [(3, .1), (4, .5), (6, .5), (8, .5), (10, .5)]
GLASS = [(.7, 1, 2), (.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]
MOTION = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]
CONTRAST = [.4, .3, .2, .1, .05]
BRIGHTNESS = [.1, .2, .3, .4, .5]
SATURATE = [(.3, 0), (.1, 0), (2, 0), (5, .1), (20, .2)]
JPEG = [25, 18, 15, 10, 7]
FOG = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)]
FROST = [(1, .4), (.8, .6), (.7, .7), (.65, .7), (.6, .75)]
SNOW_BLEND = [.8, .7, .7, .65, .55]
KEY = "frame_000001.png"


def _reference(name, severity, x):
    """The published definition of `name` at `severity` on uint8 `x`, drawing the same random numbers (None where
    the definition is checked by its structure instead, below)."""
    s = severity - 1
    f = x / 255.0
    rs = _rng(KEY, name, severity)
    if name == "gaussian_noise":
        return np.clip(f + rs.normal(size=f.shape, scale=NOISE[name][s]), 0, 1) * 255
    if name == "shot_noise":
        c = NOISE[name][s]
        return np.clip(rs.poisson(f * c) / float(c), 0, 1) * 255
    if name == "speckle_noise":
        return np.clip(f + f * rs.normal(size=f.shape, scale=NOISE[name][s]), 0, 1) * 255
    if name == "gaussian_blur":
        return np.clip(_gaussian(f, GAUSS_BLUR[s]), 0, 1) * 255
    if name == "defocus_blur":
        from scipy.ndimage import correlate

        kernel = _disk(*DEFOCUS[s])
        return np.clip(np.stack([correlate(f[..., d], kernel, mode="mirror") for d in range(3)], -1), 0, 1) * 255
    if name == "glass_blur":  # blur, then (as published) each pixel takes a random neighbour's value, then blur
        sigma, delta, iterations = GLASS[s]
        y = np.uint8(_gaussian(f, sigma) * 255)
        rs = np.random.RandomState(robustness.corruption_seed(KEY, name, severity))
        h, w = y.shape[:2]
        for _ in range(iterations):
            for row in range(h - delta, delta, -1):
                for col in range(w - delta, delta, -1):
                    dx, dy = rs.randint(-delta, delta, size=(2,))
                    y[row, col], y[row + dy, col + dx] = y[row + dy, col + dx], y[row, col]  # views: a copy, not a swap
        return np.clip(_gaussian(y / 255.0, sigma), 0, 1) * 255
    if name == "contrast":
        means = f.mean(axis=(0, 1), keepdims=True)
        return np.clip((f - means) * CONTRAST[s] + means, 0, 1) * 255
    if name in ("brightness", "saturate"):
        rgb_to_hsv, hsv_to_rgb = _hsv(f)
        hsv = rgb_to_hsv(f)
        if name == "brightness":
            hsv[..., 2] = np.clip(hsv[..., 2] + BRIGHTNESS[s], 0, 1)
        else:
            hsv[..., 1] = np.clip(hsv[..., 1] * SATURATE[s][0] + SATURATE[s][1], 0, 1)
        return np.clip(hsv_to_rgb(hsv), 0, 1) * 255
    if name == "jpeg_compression":
        import io

        buffer = io.BytesIO()
        Image.fromarray(x).save(buffer, "JPEG", quality=JPEG[s])
        return np.asarray(Image.open(buffer))
    return None


EXACT = ("gaussian_noise", "shot_noise", "speckle_noise", "gaussian_blur", "defocus_blur", "glass_blur", "contrast",
         "brightness", "saturate", "jpeg_compression")


def test_each_corruption_follows_its_published_definition(subtests):
    x = _image()
    other = _image(seed=1)
    other = (other.astype(np.float64) * x.max() / other.max()).astype(np.uint8)  # the same maximum (fog's scale)
    for name in robustness.CORRUPTION_NAMES:
        for severity in (1, 5):
            with subtests.test(f"{name} {severity}"):
                out = robustness.corrupt_image(x, name, severity, key=KEY)
                assert out.shape == x.shape and out.dtype == np.uint8
                assert not np.array_equal(out, x)
                s = severity - 1
                if name in EXACT:
                    expected = np.uint8(_reference(name, severity, x))
                    # the definitions' np.uint8 truncates: float rounding of another convolution / colour-space code
                    # may flip a value across an integer (1 level, on a few pixels)
                    diff = np.abs(out.astype(int) - expected.astype(int))
                    assert diff.max() <= (0 if name in ("gaussian_noise", "shot_noise", "speckle_noise", "contrast",
                                                        "jpeg_compression") else 1)
                    assert (diff > 0).mean() < 0.01
                elif name == "impulse_noise":  # salt and pepper on a share `c` of the values, the rest untouched
                    changed = out != x
                    assert set(np.unique(out[changed])) <= {0, 255}
                    assert abs(((out == 0) | (out == 255)).mean() - NOISE[name][s]) < 0.03
                elif name == "motion_blur":  # a Gaussian-weighted streak along one angle in [-45, 45] degrees
                    radius, sigma = MOTION[s]
                    angle = np.deg2rad(_rng(KEY, name, severity).uniform(-45, 45))
                    width = 2 * radius + 1
                    taps = np.exp(-np.arange(width) ** 2 / (2 * sigma**2))
                    taps /= taps.sum()
                    point = np.zeros((64, 96, 3), np.uint8)
                    point[32, 70] = 255
                    streak = robustness.corrupt_image(point, name, severity, key=KEY).astype(float)[..., 0]
                    expected = np.zeros_like(streak)
                    for i in range(width):
                        dy, dx = math.ceil(i * math.sin(angle) - 0.5), math.ceil(i * math.cos(angle) - 0.5)
                        if 0 <= 32 - dy < 64 and 0 <= 70 - dx < 96:
                            expected[32 - dy, 70 - dx] += 255 * taps[i]
                    assert np.abs(streak - np.floor(expected + 1e-9)).max() <= 1
                else:  # weather: a layer that depends on the seed only, laid over the image as defined
                    out_other = robustness.corrupt_image(other, name, severity, key=KEY).astype(float)
                    a, b = x.astype(float), other.astype(float)
                    if name == "fog":  # x + c * plasma, scaled by max / (max + c)
                        c = FOG[s][0]
                        scale = (x.max() / 255.0) / (x.max() / 255.0 + c)
                        layer_a, layer_b = out / scale - a, out_other / scale - b
                    elif name == "frost":  # c0 * x + c1 * frost crop
                        c0, c1 = FROST[s]
                        layer_a, layer_b = (out - c0 * a) / c1, (out_other - c0 * b) / c1
                    elif name == "snow":  # blend with the brightened grey image, + snow layer + its 180 degree turn
                        grey = lambda v: (0.299 * v[..., 0] + 0.587 * v[..., 1] + 0.114 * v[..., 2])[..., None]  # noqa: E731
                        blend = lambda v: SNOW_BLEND[s] * v + (1 - SNOW_BLEND[s]) * np.maximum(v, grey(v) * 1.5 + 127.5)  # noqa: E731,E501
                        layer_a, layer_b = out - blend(a), out_other - blend(b)
                    else:  # spatter: water adds a coloured layer (1-3); mud replaces by a mask (4-5)
                        if severity <= 3:
                            layer_a, layer_b = out - a, out_other - b
                        else:
                            mud = (out != a) | (out_other != b)
                            layer_a, layer_b = np.where(mud, out, 0), np.where(mud, out_other, 0)
                    unclipped = (out > 0) & (out < 255) & (out_other > 0) & (out_other < 255)
                    assert unclipped.mean() > 0.2
                    assert np.abs(layer_a - layer_b)[unclipped].mean() < 3.0


def test_corruptions_are_deterministic_per_image_corruption_severity_and_seed():
    x = _image()
    state = np.random.get_state()
    first = robustness.corrupt_image(x, "gaussian_noise", 2, seed=3, key="a.png")
    assert np.array_equal(first, robustness.corrupt_image(x, "gaussian_noise", 2, seed=3, key="a.png"))
    assert not np.array_equal(first, robustness.corrupt_image(x, "gaussian_noise", 2, seed=4, key="a.png"))
    assert not np.array_equal(first, robustness.corrupt_image(x, "gaussian_noise", 2, seed=3, key="b.png"))
    assert not np.array_equal(first, robustness.corrupt_image(x, "gaussian_noise", 3, seed=3, key="a.png"))
    for name in ("impulse_noise", "glass_blur"):  # the two that take their seed as an argument
        assert np.array_equal(robustness.corrupt_image(x, name, 1, key="a.png"),
                              robustness.corrupt_image(x, name, 1, key="a.png"))
    after = np.random.get_state()
    assert all(np.array_equal(u, v) for u, v in zip(state[1:2], after[1:2]))  # the caller's state is untouched


def test_bad_requests_name_the_problem():
    x = _image()
    with pytest.raises(ValueError, match="unknown corruption 'gausian_noise'; did you mean 'gaussian_noise'"):
        robustness.corrupt_image(x, "gausian_noise", 1)
    with pytest.raises(ValueError, match="severity must be 1..5, got 6"):
        robustness.corrupt_image(x, "fog", 6)
    with pytest.raises(ValueError, match="at least 32 x 32 pixels, got 16 x 64 \\(tiny.png\\)"):
        robustness.corrupt_image(x[:16], "fog", 1, key="tiny.png")
    with pytest.raises(ValueError, match="noise severities must be among 1..5, got \\[0\\]"):
        robustness.plan_runs(noise_severities=[0])
    assert robustness.resolve_corruptions(["weather", "motion_blur"]) == ["motion_blur", "snow", "spatter", "fog",
                                                                           "frost"]


# ------------------------------------------------------------------------------------------ the evaluation


def _cityscapes_val(root: Path, count=2) -> Path:
    """leftImg8bit/val + gtFine/val with raw label ids, 32 x 64 (the corruptions' minimum side is 32)."""
    rng = np.random.default_rng(0)
    ids = np.array([0, 7, 8, 11, 21, 23, 26], np.uint8)  # unlabeled, road, sidewalk, building, vegetation, sky, car
    for frame in range(count):
        base = f"frankfurt_000000_{frame:06d}"
        for folder in ("leftImg8bit", "gtFine"):
            (root / folder / "val" / "frankfurt").mkdir(parents=True, exist_ok=True)
        labels = rng.choice(ids, (4, 8))
        labels = np.kron(labels, np.ones((8, 8), np.uint8))  # blocks: something to segment
        image = np.asarray(load_label_set("cityscapes")[1], np.uint8)[np.clip(labels.astype(int) // 3, 0, 18)]
        image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "leftImg8bit" / "val" / "frankfurt" / f"{base}_leftImg8bit.png")
        Image.fromarray(labels).save(root / "gtFine" / "val" / "frankfurt" / f"{base}_gtFine_labelIds.png")
    return root


@pytest.fixture(scope="module")
def cityscapes_model(tmp_path_factory):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    folder = tmp_path_factory.mktemp("robustness") / "model"
    torch.manual_seed(0)
    config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 1, 1],
                             decoder_hidden_size=16, id2label=load_label_set("cityscapes")[0])
    model = SegformerForSemanticSegmentation(config).eval()
    model.config.label_ids = "cityscapes"
    model.config.test_protocol = {"mode": "whole"}
    processor = hf_seg.create_image_processor("segformer-b0-cityscapes-512x1024",
                                              size={"shortest_edge": 32, "longest_edge": 64})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_the_table_equals_hf_seg_evaluate_on_the_saved_corrupted_copies(tmp_path, cityscapes_model):
    from hf_seg.training import evaluate_model

    data = _cityscapes_val(tmp_path / "cityscapes")
    result = robustness.evaluate_robustness(str(cityscapes_model), str(data), num_workers=0, progress=False,
                                            save_corrupted=tmp_path / "corrupted")
    rows = result.rows()
    assert len(rows) == 12 * 5 + 4 * 3  # 16 corruptions x their severities (noise: 1-3, as the paper)
    assert {(r["corruption"], r["severity"]) for r in rows} == {
        (c.name, s) for c in robustness.CORRUPTIONS for s in ((1, 2, 3) if c.category == "noise" else range(1, 6))}
    clean = evaluate_model(str(cityscapes_model), str(data))
    assert result.metrics[robustness.CLEAN]["mean_iou"] == clean["mean_iou"]
    for name in robustness.CORRUPTION_NAMES:  # one severity of each against hf-seg evaluate of the saved copy
        severity = 1 + robustness.CORRUPTION_NAMES.index(name) % 3
        copy = tmp_path / "corrupted" / name / str(severity)
        assert sorted(p.name for p in copy.rglob("*.png")) == sorted(p.name for p in data.rglob("*.png"))
        evaluated = evaluate_model(str(cityscapes_model), str(copy))
        for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
            assert result.metrics[(name, severity)][key] == evaluated[key], (name, severity, key)
    summary = result.summary
    assert summary["per_corruption"]["fog"] == pytest.approx(np.mean([result.metrics[("fog", s)]["mean_iou"]
                                                                      for s in range(1, 6)]))
    assert summary["per_category"]["noise"] == pytest.approx(np.mean([summary["per_corruption"][n] for n in (
        "gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise")]))
    assert summary["mean_corrupted"] == pytest.approx(np.mean(list(summary["per_corruption"].values())))

    files = robustness.write_reports(result, tmp_path / "report")
    document = json.loads(files["json"].read_text())
    assert len(document["rows"]) == 72 and document["settings"]["seed"] == 0
    assert len(document["rows"][0]["per_class_iou"]) == 19
    assert len(files["csv"].read_text().splitlines()) == 1 + 1 + 72
    assert "| Clean | Blur: Motion |" in files["markdown"].read_text()
    assert Image.open(files["png"]).size[0] > 500


def test_workers_and_batch_sizes_give_the_same_numbers(tmp_path, cityscapes_model):
    data = _cityscapes_val(tmp_path / "cityscapes", count=3)
    kwargs = dict(corruptions=["gaussian_noise", "fog", "jpeg_compression"], severities=[2, 5],
                  noise_severities=[3], progress=False)
    one = robustness.evaluate_robustness(str(cityscapes_model), str(data), num_workers=0, batch_size=1, **kwargs)
    two = robustness.evaluate_robustness(str(cityscapes_model), str(data), num_workers=2, batch_size=2, **kwargs)
    assert one.runs == two.runs == [("clean", 0), ("gaussian_noise", 3), ("jpeg_compression", 2),
                                    ("jpeg_compression", 5), ("fog", 2), ("fog", 5)]
    assert one.to_dict()["rows"] == two.to_dict()["rows"] and one.to_dict()["clean"] == two.to_dict()["clean"]


def _shapes_folder(root: Path, count=3, num_labels=5) -> Path:
    """images/validation + annotations/validation with labels 0..num_labels-1 (the tiny models' classes)."""
    rng = np.random.default_rng(1)
    for folder in ("images", "annotations"):
        (root / folder / "validation").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        labels = np.kron(rng.integers(0, num_labels, (4, 4)), np.ones((8, 8), np.int64)).astype(np.uint8)
        image = np.clip(labels[..., None] * 50 + rng.normal(0, 15, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / "validation" / f"{index}.png")
        Image.fromarray(labels).save(root / "annotations" / "validation" / f"{index}.png")
    return root


def test_every_family_and_the_shards_of_a_distributed_run(tmp_path, monkeypatch, subtests):
    """SETR, SegFormer and MPViT through their own protocol; each process's shard (every world_size-th image) adds
    up to the one-process matrices (the all_reduce itself is SegmentationConfusionMatrix's)."""
    from tiny_models import tiny_mpvit, tiny_segformer, tiny_setr

    import hf_seg.training.evaluation as evaluation

    def binary():  # one output channel: foreground where the sigmoid exceeds 0.5
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        torch.manual_seed(0)
        return SegformerForSemanticSegmentation(SegformerConfig(
            depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=8,
            num_labels=1, id2label={0: "shape"})).eval()

    data = _shapes_folder(tmp_path / "shapes")
    for name, build in (("setr", lambda: tiny_setr("naive")), ("segformer", tiny_segformer), ("mpvit", tiny_mpvit),
                        ("binary segformer", binary)):
        if name == "binary segformer":
            data = _shapes_folder(tmp_path / "masks", num_labels=2)
        with subtests.test(name):
            kwargs = dict(corruptions=["fog"], severities=[2], progress=False)
            whole = robustness.evaluate_robustness(build(), str(data), **kwargs)
            assert whole.runs == [("clean", 0), ("fog", 2)] and whole.matrices[("fog", 2)].sum() == 3 * 32 * 32
            shards = []
            for rank in (0, 1):
                monkeypatch.setattr(evaluation, "_distributed", lambda rank=rank: (rank, 2))
                shards.append(robustness.evaluate_robustness(build(), str(data), **kwargs))
            monkeypatch.undo()
            for run in whole.runs:
                assert np.array_equal(shards[0].matrices[run] + shards[1].matrices[run], whole.matrices[run])
            assert shards[0].matrices[("fog", 2)].sum() == 2 * 32 * 32  # images 0 and 2 of 3


def test_the_command_line_writes_the_reports(tmp_path, cityscapes_model, capsys):
    from hf_seg.cli import main

    data = _cityscapes_val(tmp_path / "cityscapes")
    out = tmp_path / "out"
    command = ["robustness", "--model", str(cityscapes_model), "--dataset", str(data), "--output-dir", str(out),
               "--corruptions", "contrast", "shot_noise", "--severities", "1", "4", "--noise-severities", "2",
               "--num_workers", "1"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "| shot_noise | noise | " in printed and str(out / "robustness.png") in printed
    document = json.loads((out / "robustness.json").read_text())
    assert [(r["corruption"], r["severity"]) for r in document["rows"]] == [("shot_noise", 2), ("contrast", 1),
                                                                             ("contrast", 4)]
    assert (out / "robustness.png").stat().st_size > 10_000

    with pytest.raises(SystemExit) as exit_info:
        main(["robustness", "--help"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage: hf-seg robustness")
    small = tmp_path / "small"  # 16 x 32 images: below the corruptions' 32 x 32, named from a worker
    for folder in ("images/validation", "annotations/validation"):
        (small / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(small / "images" / "validation" / "a.png")
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(small / "annotations" / "validation" / "a.png")
    with pytest.raises(ValueError, match="^fog severity 1: the corruptions need images of at least 32 x 32 pixels, "
                                         "got 16 x 32 \\(a.png\\)$"):
        robustness.evaluate_robustness(str(cityscapes_model), str(small), corruptions=["fog"], severities=[1],
                                       num_workers=1, progress=False, reduce_labels=False, label_ids="none")
    with pytest.raises(SystemExit, match="unknown corruption 'fogg'; did you mean 'fog'"):
        main(command[:-10] + ["--corruptions", "fogg"])
    assert main(command[:-10] + ["--save-corrupted", str(data)]) == 1  # not a new folder
    assert "--save-corrupted" in capsys.readouterr().err
