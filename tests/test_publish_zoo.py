"""conversion/publish_zoo.py end to end, offline: tiny checkpoints in the real source key layouts (an mmsegmentation
1.x SegFormer built by mmseg itself, an NVlabs/SegFormer-layout one from tests/test_convert_segformer.py's builders)
are served from 127.0.0.1 by http.server in a thread; the script runs in a subprocess with its real command line and
a test manifest holding those URLs and their real sha256, with tiny presets registered and a recording stand-in for
`huggingface_hub.HfApi` (no network). Checked: download with resume (HTTP Range) and checksum, a corrupted file
refused, conversion, logits against mmsegmentation (and a misconfigured reference failing, never pushed), mIoU on a
local validation set, the cards' figures, the push calls, the results file and `--update-readme` on a copy of the
README. Also: the zoo table agrees with the installed mmsegmentation's metafiles."""

import atexit
import dataclasses
import functools
import hashlib
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conversion_fixtures import REPO, max_abs_diff, randomize_


SCRIPT = REPO / "conversion" / "publish_zoo.py"

# The subprocess that runs the script's real command line. It starts now, while this process imports mmseg and
# hf_seg and builds the checkpoints, and does the same imports (the script's own, which take most of its time on a
# small CPU); then it waits for its command line on stdin (an empty stdin: it exits). Before running the script it
# registers the tiny preset and replaces huggingface_hub.HfApi by a stand-in that records the calls (no network).
_RUNNER = """
import json, os, runpy, sys
from pathlib import Path
import hf_seg.convert.cli, hf_seg.training
from hf_seg.presets import PRESETS, Preset
sys.path.insert(0, os.path.join(os.environ["PYTHONPATH"], "tests"))
from mmseg_reference import import_mmseg
import_mmseg()
line = sys.stdin.readline()
if not line:
    sys.exit(0)
request = json.loads(line)
for preset in request["presets"]:
    PRESETS[preset["name"]] = Preset(**preset)
import huggingface_hub
LOG = Path(request["hub_log"])
def record(**call):
    with LOG.open("a") as handle:
        handle.write(json.dumps(call) + "\\n")
class RecordingHfApi:
    def create_repo(self, repo_id, **kwargs):
        record(call="create_repo", repo_id=repo_id, **kwargs)
    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        record(call="upload_folder", repo_id=repo_id, folder_path=folder_path,
               files=sorted(p.name for p in Path(folder_path).iterdir()), **kwargs)
huggingface_hub.HfApi = RecordingHfApi
os.chdir(request["cwd"])
sys.argv = [request["script"], *request["args"]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
_CHILD = subprocess.Popen(
    [sys.executable, "-c", _RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    text=True, cwd=str(REPO),
    env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
             no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost"),
)
atexit.register(lambda: _CHILD.poll() is None and _CHILD.kill())

from mmseg_reference import import_mmseg  # noqa: E402


mmseg = import_mmseg()  # a test dependency: failing to import it fails these tests rather than skipping them

from mmseg.registry import MODELS  # noqa: E402

from test_convert_segformer import TINY_CONFIG, _authors_head, _authors_reference_backbone  # noqa: E402

from hf_seg.convert.zoo import ZOO, ZooEntry, check_entries, converter_family  # noqa: E402
from hf_seg.presets import PRESETS, Preset  # noqa: E402


pytestmark = pytest.mark.filterwarnings(
    "ignore:``build_loss`` would be deprecated", "ignore:Default ``avg_non_ignore`` is False"
)

NUM_CLASSES = 5
TINY_PRESET = Preset(
    "tiny-segformer", "segformer", dict(TINY_CONFIG, num_labels=NUM_CLASSES),
    dict(size={"shortest_edge": 64, "longest_edge": 256}, do_reduce_labels=False, size_divisor=1), None,
    dict(mode="whole"),
)


def _mmseg_config(align_corners: bool = False) -> dict:
    """An mmsegmentation 1.x SegFormer of the tiny preset's MiT (what a zoo entry's `mmseg_config` file holds)."""
    heads = TINY_CONFIG["num_attention_heads"]
    return dict(
        type="EncoderDecoder",
        backbone=dict(type="MixVisionTransformer", in_channels=3, embed_dims=TINY_CONFIG["hidden_sizes"][0] // heads[0],
                      num_stages=4, num_layers=TINY_CONFIG["depths"], num_heads=heads, patch_sizes=[7, 3, 3, 3],
                      sr_ratios=TINY_CONFIG["sr_ratios"], out_indices=(0, 1, 2, 3), mlp_ratio=4, qkv_bias=True,
                      drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1),
        decode_head=dict(type="SegformerHead", in_channels=TINY_CONFIG["hidden_sizes"], in_index=[0, 1, 2, 3],
                         channels=24, dropout_ratio=0.1, num_classes=NUM_CLASSES,
                         norm_cfg=dict(type="SyncBN", requires_grad=True), align_corners=align_corners,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode="whole"),
        # as in mmseg's own configs (registered in mmseg's scope only; the script's reference leaves it out)
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(64, 64)),
    )


def _build(config: dict):
    return MODELS.build({key: value for key, value in config.items() if key != "data_preprocessor"})


def _normalised(image: np.ndarray) -> torch.Tensor:
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy((image.astype(np.float32) / 255 - mean) / std).permute(2, 0, 1)[None].contiguous()


def _spread_classes(model, generator) -> None:
    """A random SegFormer predicts one class almost everywhere (its classifier's mean response dominates); centre
    each class's logit on four images of `generator` (x20) so that every class is predicted somewhere, as a trained
    model's are, and the validation set's labels (its predictions) make mIoU a real check."""
    pixels = torch.cat([_normalised(generator.randint(0, 256, (64, 64, 3)).astype(np.uint8)) for _ in range(4)])
    features = []
    hook = model.decode_head.conv_seg.register_forward_hook(lambda module, args, out: features.append(args[0]))
    with torch.no_grad():
        model.encode_decode(pixels, [dict(img_shape=(64, 64), pad_shape=(64, 64))] * 4)
        hook.remove()
        weight = model.decode_head.conv_seg.weight
        model.decode_head.conv_seg.bias.copy_(-20 * weight[:, :, 0, 0] @ features[0].mean(dim=(0, 2, 3)))
        weight.mul_(20)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """http.server's file handler plus single `Range: bytes=N-` requests (206), recording every request."""

    requests: list

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start = int(match[1])
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    requests = []
    handler = functools.partial(type("Handler", (_RangeHandler,), {"requests": requests}), directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def zoo_files(server, tmp_path_factory):
    """The served checkpoints, a local copy of an authors'-layout one, mmseg configs, a validation set whose labels
    are the mmseg model's own predictions (so the converted model must score ~100 mIoU) and the manifest."""
    root, base_url, _ = server
    work = tmp_path_factory.mktemp("zoo")
    configs = {}
    for name, align_corners in (("tiny_segformer.py", False), ("tiny_segformer_misconfigured.py", True)):
        configs[name] = work / name
        configs[name].write_text(f"model = {_mmseg_config(align_corners)!r}\n")
    reference = randomize_(_build(_mmseg_config()), seed=7)
    _spread_classes(reference, np.random.RandomState(3))  # the validation images below, drawn again
    staged = work / "staged.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": reference.state_dict()}, staged)
    sha = _sha256(staged)
    mmseg_file = f"tiny_segformer_mmseg_20260101_000000-{sha[:8]}.pth"  # mmseg's naming: the sha256's first 8
    shutil.copy(staged, root / mmseg_file)
    corrupt = bytearray(staged.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    (root / "tiny_segformer_corrupt.pth").write_bytes(bytes(corrupt))

    source_dir = work / "source"
    source_dir.mkdir()
    _, encoder = _authors_reference_backbone(seed=8)
    authors = {**{f"backbone.{k}": v for k, v in encoder.items()}, **_authors_head(seed=9)}
    torch.save({"meta": {}, "state_dict": authors}, source_dir / "segformer.tiny.authors.pth")

    val = work / "val"
    generator = np.random.RandomState(3)
    images = [generator.randint(0, 256, (64, 64, 3)).astype(np.uint8) for _ in range(4)]
    for folder in ("images/validation", "annotations/validation"):
        (val / folder).mkdir(parents=True)
    with torch.no_grad():
        labels = [reference.encode_decode(_normalised(image), [dict(img_shape=(64, 64), pad_shape=(64, 64))])
                  .argmax(1)[0].numpy().astype(np.uint8) for image in images]
    for index, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(val / "images/validation" / f"{index}.png")
        Image.fromarray(label).save(val / "annotations/validation" / f"{index}.png")
    counts = np.bincount(np.concatenate([label.ravel() for label in labels]), minlength=NUM_CLASSES)
    assert (counts > 1000).all(), counts  # every class: a ~100 mIoU then needs the model's own predictions

    def entry(name, **fields):
        defaults = dict(preset="tiny-segformer", layout="mmseg", url=f"{base_url}/{mmseg_file}", filename=mmseg_file,
                        sha256=sha[:8], checksum_source="the file name (test)", downloadable=True,
                        source="the test's server", reported={"mIoU": "100"},
                        mmseg_config=str(configs["tiny_segformer.py"]), dataset="tiny")
        return dataclasses.asdict(ZooEntry(name=name, **{**defaults, **fields}))

    manifest = [
        entry("tiny-segformer-mmseg"),
        entry("tiny-segformer-mmseg-misconfigured", mmseg_config=str(configs["tiny_segformer_misconfigured.py"]),
              dataset="tiny-unlabelled"),
        entry("tiny-segformer-mmseg-other-figure", reported={"mIoU": "60"}),  # another checkpoint's figure
        entry("tiny-segformer-corrupt", url=f"{base_url}/tiny_segformer_corrupt.pth",
              filename="tiny_segformer_corrupt.pth", sha256=sha),
        entry("tiny-segformer-authors", layout="original", url="https://drive.google.com/file/d/not-fetched/view",
              filename="segformer.tiny.authors.pth", sha256=None, checksum_source=None, downloadable=False,
              source="a local copy", reported={}, mmseg_config=None, dataset="tiny-unlabelled",
              note="a Google Drive page (test)"),
        entry("tiny-segformer-existing"),
    ]
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dict(work=work, sha=sha, mmseg_file=mmseg_file, source_dir=source_dir, val=val, reference=reference,
                manifest=work / "manifest.json", configs=configs)


def _run(args, hub_log: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`python conversion/publish_zoo.py ARGS` in the waiting subprocess (see `_RUNNER`)."""
    request = dict(script=str(SCRIPT), args=[str(arg) for arg in args], cwd=str(cwd), hub_log=str(hub_log),
                   presets=[dataclasses.asdict(TINY_PRESET)])
    stdout, stderr = _CHILD.communicate(json.dumps(request) + "\n", timeout=300)
    return subprocess.CompletedProcess(_CHILD.args, _CHILD.returncode, stdout, stderr)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is much faster than two on a loaded machine (the subprocess has OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def published(server, zoo_files):
    """One run of the real command line over the whole test manifest."""
    _, _, requests = server
    work = zoo_files["work"]
    output, cache = work / "out", work / "cache"
    (output / "tiny-segformer-existing").mkdir(parents=True)
    (output / "tiny-segformer-existing" / "keep.txt").write_text("an earlier folder")
    cache.mkdir()
    served = (server[0] / zoo_files["mmseg_file"]).read_bytes()
    (cache / (zoo_files["mmseg_file"] + ".part")).write_bytes(served[: len(served) // 2])  # an interrupted download
    readme = work / "README.md"
    shutil.copy(REPO / "README.md", readme)
    original_readme = readme.read_text()
    hub_log = work / "hub_calls.jsonl"
    args = ["--manifest", str(zoo_files["manifest"]), "--output-dir", str(output), "--org", "test-org",
            "--cache-dir", str(cache), "--source-dir", str(zoo_files["source_dir"]),
            "--val-data", f"tiny={zoo_files['val']}", "--results", str(work / "results.json"),
            "--allow-unverified", "--update-readme", str(readme)]
    result = _run(args, hub_log, work)
    calls = [json.loads(line) for line in hub_log.read_text().splitlines()] if hub_log.is_file() else []
    return dict(result=result, output=output, cache=cache, readme=readme, original_readme=original_readme,
                calls=calls, requests=list(requests),
                results=json.loads((work / "results.json").read_text()))


def test_download_checksum_conversion_verification_and_push(published, zoo_files, server):
    result, output, cache = published["result"], published["output"], published["cache"]
    assert result.returncode == 1, result.stderr[-3000:]  # four entries fail, on purpose
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4, result.stderr[-3000:]
    assert "2 of 6 entries published; failed: tiny-segformer-mmseg-misconfigured, tiny-segformer-mmseg-other-figure, " \
           "tiny-segformer-corrupt, tiny-segformer-existing" in result.stdout, result.stdout[-3000:]

    # the interrupted download resumed where the partial file ended, and was checked before entering the cache
    mmseg_file = zoo_files["mmseg_file"]
    size = (server[0] / mmseg_file).stat().st_size
    assert (f"/{mmseg_file}", f"bytes={size // 2}-") in published["requests"]
    assert _sha256(cache / mmseg_file) == zoo_files["sha"] and not (cache / (mmseg_file + ".part")).exists()
    assert f"matches the published {zoo_files['sha'][:8]}" in result.stdout
    assert f"[tiny-segformer-mmseg-misconfigured] cached download {cache / mmseg_file}" in result.stdout
    assert [path for path, _ in published["requests"]].count(f"/{mmseg_file}") == 1  # later entries use the cache

    # a corrupted file is refused by its checksum and deleted; nothing is written or pushed for it
    (corrupt_error,) = [line for line in errors if "tiny-segformer-corrupt" in line]
    assert "checksum mismatch for the download of" in corrupt_error and zoo_files["sha"] in corrupt_error
    assert "the file was deleted" in corrupt_error
    assert not any(path.name.startswith("tiny_segformer_corrupt") for path in cache.iterdir())

    # the misconfigured reference (align_corners=True in mmseg's head) fails the logits check: named, never pushed
    (logits_error,) = [line for line in errors if "tiny-segformer-mmseg-misconfigured" in line]
    found = re.search(r"max \|Δlogit\| (\S+) exceeds 0\.0001 against mmsegmentation 1\.2\.2 "
                      r"\(tiny_segformer_misconfigured\.py\)", logits_error)
    assert found and float(found[1]) > 1e-3, logits_error
    assert "nothing written or pushed" in logits_error

    # a measured mIoU far from the reported figure fails the entry, naming both
    (figure_error,) = [line for line in errors if "tiny-segformer-mmseg-other-figure" in line]
    found = re.search(r"verification failed, nothing written or pushed: mIoU (\S+) measured vs 60 reported "
                      r"\(\|Δ\| (\S+) > 0\.5\)", figure_error)
    assert found and float(found[1]) >= 99.5 and abs(float(found[2]) - (float(found[1]) - 60)) < 0.01, figure_error

    # an existing folder is never overwritten
    (existing_error,) = [line for line in errors if "tiny-segformer-existing" in line]
    assert "exists; publish_zoo.py never overwrites a folder" in existing_error
    assert sorted(p.name for p in (output / "tiny-segformer-existing").iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in output.iterdir()) == ["tiny-segformer-authors", "tiny-segformer-existing",
                                                        "tiny-segformer-mmseg"]  # no failed or partial folder

    # the verified mmseg entry: the folder's logits equal mmseg's on the fixed image (checked here too)
    folder = output / "tiny-segformer-mmseg"
    record = published["results"]["tiny-segformer-mmseg"]
    assert record["checksum"] == "matched" and record["sha256"] == zoo_files["sha"] and record["verified"]
    logits = record["logits"]
    assert logits["reference"] == "mmsegmentation 1.2.2 (tiny_segformer.py)" and logits["image_size"] == [64, 64]
    assert logits["max_abs_diff"] <= 1e-4 and logits["ok"]
    from hf_seg.models.segformer import SegformerMmsegForSemanticSegmentation

    model = SegformerMmsegForSemanticSegmentation.from_pretrained(folder).eval()
    image = np.random.RandomState(0).randint(0, 256, (64, 64, 3)).astype(np.float32)  # the script's fixed image
    pixels = _normalised(image)
    with torch.no_grad():
        expected = zoo_files["reference"].encode_decode(pixels, [dict(img_shape=(64, 64), pad_shape=(64, 64))])
        actual = torch.nn.functional.interpolate(model(pixel_values=pixels).logits, size=(64, 64), mode="bilinear",
                                                 align_corners=False)
    assert max_abs_diff(actual, expected) <= 1e-4
    assert abs(max_abs_diff(actual, expected) - logits["max_abs_diff"]) <= 1e-6  # the figure the script reported
    miou = record["miou"]
    assert miou["num_examples"] == 4 and miou["reported"] == 100.0 and 99.5 <= miou["measured"] <= 100.0

    card = (folder / "README.md").read_text()
    for text in (f"sha256 `{zoo_files['sha']}`", f"matches the published `{zoo_files['sha'][:8]}`",
                 f"max |Δlogit| {logits['max_abs_diff']:.2e}", "on a fixed seeded 64x64 image, fp32, against "
                 "mmsegmentation 1.2.2 (tiny_segformer.py)", f"{miou['measured']:.2f} measured on 4 images of tiny "
                 "(validation) vs 100 reported", "**Reported mIoU (source):** 100 (mIoU; the test's server)",
                 "**Status:** verified (checksum; logits within 0.0001",
                 'from_pretrained("test-org/tiny-segformer-mmseg"',
                 "NVIDIA Source Code License"):
        assert text in card, text

    # the authors' entry: a local copy, no checksum, no reference, no labelled data: pushed only because of
    # --allow-unverified, and its card says so
    authors = published["results"]["tiny-segformer-authors"]
    assert authors["checksum"] == "none published" and not authors["verified"] and authors["origin"] == "local copy"
    card = (output / "tiny-segformer-authors" / "README.md").read_text()
    for text in ("**Checksum:** none published by the source", "not compared: the authors' code",
                 "**mIoU:** not measured here (no --val-data tiny-unlabelled=DIR given)", "**Status:** NOT verified",
                 "Source layout: original"):
        assert text in card, text

    # the push: exactly the two written folders, to the organisation, with their files
    uploads = [(call["repo_id"], Path(call["folder_path"]).name, call["files"]) for call in published["calls"]
               if call["call"] == "upload_folder"]
    assert [call["repo_id"] for call in published["calls"] if call["call"] == "create_repo"] == [
        "test-org/tiny-segformer-mmseg", "test-org/tiny-segformer-authors"]
    assert [(repo, name) for repo, name, _ in uploads] == [
        ("test-org/tiny-segformer-mmseg", "tiny-segformer-mmseg"),
        ("test-org/tiny-segformer-authors", "tiny-segformer-authors")]
    for _, _, files in uploads:
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(files), files
    assert set(published["results"]) == {"tiny-segformer-mmseg", "tiny-segformer-authors"}
    assert published["results"]["tiny-segformer-mmseg"]["hub_id"] == "test-org/tiny-segformer-mmseg"


def test_update_readme_fills_the_table_between_the_markers(published):
    original, updated = published["original_readme"], published["readme"].read_text()
    begin, end = "<!-- zoo-table:begin", "<!-- zoo-table:end -->"
    assert updated.split(begin)[0] == original.split(begin)[0] and updated.split(end)[1] == original.split(end)[1]
    table = updated.split(begin)[1].split(end)[0]
    record = published["results"]["tiny-segformer-mmseg"]
    rows = {line.split(" | ")[0].strip("| `"): line for line in table.splitlines() if line.startswith("| `")}
    assert set(rows) == {"tiny-segformer-mmseg", "tiny-segformer-mmseg-misconfigured", "tiny-segformer-corrupt",
                         "tiny-segformer-mmseg-other-figure", "tiny-segformer-authors", "tiny-segformer-existing"}
    assert f"| {record['logits']['max_abs_diff']:.1e} | {record['miou']['measured']:.2f} / 100 | " \
           "[test-org/tiny-segformer-mmseg](https://huggingface.co/test-org/tiny-segformer-mmseg) |" in rows[
               "tiny-segformer-mmseg"]
    assert "✓" in rows["tiny-segformer-mmseg"]
    assert "| none published | no reference | — / — | [test-org/tiny-segformer-authors]" in rows[
        "tiny-segformer-authors"] and rows["tiny-segformer-authors"].endswith("(unverified) |")
    assert rows["tiny-segformer-corrupt"].endswith("| — | — / 100 | not yet published |")
    assert "6 entries, 5 with a published checksum; 2 published." in table


@pytest.fixture()
def zoo_script(monkeypatch):
    """conversion/publish_zoo.py as a module of this process, with the tiny preset registered and a Hub that fails."""
    spec = importlib.util.spec_from_file_location("publish_zoo_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(PRESETS, TINY_PRESET.name, TINY_PRESET)
    import huggingface_hub

    class NoHub:
        def __init__(self, *args, **kwargs):
            raise AssertionError("nothing may be pushed here")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoHub)
    return module


def test_unverified_entries_need_the_flag_and_dry_run_pushes_nothing(zoo_script, zoo_files, tmp_path, capsys):
    common = ["--manifest", str(zoo_files["manifest"]), "--only", "tiny-segformer-authors", "--source-dir",
              str(zoo_files["source_dir"]), "--cache-dir", str(tmp_path / "cache"), "--results",
              str(tmp_path / "results.json")]
    assert zoo_script.main([*common, "--output-dir", str(tmp_path / "out"), "--org", "o"]) == 1
    err = capsys.readouterr().err
    assert "error: tiny-segformer-authors: not verified, nothing written or pushed: nothing checks that this is " \
           "the released file" in err and "nothing checks the conversion of these weights" in err
    assert "--allow-unverified" in err and not (tmp_path / "out" / "tiny-segformer-authors").exists()
    assert not list((tmp_path / "out").iterdir())  # no partial folder left either

    assert zoo_script.main([*common, "--output-dir", str(tmp_path / "dry"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "written to" in out and "dry run: not pushed" in out and "NOT verified" in out
    assert (tmp_path / "dry" / "tiny-segformer-authors" / "model.safetensors").is_file()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["tiny-segformer-authors"]["hub_id"] is None and results["tiny-segformer-authors"]["dry_run"]


def test_command_line_errors(zoo_script, zoo_files, tmp_path, capsys):
    manifest = ["--manifest", str(zoo_files["manifest"])]
    assert zoo_script.main([*manifest, "--only", "tiny-segformer-mmsag", "--dry-run", "--output-dir",
                            str(tmp_path)]) == 1
    assert "unknown zoo entry 'tiny-segformer-mmsag'" in (err := capsys.readouterr().err)
    assert "Did you mean 'tiny-segformer-mmseg'" in err
    assert zoo_script.main([*manifest, "--output-dir", str(tmp_path)]) == 1
    assert "--org is required to push" in capsys.readouterr().err
    assert zoo_script.main([*manifest, "--only", "tiny-segformer-authors", "--dry-run", "--output-dir", str(tmp_path),
                        "--cache-dir", str(tmp_path / "c"), "--results", str(tmp_path / "r.json")]) == 1
    assert "is a Google Drive page (test) (no --source-dir given)" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "preset": "tiny-segformer", "checksum": "abc"}]))
    assert zoo_script.main(["--manifest", str(bad), "--list"]) == 1
    err = capsys.readouterr().err
    assert "unknown fields checksum" in err
    assert "missing fields downloadable, filename, layout, sha256, source, url" in err
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert zoo_script.main([*manifest, "--update-readme", str(readme), "--results", str(tmp_path / "r.json")]) == 1
    assert "has no single pair of zoo-table marker comments" in capsys.readouterr().err


def test_zoo_table_agrees_with_mmsegmentations_metafiles():
    """Every mmseg entry's URL, checksum (the file name's sha256 prefix), config and figures are the installed
    mmsegmentation's metafile's; every metafile SETR / SegFormer model has an entry; presets and names are valid."""
    import yaml

    entries = check_entries(ZOO)
    configs = Path(mmseg.__file__).parent / ".mim" / "configs"
    mmseg_entries = {entry.url: entry for entry in entries if entry.layout == "mmseg"}
    metafile_urls = set()
    for family in ("setr", "segformer"):
        for model in yaml.safe_load((configs / family / "metafile.yaml").read_text())["Models"]:
            metafile_urls.add(model["Weights"])
            entry = mmseg_entries[model["Weights"]]
            assert entry.mmseg_config == model["Config"].removeprefix("configs/"), entry.name
            assert (configs / entry.mmseg_config).is_file()
            metrics = model["Results"]["Metrics"]
            assert entry.reported_value("mIoU") == metrics["mIoU"], entry.name
            assert entry.reported_value("mIoU (ms+flip)") == metrics["mIoU(ms+flip)"], entry.name
            assert entry.sha256 == re.search(r"-([0-9a-f]{8})\.pth$", model["Weights"])[1]
            assert entry.checksum_kind == "sha256-prefix" and entry.downloadable
    assert metafile_urls == set(mmseg_entries)
    authors = [entry for entry in entries if entry.layout == "original"]
    assert all(entry.sha256 is None and entry.checksum_source is None for entry in authors)
    assert all(not entry.downloadable for entry in authors if "drive.google.com" in entry.url)
    counts = {(family, layout): sum(1 for e in entries if converter_family(e) == family and e.layout == layout)
              for family in ("setr", "segformer", "mpvit") for layout in ("original", "mmseg")}
    assert counts == {("setr", "original"): 15, ("setr", "mmseg"): 7, ("segformer", "original"): 21,
                      ("segformer", "mmseg"): 13, ("mpvit", "original"): 6, ("mpvit", "mmseg"): 0}
    with pytest.raises(ValueError, match="sha256 'XYZ' is not 8 to 64 lower-case hex digits"):
        ZooEntry(name="x", preset="mit-b0", layout="original", url="u", filename="f.pth", sha256="XYZ",
                 checksum_source="s", downloadable=True, source="s")


def test_the_committed_readme_table_is_what_the_script_writes(zoo_script):
    """The README's zoo table is `--update-readme`'s output for hf_seg/convert/zoo.py and the committed results file
    (none yet: every row "not yet published")."""
    module = zoo_script
    readme = (REPO / "README.md").read_text()
    table = readme.split(module.README_BEGIN + "\n")[1].split("\n" + module.README_END)[0]
    assert table == module.render_table(check_entries(ZOO), module.load_results(module.DEFAULT_RESULTS))
    if not module.DEFAULT_RESULTS.exists():
        assert table.count("| not yet published |") == len(ZOO) == 62
