#!/usr/bin/env python
# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Convert an MPViT checkpoint of the authors' repository (youngwanLEE/MPViT), an ImageNet-1k classifier
(`mpvit_*.pth`) or an UperNet ADE20K model (`upernet_mpvit_*.pth`), into a folder that transformers' Auto classes
load (mmsegmentation 1.x has no MPViT). Usage: see `--help` and conversion/README.md; the logic lives in
`hf_seg.convert`."""

import sys
from pathlib import Path


try:
    from hf_seg.convert.cli import main
except ImportError:  # run from a source checkout without installing hf_seg
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hf_seg.convert.cli import main


if __name__ == "__main__":
    sys.exit(main("mpvit", sys.argv[1:]))
