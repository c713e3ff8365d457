"""Pulls from a real Hub-protocol server: every family's tiny model as a Hub repository, served by olah on 127.0.0.1.

A tiny model of each family (SETR-MLA, transformers' SegFormer, MPViT-UperNet; tests/tiny_models.py) is saved with
its image processor and model card (`save_pretrained` ships the model and processor code and the `auto_map`) and
committed as a Hub repository into a local git mirror, the weights as a Git LFS file as on the Hub. olah serves the
mirror offline (tests/hub_server.py; it also says where olah 0.5.4 answers otherwise than the Hub, and how that is
handled). One child process pulls every repository through it, with `HF_ENDPOINT` at the server, no token and a new
`HF_HOME`, in four steps; each step starts from an empty hub cache, so each one downloads every file:

1. while `import hf_seg` fails: `AutoModelForSemanticSegmentation` / `AutoImageProcessor.from_pretrained(
   "org/name", trust_remote_code=True)`, the repositories' own code;
2. then with hf_seg imported: `from_pretrained("org/name")` through the Auto classes;
3. `hf-seg predict --model org/name ...` (`hf_seg.cli.main`, what the `hf-seg` script calls);
4. `hf-seg train --model org/name ...`: two steps on a generated data set.

The server and the child start first and import while this process imports transformers and hf_seg and builds the
repositories (one child for all families and steps: on a loaded 2-core machine each interpreter that imports torch and
transformers costs about ten CPU seconds); the child starts pulling when the spec file appears, once the server
answers. The push side (`push_to_hub`) stays mocked in tests/test_training.py: olah has no upload routes, which
`test_the_server_accepts_no_uploads` shows.
"""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hub_server import HubServer, add_model_repo


if importlib.util.find_spec("olah") is None:  # found without importing it: the server imports it, not this process
    pytest.skip("olah serves the Hub repositories: pip install -e '.[test]'", allow_module_level=True)

ORG = "hf-seg-tests"
FAMILIES = {  # family -> (repository name, the preset whose processor the repository ships)
    "setr": ("setr-mla-tiny", "setr-mla-vit-large-ade20k-512"),
    "segformer": ("segformer-tiny", "segformer-b0-ade20k-512"),
    "mpvit": ("upernet-mpvit-tiny", "upernet-mpvit-small-ade20k-512"),
}
ID2LABEL = {0: "wall", 1: "building", 2: "sky", 3: "floor", 4: "tree"}
PROCESSOR_SIZE = {"shortest_edge": 64, "longest_edge": 128}
# the child computes with one thread, as the references here; MPViT's logits still differ in the last bit (1e-8)
SAME_LOGITS = dict(rtol=1e-5, atol=1e-6)
STEPS = ("remote", "auto", "predict", "train")  # each one a new, empty hub cache
TRAIN_ARGS = [
    "--max_steps", "2", "--per_device_train_batch_size", "2", "--crop_size", "64", "--train_scale", "128", "64",
    "--learning_rate", "1e-6", "--min_lr", "0", "--warmup_steps", "0", "--eval_split", "none",
    "--reduce_labels", "false", "--save_strategy", "no", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
    "--dataloader_num_workers", "0",
]

