#!/usr/bin/env python
# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Publish hf_seg's model zoo: for each entry of `hf_seg/convert/zoo.py` (or `--manifest FILE.json`) download the
released checkpoint (or take a local copy), check its checksum, convert it with hf_seg's converters, verify the
converted folder (logits on a fixed image against the source implementation where one is installed; the mIoU on a
local validation set with `--val-data`), write the model card with the measured figures and upload the folder to
`--org` on the Hub.

    python conversion/publish_zoo.py --list
    python conversion/publish_zoo.py --family segformer --only segformer-b0-ade20k-512-mmseg \\
        --output-dir zoo --org my-org [--dry-run] [--val-data ade20k=data/ade/ADEChallengeData2016] [--update-readme]
    python conversion/publish_zoo.py --only setr-pup-vit-large-ade20k-512 --source-dir downloads --output-dir zoo \\
        --org my-org --val-data ade20k=data/ade/ADEChallengeData2016

Rules: an existing output folder is never overwritten; a failed check (checksum, logits, mIoU) writes and pushes
nothing and prints one line naming the entry and the difference; an entry that nothing verified (no published
checksum, no reference implementation, no --val-data) is pushed only with --allow-unverified, and its card says so.
Downloads go to `<cache>/<file>.part` first (resumed with an HTTP Range request after an interruption) and are moved
into the cache only once their checksum matches. Exit status 1 if any selected entry failed. See conversion/README.md.
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
try:
    import hf_seg  # noqa: F401
except ImportError:  # run from a source checkout without installing hf_seg
    sys.path.insert(0, str(REPO))

from hf_seg.convert.io import load_state_dict, one_line  # noqa: E402
from hf_seg.convert.zoo import ZOO, check_entries, converter_family, dataset_key, load_manifest  # noqa: E402


README_BEGIN = ("<!-- zoo-table:begin (written by `python conversion/publish_zoo.py --update-readme` from "
                "hf_seg/convert/zoo.py and the results file; do not edit by hand) -->")
README_END = "<!-- zoo-table:end -->"
DEFAULT_RESULTS = REPO / "conversion" / "zoo_results.json"
FAMILY_TITLES = {"setr": "SETR", "segformer": "SegFormer / MiT", "mpvit": "MPViT"}
CLASSIFIER_FAMILIES = ("mit", "mpvit")
IMAGE_SEED = 0


class ZooError(Exception):
    """A failure of one entry, reported as one line."""


def log(entry, message: str) -> None:
    print(f"[{entry.name}] {message}", flush=True)


# --- obtaining the file ----------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_matches(entry, actual: str) -> bool | None:
    """True / False against the published checksum (a full sha256 or a prefix of it), None when none is published."""
    return None if entry.sha256 is None else actual.startswith(entry.sha256)


