"""Streaming data sets (`IterableDataset`): the training stream draws the map-style split's augmentations under the same
label contract (label-id table, reduce-labels, ignore index) in a seeded shuffle buffer, the streamed evaluation equals
the map-style one exactly, what a stream cannot do is refused naming the flag, and two processes read disjoint shards.
Every set is built here (parquet files, `save_to_disk` folders); nothing is downloaded."""

import json
import os
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, IterableDataset
from datasets import Image as ImageFeature
from PIL import Image
from transformers import SegformerConfig, SegformerForSemanticSegmentation

import hf_seg
from hf_seg.data import load_segmentation_dataset
from hf_seg.labels import load_label_set
from hf_seg.training import evaluate_main, evaluate_model, evaluate_segmentation, get_recipe, train, train_main
from hf_seg.training.evaluation import json_ready
from hf_seg.training.trainer import build_datasets


CITYSCAPES = load_label_set("cityscapes")[0]
# unlabeled, ego vehicle (both ignored), road, sidewalk, building, vegetation, sky, person, car, bicycle
CITYSCAPES_IDS = np.array([0, 1, 7, 8, 11, 21, 23, 24, 26, 33], np.uint8)


def cityscapes_like(num: int, seed: int) -> Dataset:
    """Images with `*_gtFine_labelIds`-style maps (the 34 official ids), of two sizes."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(num):
        height, width = (24, 36) if index % 2 else (30, 24)
        images.append(Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)))
        labels.append(Image.fromarray(rng.choice(CITYSCAPES_IDS, (height, width)).astype(np.uint8)))
    return Dataset.from_dict({"image": images, "label": labels},
                             features=Features({"image": ImageFeature(), "label": ImageFeature()}))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same splits as a `save_to_disk` folder and as parquet files (read as a Hub data set is:
    `load_dataset("parquet", data_files=..., streaming=True)`, no index column)."""
    root = tmp_path_factory.mktemp("streaming")
    data = DatasetDict(train=cityscapes_like(8, 1), validation=cityscapes_like(6, 2))
    data.save_to_disk(str(root / "folder"))
    files = {}
    for split, part in data.items():
        files[split] = str(root / f"{split}.parquet")
        part.to_parquet(files[split])
    return dict(data=data, folder=str(root / "folder"), parquet=files, root=root)


