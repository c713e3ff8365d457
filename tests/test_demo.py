"""`hf-seg demo` (hf_seg.demo): the Gradio app driven in headless Chromium through selenium, --write-space's Hugging
Face Space, and the message when gradio is missing.

The browser test serves the app in this process on 127.0.0.1 (a free port) with a tiny SegFormer (tests/tiny_models.py;
its classifier fitted by least squares to a drawn street scene, so that it segments it) saved to a folder, uploads
the scene, and checks what the page shows against `hf_seg.segment` on the same model: the label-map PNG the
page links to (fetched from the link's address) equals the map exactly, and the legend lists exactly the classes in
the map with their names and pixel shares. The page must load nothing from outside 127.0.0.1 (Chromium's network log).
It skips, saying why, where gradio, selenium, /usr/bin/chromium or /usr/bin/chromedriver are missing (.ci/run installs
the two Debian packages). HF_SEG_DEMO_SCREENSHOT=path also copies the screenshot there (docs/demo.png was made so).
"""

import concurrent.futures
import json
import os
import runpy
import shutil
import socket
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hf_seg
from hf_seg import cli
from hf_seg import demo as demo_module
from tiny_models import NUM_LABELS, tiny_segformer


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CLASS_NAMES = ["sky", "tree", "road", "building", "grass"]
assert len(CLASS_NAMES) == NUM_LABELS
# a saved test protocol (as hf-seg train writes it), small enough for the tiny model
PROTOCOL = {"mode": "whole", "aug_test": {"scales": [0.75, 1.0, 1.25], "flip": True}}
PROCESSOR_SIZE = {"shortest_edge": 128, "longest_edge": 256}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1360,1000", "--hide-scrollbars"]


def _scene(height=240, width=336):
    """A drawn street (sky, a house, a tree, a road, grass) and its label map (CLASS_NAMES' ids)."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([110 + 60 * y / height, 160 + 50 * y / height, 235 - 10 * y / height], -1).astype(np.float32)
    labels = np.zeros((height, width), np.int64)

    def paint(mask, colour, label):
        image[mask], labels[mask] = colour, label

    ground = y > height * 0.62
    paint(ground, [96, 140, 70], 4)
    paint(ground & (np.abs(x - width * 0.55) < (y - height * 0.62) * 1.1 + 6), [92, 92, 96], 2)
    paint((x > width * 0.08) & (x < width * 0.36) & (y > height * 0.38) & (y <= height * 0.66), [190, 120, 90], 3)
    paint((y > height * 0.22) & (y <= height * 0.38) & (np.abs(x - width * 0.22) < (y - height * 0.22) * 1.05),
          [120, 50, 45], 3)
    paint((x - width * 0.8) ** 2 + (y - height * 0.4) ** 2 < (height * 0.17) ** 2, [40, 110, 50], 1)
    paint((np.abs(x - width * 0.8) < 3) & (y > height * 0.5) & (y < height * 0.68), [90, 60, 30], 1)
    noise = np.random.RandomState(0).normal(0, 6, image.shape)
    return Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8)), labels


def _fit_classifier(model, processor, image, labels):
    """Set the tiny SegFormer's 1x1 classifier to the least-squares fit of the scene's labels on its (random)
    decoder features: a model that segments the scene (most pixels right) without a training run."""
    features = []
    hook = model.decode_head.classifier.register_forward_hook(lambda module, args, out: features.append(args[0]))
    with torch.no_grad():
        model(pixel_values=processor(images=[image], return_tensors="pt")["pixel_values"])
    hook.remove()
    (channels, height, width) = features[0].shape[1:]
    targets = torch.nn.functional.interpolate(torch.from_numpy(labels)[None, None].float(), size=(height, width),
                                              mode="nearest").long().reshape(-1)
    inputs = torch.cat([features[0][0].reshape(channels, -1).T, torch.ones(height * width, 1)], 1).double()
    one_hot = torch.nn.functional.one_hot(targets, NUM_LABELS).double()
    weights = torch.linalg.solve(inputs.T @ inputs + 1e-3 * torch.eye(channels + 1, dtype=torch.float64),
                                 inputs.T @ one_hot)
    with torch.no_grad():
        model.decode_head.classifier.weight.copy_(weights[:channels].T.float()[..., None, None])
        model.decode_head.classifier.bias.copy_(weights[channels].float())


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny SegFormer with named classes that segments the scene, saved as a user would (model, processor, a
    model card with a license)."""
    model = tiny_segformer()
    model.config.id2label = dict(enumerate(CLASS_NAMES))
    model.config.label2id = {name: index for index, name in enumerate(CLASS_NAMES)}
    model.config.test_protocol = PROTOCOL  # the demo's defaults come from here
    processor = hf_seg.create_image_processor("segformer-b0-ade20k-512", size=PROCESSOR_SIZE)
    _fit_classifier(model, processor, *_scene())
    folder = tmp_path_factory.mktemp("models") / "tiny-segformer-street"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: mit\ntags:\n- image-segmentation\n---\n# tiny SegFormer\n")
    return folder, model, processor


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("uploads") / "street.png"
    _scene()[0].save(path)
    return path


