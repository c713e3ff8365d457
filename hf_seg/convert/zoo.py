# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""The model zoo: every released checkpoint that an hf_seg preset can hold, with where it comes from, its checksum
and the figures its source reports. `conversion/publish_zoo.py` reads `ZOO` (or a JSON manifest of the same fields,
`load_manifest`) and downloads, converts, verifies, documents and uploads each entry.

Sources, read for these facts only:

* mmsegmentation 1.x model zoo (`configs/{setr,segformer}/metafile.yaml`, also shipped in the mmsegmentation 1.2.2
  wheel under `mmseg/.mim/configs`): direct download URLs. mmsegmentation's `tools/publish_model.py` ends every file
  name with the first 8 hex digits of the file's sha256, which is the checksum recorded here (`sha256` of 8 digits:
  a prefix). The reported mIoU / mIoU (ms+flip) are the metafile's.
* fudan-zvg/SETR `README.md`: one Google Drive page per checkpoint (the DeiT rows and the ADE20K MLA batch-16 row
  have empty links: nothing released). The reported figures are the README's.
* NVlabs/SegFormer `README.md`: one Google Drive folder (and a OneDrive mirror) of trained weights, one of the
  ImageNet-1k `mit_b*.pth` encoders; the README names neither the files nor a checksum, and has no table of figures
  (the ADE20K mIoU of B0 / B2 / B4 come from its results figure, `resources/image.png`).
* youngwanLEE/MPViT `README.md` and `semantic_segmentation/README.md`: direct Dropbox links, no checksums.

Google Drive and OneDrive pages cannot be downloaded by a script (`downloadable=False`): save the file as the entry's
`filename` in a folder and pass `--source-dir`. Entries without a published checksum (`sha256=None`) say so; the
script then relies on the logits and mIoU checks (see conversion/README.md, "Model zoo").
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path


LAYOUTS = ("original", "mmseg")


@dataclass(frozen=True)
class ZooEntry:
    """One released checkpoint -> one Hub repository named `name`.

    `sha256`: the published checksum, 64 hex digits or a prefix of at least 8 (mmsegmentation's file names carry
    8), None when the source publishes none. `downloadable`: False for Google Drive / OneDrive pages (give a local
    copy with `--source-dir`). `reported`: the source's figures, metric -> value as the source writes it (a decimal
    string: `"mIoU"`, single scale, which is what `--val-data` measures with the preset's test protocol;
    `"mIoU (ms+flip)"`; `"top-1"` for ImageNet).
    `mmseg_config`: the mmsegmentation 1.x config that computes this checkpoint (relative to the installed
    mmsegmentation's `.mim/configs`, or a path), for the logits check; None when no installable implementation of
    the source exists. `dataset`: the key of `--val-data NAME=DIR` (default: the preset's label set)."""

    name: str
    preset: str
    layout: str
    url: str
    filename: str
    sha256: str | None
    downloadable: bool
    source: str
    reported: dict = field(default_factory=dict)
    checksum_source: str | None = None
    mmseg_config: str | None = None
    dataset: str | None = None
    note: str = ""

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"zoo entry {self.name!r}: layout {self.layout!r} is not one of {LAYOUTS}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{8,64}", self.sha256):
            raise ValueError(f"zoo entry {self.name!r}: sha256 {self.sha256!r} is not 8 to 64 lower-case hex digits")
        if self.sha256 is not None and self.checksum_source is None:
            raise ValueError(f"zoo entry {self.name!r}: a checksum needs its checksum_source")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) or len(self.name) > 96:
            raise ValueError(f"zoo entry {self.name!r}: not a valid Hub repository name")
        for metric, value in self.reported.items():
            if not isinstance(value, str) or not re.fullmatch(r"\d+(\.\d+)?", value):
                raise ValueError(f"zoo entry {self.name!r}: reported {metric} {value!r} is not a decimal string")
        if Path(self.filename).name != self.filename or not self.filename:
            raise ValueError(f"zoo entry {self.name!r}: filename {self.filename!r} must be a bare file name")

    def reported_value(self, metric: str) -> float | None:
        value = self.reported.get(metric)
        return None if value is None else float(value)

    @property
    def checksum_kind(self) -> str:
        if self.sha256 is None:
            return "none"
        return "sha256" if len(self.sha256) == 64 else "sha256-prefix"


# --- mmsegmentation 1.x model zoo ------------------------------------------------------------------------------------