@pytest.fixture
def quick_parquet_shutdown(monkeypatch):
    """datasets sleeps 5 s whenever a parquet stream's iterator closes (the reading threads of apache/arrow#45214);
    the local files here are read in milliseconds."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.2)


def recipe(**overrides):
    return get_recipe("segformer-ade20k-512", **{"crop_size": 32, "train_scale": (64, 32), "ratio_range": (1.0, 2.0),
                                                 "learning_rate": 0.01, "warmup_steps": 1, **overrides})


def tiny_segformer(initializer_range=0.02):
    torch.manual_seed(0)
    return SegformerForSemanticSegmentation(SegformerConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16,
        num_labels=19, id2label=CITYSCAPES, label2id={v: k for k, v in CITYSCAPES.items()},
        initializer_range=initializer_range))


def processor():
    return hf_seg.SetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}, size_divisor=1)


def one_pass(stream):
    return [(example["pixel_values"], example["labels"]) for example in stream]


# ------------------------------------------------------------------------------------------------------ training data


@pytest.mark.parametrize("reduce_labels", [False, True])
def test_a_streamed_local_split_draws_the_map_style_crops_in_a_seeded_shuffled_order(sets, reduce_labels):
    """Every streamed crop (pixels and labels, after the Cityscapes label-id table, reduce-labels, ignore 255 and
    padding) is the map-style crop of the same example and epoch; the order is the shuffle buffer's, reproducible,
    and the next pass (set_epoch) changes both the order and the draws."""
    settings = dict(recipe=recipe(photometric=True), processor=processor(), num_labels=19, seed=7, eval_split=None,
                    id2label="cityscapes", reduce_labels=reduce_labels, label_ids="cityscapes")
    mapped, _, map_transform, _ = build_datasets(sets["folder"], **settings)
    stream, _, stream_transform, info = build_datasets(sets["folder"], **settings, streaming=True,
                                                       shuffle_buffer_size=4, batch_size=3, drop_last=True)
    assert isinstance(stream, IterableDataset) and info["label_ids"] == "cityscapes"
    orders = []
    for epoch in (0, 1):
        map_transform.set_epoch(epoch)
        stream_transform.set_epoch(epoch)
        stream.set_epoch(epoch)
        expected = [(example["pixel_values"], example["labels"]) for example in mapped]
        streamed = one_pass(stream)
        assert len(streamed) == 6  # 8 examples, batches of 3: the incomplete batch is dropped (dataloader_drop_last)
        order = [next(i for i, (pixels, _) in enumerate(expected) if torch.equal(pixels, p)) for p, _ in streamed]
        assert len(set(order)) == 6
        for index, (pixels, labels) in zip(order, streamed):
            assert torch.equal(labels, expected[index][1])
        assert (torch.stack([labels for _, labels in streamed]) == 255).any()  # ignored ids and padding
        values = set(torch.cat([labels.flatten() for _, labels in streamed]).tolist()) - {255}
        assert values <= ({0, 1, 7, 9, 10, 12, 17} if reduce_labels else {0, 1, 2, 8, 10, 11, 13, 18})
        assert order != sorted(order)
        assert [o for o, _ in zip(order, one_pass(stream))] == order  # the same pass again: the same order
        orders.append(order)
    assert orders[0] != orders[1]


def test_a_stream_without_indices_seeds_each_example_by_its_files(sets):
    """A stream as the Hub gives it (no index column): an example draws the same crop whatever the shuffle order and
    the number of shards, and another one in the next epoch."""
    settings = dict(recipe=recipe(), processor=processor(), num_labels=19, seed=7, eval_split=None,
                    id2label="cityscapes", label_ids="cityscapes", batch_size=2, drop_last=False)
    passes = {}
    for shards, buffer in ((1, 0), (1, 4), (4, 4)):
        hub_like = datasets.IterableDatasetDict(train=sets["data"]["train"].to_iterable_dataset(num_shards=shards))
        stream, _, transform, _ = build_datasets(hub_like, **settings, shuffle_buffer_size=buffer)
        passes[shards, buffer] = [labels.numpy().tobytes() + pixels.numpy().tobytes()
                                  for pixels, labels in one_pass(stream)]
        assert len(passes[shards, buffer]) == 8
    in_order = passes[1, 0]
    for shuffled in (passes[1, 4], passes[4, 4]):
        assert sorted(shuffled) == sorted(in_order) and shuffled != in_order
    transform.set_epoch(1)
    assert not {labels.numpy().tobytes() + pixels.numpy().tobytes() for pixels, labels in one_pass(stream)} & set(
        in_order)


# ------------------------------------------------------------------------------------------------------ evaluation


def test_a_streamed_evaluation_equals_the_map_style_one(sets, quick_parquet_shutdown):
    """The same model on the same split, map-style and streamed (local folder with index, Hub-like parquet): equal
    metrics, exactly (whole and sliding-window protocol, max_examples too)."""
    model = tiny_segformer(initializer_range=1.0).eval()  # large weights: several classes predicted
    data, info = load_segmentation_dataset(sets["folder"], split="validation", decode=False)
    local, _ = load_segmentation_dataset(sets["folder"], split="validation", decode=False, streaming=True)
    hub, _ = load_segmentation_dataset("parquet", split="validation", decode=False, streaming=True,
                                       data_files=sets["parquet"])
    assert isinstance(local, IterableDataset) and isinstance(hub, IterableDataset)
    for settings in (dict(mode="whole"), dict(mode="slide", crop_size=32, stride=20, max_examples=3)):
        settings = dict(settings, label_ids="cityscapes", id2label=CITYSCAPES, batch_size=2)
        expected, confusion = evaluate_segmentation(model, processor(), data, return_confusion=True, **settings)
        assert expected["mean_accuracy"] > 1 / 19 + 0.01 and expected["num_examples"] == settings.get("max_examples", 6)
        for stream in (local, hub):
            metrics, streamed = evaluate_segmentation(model, processor(), stream, return_confusion=True, **settings)
            assert torch.equal(streamed.matrix, confusion.matrix) and json_ready(metrics) == json_ready(expected)


# ------------------------------------------------------------------------------------------------------ training


def test_hf_seg_train_streaming_trains_saves_and_evaluates_like_map_style(sets, tmp_path, capsys,
                                                                          quick_parquet_shutdown):
    """`hf-seg train --streaming` (label ids detected from the stream's first maps) trains a few steps and saves the
    contract; its streamed evaluation equals `hf-seg evaluate` map-style, `--streaming`, and a Hub-like stream's."""
    model_dir = tmp_path / "tiny"
    tiny_segformer().save_pretrained(model_dir)
    processor().save_pretrained(model_dir)
    out = tmp_path / "out"
    code = train_main([
        "--model", str(model_dir), "--dataset", sets["folder"], "--streaming", "--shuffle_buffer_size", "4",
        "--id2label", "cityscapes", "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size",
        "2", "--crop_size", "32", "--train_scale", "64", "32", "--save_strategy", "no", "--use_cpu", "--report_to",
        "none", "--disable_tqdm", "true", "--eval_mode", "slide", "--eval_crop_size", "32", "--eval_stride", "20",
        "--learning_rate", "0.01", "--warmup_steps", "1",
    ])
    assert code == 0
    err = capsys.readouterr().err
    assert "split 'train' is streamed (8 shards, one process) through a shuffle buffer of 4 examples" in err
    assert "the first 8 label maps of split 'train' hold label values up to 33" in err
    trained = json.loads((out / "all_results.json").read_text())
    saved = json.loads((out / "recipe.json").read_text())
    assert saved["streaming"] == {"shuffle_buffer_size": 4, "seed": 42}
    assert saved["labels"]["label_ids"] == "cityscapes" and saved["labels"]["num_labels"] == 19
    assert trained["eval_num_examples"] == 6
    metrics = json_ready(evaluate_model(str(out), sets["folder"]))  # map-style, the saved contract and protocol
    assert metrics["mean_iou"] == trained["eval_mean_iou"] and metrics["num_examples"] == 6
    capsys.readouterr()
    assert evaluate_main(["--model", str(out), "--dataset", sets["folder"], "--streaming"]) == 0
    assert json.loads(capsys.readouterr().out) == metrics
    assert json_ready(evaluate_model(str(out), "parquet", streaming=True, data_files=sets["parquet"])) == metrics


def test_every_pass_of_the_trainer_reshuffles_and_draws_new_augmentations(sets, tmp_path, monkeypatch):
    """Through `Trainer`: each pass over the stream sees every example once, in a new order (the loader's
    `set_epoch`), with the transform at the same epoch (new draws)."""
    from hf_seg.data import SegmentationTrainTransform

    calls, call = [], SegmentationTrainTransform.__call__

    def spy(self, batch):
        calls.append((self.epoch, [int(i) for i in batch["__index__"]]))
        return call(self, batch)

    monkeypatch.setattr(SegmentationTrainTransform, "__call__", spy)
    train(tiny_segformer(), sets["folder"], streaming=True, shuffle_buffer_size=4, id2label="cityscapes",
          recipe=recipe(), image_processor=processor(), do_eval=False, output_dir=str(tmp_path),
          training_args=dict(max_steps=5, per_device_train_batch_size=4, save_strategy="no", use_cpu=True,
                             disable_tqdm=True, report_to="none"))
    passes = {}
    for epoch, indices in calls:
        passes.setdefault(epoch, []).extend(indices)
    assert sorted(passes) == [0, 1, 2]  # 2 batches a pass: 5 steps start 3 passes
    assert sorted(passes[0]) == sorted(passes[1]) == list(range(8)) and passes[0] != passes[1]


def test_what_a_stream_cannot_do_is_refused_naming_the_flag(sets, tmp_path):
    args = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, use_cpu=True, save_strategy="no")
    model = tiny_segformer()
    with pytest.raises(ValueError, match="pass --max_steps N.*in place of --num_train_epochs"):
        train(model, sets["folder"], streaming=True, training_args=dict(args, num_train_epochs=2))
    with pytest.raises(ValueError, match=r"pass --max_steps N.*\(got max_steps=-1\)"):
        train(model, sets["folder"], streaming=True, training_args=dict(args, max_steps=-1))
    with pytest.raises(ValueError, match="--class_weights.*cannot read before training"):
        train(model, sets["folder"], streaming=True, training_args=dict(args, max_steps=2),
              class_weights="inverse_frequency")
    with pytest.raises(ValueError, match="--shuffle_buffer_size must be 0"):
        train(model, sets["folder"], streaming=True, training_args=dict(args, max_steps=2), shuffle_buffer_size=-1)
    # no class names anywhere: a stream cannot be scanned for its label values
    unnamed = datasets.IterableDatasetDict({split: part.to_iterable_dataset() for split, part in sets["data"].items()})
    with pytest.raises(ValueError, match="split 'train' is streamed and the data names no classes.*--id2label"):
        train(model, unnamed, training_args=dict(args, max_steps=2), label_ids="none")
    # fewer examples than one batch: no step could run
    with pytest.raises(ValueError, match="split 'train' streams 8 examples, fewer than one batch of 9"):
        train(model, unnamed, id2label="cityscapes", recipe=recipe(), training_args=dict(
            args, max_steps=2, per_device_train_batch_size=9))


