"""Two CPU processes (gloo, `torchrun --nproc_per_node 2`) train a few steps and evaluate: the evaluation shards the
images over the processes and sums the confusion matrices, so its metric equals a one-process evaluation of the same
weights on the same data (exactly: the counts are integers)."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from hf_seg.data.quickstart import QUICKSTART_LABELS, make_quickstart_dataset
from hf_seg.training import evaluate_model

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    import hf_seg
    from hf_seg.training import evaluate_main, get_recipe, train

    data_dir, out_dir, labels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    id2label = dict(enumerate(labels))
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16,
        num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()}))
    processor = hf_seg.SetrImageProcessor(size={"shortest_edge": 48, "longest_edge": 96}, size_divisor=1)
    recipe = get_recipe("segformer-ade20k-512", crop_size=32, train_scale=(128, 32), ratio_range=(1.0, 1.5),
                        learning_rate=0.01, warmup_steps=1, photometric=False)
    result = train(model, data_dir, output_dir=out_dir, recipe=recipe, image_processor=processor, id2label=id2label,
                   reduce_labels=False, eval_mode="slide", eval_crop_size=32, eval_stride=20,
                   training_args=dict(max_steps=40, per_device_train_batch_size=2, save_strategy="no", use_cpu=True,
                                      disable_tqdm=True, logging_steps=1, seed=5))
    trainer = result.trainer
    info = dict(world_size=trainer.args.world_size, backend=str(torch.distributed.get_backend()),
                metrics={k: v for k, v in result.metrics.items() if k.startswith("eval_")})
    code = evaluate_main(["--model", out_dir, "--dataset", data_dir, "--mode", "slide", "--crop_size", "32",
                          "--stride", "20", "--reduce_labels", "false", "--output_file", out_dir + "/cli_metrics.json"])
    if trainer.is_world_process_zero():
        with open(out_dir + "/distributed.json", "w") as handle:
            json.dump(info, handle)
    sys.exit(code)
    """
)


def test_two_gloo_processes_match_one_process(tmp_path):
    data_dir = tmp_path / "data"
    make_quickstart_dataset(num_train=8, num_validation=5, size=40, seed=2).save_to_disk(str(data_dir))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_SEG_TEST_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(data_dir), str(out), json.dumps(QUICKSTART_LABELS)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    info = json.loads((out / "distributed.json").read_text())
    assert info["world_size"] == 2 and info["backend"] == "gloo"
    distributed = info["metrics"]
    assert distributed["eval_num_examples"] == 5  # 3 + 2 images: uneven shards are fine
    # the same intra-op thread count as the workers: other thread counts may sum in another order, and a near-tie
    # pixel whose argmax flips would break the exact equality below
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate_model(str(out), str(data_dir), split="validation", mode="slide", crop_size=32, stride=20,
                                reduce_labels=False)
    finally:
        torch.set_num_threads(threads)
    # the trained model predicts several classes, so the equality below is not between two constant maps
    assert single["mean_accuracy"] > 1 / len(QUICKSTART_LABELS) + 0.01, single
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy", "iou_disc", "accuracy_ring"):
        value, expected = distributed[f"eval_{key}"], single[key]
        assert value == expected or (value != value and expected != expected), key
    cli = json.loads((out / "cli_metrics.json").read_text())
    assert cli["mean_iou"] == single["mean_iou"] and cli["overall_accuracy"] == single["overall_accuracy"]