_OPENMMLAB = "https://download.openmmlab.com/mmsegmentation/v0.5"
_MMSEG_CHECKSUM = "mmsegmentation file name: the first 8 hex digits of the file's sha256 (tools/publish_model.py)"


def _mmseg(name: str, preset: str, folder: str, filename: str, config: str, miou: str, miou_ms: str) -> ZooEntry:
    """An mmsegmentation zoo file `{folder}/{run}/{filename}`, where `run` is the file name without its
    `_YYYYMMDD_HHMMSS-sha256[:8].pth` tail (the layout of every metafile `Weights` URL)."""
    match = re.fullmatch(r"(?P<run>.+)_\d{8}_\d{6}-(?P<sha>[0-9a-f]{8})\.pth", filename)
    if match is None:
        raise ValueError(f"{filename!r} is not an mmsegmentation zoo file name")
    return ZooEntry(
        name=name, preset=preset, layout="mmseg", url=f"{_OPENMMLAB}/{folder}/{match['run']}/{filename}",
        filename=filename, sha256=match["sha"], checksum_source=_MMSEG_CHECKSUM, downloadable=True,
        source=f"open-mmlab/mmsegmentation configs/{folder}/metafile.yaml ({Path(config).stem})",
        reported={"mIoU": miou, "mIoU (ms+flip)": miou_ms}, mmseg_config=f"{folder}/{config}",
    )


_MMSEG_SETR = [
    _mmseg("setr-naive-vit-large-ade20k-512-mmseg", "setr-naive-vit-large-ade20k-512", "setr",
           "setr_naive_512x512_160k_b16_ade20k_20210619_191258-061f24f5.pth",
           "setr_vit-l_naive_8xb2-160k_ade20k-512x512.py", "48.28", "49.56"),
    _mmseg("setr-pup-vit-large-ade20k-512-mmseg", "setr-pup-vit-large-ade20k-512", "setr",
           "setr_pup_512x512_160k_b16_ade20k_20210619_191343-7e0ce826.pth",
           "setr_vit-l_pup_8xb2-160k_ade20k-512x512.py", "48.24", "49.99"),
    _mmseg("setr-mla-vit-large-ade20k-512-mmseg", "setr-mla-vit-large-ade20k-512", "setr",
           "setr_mla_512x512_160k_b8_ade20k_20210619_191118-c6d21df0.pth",
           "setr_vit-l-mla_8xb1-160k_ade20k-512x512.py", "47.34", "49.05"),
    _mmseg("setr-mla-vit-large-ade20k-512-mmseg-bs16", "setr-mla-vit-large-ade20k-512", "setr",
           "setr_mla_512x512_160k_b16_ade20k_20210619_191057-f9741de7.pth",
           "setr_vit-l_mla_8xb2-160k_ade20k-512x512.py", "47.39", "49.37"),
    _mmseg("setr-naive-vit-large-cityscapes-768-mmseg", "setr-naive-vit-large-cityscapes-768", "setr",
           "setr_naive_vit-large_8x1_768x768_80k_cityscapes_20211123_000505-20728e80.pth",
           "setr_vit-l_naive_8xb1-80k_cityscapes-768x768.py", "78.10", "80.22"),
    _mmseg("setr-pup-vit-large-cityscapes-768-mmseg", "setr-pup-vit-large-cityscapes-768", "setr",
           "setr_pup_vit-large_8x1_768x768_80k_cityscapes_20211122_155115-f6f37b8f.pth",
           "setr_vit-l_pup_8xb1-80k_cityscapes-768x768.py", "79.21", "81.02"),
    _mmseg("setr-mla-vit-large-cityscapes-768-mmseg", "setr-mla-vit-large-cityscapes-768", "setr",
           "setr_mla_vit-large_8x1_768x768_80k_cityscapes_20211119_101003-7f8dccbe.pth",
           "setr_vit-l_mla_8xb1-80k_cityscapes-768x768.py", "77.00", "79.59"),
]

