"""`hf-seg analyze`: confusion reports from a known matrix (and from `hf-seg evaluate --save-confusion`), the
effective receptive field of a network whose receptive field is known by construction, attention maps of every
family."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("matplotlib", reason="pip install 'hf_seg[analysis]'")

from hf_seg import analysis  # noqa: E402
from tiny_models import tiny_mpvit, tiny_segformer, tiny_setr  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


NAMES = ["road", "sidewalk", "car", "sky"]
KNOWN = np.array([[90, 10, 0, 0],  # road: 10% taken for sidewalk
                  [30, 60, 10, 0],  # sidewalk: 30% road, 10% car
                  [0, 0, 50, 0],
                  [0, 0, 0, 0]])  # sky: absent from the reference, never predicted


def test_confusion_report_of_a_known_matrix(tmp_path):
    report = analysis.analyze_confusion(KNOWN, NAMES, tmp_path, title="known")
    rows = {r["class"]: r for r in report["per_class"]}
    assert rows["road"]["iou"] == pytest.approx(90 / (100 + 120 - 90))
    assert rows["sidewalk"]["accuracy"] == pytest.approx(0.6) and rows["car"]["iou"] == pytest.approx(50 / 60)
    assert np.isnan(rows["sky"]["iou"]) and np.isnan(rows["sky"]["accuracy"])
    assert report["mean_iou"] == pytest.approx(np.mean([90 / 130, 60 / 110, 50 / 60]))
    assert [(p["reference"], p["prediction"], p["pixels"]) for p in report["confused_pairs"]] == [
        ("sidewalk", "road", 30), ("road", "sidewalk", 10), ("sidewalk", "car", 10)]
    assert report["confused_pairs"][0]["share_of_reference"] == pytest.approx(0.3)

    with open(tmp_path / "confusion_matrix.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["reference \\ prediction", *NAMES] and table[2] == ["sidewalk", "30", "60", "10", "0"]
    with open(tmp_path / "per_class.csv", newline="") as handle:
        per_class = list(csv.DictReader(handle))
    assert [r["class"] for r in per_class] == ["car", "road", "sidewalk", "sky"] and per_class[-1]["iou"] == ""
    assert json.loads((tmp_path / "report.json").read_text())["per_class"][3]["iou"] is None
    for name in ("confusion_matrix.png", "per_class.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] >= 500 and image.size[1] >= 300
    assert "sidewalk  ->  road (30.0%)" in analysis.format_confused_pairs(report)


def test_confusion_files_round_trip_and_bad_ones_are_named(tmp_path, subtests):
    path = analysis.save_confusion_matrix(tmp_path / "c.json", torch.tensor(KNOWN), dict(enumerate(NAMES)))
    matrix, names, meta = analysis.load_confusion_matrix(path)
    assert np.array_equal(matrix, KNOWN) and names == NAMES and meta["ignore_index"] == 255
    good = json.loads(path.read_text())
    cases = {
        "not json": ("{", "not a JSON file"),
        "other format": (json.dumps({"format": "x"}), "expected the key 'format' to be 'hf_seg.confusion_matrix'"),
        "no matrix": (json.dumps({k: v for k, v in good.items() if k != "matrix"}), "the key 'matrix' is missing"),
        "not square": (json.dumps(dict(good, matrix=[[1, 2]])), "must be a square K x K table, got shape \\(1, 2\\)"),
        "negative": (json.dumps(dict(good, matrix=[[1, -2, 0, 0]] + good["matrix"][1:])),
                     "negative counts, e.g. at \\[0, 1\\] = -2"),
        "floats": (json.dumps(dict(good, matrix=[[0.5] * 4] * 4)), "integer pixel counts"),
        "names": (json.dumps(dict(good, id2label={"0": "a"})), "'id2label' must name the classes 0..3"),
    }
    for case, (text, message) in cases.items():
        with subtests.test(case):
            bad = tmp_path / f"{case}.json"
            bad.write_text(text)
            with pytest.raises(ValueError, match=message) as raised:
                analysis.load_confusion_matrix(bad)
            assert str(bad) in str(raised.value)
    with pytest.raises(FileNotFoundError, match="no such confusion-matrix file"):
        analysis.load_confusion_matrix(tmp_path / "missing.json")


def test_confusion_heat_map_fits_150_class_names(tmp_path):
    names = [f"class name {i:03d}" for i in range(150)]
    rng = np.random.default_rng(0)
    matrix = np.diag(rng.integers(50, 100, 150)) + rng.integers(0, 3, (150, 150))
    path = analysis.plot_confusion_matrix(matrix, names, tmp_path / "c150.png", "150 classes")
    with Image.open(path) as image:  # ~0.15 inch = 15 pixels a class at 100 dpi: room for 6-point labels
        assert image.size[1] >= 150 * 15


class ConvStack(torch.nn.Module):
    """k 3x3 convolutions with positive weights: stage j's receptive field is (2j + 1) x (2j + 1) exactly."""

    def __init__(self, k):
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(3 if i == 0 else 2, 2, 3, padding=1) for i in range(k))
        for conv in self.convs:
            torch.nn.init.uniform_(conv.weight, 0.1, 1.0)
            torch.nn.init.constant_(conv.bias, 0.1)

    def stages(self, pixels):
        out, x = [], pixels
        for j, conv in enumerate(self.convs, start=1):
            x = conv(x)
            out.append((f"conv {j}", x))
        return out