def download(url: str, partial: Path, timeout: float) -> None:
    """Download `url` into `partial`, resuming after the bytes already there (HTTP Range); a server that ignores the
    range sends the whole file, which then replaces them. An interrupted transfer leaves `partial` for the next run."""
    offset = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "hf_seg-publish-zoo"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing after `offset`: the partial file is already whole
            return
        raise ZooError(f"cannot download {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise ZooError(f"cannot download {url}: {one_line(getattr(error, 'reason', error))}") from error
    with response:
        resumed = bool(offset) and response.status == 206 and (
            response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"))
        length = response.headers.get("Content-Length")
        expected_size = int(length) + (offset if resumed else 0) if length is not None else None
        try:
            with open(partial, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except OSError as error:
            raise ZooError(f"download of {url} interrupted after {partial.stat().st_size} bytes "
                           f"({one_line(error)}); run again to resume from {partial}") from error
    size = partial.stat().st_size
    if expected_size is not None and size != expected_size:
        raise ZooError(f"download of {url} incomplete: {size} of {expected_size} bytes; run again to resume "
                       f"from {partial}")


def obtain(entry, cache_dir: Path, source_dir: Path | None, timeout: float) -> tuple[Path, str, str]:
    """The checked source file: a local copy in `source_dir` (under the entry's file name), or the cached or
    downloaded file. Returns `(path, origin, sha256)`, origin "local copy", "cached download" or "download"; a
    checksum mismatch is a `ZooError` (and a downloaded file is deleted)."""
    published = f"sha256 {entry.sha256} ({entry.checksum_source})" if entry.sha256 else None
    local = source_dir / entry.filename if source_dir is not None else None
    if local is not None and local.is_file():
        actual = sha256_of(local)
        if checksum_matches(entry, actual) is False:
            raise ZooError(f"checksum mismatch for the local copy {local}: its sha256 is {actual}, the source "
                           f"publishes {published}; it is not this release's file")
        return local, "local copy", actual
    if not entry.downloadable:
        where = f"not found in --source-dir {source_dir}" if source_dir is not None else "no --source-dir given"
        raise ZooError(f"{entry.url} is {entry.note or 'a page that a script cannot download'} ({where})")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / entry.filename
    if cached.is_file():
        actual = sha256_of(cached)
        if checksum_matches(entry, actual) is not False:
            return cached, "cached download", actual
        cached.unlink()  # changed on disk since it was checked: fetch it again
    partial = cached.with_name(cached.name + ".part")
    log(entry, f"downloading {entry.url}" + (f" (resuming after {partial.stat().st_size} bytes)"
                                             if partial.is_file() else ""))
    download(entry.url, partial, timeout)
    actual = sha256_of(partial)
    if checksum_matches(entry, actual) is False:
        partial.unlink()
        raise ZooError(f"checksum mismatch for the download of {entry.url}: sha256 {actual}, the source publishes "
                       f"{published}; the file was deleted")
    os.replace(partial, cached)
    return cached, "download", actual


# --- verification ----------------------------------------------------------------------------------------------------


def import_mmseg():
    """mmsegmentation 1.x with its models registered (through tests/mmseg_reference.py in a source checkout: it lets
    mmseg import on CPU with mmcv-lite). Raises ImportError when it is not installed."""
    tests = REPO / "tests"
    if (tests / "mmseg_reference.py").is_file():
        if str(tests) not in sys.path:
            sys.path.insert(0, str(tests))
        from mmseg_reference import import_mmseg as _import

        return _import()
    import mmseg
    import mmseg.models  # noqa: F401

    return mmseg


def _plain_batch_norm(value):
    """The config with SyncBN replaced by BN (one CPU process computes the same eval-mode function)."""
    if isinstance(value, dict):
        value = {key: _plain_batch_norm(item) for key, item in value.items()}
        if value.get("type") == "SyncBN":
            value["type"] = "BN"
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_batch_norm(item) for item in value)
    return value


def mmseg_reference(config: str, state_dict: dict):
    """The mmsegmentation model of `config` (a path, or relative to the installed mmseg's `.mim/configs`) holding
    `state_dict`, loaded as mmseg's own loader does (unexpected keys ignored, and listed); missing keys are an
    error. Returns `(model, config path, ignored keys, mmseg version)`."""
    mmseg = import_mmseg()
    from mmengine.config import Config
    from mmseg.registry import MODELS

    path = Path(config)
    if not path.is_file():
        path = Path(mmseg.__file__).parent / ".mim" / "configs" / config
    if not path.is_file():
        raise ZooError(f"mmsegmentation config {config} not found (nor under the installed mmseg's .mim/configs)")
    model_config = _plain_batch_norm(Config.fromfile(str(path)).model.to_dict())
    model_config["pretrained"] = None  # nothing is loaded from elsewhere: only the checkpoint's weights
    model_config.pop("data_preprocessor", None)  # the input is normalised here (`fixed_pixels`), as for hf_seg
    model_config.pop("init_cfg", None)
    model_config["backbone"].pop("init_cfg", None)
    if "backbone.patch_embed.projection.bias" in state_dict and model_config["backbone"]["type"] == "VisionTransformer":
        model_config["backbone"]["patch_bias"] = True  # mmseg 0.x-trained files carry it; 1.2.2 builds without
    model = MODELS.build(model_config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing:
        raise ZooError(f"the checkpoint does not fill mmsegmentation's {path.name}: missing {', '.join(missing[:8])}"
                       + (f" ... ({len(missing) - 8} more)" if len(missing) > 8 else ""))
    return model.eval(), path, list(unexpected), mmseg.__version__


def verification_size(preset) -> tuple[int, int]:
    """The fixed image's size: the preset's sliding-window crop, else its test resize's short side (classifiers:
    the 224 crop)."""
    crop = preset.inference.get("crop_size")
    if crop is None:
        size = preset.processor.get("size", {})
        crop = size.get("shortest_edge", 224) if preset.family not in CLASSIFIER_FAMILIES else 224
    return (crop, crop) if isinstance(crop, int) else tuple(crop)


def fixed_pixels(folder: Path, size: tuple[int, int]):
    """A seeded random RGB image of `size`, normalised with the folder's processor mean / std (no resize)."""
    import numpy as np
    import torch
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    image = np.random.RandomState(IMAGE_SEED).randint(0, 256, (*size, 3)).astype(np.float32)
    mean, std = np.asarray(processor.image_mean, np.float32), np.asarray(processor.image_std, np.float32)
    pixels = (image * float(processor.rescale_factor) - mean) / std
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


def no_reference_reason(entry) -> str:
    if entry.layout == "mmseg":
        return "no mmsegmentation config recorded for this entry"
    family = converter_family(entry)
    if family == "mpvit":
        return "no MPViT implementation can be installed (none is packaged)"
    return ("the authors' code (a fork of mmsegmentation 0.x on mmcv-full 1.x) cannot be installed beside "
            "mmsegmentation 1.x")


def check_logits(entry, checkpoint: Path, folder: Path, tolerance: float) -> dict:
    """Logits of the converted folder vs the source implementation on the fixed image, or why there is none."""
    if entry.layout != "mmseg" or entry.mmseg_config is None:
        return {"reference": None, "reason": no_reference_reason(entry)}
    try:
        import_mmseg()
    except ImportError as error:
        return {"reference": None, "reason": f"mmsegmentation is not installed ({one_line(error)})"}
    import torch
    from torch.nn import functional as F
    from transformers import AutoModelForSemanticSegmentation

    from hf_seg.presets import get_preset

    reference, config_path, ignored, version = mmseg_reference(entry.mmseg_config, load_state_dict(checkpoint))
    size = verification_size(get_preset(entry.preset))
    pixels = fixed_pixels(folder, size)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = reference.encode_decode(pixels, [dict(img_shape=size, pad_shape=size, ori_shape=size)])
        actual = model(pixel_values=pixels).logits
    if actual.shape[-2:] != expected.shape[-2:]:  # SegFormer: 1/4 of the input, resized as mmseg resizes its own
        actual = F.interpolate(actual, size=expected.shape[-2:], mode="bilinear", align_corners=False)
    if actual.shape != expected.shape:
        raise ZooError(f"logits of shape {tuple(actual.shape)} vs the reference's {tuple(expected.shape)}")
    difference = float((actual - expected).abs().max())
    agreement = float((actual.argmax(1) == expected.argmax(1)).float().mean())
    return {
        "reference": f"mmsegmentation {version} ({config_path.name})", "max_abs_diff": difference,
        "argmax_agreement": agreement, "logit_std": float(expected.std()), "image_size": list(size),
        "ignored_keys": ignored, "tolerance": tolerance, "ok": difference <= tolerance,
    }


def measure_miou(entry, folder: Path, val_dir: Path, split: str) -> dict:
    from hf_seg.training import evaluate_model

    metrics = evaluate_model(str(folder), str(val_dir), split=split)
    return {"measured": 100.0 * float(metrics["mean_iou"]), "num_examples": int(metrics["num_examples"]),
            "dataset": dataset_key(entry), "split": split, "reported": entry.reported_value("mIoU")}


# --- cards, records, the README table --------------------------------------------------------------------------------


def reported_text(entry) -> str:
    if not entry.reported:
        return f"not stated by the source ({entry.source})"
    figures = " / ".join(entry.reported.values())
    return f"{figures} ({' / '.join(entry.reported)}; {entry.source})"


def verification_markdown(entry, record: dict) -> str:
    lines = ["## Verification (hf_seg model zoo)", "",
             f"Measured by `conversion/publish_zoo.py` on {record['date']} with hf_seg {record['hf_seg_version']}:", ""]
    lines.append(f"- **Source file:** `{entry.filename}` from {entry.url} ({record['origin']}); "
                 f"sha256 `{record['sha256']}`")
    if record["checksum"] == "matched":
        lines.append(f"- **Checksum:** matches the published `{entry.sha256}` ({entry.checksum_source})")
    else:
        lines.append("- **Checksum:** none published by the source")
    logits = record["logits"]
    if logits.get("reference"):
        height, width = logits["image_size"]
        lines.append(f"- **Logits vs the source implementation:** max |Δlogit| {logits['max_abs_diff']:.2e} "
                     f"(logit std {logits['logit_std']:.2f}, argmax agreement {100 * logits['argmax_agreement']:.2f} "
                     f"%) on a fixed seeded {height}x{width} image, fp32, against {logits['reference']}")
    else:
        lines.append(f"- **Logits vs the source implementation:** not compared: {logits['reason']}")
    miou = record.get("miou")
    if miou:
        reported = (f"{entry.reported['mIoU']} reported" if miou["reported"] is not None
                    else "no single-scale figure reported")
        lines.append(f"- **mIoU (single scale, the preset's test protocol):** {miou['measured']:.2f} measured on "
                     f"{miou['num_examples']} images of {miou['dataset']} ({miou['split']}) vs {reported}")
    else:
        lines.append(f"- **mIoU:** not measured here ({record.get('miou_reason', 'no --val-data given')})")
    if record["verified"]:
        lines.append("- **Status:** verified (" + "; ".join(record["verified_by"]) + ")")
    else:
        checked = f" Checked: {'; '.join(record['verified_by'])}." if record["verified_by"] else ""
        lines.append("- **Status:** NOT verified: " + "; ".join(record["unverified"]) + "." + checked
                     + " The converters themselves are checked by hf_seg's test suite on random weights (the Parity "
                       "line above).")
    return "\n".join(lines) + "\n"


def load_results(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ZooError(f"results file {path} is not valid JSON ({one_line(error)})") from error


def save_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _source_cell(entry) -> str:
    host = entry.url.split("/")[2] if "://" in entry.url else entry.url
    kind = {"drive.google.com": "Google Drive", "dl.dropbox.com": "Dropbox",
            "download.openmmlab.com": "mmseg zoo"}.get(host, host)
    who = "mmseg 1.x" if entry.layout == "mmseg" else "authors"
    return f"{who}, [{kind}]({entry.url})"


def table_row(entry, record: dict | None) -> str:
    if entry.sha256 is None:
        checksum = "none published"
    else:
        shown = (f"sha256 `{entry.sha256[:8]}…`" if entry.checksum_kind == "sha256"
                 else f"sha256 prefix `{entry.sha256}`")
        checksum = shown + (" ✓" if record and record["checksum"] == "matched" else "")
    if record is None:
        logits = "—"
    elif record["logits"].get("reference"):
        logits = f"{record['logits']['max_abs_diff']:.1e}"
    else:
        logits = "no reference"
    metric = "top-1" if "top-1" in entry.reported else "mIoU"
    reported = entry.reported.get(metric, "—")
    measured = f"{record['miou']['measured']:.2f}" if record and record.get("miou") else "—"
    figure = f"{measured} / {reported}" if metric == "mIoU" else f"top-1 — / {reported}"
    if record and record.get("hub_id"):
        hub = f"[{record['hub_id']}](https://huggingface.co/{record['hub_id']})"
        hub += "" if record["verified"] else " (unverified)"
    elif record:
        hub = "not yet published (dry run)"
    else:
        hub = "not yet published"
    return f"| `{entry.name}` | `{entry.preset}` | {_source_cell(entry)} | {checksum} | {logits} | {figure} | {hub} |"


def render_table(entries, results: dict) -> str:
    blocks = []
    for family, title in FAMILY_TITLES.items():
        rows = [table_row(entry, results.get(entry.name)) for entry in entries if converter_family(entry) == family]
        if rows:
            blocks.append("\n".join([
                f"**{title}** ({len(rows)})", "",
                "| Model | Preset | Source | Checksum | max \\|Δlogit\\| | mIoU measured / reported | Hub |",
                "|---|---|---|---|---|---|---|", *rows]))
    published = sum(1 for entry in entries if (results.get(entry.name) or {}).get("hub_id"))
    summary = (f"{len(entries)} entries, {sum(entry.sha256 is not None for entry in entries)} with a published "
               f"checksum; {published} published.")
    return "\n\n".join([summary, *blocks])


def update_readme(readme: Path, entries, results: dict) -> None:
    text = readme.read_text(encoding="utf-8")
    if (text.count(README_BEGIN) != 1 or text.count(README_END) != 1
            or text.index(README_BEGIN) > text.index(README_END)):
        raise ZooError(f"{readme} has no single pair of zoo-table marker comments ({README_BEGIN} ... {README_END})")
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    readme.write_text(f"{head}{README_BEGIN}\n{render_table(entries, results)}\n{README_END}{tail}", encoding="utf-8")


# --- the pipeline ----------------------------------------------------------------------------------------------------


def publish_entry(entry, args) -> dict:
    """Download, check, convert, verify, write the folder and push one entry; returns its record (results file)."""
    from hf_seg import __version__ as hf_seg_version
    from hf_seg.convert.cards import model_card
    from hf_seg.convert.cli import convert
    from hf_seg.presets import get_preset

    output_dir = Path(args.output_dir)
    final = output_dir / entry.name
    if final.exists():
        raise ZooError(f"{final} exists; publish_zoo.py never overwrites a folder (remove it or choose another "
                       "--output-dir)")
    preset = get_preset(entry.preset)
    checkpoint, origin, actual = obtain(entry, Path(args.cache_dir), args.source_dir, args.timeout)
    matched = checksum_matches(entry, actual)
    log(entry, f"{origin} {checkpoint}: sha256 {actual}" + (f" matches the published {entry.sha256}" if matched else
                                               " (the source publishes no checksum)"))
    staging = output_dir / f".{entry.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    try:
        summary = convert(converter_family(entry), str(checkpoint), entry.preset, str(staging), source=entry.layout)
        log(entry, f"converted ({summary['layout']} layout): {', '.join(summary['files'])}")
        record = {
            "name": entry.name, "preset": entry.preset, "layout": entry.layout, "url": entry.url,
            "filename": entry.filename, "sha256": actual, "checksum": "matched" if matched else "none published",
            "origin": origin, "dry_run": args.dry_run,
            "date": datetime.date.today().isoformat(), "hf_seg_version": hf_seg_version, "hub_id": None,
        }
        record["logits"] = logits = check_logits(entry, checkpoint, staging, args.logits_tolerance)
        if logits.get("reference"):
            log(entry, f"logits vs {logits['reference']}: max |Δlogit| {logits['max_abs_diff']:.2e}, argmax agreement "
                       f"{100 * logits['argmax_agreement']:.2f} % on a {logits['image_size'][0]}x"
                       f"{logits['image_size'][1]} image")
        else:
            log(entry, f"logits not compared: {logits['reason']}")
        key = dataset_key(entry)
        record["miou"] = None
        if preset.family in CLASSIFIER_FAMILIES:
            record["miou_reason"] = "an ImageNet classifier: hf_seg does not measure top-1 accuracy"
        elif key in args.val_data:
            record["miou"] = miou = measure_miou(entry, staging, args.val_data[key], args.val_split)
            log(entry, f"mIoU {miou['measured']:.2f} on {miou['num_examples']} images of {key} vs "
                       f"{miou['reported'] if miou['reported'] is not None else 'no figure'} reported")
        else:
            record["miou_reason"] = f"no --val-data {key}=DIR given"

        failures = []
        if logits.get("ok") is False:
            failures.append(f"max |Δlogit| {logits['max_abs_diff']:.3e} exceeds {args.logits_tolerance:g} against "
                            f"{logits['reference']} (argmax agreement {100 * logits['argmax_agreement']:.2f} %)")
        miou = record["miou"]
        miou_ok = None
        if miou and miou["reported"] is not None:
            miou_ok = abs(miou["measured"] - miou["reported"]) <= args.miou_tolerance
            if not miou_ok:
                failures.append(f"mIoU {miou['measured']:.2f} measured vs {entry.reported['mIoU']} reported "
                                f"(|Δ| {abs(miou['measured'] - miou['reported']):.2f} > {args.miou_tolerance:g})")
        if failures:
            raise ZooError("verification failed, nothing written or pushed: " + "; ".join(failures))
        verified_by, unverified = [], []
        if matched:
            verified_by.append("checksum")
        if logits.get("ok"):
            verified_by.append(f"logits within {args.logits_tolerance:g} of the source implementation")
        if miou_ok:
            verified_by.append(f"mIoU within {args.miou_tolerance:g} of the reported figure")
        if not (matched or miou_ok):
            unverified.append("nothing checks that this is the released file (the source publishes no checksum and "
                              "no mIoU was measured against a reported figure)")
        if not (logits.get("ok") or miou_ok):
            unverified.append("nothing checks the conversion of these weights (logits not compared: "
                              f"{logits.get('reason')}; no mIoU measured against a reported figure)")
        record.update(verified=not unverified, verified_by=verified_by, unverified=unverified)
        if unverified and not args.allow_unverified and not args.dry_run:
            raise ZooError("not verified, nothing written or pushed: " + "; ".join(unverified) + ". Pass --val-data, "
                           "or --allow-unverified to publish it with a card that says so")

        hub_id = f"{args.org}/{entry.name}" if args.org else None
        config = json.loads((staging / "config.json").read_text(encoding="utf-8"))
        card = model_card(name=entry.name, preset=preset, layout=entry.layout, checkpoint=entry.filename,
                          model_class=config["architectures"][0], dropped=summary["dropped"],
                          repo_hint=hub_id or entry.name, reported=reported_text(entry),
                          zoo_verification=verification_markdown(entry, record))
        (staging / "README.md").write_text(card, encoding="utf-8")
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record["folder"] = str(final)
    if args.dry_run:
        log(entry, f"written to {final} (dry run: not pushed)" + ("" if record["verified"] else
                                                                   "; NOT verified: " + "; ".join(unverified)))
        return record
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(hub_id, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=hub_id, folder_path=str(final), repo_type="model",
                          commit_message=f"hf_seg model zoo: {entry.name} converted from {entry.filename}")
    except Exception as error:
        raise ZooError(f"upload to {hub_id} failed ({one_line(error)}); the written folder is {final}") from error
    record["hub_id"] = hub_id
    log(entry, f"pushed to https://huggingface.co/{hub_id}" + ("" if record["verified"] else " (unverified)"))
    return record


def parse_val_data(values: list[str], entries) -> dict:
    """`NAME=DIR` pairs (NAME: an entry's dataset key, e.g. ade20k); a bare DIR when the entries share one data set."""
    mapping = {}
    keys = sorted({dataset_key(entry) for entry in entries})
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            if len(keys) != 1:
                raise ZooError(f"--val-data {value}: the selected entries use the data sets {', '.join(keys)}; "
                               "write NAME=DIR")
            name, folder = keys[0], value
        if not Path(folder).is_dir():
            raise ZooError(f"--val-data {value}: {folder} is not a folder")
        mapping[name] = Path(folder)
    return mapping


def select(entries, only: list[str] | None, families: list[str] | None):
    from hf_seg.presets import did_you_mean

    names = {entry.name for entry in entries}
    for name in only or ():
        if name not in names:
            raise ZooError(f"unknown zoo entry {name!r} (--list shows them).{did_you_mean(name, names)}")
    return [entry for entry in entries if (not only or entry.name in only)
            and (not families or converter_family(entry) in families)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="publish_zoo.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the entries and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these entries only")
    parser.add_argument("--family", nargs="+", choices=sorted(FAMILY_TITLES), help="these families only")
    parser.add_argument("--manifest", type=Path, help="a JSON list of entries instead of hf_seg/convert/zoo.py")
    parser.add_argument("--output-dir", type=Path, help="where the model folders are written (one per entry)")
    parser.add_argument("--org", help="the Hub organisation (or user) the folders are pushed to: ORG/<entry>")
    parser.add_argument("--dry-run", action="store_true", help="write the folders, push nothing")
    parser.add_argument("--source-dir", type=Path, help="local copies, named as the entries' file names")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "hf_seg" / "zoo",
                        help="downloads (default ~/.cache/hf_seg/zoo)")
    parser.add_argument("--val-data", nargs="+", default=[], metavar="[NAME=]DIR",
                        help="validation sets, e.g. ade20k=DIR cityscapes=DIR (any layout hf-seg evaluate reads)")
    parser.add_argument("--val-split", default="validation", help="the split of --val-data (default validation)")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="also push entries that nothing verified (their cards say so)")
    parser.add_argument("--logits-tolerance", type=float, default=1e-4, help="max |Δlogit| (default 1e-4)")
    parser.add_argument("--miou-tolerance", type=float, default=0.5,
                        help="max |measured - reported| mIoU, in points (default 0.5)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a download fails")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="the record of measured figures the README table is made from (default "
                             "conversion/zoo_results.json)")
    parser.add_argument("--update-readme", nargs="?", const=REPO / "README.md", type=Path, metavar="README",
                        help="rewrite the zoo table between the marker comments (default the repository's README.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        entries = load_manifest(args.manifest) if args.manifest else check_entries(ZOO)
        selected = select(entries, args.only, args.family)
        if args.list:
            for entry in selected:
                checksum = f"sha256 {entry.sha256}" if entry.sha256 else "no checksum"
                where = "download" if entry.downloadable else "local copy (--source-dir)"
                print(f"{entry.name}  {entry.preset}  {entry.layout}  {checksum}  {where}  {entry.url}")
            return 0
        if args.output_dir is None and args.update_readme is None:
            raise ZooError("nothing to do: give --output-dir (and --org or --dry-run), --update-readme or --list")
        if args.output_dir is not None and not args.dry_run and not args.org:
            raise ZooError("--org is required to push (or pass --dry-run to write the folders only)")
        args.val_data = parse_val_data(args.val_data, selected)
        results = load_results(args.results)
    except (ZooError, ValueError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    failed = []
    if args.output_dir is not None:
        if not selected:
            print("error: no zoo entry selected", file=sys.stderr)
            return 1
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for entry in selected:
            try:
                results[entry.name] = publish_entry(entry, args)
            except Exception as error:  # one entry's failure never stops the others
                failed.append(entry.name)
                print(f"error: {entry.name}: {one_line(error)}", file=sys.stderr, flush=True)
            save_results(args.results, results)
        done = len(selected) - len(failed)
        print(f"{done} of {len(selected)} entries {'written' if args.dry_run else 'published'}"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    if args.update_readme is not None:
        try:
            update_readme(args.update_readme, entries, results)
        except (ZooError, OSError) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 1
        print(f"updated the zoo table of {args.update_readme}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