_MMSEG_SEGFORMER = [
    _mmseg(f"segformer-{size}-ade20k-{crop}-mmseg", f"segformer-{size}-ade20k-{crop}", "segformer", filename,
           f"segformer_mit-{size}_8xb2-160k_ade20k-{crop}x{crop}.py", miou, miou_ms)
    for size, crop, filename, miou, miou_ms in (
        ("b0", 512, "segformer_mit-b0_512x512_160k_ade20k_20210726_101530-8ffa8fda.pth", "37.41", "38.34"),
        ("b1", 512, "segformer_mit-b1_512x512_160k_ade20k_20210726_112106-d70e859d.pth", "40.97", "42.54"),
        ("b2", 512, "segformer_mit-b2_512x512_160k_ade20k_20210726_112103-cbd414ac.pth", "45.58", "47.03"),
        ("b3", 512, "segformer_mit-b3_512x512_160k_ade20k_20210726_081410-962b98d2.pth", "47.82", "48.81"),
        ("b4", 512, "segformer_mit-b4_512x512_160k_ade20k_20210728_183055-7f509d7d.pth", "48.46", "49.76"),
        ("b5", 512, "segformer_mit-b5_512x512_160k_ade20k_20210726_145235-94cedf59.pth", "49.13", "50.22"),
        ("b5", 640, "segformer_mit-b5_640x640_160k_ade20k_20210801_121243-41d2845b.pth", "49.62", "50.36"),
    )
] + [
    _mmseg(f"segformer-{size}-cityscapes-1024-mmseg", f"segformer-{size}-cityscapes-1024", "segformer", filename,
           f"segformer_mit-{size}_8xb1-160k_cityscapes-1024x1024.py", miou, miou_ms)
    for size, filename, miou, miou_ms in (
        ("b0", "segformer_mit-b0_8x1_1024x1024_160k_cityscapes_20211208_101857-e7f88502.pth", "76.54", "78.22"),
        ("b1", "segformer_mit-b1_8x1_1024x1024_160k_cityscapes_20211208_064213-655c7b3f.pth", "78.56", "79.73"),
        ("b2", "segformer_mit-b2_8x1_1024x1024_160k_cityscapes_20211207_134205-6096669a.pth", "81.08", "82.18"),
        ("b3", "segformer_mit-b3_8x1_1024x1024_160k_cityscapes_20211206_224823-a8f8a177.pth", "81.94", "83.14"),
        ("b4", "segformer_mit-b4_8x1_1024x1024_160k_cityscapes_20211207_080709-07f6c333.pth", "81.89", "83.38"),
        ("b5", "segformer_mit-b5_8x1_1024x1024_160k_cityscapes_20211206_072934-87a052ec.pth", "82.25", "83.48"),
    )
]


# --- fudan-zvg/SETR (Google Drive, one page per file) ----------------------------------------------------------------

_DRIVE_NOTE = ("a Google Drive page, which a script cannot download: open it in a browser and save the file as "
               "{filename} in the folder given to --source-dir")


def _setr(name: str, preset: str, drive_id: str, config: str, table: str, row: str, miou: str,
          miou_ms: str | None = None) -> ZooEntry:
    reported = {"mIoU": miou} if miou_ms is None else {"mIoU": miou, "mIoU (ms+flip)": miou_ms}
    filename = f"{config}.pth"  # the name --source-dir looks for (the README does not name the Drive file)
    return ZooEntry(
        name=name, preset=preset, layout="original", url=f"https://drive.google.com/file/d/{drive_id}/view",
        filename=filename, sha256=None, downloadable=False,
        source=f"fudan-zvg/SETR README.md ({table} table, {row}; config configs/SETR/{config}.py)",
        reported=reported, note=_DRIVE_NOTE.format(filename=filename),
    )