def test_effective_receptive_field_of_a_conv_stack_is_its_receptive_field(tmp_path):
    k, size = 4, 33
    model = ConvStack(k)
    images = [torch.rand(3, size, size) + 0.1 for _ in range(3)]  # positive: every ReLU passes
    erf = analysis.effective_receptive_field(model, images, feature_maps=model.stages)
    assert list(erf) == [f"conv {j}" for j in range(1, k + 1)]
    centre = size // 2
    for j, values in enumerate(erf.values(), start=1):
        support = np.argwhere(values > 0)
        assert support.min(axis=0).tolist() == [centre - j] * 2 and support.max(axis=0).tolist() == [centre + j] * 2
        assert (values[centre - j: centre + j + 1, centre - j: centre + j + 1] > 0).all()
        assert analysis.erf_extent(values, 1.0) == 2 * j + 1
    assert all(p.requires_grad for p in model.parameters())  # left as they were
    only = analysis.effective_receptive_field(model, images[:1], feature_maps=model.stages, stages=["conv 2"])
    assert list(only) == ["conv 2"]
    with pytest.raises(ValueError, match="stages \\['conv 9'\\] are not the model's; it has \\['conv 1', "):
        analysis.effective_receptive_field(model, images[:1], feature_maps=model.stages, stages=["conv 2", "conv 9"])
    path = analysis.plot_receptive_fields(erf, tmp_path / "erf.png", "conv stack")
    assert path.stat().st_size > 5_000


def test_every_family_reports_its_stages_and_attention(tmp_path, subtests):
    image = np.asarray(Image.new("RGB", (80, 48), (120, 90, 60)), np.uint8).copy()
    image[10:30, 20:50] = (200, 40, 40)
    for name, model, stages, layers in (
        ("setr", tiny_setr("pup"), ["embeddings", "layer 1", "layer 2", "layer 3", "layer 4", "output"], 4),
        ("segformer", tiny_segformer(), ["stage 1", "stage 2", "stage 3", "stage 4", "output"], 4),
        ("mpvit", tiny_mpvit(), ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "output"], 4),
    ):
        with subtests.test(name):
            erf = analysis.effective_receptive_field(model, [image], size=64)
            assert list(erf) == stages and all(v.shape == (64, 64) and v.sum() > 0 for v in erf.values())
            result = analysis.attention_maps(model, image, (20, 35), size=64)
            assert len(result["maps"]) == layers and result["signed"] == (name == "mpvit")
            assert getattr(model.config, "_attn_implementation", "eager") in ("sdpa", "eager")
            if name == "setr":  # softmax rows: the patch weights sum to 1 minus the class token's
                assert all(0.5 < m.sum() <= 1.0 + 1e-5 for _, m in result["maps"])
            if name == "segformer":  # keys on the map reduced by sr_ratio 8, 4, 2, 1 of stages of 16x24 .. 2x3
                assert [m.shape for _, m in result["maps"]] == [(2, 3), (2, 3), (2, 3), (2, 3)]
                assert all(abs(m.sum() - 1.0) < 1e-5 for _, m in result["maps"])
            path = analysis.plot_attention(image, (20, 35), result, tmp_path / f"{name}.png")
            assert path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="outside the image of height 48 and width 80"):
        analysis.attention_maps(tiny_segformer(), image, (60, 10))


def test_mpvit_effective_weights_reproduce_its_factorized_attention():
    """The drawn map is the head mean of w_hj = scale * q_h . softmax_N(K)_hj, and sum_j w_hj v_hj is the module's
    factorized term q (softmax_N(K)^T V) for the query token, head by head."""
    model = tiny_mpvit()
    attention = model.backbone.encoder.stages[1].paths[0].layers[0].attention
    captured = {}
    handle = attention.register_forward_hook(lambda module, args, output: captured.update(inputs=args))
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    result = analysis.attention_maps(model, image, (20, 35), size=64)
    handle.remove()
    hidden, size = captured["inputs"][0], tuple(captured["inputs"][1])
    with torch.no_grad():
        query, key, value = attention.qkv(hidden).chunk(3, dim=-1)
        heads = (1, hidden.shape[1], attention.num_heads, attention.head_dim)
        key, value = key.reshape(heads).softmax(dim=1), value.reshape(heads)
        index = analysis._query_index((20 * 64 / 48, 35 * 96 / 80), (64, 96), size)
        q = query.reshape(heads)[:, index]
        factorized = torch.einsum("bhk,bhkv->bhv", q, torch.einsum("bnhk,bnhv->bhkv", key, value) * attention.scale)
        weights = torch.einsum("bhk,bnhk->bhn", q, key) * attention.scale
        assert torch.allclose(torch.einsum("bhn,bnhv->bhv", weights, value), factorized, atol=1e-5)
    name, drawn = result["maps"][1]
    assert name == "stage 2 path 1 block 1" and drawn.shape == size
    assert np.allclose(drawn.reshape(-1), weights.mean(dim=1)[0].numpy(), atol=1e-6)