# The child: imports while the repositories are built, waits for the spec (written once the server answers), then
# pulls every repository in four steps, each into a new, empty hub cache. First the remote-code step, while
# `import hf_seg` fails; then hf_seg is imported for the other three.
CHILD = r"""
import json, os, sys, time
from pathlib import Path
started = time.monotonic()
sys.modules["hf_seg"] = None  # any `import hf_seg` fails: only the repositories' own code may run
import huggingface_hub
import numpy as np
import torch
from huggingface_hub import constants
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

spec_path = Path(sys.argv[1])
print(f"imports took {time.monotonic() - started:.1f} s (cpu {time.process_time():.1f} s)", flush=True)
deadline = time.monotonic() + 600
while not spec_path.exists():
    assert time.monotonic() < deadline, "no spec file"
    time.sleep(0.05)
spec_read = time.monotonic()
spec = json.loads(spec_path.read_text())
out, repos = Path(spec["out"]), spec["repos"]
assert constants.ENDPOINT == spec["endpoint"], constants.ENDPOINT
assert huggingface_hub.get_token() is None, "a token is set"
pixel_values = torch.load(spec["pixel_values"])
image = Image.open(spec["images"][0])
results = {family: {} for family in repos}

def fresh_cache(step):
    # huggingface_hub and transformers read the cache folder at each call
    print(f"{time.monotonic() - spec_read:6.1f} s {step} (cpu {time.process_time():.1f} s)", flush=True)
    cache = Path(os.environ["HF_HOME"]) / f"hub-{step}"
    assert not cache.exists(), cache
    constants.HF_HUB_CACHE = str(cache)

def name(obj):
    return type(obj).__module__ + "." + type(obj).__name__

def pull(step, family, **kwargs):
    model = AutoModelForSemanticSegmentation.from_pretrained(repos[family], **kwargs).eval()
    processor = AutoImageProcessor.from_pretrained(repos[family], **kwargs)
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        logits = model(pixel_values).logits
        label_map = processor.post_process_semantic_segmentation(model(**inputs), target_sizes=[image.size[::-1]])[0]
    np.savez(out / f"{step}-{family}.npz", logits=logits.numpy(), pixel_values=inputs["pixel_values"].numpy(),
             label_map=label_map.numpy())
    results[family][step] = {"model": name(model), "processor": name(processor)}

fresh_cache("remote")
for family in repos:
    pull("remote", family, trust_remote_code=True)
results["hf_seg modules during remote"] = sorted(m for m in sys.modules if m.split(".")[0] == "hf_seg"
                                                   and sys.modules[m] is not None)
del sys.modules["hf_seg"]
import hf_seg
from hf_seg.cli import main as hf_seg_main

fresh_cache("auto")
for family in repos:
    pull("auto", family)
fresh_cache("predict")
for family, repo_id in repos.items():
    results[family]["predict"] = hf_seg_main(
        ["predict", "--model", repo_id, spec["images_dir"], "--output-dir", str(out / f"predict-{family}"), "--quiet"])
fresh_cache("train")
for family, repo_id in repos.items():
    results[family]["train"] = hf_seg_main(
        ["train", "--model", repo_id, "--dataset", spec["dataset"], "--id2label", spec["id2label"],
         "--output_dir", str(out / f"train-{family}"), *spec["train_args"]])
(out / "results.json").write_text(json.dumps(results))
print(f"{time.monotonic() - spec_read:6.1f} s done (cpu {time.process_time():.1f} s)", flush=True)
"""