_AUTHORS_SETR = [
    _setr("setr-naive-vit-large-cityscapes-768-40k", "setr-naive-vit-large-cityscapes-768",
          "1f3b7I7IwKx-hcr16afjcxkAyXyeNQCAz", "SETR_Naive_768x768_40k_cityscapes_bs_8", "Cityscapes",
          "SETR-Naive 40k", "77.37"),
    _setr("setr-naive-vit-large-cityscapes-768", "setr-naive-vit-large-cityscapes-768",
          "1dplB4wceJhyVRQfZR5AWODywMN90CY0h", "SETR_Naive_768x768_80k_cityscapes_bs_8", "Cityscapes",
          "SETR-Naive 80k", "77.90"),
    _setr("setr-mla-vit-large-cityscapes-768-40k", "setr-mla-vit-large-cityscapes-768",
          "18k26X-xM7BEQZUjzkvroeGV-6XwPgBqN", "SETR_MLA_768x768_40k_cityscapes_bs_8", "Cityscapes",
          "SETR-MLA 40k", "76.65"),
    _setr("setr-mla-vit-large-cityscapes-768", "setr-mla-vit-large-cityscapes-768",
          "1ke6wcsCwP_J-p8sYriCZ3pC8G61bE0v_", "SETR_MLA_768x768_80k_cityscapes_bs_8", "Cityscapes",
          "SETR-MLA 80k", "77.24"),
    _setr("setr-pup-vit-large-cityscapes-768-40k", "setr-pup-vit-large-cityscapes-768",
          "1DcZltdh6eHwmQ5BvCdHudJRgJUjPzS56", "SETR_PUP_768x768_40k_cityscapes_bs_8", "Cityscapes",
          "SETR-PUP 40k", "78.39"),
    _setr("setr-pup-vit-large-cityscapes-768", "setr-pup-vit-large-cityscapes-768",
          "1469aYtEAuhT39BrHn0yOv1s71unF85JE", "SETR_PUP_768x768_80k_cityscapes_bs_8", "Cityscapes",
          "SETR-PUP 80k", "79.34"),
    _setr("setr-naive-vit-base-cityscapes-768-40k", "setr-naive-vit-base-cityscapes-768",
          "1kGzdSLCazsbgZe0Y1Lo6sNwv9s5V3CAp", "SETR_Naive_Base_768x768_40k_cityscapes_bs_8", "Cityscapes",
          "SETR-Naive-Base 40k", "75.54"),
    _setr("setr-naive-vit-base-cityscapes-768", "setr-naive-vit-base-cityscapes-768",
          "1vOD1-PGNfuM9IUvwnm2CrAXsPkadoyW8", "SETR_Naive_Base_768x768_80k_cityscapes_bs_8", "Cityscapes",
          "SETR-Naive-Base 80k", "76.25"),
    _setr("setr-naive-vit-large-ade20k-512", "setr-naive-vit-large-ade20k-512",
          "17ZlPBcJRKO3c3XoAeNutrExIETu23qKY", "SETR_Naive_512x512_160k_ade20k_bs_16", "ADE20K",
          "SETR-Naive", "48.06", "48.80"),
    _setr("setr-mla-vit-large-ade20k-512", "setr-mla-vit-large-ade20k-512",
          "1Zcaut5LAKYibjyeCcD3m-aG-ETWW6uhA", "SETR_MLA_512x512_160k_ade20k_bs_8", "ADE20K",
          "SETR-MLA batch 8", "47.79", "50.03"),
    _setr("setr-pup-vit-large-ade20k-512", "setr-pup-vit-large-ade20k-512",
          "1hCeiz60ITgVPkWsrKwah8JnwM3G8VVL4", "SETR_PUP_512x512_160k_ade20k_bs_16", "ADE20K",
          "SETR-PUP", "48.62", "50.09"),
    _setr("setr-naive-vit-large-pascal-context-480", "setr-naive-vit-large-pascal-context-480",
          "140T7-wQ3UOzHA0-6pjO3lik_5Vi5RvqJ", "SETR_Naive_480x480_80k_pascal_context_bs_16", "Pascal Context",
          "SETR-Naive", "52.89", "53.61"),
    _setr("setr-mla-vit-large-pascal-context-480", "setr-mla-vit-large-pascal-context-480",
          "1XvhUVIMcdcEYUYKudUcV99vOwhisYh61", "SETR_MLA_480x480_80k_pascal_context_bs_8", "Pascal Context",
          "SETR-MLA batch 8", "54.39", "55.39"),
    _setr("setr-mla-vit-large-pascal-context-480-bs16", "setr-mla-vit-large-pascal-context-480",
          "1k5CwpKfpNUdAFWOuzwWz9PrRwiGS0Xu9", "SETR_MLA_480x480_80k_pascal_context_bs_16", "Pascal Context",
          "SETR-MLA batch 16", "55.01", "55.83"),
    _setr("setr-pup-vit-large-pascal-context-480", "setr-pup-vit-large-pascal-context-480",
          "1kXZYyqjA96d2DTL-tRvQjixfDBIZFIyR", "SETR_PUP_480x480_80k_pascal_context_bs_16", "Pascal Context",
          "SETR-PUP", "54.37", "55.27"),
]


# --- NVlabs/SegFormer (Google Drive / OneDrive folders) --------------------------------------------------------------

