"""`python -m hf_seg`: the same program as the `hf-seg` command (without arguments: the preset table)."""

import sys

from .cli import main


if __name__ == "__main__":
    sys.exit(main())
