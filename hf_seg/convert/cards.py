# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Model cards of converted checkpoints: source, paper, licenses, dataset, reported mIoU and measured parity.

The numbers are the sources' own (MODELS.md §2.1, §2.8, §3.5); the parity figures are the largest absolute logit
differences measured by hf_seg's conversion tests against the reference implementations (random weights, fp32,
square and non-square inputs)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceInfo:
    repository: str
    code_license: str
    weights_license: str


PAPERS = {
    "setr": ("Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with Transformers "
             "(Zheng et al., CVPR 2021)", "https://arxiv.org/abs/2012.15840"),
    "segformer": ("SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers "
                  "(Xie et al., NeurIPS 2021)", "https://arxiv.org/abs/2105.15203"),
}
PAPERS["mit"] = PAPERS["segformer"]
PAPERS["mpvit"] = ("MPViT: Multi-Path Vision Transformer for Dense Prediction (Lee et al., CVPR 2022)",
                   "https://arxiv.org/abs/2112.11010")
PAPERS["upernet"] = PAPERS["mpvit"]  # the upernet-mpvit-* presets

_NVIDIA = "NVIDIA Source Code License for SegFormer (non-commercial use only)"
SOURCES = {
    ("setr", "original"): SourceInfo("https://github.com/fudan-zvg/SETR", "MIT", "MIT (the authors' release)"),
    ("setr", "mmseg"): SourceInfo("https://github.com/open-mmlab/mmsegmentation", "Apache-2.0 (mmsegmentation); "
                                  "SETR itself is MIT", "Apache-2.0 (mmsegmentation model zoo)"),
    ("segformer", "original"): SourceInfo("https://github.com/NVlabs/SegFormer", _NVIDIA, _NVIDIA),
    ("segformer", "mmseg"): SourceInfo("https://github.com/open-mmlab/mmsegmentation",
                                       f"Apache-2.0 (mmsegmentation); the SegFormer design: {_NVIDIA}", _NVIDIA),
}
SOURCES[("mit", "original")] = SOURCES[("segformer", "original")]
_MPVIT_LICENSE = "GPL-3.0, or ETRI's commercial license (dual license, the repository's LICENSE.md)"
SOURCES[("mpvit", "original")] = SourceInfo("https://github.com/youngwanLEE/MPViT", _MPVIT_LICENSE, _MPVIT_LICENSE)
SOURCES[("upernet", "original")] = SOURCES[("mpvit", "original")]

# Preset families whose models are ImageNet classifiers.
CLASSIFIER_FAMILIES = ("mit", "mpvit")
# Hub license identifiers of the model cards, per family (SETR: per source layout).
LICENSE_IDS = {"segformer": "other", "mit": "other", "mpvit": "gpl-3.0", "upernet": "gpl-3.0"}

DATASETS = {
    "ade20k": "ADE20K (SceneParsing, 150 classes, reduce_labels)",
    "cityscapes": "Cityscapes (19 train ids)",
    "pascal_context_60": "Pascal Context (60 classes including background)",
    None: "ImageNet-1k",
}