def _run(capsys, *argv):
    status = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------------------------ without a browser


def test_missing_gradio_is_a_one_line_error_naming_the_extra(model_folder, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` fails as if it were not installed
    status, out, err = _run(capsys, "demo", "--model", model_folder[0])
    assert status == 1
    assert err.strip() == 'hf-seg: error: `hf-seg demo` needs gradio, which is not installed: pip install "hf_seg[demo]"'
    assert out == ""


def test_demo_help_lists_its_options(capsys):
    status, out, _ = _run(capsys, "demo", "--help")
    assert status == 0
    for option in ("--model", "--host", "--port", "--examples", "--write-space", "--share", 'hf_seg[demo]'):
        assert option in out
    assert "(default: 127.0.0.1)" in out and "(default: 7860)" in out


def _front_matter(readme: Path) -> dict:
    from huggingface_hub import metadata_load

    return metadata_load(readme)


def test_write_space_for_a_model_folder(model_folder, scene_file, tmp_path, capsys):
    folder = model_folder[0]
    space = tmp_path / "space"
    status, out, err = _run(capsys, "demo", "--model", folder, "--write-space", space, "--examples", scene_file)
    assert status == 0, err
    assert f"wrote a Hugging Face Space to {space}" in out
    assert {p.name for p in space.iterdir()} == {"app.py", "requirements.txt", "README.md", "model", "examples",
                                                "hf_seg"}
    meta = _front_matter(space / "README.md")
    gradio_version = demo_module._gradio_version()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["sdk_version"] == gradio_version
    assert meta["title"] == f"{folder.name} segmentation"
    assert meta["license"] == "mit"  # from the model folder's card
    assert "models" not in meta  # the model travels inside the Space, not from the Hub
    assert len(meta["short_description"]) <= 60
    # the model folder is copied whole (top-level files), byte for byte; so are the examples and hf_seg's code
    assert sorted(p.name for p in (space / "model").iterdir()) == sorted(p.name for p in folder.iterdir())
    for file in folder.iterdir():
        assert (space / "model" / file.name).read_bytes() == file.read_bytes()
    assert (space / "examples" / "street.png").read_bytes() == scene_file.read_bytes()
    assert (space / "hf_seg" / "demo.py").read_bytes() == Path(demo_module.__file__).read_bytes()
    assert (space / "hf_seg" / "labels" / "ade20k.json").is_file()
    assert not list((space / "hf_seg").rglob("__pycache__"))
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("transformers") for line in requirements)
    assert any(line.startswith("torch") for line in requirements)
    assert not any(line.startswith("gradio") for line in requirements)  # the Space's sdk_version installs it
    app = (space / "app.py").read_text()
    compile(app, "app.py", "exec")
    assert '"model")' in app and '"street.png"' in app


def test_write_space_for_a_hub_id_names_the_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no card can be fetched: no license, and nothing is downloaded
    space = tmp_path / "space"
    status, _, err = _run(capsys, "demo", "--model", "someone/setr-tiny", "--write-space", space)
    assert status == 0, err
    meta = _front_matter(space / "README.md")
    assert meta["models"] == ["someone/setr-tiny"]
    assert "license" not in meta
    assert not (space / "model").exists()
    assert 'MODEL = "someone/setr-tiny"' in (space / "app.py").read_text()


def test_write_space_refuses_to_overwrite(model_folder, tmp_path, capsys):
    folder = model_folder[0]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    cases = [
        (taken, "is not empty"),
        (folder, "is the model folder itself"),
        (folder / "space", "lies inside the model folder"),
        (taken / "notes.txt", "is a file, not a folder"),
    ]
    for directory, message in cases:
        status, out, err = _run(capsys, "demo", "--model", folder, "--write-space", directory)
        assert status == 2, (directory, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hf-seg: error: ") and message in lines[0], err
    assert (taken / "notes.txt").read_text() == "mine" and sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not (folder / "space").exists()


def test_bad_uploads_get_one_clear_sentence(tmp_path, scene_file):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("this is not a picture\n" * 10)
    (tmp_path / "cut.png").write_bytes(scene_file.read_bytes()[:200])
    (tmp_path / "nothing.ppm").write_bytes(b"P6\n0 0\n255\n")  # a header of 0 x 0 pixels
    cases = {"empty.png": "is empty (0 bytes)", "notes.png": "cannot be read as an image",
             "cut.png": "damaged or truncated", "nothing.ppm": "cannot be read as an image"}
    for name, message in cases.items():
        with pytest.raises(demo_module.DemoInputError) as error:
            demo_module.read_upload(tmp_path / name)
        assert str(error.value).startswith(f"'{name}' ") and message in str(error.value), error.value
        assert "\n" not in str(error.value)
    assert demo_module.read_upload(scene_file).size == (336, 240)


def test_segmenter_takes_any_image_mode_as_segment_does(model_folder, scene_file):
    """RGBA, grey and 16-bit uploads: the demo's map is segment's, and the overlay is drawn in RGB."""
    from hf_seg.visualize import overlay

    _, model, processor = model_folder
    segmenter = demo_module.Segmenter(cli.load_model(str(model_folder[0])))
    with Image.open(scene_file) as scene:
        scene.load()
    grey = scene.convert("L")
    for image in (scene.convert("RGBA"), grey, Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)):
        label_map = segmenter.run(image, "whole")
        np.testing.assert_array_equal(label_map, hf_seg.segment(model, processor, image, mode="whole")[0].numpy())
        picture = overlay(demo_module._rgb(image, processor), label_map, segmenter.palette)
        assert picture.mode == "RGB" and picture.size == image.size
    assert segmenter.describe("slide") == "slide (windows 128)"  # the processor's short side: no saved crop
    assert segmenter.describe("multi-scale + flip") == "whole, scales 0.75, 1, 1.25 + flip"  # the saved aug_test
    # a SETR preset's protocol: slide 512 / 341, and MS + flip with the short side at least the crop, as
    # `hf-seg evaluate --aug_test` runs it (hf_seg.training.trainer.evaluation_settings)
    segmenter.protocol = hf_seg.get_preset("setr-pup-vit-large-ade20k-512").inference
    assert segmenter.settings("slide") == {"mode": "slide", "crop_size": 512, "stride": 341}
    assert segmenter.settings("multi-scale + flip") == {
        "mode": "slide", "crop_size": 512, "stride": 341, "scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "flip": True,
        "min_short_side": 512}


# ------------------------------------------------------------------------------------------------------ in a browser


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(model_folder, scene_file):
    pytest.importorskip("gradio", reason='the demo extra is not installed (pip install "hf_seg[demo]")')
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = demo_module.build_demo(str(model_folder[0]), examples=[scene_file])
    port = _free_port()
    demo_module.launch(app, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    yield app, f"http://127.0.0.1:{port}"
    app.close()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """Headless Chromium, started in a thread so that it boots while the app is built and served."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            pytest.skip(f"{path} is missing: apt-get install -y chromium chromium-driver")
    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium's own usage statistics: off
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})  # requests only
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(webdriver.Chrome, options=options, service=service)
        yield started
        if started.exception() is None:
            started.result().quit()


@pytest.fixture(scope="module")
def browser(chromium, served):
    driver = chromium.result(timeout=120)
    driver.set_page_load_timeout(60)
    return driver


def _open(driver, url):
    if not driver.current_url.startswith(url):
        driver.get(url)


def _wait(driver, condition, what, timeout=60.0):
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition(driver)
        except WebDriverException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _upload(driver, path: Path):
    (file_input,) = _wait(driver, lambda d: _css(d, "#hf-seg-input input[type=file]"), "the image input")
    file_input.send_keys(str(path))


def _label_map_link(driver, previous=None):
    def link(d):
        anchors = [a.get_attribute("href") for a in _css(d, "#hf-seg-label-map a[href]")]
        anchors = [href for href in anchors if href and href.endswith(".png") and href != previous]
        return anchors[0] if anchors else None

    return _wait(driver, link, "the label-map download link")


def _fetch_png(url: str) -> np.ndarray:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never a proxy
    with opener.open(url, timeout=30) as response:
        return np.asarray(Image.open(BytesIO(response.read())))


def _legend(driver):
    rows = _css(driver, "#hf-seg-legend li[data-class-id]")
    return [(int(row.get_attribute("data-class-id")), row.find_element("css selector", ".name").text,
             float(row.get_attribute("data-share")), row.find_element("css selector", ".share").text)
            for row in rows]


def _network_urls(driver) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            urls.add(message["params"].get("request", {}).get("url") or message["params"].get("url"))
    return urls


def test_upload_shows_segments_label_map_legend_and_shares(browser, served, model_folder, scene_file, tmp_path):
    app, url = served
    _, model, processor = model_folder
    browser.get(url)
    _upload(browser, scene_file)
    href = _label_map_link(browser)

    # the model's saved protocol (whole) is the default mode, as for hf_seg.segment without a mode
    with Image.open(scene_file) as image:
        (expected,) = hf_seg.segment(model, processor, image)
    expected = expected.numpy()
    shown = _fetch_png(href)
    assert shown.shape == expected.shape == (240, 336)
    np.testing.assert_array_equal(shown, expected)
    present, counts = np.unique(expected, return_counts=True)
    assert len(present) >= 3  # a picture of several classes, not one colour everywhere

    legend = _wait(browser, _legend, "the legend")
    assert sorted(index for index, *_ in legend) == present.tolist()
    shares = dict(zip(present.tolist(), (counts / expected.size).tolist()))
    for index, name, share, share_text in legend:
        assert name == f"{CLASS_NAMES[index]}#{index}", (index, name)
        assert share == pytest.approx(shares[index], abs=1e-6)
        assert share_text == (f"{100 * shares[index]:.1f} %" if shares[index] >= 0.0005 else "<0.1 %")
    assert [share for _, _, share, _ in legend] == sorted((share for _, _, share, _ in legend), reverse=True)
    status = _css(browser, "#hf-seg-status")[0].text
    assert status.startswith("whole · 336 × 240 px"), status

    screenshot = tmp_path / "demo.png"
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # a viewport of the whole page, download included
                            {"width": 1360, "height": min(height, 2000), "deviceScaleFactor": 1, "mobile": False})
    assert browser.save_screenshot(str(screenshot))
    with Image.open(screenshot) as picture:
        assert picture.size[0] >= 1000
    if os.environ.get("HF_SEG_DEMO_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["HF_SEG_DEMO_SCREENSHOT"])

    # each mode re-runs the model; the new label map is segment's with that mode's settings: slide with windows of
    # the processor's short side (the protocol names none), the protocol's aug_test scales and flip
    modes = [
        ("slide", dict(mode="slide", crop_size=128), "slide (windows 128)"),
        ("multi-scale + flip", dict(mode="whole", scales=[0.75, 1.0, 1.25], flip=True),
         "whole, scales 0.75, 1, 1.25 + flip"),
    ]
    for mode, settings, described in modes:
        (option,) = [label for label in _css(browser, "#hf-seg-mode label") if label.text.strip() == mode]
        option.click()
        href = _label_map_link(browser, previous=href)
        with Image.open(scene_file) as image:
            (expected,) = hf_seg.segment(model, processor, image, **settings)
        np.testing.assert_array_equal(_fetch_png(href), expected.numpy())
        _wait(browser, lambda d: _css(d, "#hf-seg-status")[0].text.startswith(described + " · "),
              f"the status line of {mode}")
    expected = expected.numpy()
    assert [index for index, *_ in _legend(browser)] == sorted(
        np.unique(expected).tolist(), key=lambda i: (-(expected == i).sum(), i))

    # over the network (http, https, ws, wss: not Chromium's own chrome:// pages, data: or blob:) only to the app
    requests = {u for u in _network_urls(browser) if u.split(":", 1)[0] in ("http", "https", "ws", "wss")}
    assert any(u.startswith(url) for u in requests)  # the log did record the page's own requests
    outside = sorted(u for u in requests if not u.startswith((url + "/", url.replace("http://", "ws://") + "/")))
    assert outside == [], f"the page asked for addresses outside the app: {outside}"


def test_a_bad_upload_shows_a_clear_message(browser, served, tmp_path):
    _, url = served
    broken = tmp_path / "holiday_1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # a PNG signature and nothing that decodes
    _open(browser, url)  # the page as the previous test left it (a result shown), or a fresh one
    _upload(browser, broken)
    reason = "'holiday_1.png' cannot be read as an image (72 bytes that no image format recognises"
    toast = _wait(browser, lambda d: [t.text for t in _css(d, ".toast-body") if "holiday_1.png" in t.text],
                  "the warning")[0]
    assert reason in toast
    status = _wait(browser, lambda d: [t.text for t in _css(d, "#hf-seg-status") if t.text.startswith("Cannot")],
                   "the reason in the status line")[0]
    assert status.startswith("Cannot segment this upload: " + reason), status
    assert "Traceback" not in browser.page_source
    assert not _css(browser, "#hf-seg-legend li[data-class-id]")  # nothing stale is shown
    assert not _css(browser, "#hf-seg-label-map a[href]")
    assert browser.save_screenshot(str(tmp_path / "bad_upload.png"))


def test_written_space_app_builds(model_folder, scene_file, tmp_path, monkeypatch):
    pytest.importorskip("gradio", reason='the demo extra is not installed (pip install "hf_seg[demo]")')
    import gradio as gr

    space = tmp_path / "space"
    demo_module.write_space(str(model_folder[0]), space, examples=[scene_file])
    namespace = runpy.run_path(str(space / "app.py"), run_name="space_app")  # not __main__: built, not launched
    app = namespace["demo"]
    assert isinstance(app, gr.Blocks)
    segmenter = app.hf_seg_segmenter
    assert segmenter.names == CLASS_NAMES
    assert Path(segmenter.loaded.source.split("from folder ", 1)[1]) == space / "model"
    with Image.open(scene_file) as image:
        np.testing.assert_array_equal(segmenter.run(image, "whole"),
                                      hf_seg.segment(model_folder[1], model_folder[2], image)[0].numpy())