_SEGFORMER_TRAINED = "https://drive.google.com/drive/folders/1GAku0G0iR9DsBxCbfENWMJ27c5lYUeQA"
_SEGFORMER_TRAINED_ONEDRIVE = ("https://connecthkuhk-my.sharepoint.com/:f:/g/personal/xieenze_connect_hku_hk/"
                               "Ept_oetyUGFCsZTKiL_90kUBy5jmPV65O5rJInsnRCDWJQ?e=CvGohw")
_SEGFORMER_IMAGENET = "https://drive.google.com/drive/folders/1b7bwrInTW4VLEm27YawHOAMSMikga2Ia"
_SEGFORMER_IMAGENET_ONEDRIVE = ("https://connecthkuhk-my.sharepoint.com/:f:/g/personal/xieenze_connect_hku_hk/"
                                "EvOn3l1WyM5JpnMQFSEO5b8B7vrHw9kDaJGII-3N9KNhrg?e=cpydzZ")
_FOLDER_NOTE = ("a Google Drive folder (mirror: {mirror}), which a script cannot download; the README names neither "
                "its files nor a checksum: save this model's file as {filename} in the folder given to --source-dir")
# ADE20K single-scale mIoU of the authors' results figure (resources/image.png); the README has no table.
_SEGFORMER_FIGURE = {("b0", "ade20k-512"): "37.4", ("b2", "ade20k-512"): "46.5", ("b4", "ade20k-512"): "50.3"}


def _segformer(size: str, dataset: str, config: str) -> ZooEntry:
    filename = f"{config}.pth"  # local_configs/segformer/B*/{config}.py
    miou = _SEGFORMER_FIGURE.get((size, dataset))
    return ZooEntry(
        name=f"segformer-{size}-{dataset}", preset=f"segformer-{size}-{dataset}", layout="original",
        url=_SEGFORMER_TRAINED, filename=filename, sha256=None, downloadable=False,
        source=f"NVlabs/SegFormer README.md (trained weights; config "
               f"local_configs/segformer/{size.upper()}/{config}.py)"
               + ("; mIoU from the README's results figure" if miou is not None else ""),
        reported={"mIoU": miou} if miou is not None else {},
        note=_FOLDER_NOTE.format(mirror=_SEGFORMER_TRAINED_ONEDRIVE, filename=filename),
    )


def _mit(size: str) -> ZooEntry:
    filename = f"mit_{size}.pth"  # the name the authors' configs load (`pretrained='pretrained/mit_b0.pth'`)
    return ZooEntry(
        name=f"mit-{size}", preset=f"mit-{size}", layout="original", url=_SEGFORMER_IMAGENET, filename=filename,
        sha256=None, downloadable=False, source="NVlabs/SegFormer README.md (ImageNet-1K weights)",
        dataset="imagenet-1k", note=_FOLDER_NOTE.format(mirror=_SEGFORMER_IMAGENET_ONEDRIVE, filename=filename),
    )


_AUTHORS_SEGFORMER = [
    _segformer("b0", "ade20k-512", "segformer.b0.512x512.ade.160k"),
    _segformer("b0", "cityscapes-1024", "segformer.b0.1024x1024.city.160k"),
    _segformer("b0", "cityscapes-768", "segformer.b0.768x768.city.160k"),
    _segformer("b0", "cityscapes-512x1024", "segformer.b0.512x1024.city.160k"),
    _segformer("b0", "cityscapes-640x1280", "segformer.b0.640x1280.city.160k"),
    *(_segformer(size, "ade20k-512", f"segformer.{size}.512x512.ade.160k") for size in ("b1", "b2", "b3", "b4")),
    _segformer("b5", "ade20k-640", "segformer.b5.640x640.ade.160k"),  # the authors' B5 ADE20K config is 640 only
    *(_segformer(size, "cityscapes-1024", f"segformer.{size}.1024x1024.city.160k")
      for size in ("b1", "b2", "b3", "b4", "b5")),
    *(_mit(size) for size in ("b0", "b1", "b2", "b3", "b4", "b5")),
]


# --- youngwanLEE/MPViT (Dropbox: direct links, no checksum) ----------------------------------------------------------


def _mpvit(name: str, url: str, source: str, reported: dict, dataset: str | None = None) -> ZooEntry:
    return ZooEntry(name=name, preset=name, layout="original", url=url, filename=url.rsplit("/", 1)[-1], sha256=None,
                    downloadable=True, source=source, reported=reported, dataset=dataset)


