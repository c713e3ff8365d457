# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""`hf-seg quickstart`: the whole pipeline in a few CPU minutes, on data generated in the package.

1. Generate the textured-shapes data set (`hf_seg.data.quickstart`, 6 classes, train / validation).
2. Fine-tune a small SegFormer (transformers' built-in `SegformerForSemanticSegmentation`, MiT encoder of 4 stages,
   about 0.4 M parameters, random init) with the real pipeline: `hf_seg.training.train`, i.e. `transformers.Trainer`
   with the SegFormer recipe (AdamW, head lr x 10, no decay on norms, poly schedule with linear warmup), the seeded
   mmseg augmentations, and the papers' evaluation protocol at the original resolution.
3. Write the Hub-ready model folder (weights, config, processor, model card with the metrics), `metrics.json` and
   overlay pictures of validation images, and print where they are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

QUICKSTART_CONFIG = dict(
    num_encoder_blocks=4,
    depths=[1, 1, 1, 1],
    hidden_sizes=[16, 32, 64, 96],
    num_attention_heads=[1, 1, 2, 2],
    sr_ratios=[8, 4, 2, 1],
    mlp_ratios=[2, 2, 2, 2],
    decoder_hidden_size=64,
    drop_path_rate=0.0,
    classifier_dropout_prob=0.0,
    semantic_loss_ignore_index=255,
)


def build_quickstart_model(num_labels: int, id2label: dict, seed: int = 0):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, set_seed

    set_seed(seed)
    config = SegformerConfig(
        **QUICKSTART_CONFIG, num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    return SegformerForSemanticSegmentation(config)


def run_quickstart(
    output_dir: str = "hf-seg-quickstart",
    max_steps: int = 300,
    num_train: int = 160,
    num_validation: int = 40,
    image_size: int = 128,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    seed: int = 0,
    num_overlays: int = 4,
    dataloader_num_workers: int = 0,
    verbose: bool = True,
) -> dict:
    """Run the quickstart; returns `{"metrics", "model_dir", "overlays", "metrics_file", "seconds"}`."""
    from ..data.quickstart import QUICKSTART_LABELS, make_quickstart_dataset
    from ..inference import segment
    from ..models.setr import SetrImageProcessor
    from ..visualize import colorize, default_palette, overlay
    from .recipes import get_recipe
    from .trainer import train

    start = time.time()
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    data = make_quickstart_dataset(num_train, num_validation, image_size, seed)
    id2label = dict(enumerate(QUICKSTART_LABELS))
    model = build_quickstart_model(len(id2label), id2label, seed)
    processor = SetrImageProcessor(
        size={"shortest_edge": image_size, "longest_edge": 4 * image_size}, do_reduce_labels=False, size_divisor=1
    )
    recipe = get_recipe(
        "segformer-ade20k-512",
        learning_rate=learning_rate,
        max_steps=max_steps,
        warmup_steps=max(1, max_steps // 20),
        batch_size=batch_size,
        crop_size=image_size,
        train_scale=(4 * image_size, image_size),
        ratio_range=(0.75, 1.5),
        photometric=False,  # colour is part of what tells the classes apart here
    )
    model_dir = output / "model"
    result = train(
        model,
        data,
        output_dir=str(model_dir),
        image_processor=processor,
        recipe=recipe,
        id2label=id2label,
        reduce_labels=False,
        eval_mode="whole",
        dataset_name="hf_seg-quickstart-shapes",
        training_args=dict(
            seed=seed,
            per_device_train_batch_size=batch_size,
            logging_steps=max(1, max_steps // 10),
            save_strategy="no",
            eval_strategy="no",
            dataloader_num_workers=dataloader_num_workers,
            disable_tqdm=not verbose,
            use_cpu=True,
        ),
    )
    metrics = {key[len("eval_"):]: value for key, value in result.metrics.items() if key.startswith("eval_")}
    metrics["train_runtime_s"] = result.metrics.get("train_runtime")
    metrics_file = output / "metrics.json"
    from .evaluation import json_ready

    metrics_file.write_text(json.dumps(json_ready(metrics), indent=2) + "\n", encoding="utf-8")

    overlays_dir = output / "overlays"
    overlays_dir.mkdir(exist_ok=True)
    palette = default_palette(len(id2label))
    trained = result.model.eval()
    validation = data["validation"]
    overlays = []
    count = min(num_overlays, len(validation))
    images = [np.asarray(validation[i]["image"].convert("RGB")) for i in range(count)]
    predictions = segment(trained, processor, images, mode="whole") if count else []
    for index, (image, prediction) in enumerate(zip(images, predictions)):
        truth = np.asarray(validation[index]["label"])
        panel = np.concatenate(
            [image, np.asarray(overlay(image, truth, palette)), np.asarray(overlay(image, prediction, palette))], axis=1
        )
        path = overlays_dir / f"validation_{index:02d}_image_truth_prediction.png"
        from PIL import Image

        Image.fromarray(panel).save(path)
        colorize(prediction, palette).save(overlays_dir / f"validation_{index:02d}_prediction.png")
        overlays.append(str(path))
    seconds = time.time() - start
    summary = {"metrics": metrics, "model_dir": str(model_dir), "overlays": overlays, "metrics_file": str(metrics_file),
               "seconds": seconds}
    if verbose:
        print(f"\nhf-seg quickstart finished in {seconds:.0f} s")
        print(f"  validation mIoU {metrics['mean_iou']:.4f}, mAcc {metrics['mean_accuracy']:.4f}, "
              f"aAcc {metrics['overall_accuracy']:.4f} ({len(validation)} images, original resolution)")
        print(f"  Hub-ready model folder: {model_dir}  (push: hf upload <your-name>/<repo> {model_dir})")
        print(f"  metrics:                {metrics_file}")
        print(f"  overlays (image | truth | prediction): {overlays_dir}")
    return summary


def quickstart_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-seg quickstart",
        description="Generate a 6-class data set of textured shapes, fine-tune a small SegFormer on it with the real "
        "Trainer pipeline (about half a minute on a 2-core CPU), evaluate it and write a Hub-ready model folder, "
        "metrics.json and overlay pictures.",
    )
    parser.add_argument("--output_dir", default="hf-seg-quickstart",
                        help="folder for the model folder, metrics.json and overlays (default: %(default)s)")
    parser.add_argument("--max_steps", type=int, default=300, help="training steps (default: %(default)s)")
    parser.add_argument("--num_train", type=int, default=160, help="generated training images (default: %(default)s)")
    parser.add_argument("--num_validation", type=int, default=40,
                        help="generated validation images (default: %(default)s)")
    parser.add_argument("--image_size", type=int, default=128, help="side of the square images (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=8, help="training batch size (default: %(default)s)")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the init and the augmentations "
                        "(default: %(default)s)")
    parser.add_argument("--dataloader_num_workers", type=int, default=0,
                        help="DataLoader worker processes (default: %(default)s)")
    args = parser.parse_args(argv)
    run_quickstart(
        args.output_dir, args.max_steps, args.num_train, args.num_validation, args.image_size, args.batch_size,
        args.learning_rate, args.seed, dataloader_num_workers=args.dataloader_num_workers,
    )
    return 0


__all__ = ["QUICKSTART_CONFIG", "build_quickstart_model", "quickstart_main", "run_quickstart"]