def _cityscapes_val(root):
    from hf_seg.labels import load_label_set

    rng = np.random.default_rng(0)
    ids = np.array([0, 7, 8, 11, 21, 23, 26], np.uint8)
    palette = np.asarray(load_label_set("cityscapes")[1], np.uint8)
    for frame in range(2):
        base = f"frankfurt_000000_{frame:06d}"
        for folder in ("leftImg8bit", "gtFine"):
            (root / folder / "val" / "frankfurt").mkdir(parents=True, exist_ok=True)
        labels = np.kron(rng.choice(ids, (4, 8)), np.ones((8, 8), np.uint8))
        Image.fromarray(palette[labels % 19]).save(root / "leftImg8bit" / "val" / "frankfurt" / f"{base}_leftImg8bit.png")
        Image.fromarray(labels).save(root / "gtFine" / "val" / "frankfurt" / f"{base}_gtFine_labelIds.png")
    return root


def test_evaluate_save_confusion_feeds_analyze(tmp_path, capsys):
    from hf_seg.cli import main
    from hf_seg.data.datasets import apply_label_ids
    from hf_seg.training import evaluate_model

    folder = _tiny_cityscapes_model(tmp_path)
    data = _cityscapes_val(tmp_path / "cityscapes")
    metrics = evaluate_model(str(folder), str(data), save_confusion=str(tmp_path / "confusion.json"))
    assert main(["analyze", "confusion", "--confusion", str(tmp_path / "confusion.json"), "--output-dir",
                 str(tmp_path / "analysis")]) == 0
    printed = capsys.readouterr().out
    assert f"mIoU {100 * metrics['mean_iou']:.2f}" in printed
    assert (tmp_path / "analysis" / "confusion_matrix.png").is_file()
    assert main(["analyze", "confusion", "--model", str(folder), "--dataset", str(data), "--output-dir",
                 str(tmp_path / "computed")]) == 0  # computed here: the same numbers
    assert f"mIoU {100 * metrics['mean_iou']:.2f}" in capsys.readouterr().out
    assert (tmp_path / "computed" / "confusion_matrix.csv").read_text() == \
        (tmp_path / "analysis" / "confusion_matrix.csv").read_text()
    matrix, names, meta = analysis.load_confusion_matrix(tmp_path / "confusion.json")
    assert len(names) == 19 and names[0] == "road" and meta["source"]["num_examples"] == 2
    labels = [np.asarray(Image.open(p)).astype(np.int64) for p in data.rglob("*_gtFine_labelIds.png")]
    assert matrix.sum() == sum(int((apply_label_ids(label, "cityscapes") != 255).sum()) for label in labels)

    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--help"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage: hf-seg analyze")
    with pytest.raises(SystemExit, match="give either --confusion FILE or --model and --dataset"):
        main(["analyze", "confusion", "--output-dir", str(tmp_path / "x")])

    image = tmp_path / "image.png"
    Image.fromarray(np.full((48, 80, 3), 128, np.uint8)).save(image)
    assert main(["analyze", "attention", "--model", str(folder), "--image", str(image), "--point", "10", "20",
                 "--size", "64", "--output-dir", str(tmp_path / "attention")]) == 0
    assert (tmp_path / "attention" / "attention.png").is_file()
    assert main(["analyze", "erf", "--model", str(folder), "--images", str(image), "--size", "64",
                 "--output-dir", str(tmp_path / "erf")]) == 0
    summary = json.loads((tmp_path / "erf" / "erf.json").read_text())
    assert list(summary["stages"]) == ["stage 1", "stage 2", "stage 3", "stage 4", "output"]


def _tiny_cityscapes_model(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    import hf_seg
    from hf_seg.labels import load_label_set

    torch.manual_seed(0)
    config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 1, 1],
                             decoder_hidden_size=16, id2label=load_label_set("cityscapes")[0])
    model = SegformerForSemanticSegmentation(config).eval()
    model.config.label_ids = "cityscapes"
    processor = hf_seg.create_image_processor("segformer-b0-cityscapes-512x1024",
                                              size={"shortest_edge": 32, "longest_edge": 64})
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"
