"""The conversion command line and its shared machinery: scripts run in subprocesses on tiny presets (registered in
the subprocess only: the scripts accept preset names, never config overrides), the output folder's content, loading
it with `trust_remote_code` where hf_seg cannot be imported, `--verify`, `--push-to-hub` (mocked Hub), and every
error path with its one-line message and non-zero exit status."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from conversion_fixtures import load_without_hf_seg, max_abs_diff, run_script
from mmseg_reference import import_mmseg


import_mmseg()  # a test dependency: failing to import it fails these tests rather than skipping them

from test_convert_segformer import TINY_CONFIG, _authors_head, _authors_reference_backbone, _mmseg_segformer  # noqa: E402
from test_convert_setr import TINY_PRESETS, _authors_checkpoint, _mmseg_setr  # noqa: E402

from hf_seg.convert.cli import main  # noqa: E402
from hf_seg.convert.common import ConversionError, Rule, apply_rules  # noqa: E402
from hf_seg.presets import PRESETS, Preset  # noqa: E402


pytestmark = pytest.mark.filterwarnings(
    "ignore:``build_loss`` would be deprecated", "ignore:Default ``avg_non_ignore`` is False"
)

SETR_PROCESSOR = dict(size={"shortest_edge": 64, "longest_edge": 256}, do_reduce_labels=False, size_divisor=16)
TINY = [
    Preset("tiny-setr-pup", "setr", TINY_PRESETS["pup"], SETR_PROCESSOR, None, dict(mode="slide", crop_size=64,
                                                                                       stride=48)),
    Preset("tiny-setr-naive", "setr", TINY_PRESETS["naive"], SETR_PROCESSOR, None, dict(mode="slide", crop_size=64,
                                                                                           stride=48)),
    Preset("tiny-segformer", "segformer", dict(TINY_CONFIG, num_labels=5),
           dict(size={"shortest_edge": 64, "longest_edge": 256}, do_reduce_labels=False, size_divisor=1), None,
           dict(mode="whole")),
]
TINY_DICTS = [dataclasses.asdict(preset) for preset in TINY]



@pytest.fixture(scope="module")
def tiny_presets():
    PRESETS.update({preset.name: preset for preset in TINY})
    yield
    for preset in TINY:
        PRESETS.pop(preset.name, None)


@pytest.fixture(scope="module")
def setr_checkpoint(tmp_path_factory):
    checkpoint, _ = _authors_checkpoint(_mmseg_setr("pup", authors=True, seed=40), "pup", seed=41)
    path = tmp_path_factory.mktemp("ckpt") / "setr_pup.pth"
    torch.save({"meta": {"CLASSES": ["a"] * 5, "mmseg_version": "0.6.0"}, "state_dict": checkpoint}, path)
    return path, checkpoint


def _converted_logits(converted_folder_model_class, folder, pixels):
    model = converted_folder_model_class.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixel_values=pixels).logits


def test_setr_script_writes_a_hub_folder_that_loads_without_hf_seg(setr_checkpoint, tmp_path):
    path, checkpoint = setr_checkpoint
    output = tmp_path / "setr-out"
    result = run_script("setr", ["--checkpoint", str(path), "--model-name", "tiny-setr-pup", "--output-dir",
                                 str(output)], TINY_DICTS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(original layout)" in result.stdout
    assert "dropped 10 source keys on purpose" in result.stdout and "decode_head.conv_seg.weight" in result.stdout
    files = sorted(p.name for p in output.iterdir())
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "configuration_setr.py",
                 "modeling_setr.py", "image_processing_setr.py"):
        assert name in files, files
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "setr" and len(config["id2label"]) == 5
    assert config["patch_bias"] is True and config["head_conv_bias"] is True  # the authors' variant fields
    assert config["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_setr.SetrForSemanticSegmentation"
    processor = json.loads((output / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 64, "longest_edge": 256}
    assert processor["auto_map"]["AutoImageProcessor"].startswith("image_processing_setr.")
    card = (output / "README.md").read_text()
    for text in ("fudan-zvg/SETR", "arxiv.org/abs/2012.15840", "License of the source code:** MIT", "Parity:**",
                 "setr_pup.pth", "Source layout: original"):
        assert text in card, text

    from hf_seg.models.setr import SetrForSemanticSegmentation

    pixels = torch.randn(1, 3, 48, 80, generator=torch.Generator().manual_seed(3))
    expected = _converted_logits(SetrForSemanticSegmentation, output, pixels)
    logits, description = load_without_hf_seg(output, tmp_path, pixels)
    assert description[-1] == "False"  # hf_seg was never imported
    assert description[1] == "SetrForSemanticSegmentation" and description[0].startswith("transformers_modules")
    assert max_abs_diff(logits, expected) == 0.0


def test_segformer_scripts_both_layouts(tmp_path):
    # mmseg 1.x layout, as .safetensors -> hf_seg's mmseg-head model, shipped as Hub code
    mmseg_model = _mmseg_segformer(seed=50)
    mmseg_path = tmp_path / "segformer_mmseg.safetensors"
    save_file({k: v.contiguous() for k, v in mmseg_model.state_dict().items()}, mmseg_path)
    out_mmseg = tmp_path / "mmseg-out"
    result = run_script("segformer", ["--checkpoint", str(mmseg_path), "--model-name", "tiny-segformer",
                                      "--output-dir", str(out_mmseg)], TINY_DICTS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(mmseg layout)" in result.stdout
    assert {"configuration_segformer_mmseg.py", "modeling_segformer_mmseg.py", "image_processing_setr.py"} <= {
        p.name for p in out_mmseg.iterdir()}
    assert json.loads((out_mmseg / "config.json").read_text())["model_type"] == "segformer-mmseg"
    assert "NVIDIA Source Code License" in (out_mmseg / "README.md").read_text()
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    logits, description = load_without_hf_seg(out_mmseg, tmp_path, pixels)
    assert description[1:] == ["SegformerMmsegForSemanticSegmentation", "SetrImageProcessor", "False"]
    with torch.no_grad():
        expected = mmseg_model.decode_head(mmseg_model.backbone(pixels))
    assert max_abs_diff(logits, expected) <= 1e-4

    # the authors' layout, .pth with `state_dict` -> transformers' built-in class (+ SETR's processor as Hub code)
    _, encoder = _authors_reference_backbone(seed=51)
    authors = {**{f"backbone.{k}": v for k, v in encoder.items()}, **_authors_head(seed=52)}
    authors_path = tmp_path / "segformer_authors.pth"
    torch.save({"meta": {}, "state_dict": authors}, authors_path)
    out_authors = tmp_path / "authors-out"
    image = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray((torch.rand(70, 90, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy()).save(image)
    result = run_script("segformer", ["--checkpoint", str(authors_path), "--model-name", "tiny-segformer",
                                      "--output-dir", str(out_authors), "--verify", str(image)], TINY_DICTS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(original layout)" in result.stdout and "predicted: 'LABEL_" in result.stdout
    config = json.loads((out_authors / "config.json").read_text())
    assert config["model_type"] == "segformer" and config["architectures"] == ["SegformerForSemanticSegmentation"]
    logits, description = load_without_hf_seg(out_authors, tmp_path, pixels)
    assert description[1:] == ["SegformerForSemanticSegmentation", "SetrImageProcessor", "False"]


class NotWeights:
    """An arbitrary pickled object: torch.load(weights_only=True) must refuse it."""


def _main(argv, capsys):
    status = main(argv[0], argv[1:])
    captured = capsys.readouterr()
    return status, captured.err


def _error_case(tmp_path, capsys, state_dict, preset="tiny-setr-pup", family="setr", name="bad.pth"):
    path = tmp_path / name
    torch.save({"state_dict": state_dict}, path)
    status, err = _main([family, "--checkpoint", str(path), "--model-name", preset, "--output-dir",
                         str(tmp_path / "out")], capsys)
    assert status == 1
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_error_paths_name_the_problem(tiny_presets, setr_checkpoint, tmp_path, capsys):
    _, checkpoint = setr_checkpoint
    extra = dict(checkpoint, **{"backbone.blocks.0.attn.extra": torch.zeros(3)})
    assert "unconsumed source keys: backbone.blocks.0.attn.extra" in _error_case(tmp_path, capsys, extra)
    missing = {k: v for k, v in checkpoint.items() if k != "decode_head.syncbn_fc_2.running_var"}
    assert "missing target keys" in (err := _error_case(tmp_path, capsys, missing))
    assert "decode_head.convs.2.batch_norm.running_var" in err
    wrong = dict(checkpoint, **{"backbone.blocks.1.mlp.fc2.bias": torch.zeros(65)})
    err = _error_case(tmp_path, capsys, wrong)
    assert "shape mismatches" in err and "setr.layers.1.mlp.fc2.bias (from backbone.blocks.1.mlp.fc2.bias): (65,) vs (64,)" in err
    err = _error_case(tmp_path, capsys, checkpoint, preset="tiny-setr-naive")
    assert "is not a 'tiny-setr-naive' checkpoint: decoder_type 'pup' (checkpoint) vs 'naive' (preset)" in err
    err = _error_case(tmp_path, capsys, checkpoint, preset="setr-pup-vit-large-ade20k-512")
    assert "hidden_size 64 (checkpoint) vs 1024 (preset)" in err
    err = _error_case(tmp_path, capsys, checkpoint, preset="tiny-segformer")
    assert "is a segformer preset, not one convert_setr.py handles" in err
    err = _error_case(tmp_path, capsys, checkpoint, preset="tiny-segformer", family="segformer")
    assert "not a SegFormer / MiT checkpoint in any known layout" in err
    err = _error_case(tmp_path, capsys, checkpoint, preset="setr-pup-vit-huge")
    assert "unknown preset 'setr-pup-vit-huge' for convert_setr.py; valid names: setr-mla-deit-base-ade20k-512" in err
    assert "Did you mean 'setr-pup-vit-large-ade20k-512'" in err


def test_file_errors(tiny_presets, setr_checkpoint, tmp_path, capsys):
    path, _ = setr_checkpoint
    data = path.read_bytes()
    cases = {
        "truncated.pth": (data[: len(data) // 2], "is truncated or corrupt"),
        "corrupt.pth": (bytes(range(256)) * 4, "corrupt"),
        "truncated.safetensors": (b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":", "not a valid safetensors file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        status, err = _main(["setr", "--checkpoint", str(tmp_path / name), "--model-name", "tiny-setr-pup",
                             "--output-dir", str(tmp_path / "out")], capsys)
        assert status == 1 and message in err and err.count("\n") == 1, (name, err)

    torch.save({"state_dict": {"a": torch.zeros(1)}, "meta": NotWeights()}, tmp_path / "pickled.pth")
    status, err = _main(["setr", "--checkpoint", str(tmp_path / "pickled.pth"), "--model-name", "tiny-setr-pup",
                         "--output-dir", str(tmp_path / "out")], capsys)
    assert status == 1 and "weights_only=True" in err and "NotWeights" in err
    status, err = _main(["setr", "--checkpoint", str(tmp_path / "absent.pth"), "--model-name", "tiny-setr-pup",
                         "--output-dir", str(tmp_path / "out")], capsys)
    assert status == 1 and "does not exist" in err
    assert not (tmp_path / "out").exists()  # nothing written on failure


def test_script_exit_status_on_error(tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    result = run_script("setr", ["--checkpoint", str(tmp_path / "corrupt.pth"), "--model-name",
                                 "setr-pup-vit-large-ade20k-512", "--output-dir", str(tmp_path / "out")])
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot read checkpoint") and result.stderr.count("\n") == 1


def test_push_to_hub_uploads_the_folder(tiny_presets, setr_checkpoint, tmp_path, capsys, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, exist_ok):
            calls.append(("create", repo_id, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    path, _ = setr_checkpoint
    status = main("setr", ["--checkpoint", str(path), "--model-name", "tiny-setr-pup", "--output-dir",
                           str(tmp_path / "out"), "--push-to-hub", "me/tiny-setr"])
    assert status == 0, capsys.readouterr().err
    assert calls[0] == ("create", "me/tiny-setr", True)
    assert calls[1][0:2] == ("upload", "me/tiny-setr") and "model.safetensors" in calls[1][2]
    assert "uploaded to https://huggingface.co/me/tiny-setr" in capsys.readouterr().out


def test_apply_rules_reports_every_problem_and_lists_drops():
    rules = [Rule(r"a\.(?P<i>\d)", "x.{i}"), Rule(r"dup", "x.0")]
    converted, dropped = apply_rules({"a.0": torch.zeros(2), "a.1": torch.zeros(3), "skip.me": torch.zeros(1)}, rules,
                                     {"x.0": (2,), "x.1": (3,)}, what="t", drop={r"skip\..*": "unused"})
    assert list(converted) == ["x.0", "x.1"] and dropped == {"unused": ["skip.me"]}
    with pytest.raises(ConversionError) as info:
        apply_rules({"a.0": torch.zeros(2), "dup": torch.zeros(2), "a.5": torch.zeros(1), "zz": torch.zeros(1)},
                    rules, {"x.0": (3,), "x.1": (3,)}, what="toy")
    message = str(info.value)
    for text in ("toy:", "1 unconsumed source keys: zz", "converted keys the target model does not have: x.5 (from a.5)",
                 "target keys filled twice: x.0 (from a.0 and dup)", "missing target keys (the source does not "
                 "provide them): x.1", "shape mismatches (source vs target): x.0 (from dup): (2,) vs (3,)"):
        assert text in message, text
