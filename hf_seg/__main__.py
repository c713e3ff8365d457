"""`python -m hf_seg`: list the model presets with their sizes, label sets and test protocol."""

import argparse

import torch

from . import presets


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_seg", description=__doc__)
    parser.add_argument("--family", help="only this family (e.g. setr)")
    args = parser.parse_args(argv)
    print(f"{'preset':42s} {'parameters':>14s} {'inference':>14s}  {'labels':18s} test protocol")
    for name in presets.list_models(args.family):
        preset = presets.get_preset(name)
        with torch.device("meta"):  # sizes only: no memory, no initialisation
            model = presets.create_model(name)
        total = sum(p.numel() for p in model.parameters())
        auxiliary = sum(p.numel() for p in getattr(model, "auxiliary_heads", torch.nn.ModuleList()).parameters())
        protocol = ", ".join(f"{key} {value}" for key, value in preset.inference.items())
        print(f"{name:42s} {total:>14,d} {total - auxiliary:>14,d}  {preset.label_set:18s} {protocol}")


if __name__ == "__main__":
    main()
