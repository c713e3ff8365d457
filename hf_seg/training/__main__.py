"""`python -m hf_seg.training {train,evaluate,quickstart} ...` (the same commands as `hf-seg ...`)."""

import sys

from .commands import evaluate_main, quickstart_main, train_main

COMMANDS = {"train": train_main, "evaluate": evaluate_main, "quickstart": quickstart_main}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m hf_seg.training {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