# (preset, source layout) -> reported mIoU, as the source states it (single scale / multi-scale + flip).
REPORTED = {
    ("setr-naive-vit-large-ade20k-512", "original"): "48.06 / 48.80 (README)",
    ("setr-pup-vit-large-ade20k-512", "original"): "48.62 / 50.09 (README)",
    ("setr-mla-vit-large-ade20k-512", "original"): "47.79 / 50.03 (batch 8), 48.64 / 50.28 (batch 16) (README)",
    ("setr-naive-vit-large-cityscapes-768", "original"): "77.37 (40k iterations), 77.90 (80k) (README)",
    ("setr-pup-vit-large-cityscapes-768", "original"): "78.39 (40k), 79.34 (80k) (README)",
    ("setr-mla-vit-large-cityscapes-768", "original"): "76.65 (40k), 77.24 (80k) (README)",
    ("setr-naive-vit-large-pascal-context-480", "original"): "52.89 / 53.61 (README)",
    ("setr-pup-vit-large-pascal-context-480", "original"): "54.37 / 55.27 (README)",
    ("setr-mla-vit-large-pascal-context-480", "original"): "54.39 / 55.39 (batch 8), 55.01 / 55.83 (batch 16) (README)",
    ("setr-naive-vit-base-cityscapes-768", "original"): "75.54 (40k), 76.25 (80k) (README)",
    ("setr-naive-deit-base-cityscapes-768", "original"): "77.85 (40k), 78.66 (80k) (README)",
    ("setr-pup-deit-base-cityscapes-768", "original"): "78.79 (40k), 79.45 (80k) (README)",
    ("setr-mla-deit-base-cityscapes-768", "original"): "78.04 (40k), 78.98 (80k) (README)",
    ("setr-pup-deit-base-ade20k-512", "original"): "46.34 / 47.30 (README)",
    ("setr-mla-deit-base-ade20k-512", "original"): "46.15 / 47.71 (README)",
    ("setr-pup-deit-base-pascal-context-480", "original"): "52.00 / 52.50 (README)",
    ("setr-mla-deit-base-pascal-context-480", "original"): "52.91 / 53.74 (README)",
    ("setr-naive-vit-large-ade20k-512", "mmseg"): "48.28 / 49.56 (metafile)",
    ("setr-pup-vit-large-ade20k-512", "mmseg"): "48.24 / 49.99 (metafile)",
    ("setr-mla-vit-large-ade20k-512", "mmseg"): "47.34 / 49.05 (batch 8), 47.39 / 49.37 (batch 16) (metafile)",
    ("setr-naive-vit-large-cityscapes-768", "mmseg"): "78.10 / 80.22 (metafile)",
    ("setr-pup-vit-large-cityscapes-768", "mmseg"): "79.21 / 81.02 (metafile)",
    ("setr-mla-vit-large-cityscapes-768", "mmseg"): "77.00 / 79.59 (metafile)",
    ("segformer-b0-ade20k-512", "original"): "37.4 (single scale, the authors' results figure)",
    ("segformer-b2-ade20k-512", "original"): "46.5 (single scale, the authors' results figure)",
    ("segformer-b4-ade20k-512", "original"): "50.3 (single scale, the authors' results figure)",
    ("segformer-b0-ade20k-512", "mmseg"): "37.41 / 38.34 (metafile)",
    ("segformer-b1-ade20k-512", "mmseg"): "40.97 / 42.54 (metafile)",
    ("segformer-b2-ade20k-512", "mmseg"): "45.58 / 47.03 (metafile)",
    ("segformer-b3-ade20k-512", "mmseg"): "47.82 / 48.81 (metafile)",
    ("segformer-b4-ade20k-512", "mmseg"): "48.46 / 49.76 (metafile)",
    ("segformer-b5-ade20k-512", "mmseg"): "49.13 / 50.22 (metafile)",
    ("segformer-b5-ade20k-640", "mmseg"): "49.62 / 50.36 (metafile)",
    ("segformer-b0-cityscapes-1024", "mmseg"): "76.54 / 78.22 (metafile)",
    ("segformer-b1-cityscapes-1024", "mmseg"): "78.56 / 79.73 (metafile)",
    ("segformer-b2-cityscapes-1024", "mmseg"): "81.08 / 82.18 (metafile)",
    ("segformer-b3-cityscapes-1024", "mmseg"): "81.94 / 83.14 (metafile)",
    ("segformer-b4-cityscapes-1024", "mmseg"): "81.89 / 83.38 (metafile)",
    ("segformer-b5-cityscapes-1024", "mmseg"): "82.25 / 83.48 (metafile)",
    ("upernet-mpvit-small-ade20k-512", "original"): ("48.3 (single scale; evaluation log 48.25) "
                                                     "(semantic_segmentation/README.md)"),
    ("upernet-mpvit-base-ade20k-512", "original"): "50.3 (single scale) (semantic_segmentation/README.md)",
    # ImageNet-1k classifiers: top-1 accuracy at 224x224 (README.md)
    ("mpvit-tiny", "original"): "78.2",
    ("mpvit-xsmall", "original"): "80.9",
    ("mpvit-small", "original"): "83.0",
    ("mpvit-base", "original"): "84.3",
}

# (family, source layout) -> max |logit difference| measured by tests/test_convert_*.py against the reference.
PARITY = {
    ("setr", "original"): ("max |Δlogit| 4.8e-07 (Naive 1.2e-07, PUP 4.8e-07, MLA 2.3e-07), fp32, random weights, against mmsegmentation 1.2.2 configured as the authors' heads (MLA head: a functional re-implementation)"),
    ("setr", "mmseg"): "max |Δlogit| 1.2e-07 (Naive 1.2e-07, PUP 7.5e-08, MLA 6.0e-08), fp32, random weights, against mmsegmentation 1.2.2",
    ("segformer", "original"): ("max |Δlogit| 4.5e-07, fp32, random weights, against mmsegmentation 1.2.2's MiT (through its mit2mmseg converter) + the authors' head re-implemented"),
    ("segformer", "mmseg"): "max |Δlogit| 3.0e-08, fp32, random weights, against mmsegmentation 1.2.2",
    ("mit", "original"): ("max |Δlogit| 1.8e-06, fp32, random weights, against mmsegmentation 1.2.2's MiT (through its mit2mmseg converter) + mean pooling + the authors' head"),
    ("mpvit", "original"): ("max |Δlogit| 1.6e-05 (real-size mpvit-tiny, 1000 classes; 1.1e-06 on a tiny variant), fp32, "
                            "random weights, against a functional re-implementation of the authors' MPViT that reads "
                            "their keys (no MPViT package exists)"),
    ("upernet", "original"): ("max |Δlogit| 1.9e-06 (tiny variant; auxiliary head 9.5e-07), fp32, random weights, "
                              "against a functional re-implementation of the authors' backbone + mmsegmentation "
                              "1.2.2's UPerHead and FCNHead"),
}