# ------------------------------------------------------------------------------------------------------ processes

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    import hf_seg
    from hf_seg.labels import load_label_set
    from hf_seg.training import get_recipe, train
    from hf_seg.training.trainer import AugmentationEpochCallback, build_datasets

    folder, out = sys.argv[1], sys.argv[2]
    names = load_label_set("cityscapes")[0]
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16,
        num_labels=19, id2label=names, label2id={v: k for k, v in names.items()}, initializer_range=1.0))
    processor = hf_seg.SetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}, size_divisor=1)
    recipe = get_recipe("segformer-ade20k-512", crop_size=32, train_scale=(64, 32), ratio_range=(1.0, 2.0),
                        learning_rate=1e-5, warmup_steps=1)
    result = train(model, folder, output_dir=out, recipe=recipe, image_processor=processor, id2label="cityscapes",
                   streaming=True, shuffle_buffer_size=4,
                   training_args=dict(max_steps=2, per_device_train_batch_size=2, save_strategy="no", use_cpu=True,
                                      disable_tqdm=True, report_to="none", seed=3))
    trainer = result.trainer
    # one pass of this process's training batches at epoch 0, each crop named by its map-style index
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, AugmentationEpochCallback))
    callback.transform.set_epoch(0)
    loader = trainer.get_train_dataloader()
    loader.set_epoch(0)
    mapped, _, _, _ = build_datasets(folder, recipe.replace(reduce_labels=False), processor, 19, 3, eval_split=None,
                                     id2label="cityscapes", label_ids="cityscapes")
    crops = [example["pixel_values"] for example in mapped]
    seen = [next(i for i, crop in enumerate(crops) if torch.equal(crop, pixels))
            for batch in loader for pixels in batch["pixel_values"]]
    rank = trainer.args.process_index
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump(dict(seen=seen, world_size=trainer.args.world_size,
                       dispatch=trainer.args.accelerator_config.dispatch_batches, metrics={k: v for k, v in result.metrics.items() if k.startswith("eval_") and k != "eval_runtime"}),
                  handle)
    """
)


def test_two_gloo_processes_read_disjoint_shards_and_score_each_example_once(sets, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_SEG_TEST_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         sets["folder"], str(out)], env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "split 'train' is streamed (8 shards, 2 processes, each reading its own shards)" in completed.stderr
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["world_size"] == 2 and r["dispatch"] is False for r in ranks)
    seen = [r["seen"] for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 4 and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(8))
    distributed = json_ready(ranks[0]["metrics"])  # 6 examples in 6 shards: 3 shards each (split_dataset_by_node)
    assert distributed["eval_num_examples"] == 6 and json_ready(ranks[1]["metrics"]) == distributed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: another may sum in another order and flip a near-tie pixel
    try:
        single = json_ready(evaluate_model(str(out), sets["folder"]))  # one process, map-style
    finally:
        torch.set_num_threads(threads)
    assert single["mean_accuracy"] > 1 / 19 + 0.01
    assert {f"eval_{k}": v for k, v in single.items()} == distributed