def _git_head(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _child_env(hf_home: Path, endpoint: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", HOME=str(hf_home.parent), PYTHONUNBUFFERED="1")
    return env


def _images(folder: Path) -> list[Path]:
    rng = np.random.RandomState(0)
    folder.mkdir()
    paths = []
    for index, shape in enumerate([(70, 90, 3), (100, 60, 3)]):
        paths.append(folder / f"photo{index}.png")
        Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    return paths


def _tiny_model(family: str):
    from tiny_models import tiny_mpvit, tiny_segformer, tiny_setr

    model = {"setr": lambda: tiny_setr("mla"), "segformer": tiny_segformer, "mpvit": tiny_mpvit}[family]()
    model.config.id2label = dict(ID2LABEL)
    model.config.label2id = {label: index for index, label in ID2LABEL.items()}
    return model


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Serve the repositories and run the child: what it did, what the server saw, and the local references."""
    started = time.monotonic()
    work = tmp_path_factory.mktemp("hub")
    mirrors, out, hf_home, spec_path = work / "mirrors", work / "out", work / "home" / "hf", work / "spec.json"
    out.mkdir()
    hf_home.parent.mkdir()
    server = HubServer(mirrors, work / "server")
    server.start()
    child = None
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(spec_path)], cwd=str(hf_home.parent),
            env=_child_env(hf_home, server.endpoint), stdin=subprocess.DEVNULL,
            stdout=open(work / "child.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115 - closed with the child
        )
        import hf_seg
        from hf_seg.data.quickstart import QUICKSTART_LABELS, make_quickstart_dataset
        from hf_seg.training import write_model_card

        repos, threads = {}, torch.get_num_threads()
        images = _images(work / "images")
        pixel_values = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
        torch.save(pixel_values, work / "pixel_values.pt")
        torch.set_num_threads(1)
        try:
            for family, (name, preset) in FAMILIES.items():
                model = _tiny_model(family)
                processor = hf_seg.create_image_processor(preset, size=PROCESSOR_SIZE)
                folder = work / "saved" / family
                model.save_pretrained(folder)
                processor.save_pretrained(folder)
                write_model_card(str(folder), model, model_name=f"{ORG}/{name}")
                commit = add_model_repo(mirrors, f"{ORG}/{name}", folder)
                with torch.no_grad():
                    logits = model(pixel_values).logits
                inputs = processor(images=Image.open(images[0]), return_tensors="pt")
                repos[family] = dict(
                    repo_id=f"{ORG}/{name}", commit=commit, folder=folder, model=model, processor=processor,
                    logits=logits, pixel_values=inputs["pixel_values"],
                    label_maps=[hf_seg.segment(model, processor, Image.open(path))[0].numpy() for path in images],
                )
        finally:
            torch.set_num_threads(threads)
        data = work / "data"
        make_quickstart_dataset(num_train=4, num_validation=2, size=64, seed=1).save_to_disk(str(data))
        (work / "labels.json").write_text(json.dumps(QUICKSTART_LABELS))
        built = time.monotonic() - started

        server.wait_ready(f"/api/models/{repos['setr']['repo_id']}/revision/main")
        requests_before = len(server.requests())
        spec = dict(endpoint=server.endpoint, out=str(out), repos={f: r["repo_id"] for f, r in repos.items()},
                    pixel_values=str(work / "pixel_values.pt"), images=[str(p) for p in images],
                    images_dir=str(work / "images"), dataset=str(data), id2label=str(work / "labels.json"),
                    train_args=TRAIN_ARGS)
        (work / "spec.tmp").write_text(json.dumps(spec))
        os.replace(work / "spec.tmp", spec_path)  # the child starts pulling now
        served = time.monotonic() - started
        try:
            child.wait(timeout=600)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log = (work / "child.log").read_text(errors="replace")
        assert child.returncode == 0, f"the child failed ({child.returncode}):\n{log[-4000:]}"
        steps = [line.strip() for line in log.splitlines() if line.startswith("imports took") or " s " in line[:9]]
        print(f"\nhub fixture: repositories built {built:.1f} s, served {served:.1f} s, child done "
              f"{time.monotonic() - started:.1f} s after the start; child: {'; '.join(steps)}")
        yield dict(server=server, repos=repos, out=out, images=images, work=work,
                   results=json.loads((out / "results.json").read_text()),
                   caches={step: hf_home / f"hub-{step}" for step in STEPS},
                   requests=server.requests()[requests_before:])
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        server.stop()


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_classes_after_import_hf_seg(hub, family):
    """`from_pretrained("org/name")` with hf_seg imported: hf_seg's (SegFormer: transformers') classes, the local
    model's logits and, bit for bit, the local processor's pixel values."""
    repo = hub["repos"][family]
    run = hub["results"][family]["auto"]
    assert run["model"] == f"{type(repo['model']).__module__}.{type(repo['model']).__name__}"
    assert run["processor"] == "hf_seg.models.setr.image_processing_setr.SetrImageProcessor"
    pulled = np.load(hub["out"] / f"auto-{family}.npz")
    torch.testing.assert_close(torch.from_numpy(pulled["logits"]), repo["logits"], **SAME_LOGITS)
    np.testing.assert_array_equal(pulled["pixel_values"], repo["pixel_values"].numpy())


@pytest.mark.parametrize("family", FAMILIES)
def test_trust_remote_code_without_hf_seg(hub, family):
    """Without hf_seg: the repository's own code (SETR, MPViT and the processor from `transformers_modules`;
    SegFormer is transformers' built-in class) gives the local model's logits, pixel values and label map."""
    repo = hub["repos"][family]
    run = hub["results"][family]["remote"]
    assert hub["results"]["hf_seg modules during remote"] == []
    # the code's module is transformers_modules.<org>.<name>.<commit>.<file>: the mirror's commit, pulled here
    remote = f"transformers_modules.{ORG.replace('-', '_hyphen_')}.{FAMILIES[family][0].replace('-', '_hyphen_')}"
    remote += f".{repo['commit']}."
    if family == "segformer":
        assert run["model"] == "transformers.models.segformer.modeling_segformer.SegformerForSemanticSegmentation"
    else:
        assert run["model"].startswith(remote) and run["model"].endswith("." + type(repo["model"]).__name__)
    assert run["processor"] == remote + "image_processing_setr.SetrImageProcessor"
    pulled = np.load(hub["out"] / f"remote-{family}.npz")
    torch.testing.assert_close(torch.from_numpy(pulled["logits"]), repo["logits"], **SAME_LOGITS)
    np.testing.assert_array_equal(pulled["pixel_values"], repo["pixel_values"].numpy())
    with torch.no_grad():
        outputs = repo["model"](pixel_values=repo["pixel_values"])
    image = Image.open(hub["images"][0])
    expected = repo["processor"].post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
    np.testing.assert_array_equal(pulled["label_map"], expected.numpy())


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_from_the_hub(hub, family):
    """`hf-seg predict --model org/name`: every label PNG is in-process `hf_seg.segment`'s label map."""
    assert hub["results"][family]["predict"] == 0
    classes = set()
    for path, expected in zip(hub["images"], hub["repos"][family]["label_maps"], strict=True):
        written = Image.open(hub["out"] / f"predict-{family}" / path.name)
        assert written.mode == "P"  # palette PNG: pixel value = class id
        np.testing.assert_array_equal(np.asarray(written), expected)
        classes |= set(np.unique(expected).tolist())
    assert len(classes) > 1


@pytest.mark.parametrize("family", FAMILIES)
def test_train_from_the_hub(hub, family):
    """`hf-seg train --model org/name --id2label 6 classes`: training starts from the repository's weights (only the
    classifiers re-initialised, every other parameter within two tiny steps of the pulled one) and its processor."""
    assert hub["results"][family]["train"] == 0
    repo = hub["repos"][family]
    folder = hub["out"] / f"train-{family}"
    from hf_seg.data.quickstart import QUICKSTART_LABELS
    from transformers import AutoModelForSemanticSegmentation

    trained = AutoModelForSemanticSegmentation.from_pretrained(folder)
    assert trained.config.id2label == dict(enumerate(QUICKSTART_LABELS))
    assert json.loads((folder / "preprocessor_config.json").read_text())["size"] == PROCESSOR_SIZE
    start = dict(repo["model"].named_parameters())
    reinitialised, moved = set(), 0.0
    for name, parameter in trained.named_parameters():
        if parameter.shape != start[name].shape:
            reinitialised.add(name.rsplit(".", 1)[0])
            continue
        difference = (parameter.detach() - start[name].detach()).abs().max().item()
        assert difference < 1e-3, (name, difference)
        moved = max(moved, difference)
    assert moved > 0  # it trained
    classifiers = {name for name, _ in repo["model"].named_modules() if name.rsplit(".", 1)[-1] == "classifier"}
    assert reinitialised == classifiers and classifiers


@pytest.mark.parametrize("family", FAMILIES)
def test_every_step_downloaded_through_the_server(hub, family):
    """Each step's empty cache now holds the repository at the mirror's commit, the files byte for byte (the weights
    under their LFS sha256, as from the Hub), and the server logged each step's download of every file."""
    repo = hub["repos"][family]
    repo_id, commit, folder = repo["repo_id"], repo["commit"], repo["folder"]
    weights_sha = _sha256(folder / "model.safetensors")
    needed = {"config.json", "model.safetensors", "preprocessor_config.json"}
    code = {p.name for p in folder.glob("*.py")}
    assert (family == "segformer") == (code == {"image_processing_setr.py"})
    for step, cache in hub["caches"].items():
        entry = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = entry / "snapshots" / commit
        files = {p.name for p in snapshot.iterdir()}
        assert needed <= files, (step, files)
        if step == "remote":
            assert code <= files, (step, files)
        for file in files:
            assert (snapshot / file).read_bytes() == (folder / file).read_bytes(), (step, file)
        assert (entry / "blobs" / weights_sha).is_file()
        assert (entry / "refs" / "main").read_text() == commit

    seen = [(method, path) for method, path, status in hub["requests"] if status == 200]
    base = f"/{repo_id}/resolve/{commit}/"
    for file in needed:
        assert seen.count(("GET", base + file)) == len(STEPS), (file, seen)
    for file in code:
        assert seen.count(("GET", base + file)) >= 1, (file, seen)
    assert ("GET", f"/api/models/{repo_id}") in seen


def test_the_server_answered_as_the_hub(hub):
    """Every answer is the Hub's: 200 for the repository info and every file the repository has, 404 for exactly the
    optional files it does not have (`processor_config.json`, ...), nothing else."""
    files = {family: {p.name for p in repo["folder"].iterdir()} for family, repo in hub["repos"].items()}
    by_repo = {repo["repo_id"]: (repo["commit"], files[family]) for family, repo in hub["repos"].items()}
    missing = set()
    for method, path, status in hub["requests"]:
        parts = path.split("/")
        if "resolve" in parts:
            commit, present = by_repo["/".join(parts[1:3])]
            assert parts[3:5] == ["resolve", commit], path
            file = "/".join(parts[5:])
            assert status == (200 if file in present else 404), (method, path, status)
            if status == 404:
                missing.add(file)
        else:
            assert status == 200, (method, path, status)
    assert "processor_config.json" in missing
    repo = hub["repos"]["setr"]
    cases = [(repo["commit"], "absent.json", "EntryNotFound"), ("main", "absent.json", "EntryNotFound"),
             ("no-such-branch", "config.json", "RevisionNotFound")]
    for revision, file, code in cases:
        request = urllib.request.Request(f"{hub['server'].endpoint}/{repo['repo_id']}/resolve/{revision}/{file}",
                                         method="HEAD")
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=60)
        assert (answer.value.code, answer.value.headers["X-Error-Code"]) == (404, code)


def test_the_server_accepts_no_uploads(hub, monkeypatch):
    """Why `push_to_hub` stays mocked (tests/test_training.py): olah has no route for the Hub's upload API, so
    `HfApi.create_repo` and `upload_file` fail against it and the mirror keeps its one commit."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests/conftest.py sets HF_HUB_OFFLINE=1 for the rest
    repo = hub["repos"]["setr"]
    api = HfApi(endpoint=hub["server"].endpoint, token="hf_local_test_token")  # a token for a server on 127.0.0.1
    with pytest.raises(HfHubHTTPError) as created:
        api.create_repo(f"{ORG}/pushed")
    with pytest.raises(HfHubHTTPError) as uploaded:
        api.upload_file(path_or_fileobj=b"{}", path_in_repo="extra.json", repo_id=repo["repo_id"])
    for error in (created, uploaded):
        assert 400 <= error.value.response.status_code < 500, error.value
    mirror = hub["work"] / "mirrors" / "models" / ORG
    assert sorted(p.name for p in mirror.iterdir()) == sorted(r["repo_id"].split("/")[1] for r in hub["repos"].values())
    assert _git_head(mirror / repo["repo_id"].split("/")[1]) == repo["commit"]