# Per-preset figures where they were measured at the preset's real size: MPViT (`python tests/test_convert_mpvit.py`;
# random weights with the BatchNorm statistics of a random batch, fp32, inputs 64x64 and 56x88). With random
# statistics the deep variants' logits grow to std ~80 (Small) / ~700 (Base) and the differences with them (2.7e-04 /
# 2.3e-03, 3e-6 of the logit scale); conversion/README.md lists both.
_MPVIT_REFERENCE = ("fp32, random weights, against a functional re-implementation of the authors' MPViT that reads "
                    "their keys (no MPViT package exists)")
_UPERNET_REFERENCE = _MPVIT_REFERENCE + " + mmsegmentation 1.2.2's UPerHead"
PRESET_PARITY = {
    ("mpvit-tiny", "original"): f"max |Δlogit| 7.0e-06, {_MPVIT_REFERENCE}",
    ("mpvit-xsmall", "original"): f"max |Δlogit| 6.7e-06, {_MPVIT_REFERENCE}",
    ("mpvit-small", "original"): f"max |Δlogit| 4.1e-06, {_MPVIT_REFERENCE}",
    ("mpvit-base", "original"): f"max |Δlogit| 5.5e-06, {_MPVIT_REFERENCE}",
    ("upernet-mpvit-tiny-ade20k-512", "original"): f"max |Δlogit| 2.9e-06, {_UPERNET_REFERENCE}",
    ("upernet-mpvit-xsmall-ade20k-512", "original"): f"max |Δlogit| 4.7e-06, {_UPERNET_REFERENCE}",
    ("upernet-mpvit-small-ade20k-512", "original"): f"max |Δlogit| 2.2e-06, {_UPERNET_REFERENCE}",
    ("upernet-mpvit-base-ade20k-512", "original"): f"max |Δlogit| 2.5e-06, {_UPERNET_REFERENCE}",
}

TEMPLATE = """---
library_name: transformers
license: {license_id}
tags:
- {task_tag}
- hf_seg
- {family}
datasets:
- {dataset_id}
---

# {name}

{model_class} converted by hf_seg from a checkpoint of **{repository}** ({source_description}).

- **Paper:** {paper} — {paper_url}
- **Source:** {repository}; converted file `{checkpoint}`
- **Dataset:** {dataset}
- **Reported {metric} (source):** {reported}
- **Parity:** {parity}
- **License of the source code:** {code_license}
- **License of the weights:** {weights_license}
- hf_seg's own code is Apache-2.0 and was written independently of the source repositories.
{note}{zoo_verification}
## Use

```python
from transformers import {auto_model}, AutoImageProcessor

model = {auto_model}.from_pretrained("{repo_hint}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{repo_hint}", trust_remote_code=True)
```

With hf_seg installed (`import hf_seg`), `trust_remote_code` is not needed and `hf_seg.segment(model, processor,
images, mode="{mode}")` runs the paper's test protocol{protocol}.

## Conversion

Source layout: {layout}. Source keys dropped on purpose: {dropped}.
"""


def model_card(*, name, preset, layout, checkpoint, model_class, dropped, repo_hint, reported=None,
               zoo_verification=None) -> str:
    """The card of a converted folder. The model zoo (`conversion/publish_zoo.py`) passes the figures of its
    release (`reported`, replacing the preset's) and its measured verification (`zoo_verification`, Markdown)."""
    family = preset.family
    source = SOURCES[(family, layout)]
    paper, paper_url = PAPERS[family]
    inference = dict(preset.inference)
    protocol = ""
    if inference.get("mode") == "slide":
        protocol = f" (crop {inference['crop_size']}, stride {inference['stride']})"
    dropped_text = "; ".join(f"{len(keys)} keys ({reason})" for reason, keys in dropped.items()) or "none"
    classification = family in CLASSIFIER_FAMILIES
    return TEMPLATE.format(
        license_id=LICENSE_IDS.get(family, "mit" if layout == "original" else "apache-2.0"),
        task_tag="image-classification" if classification else "image-segmentation",
        family=family,
        dataset_id={"ade20k": "scene_parse_150", "cityscapes": "cityscapes", None: "imagenet-1k"}.get(
            preset.label_set, preset.label_set),
        name=name,
        model_class=model_class,
        repository=source.repository,
        source_description="the authors' repository" if layout == "original" else "the mmsegmentation 1.x model zoo",
        paper=paper,
        paper_url=paper_url,
        checkpoint=checkpoint,
        dataset=DATASETS.get(preset.label_set, preset.label_set),
        metric="ImageNet-1k top-1 (%)" if classification else "mIoU",
        reported=reported or REPORTED.get((preset.name, layout), "not stated by the source for this variant"),  # zoo
        parity=PRESET_PARITY.get((preset.name, layout), PARITY[(family, layout)]),
        code_license=source.code_license,
        weights_license=source.weights_license,
        auto_model="AutoModelForImageClassification" if classification else "AutoModelForSemanticSegmentation",
        repo_hint=repo_hint,
        mode=inference.get("mode", "whole"),
        protocol=protocol,
        layout=layout,
        dropped=dropped_text,
        note=f"\n{preset.note}\n" if preset.note else "",
        zoo_verification=f"\n{zoo_verification.strip()}\n" if zoo_verification else "",
    )
