#!/usr/bin/env python
# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Convert a SegFormer or MiT (ImageNet) checkpoint (the authors' repository or mmsegmentation 1.x) into a folder that transformers' Auto
classes load. Usage: see `--help` and conversion/README.md; the logic lives in `hf_seg.convert`."""

import sys
from pathlib import Path


try:
    from hf_seg.convert.cli import main
except ImportError:  # run from a source checkout without installing hf_seg
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hf_seg.convert.cli import main


if __name__ == "__main__":
    sys.exit(main("segformer", sys.argv[1:]))