_AUTHORS_MPVIT = [
    _mpvit("mpvit-tiny", "https://dl.dropbox.com/s/1cmquqyjmaeeg1n/mpvit_tiny.pth",
           "youngwanLEE/MPViT README.md (ImageNet-1K table)", {"top-1": "78.2"}, "imagenet-1k"),
    _mpvit("mpvit-xsmall", "https://dl.dropbox.com/s/vvpq2m474g8tvyq/mpvit_xsmall.pth",
           "youngwanLEE/MPViT README.md (ImageNet-1K table)", {"top-1": "80.9"}, "imagenet-1k"),
    _mpvit("mpvit-small", "https://dl.dropbox.com/s/y3dnmmy8h4npz7a/mpvit_small.pth",
           "youngwanLEE/MPViT README.md (ImageNet-1K table)", {"top-1": "83.0"}, "imagenet-1k"),
    _mpvit("mpvit-base", "https://dl.dropbox.com/s/la8w31m0apj2830/mpvit_base.pth",
           "youngwanLEE/MPViT README.md (ImageNet-1K table)", {"top-1": "84.3"}, "imagenet-1k"),
    # semantic_segmentation/README.md: 48.3 / 50.3 in the table, 48.25 / 50.26 in its evaluation logs
    _mpvit("upernet-mpvit-small-ade20k-512", "https://dl.dropbox.com/s/5opqzboalok7lme/upernet_mpvit_small.pth",
           "youngwanLEE/MPViT semantic_segmentation/README.md (the evaluation log printed there)", {"mIoU": "48.25"}),
    _mpvit("upernet-mpvit-base-ade20k-512", "https://dl.dropbox.com/s/shr88fojdcqvhpr/upernet_mpvit_base.pth",
           "youngwanLEE/MPViT semantic_segmentation/README.md (the evaluation log printed there)", {"mIoU": "50.26"}),
]


#: every entry, in the order of the README's table
ZOO: tuple[ZooEntry, ...] = (*_AUTHORS_SETR, *_MMSEG_SETR, *_AUTHORS_SEGFORMER, *_MMSEG_SEGFORMER, *_AUTHORS_MPVIT)


def check_entries(entries) -> tuple[ZooEntry, ...]:
    """Unique names, and presets hf_seg knows; returns the entries as a tuple."""
    from ..presets import PRESETS, did_you_mean

    entries = tuple(entries)
    seen = set()
    for entry in entries:
        if entry.name in seen:
            raise ValueError(f"zoo entry name {entry.name!r} appears twice")
        seen.add(entry.name)
        if entry.preset not in PRESETS:
            raise ValueError(f"zoo entry {entry.name!r}: unknown preset {entry.preset!r}."
                             + did_you_mean(entry.preset, PRESETS))
    return entries


def load_manifest(path) -> tuple[ZooEntry, ...]:
    """A JSON list of entries with `ZooEntry`'s fields (unknown or missing fields are an error naming them)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"manifest {path}: {error}") from error
    if not isinstance(records, list):
        raise ValueError(f"manifest {path}: expected a JSON list of entries, got {type(records).__name__}")
    fields = {item.name: item for item in dataclasses.fields(ZooEntry)}
    required = {name for name, item in fields.items()
                if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING}
    entries = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"manifest {path}: entry {index} is not an object")
        unknown, missing = sorted(set(record) - set(fields)), sorted(required - set(record))
        if unknown or missing:
            raise ValueError(f"manifest {path}: entry {index} ({record.get('name', '?')}): "
                             + "; ".join(f"{what} fields {', '.join(names)}" for what, names
                                         in (("unknown", unknown), ("missing", missing)) if names))
        entries.append(ZooEntry(**record))
    return check_entries(entries)


def converter_family(entry: ZooEntry) -> str:
    """The `hf_seg.convert.cli.CONVERTERS` key of the entry's preset ("setr", "segformer", "mpvit")."""
    from ..presets import get_preset
    from .cli import CONVERTERS

    family = get_preset(entry.preset).family
    return next(name for name, converter in CONVERTERS.items() if family in converter.preset_families)


def dataset_key(entry: ZooEntry) -> str:
    """The `--val-data NAME=DIR` key of the entry: its `dataset`, else its preset's label set."""
    from ..presets import get_preset

    return entry.dataset or get_preset(entry.preset).label_set or "imagenet-1k"


__all__ = ["LAYOUTS", "ZOO", "ZooEntry", "check_entries", "converter_family", "dataset_key", "load_manifest"]
