"""Training never loses work or saves a wrong result: a NaN / inf loss stops it naming the step and the loss and no
non-finite weights are saved; a truncated checkpoint is named before resuming; UperNet with one image per device is
refused before training starts; a checkpoint whose weights are not all finite is never written."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hf_seg
from hf_seg.data.quickstart import QUICKSTART_LABELS, make_quickstart_dataset
from hf_seg.training import get_recipe, train
from hf_seg.training.trainer import NonFiniteTrainingError, check_checkpoint

from tiny_models import tiny_mpvit, tiny_segformer


@pytest.fixture(scope="module")
def shapes():
    return make_quickstart_dataset(num_train=8, num_validation=2, size=32, seed=1)


def _recipe(**overrides):
    return get_recipe("segformer-ade20k-512", crop_size=32, train_scale=(64, 32), ratio_range=(1.0, 1.5),
                      warmup_steps=0, **overrides)


def _args(tmp_path, **overrides):
    args = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, logging_steps=1,
                save_strategy="no", use_cpu=True, disable_tqdm=True, seed=3, report_to="none")
    return {**args, **overrides}


def _segformer():
    model = tiny_segformer()
    labels = dict(enumerate(QUICKSTART_LABELS))
    from hf_seg.training.trainer import relabel_classifiers

    relabel_classifiers(model, labels)
    return model


def test_a_non_finite_loss_stops_training_and_no_weights_are_saved(tmp_path, shapes):
    """lr 1e30: the first step is finite, then the weights blow up. Training stops naming the step and the loss;
    checkpoint-1 (finite) stays, nothing after it is written."""
    with pytest.raises(NonFiniteTrainingError) as error:
        train(_segformer(), shapes, recipe=_recipe(learning_rate=1e30), image_processor=_processor(),
              training_args=_args(tmp_path, save_strategy="steps", save_steps=1, max_grad_norm=0.0),
              eval_split=None)
    message = str(error.value)
    assert message.startswith("step ") and ("the training loss is nan" in message or "holds NaN / inf" in message)
    assert "--allow_non_finite" in message
    assert not (tmp_path / "model.safetensors").exists()
    checkpoints = sorted(tmp_path.glob("checkpoint-*"))
    for checkpoint in checkpoints:
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(tensor).all() for tensor in weights.values()), checkpoint
    if checkpoints:
        assert str(checkpoints[-1]) in message


def test_allow_non_finite_keeps_transformers_behaviour(tmp_path, shapes):
    result = train(_segformer(), shapes, recipe=_recipe(learning_rate=1e30), image_processor=_processor(),
                   training_args=_args(tmp_path, max_grad_norm=0.0), eval_split=None, allow_non_finite=True)
    assert (tmp_path / "model.safetensors").exists()
    assert math.isfinite(result.metrics["train_loss"])  # transformers' filter: what the opt-out asks for
    weights = load_file(tmp_path / "model.safetensors")
    assert not all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_upernet_with_one_image_per_device_is_refused_before_training(tmp_path, shapes):
    model = tiny_mpvit()
    from hf_seg.training.trainer import relabel_classifiers

    relabel_classifiers(model, dict(enumerate(QUICKSTART_LABELS)))
    with pytest.raises(ValueError, match="cannot train with one image per device.*--per_device_train_batch_size 2"):
        train(model, shapes, recipe=_recipe(), image_processor=_processor(),
              training_args=_args(tmp_path, per_device_train_batch_size=1), eval_split=None)
    assert not any(tmp_path.iterdir())


def test_a_truncated_checkpoint_file_is_named_before_resuming(tmp_path, shapes):
    train(_segformer(), shapes, recipe=_recipe(), image_processor=_processor(),
          training_args=_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2), eval_split=None)
    checkpoint = tmp_path / "checkpoint-2"
    assert check_checkpoint(True, str(tmp_path)) == str(checkpoint)
    optimizer = checkpoint / "optimizer.pt"
    whole = optimizer.read_bytes()
    optimizer.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=f"{optimizer} is unreadable .*BadZipFile"):
        train(_segformer(), shapes, recipe=_recipe(), image_processor=_processor(),
              training_args=_args(tmp_path, max_steps=4), eval_split=None, resume_from_checkpoint=True)
    optimizer.write_bytes(whole)
    (checkpoint / "trainer_state.json").write_text("{")
    with pytest.raises(ValueError, match="trainer_state.json is unreadable"):
        check_checkpoint(str(checkpoint), str(tmp_path))
    with pytest.raises(ValueError, match="no checkpoint-\\* folder"):
        check_checkpoint(True, str(tmp_path / "elsewhere"))


def _processor():
    return hf_seg.SetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 128}, do_reduce_labels=False,
                                     size_divisor=1)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_misspelt_model_and_missing_data_folder_are_usage_errors_named_before_loading(command, tmp_path, capsys):
    from hf_seg.cli import main

    extra = ["--output_dir", str(tmp_path / "out")] if command == "train" else []
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    status = main([command, "--model", "segformer-b0-ade20k-51", "--dataset", str(folder), *extra])
    err = capsys.readouterr().err
    assert status == 2 and "unknown model 'segformer-b0-ade20k-51'" in err and "'segformer-b0-ade20k-512'" in err
    status = main([command, "--model", "segformer-b0-ade20k-512", "--dataset", str(tmp_path / "nope"), *extra])
    err = capsys.readouterr().err
    assert status == 2 and f"dataset folder {tmp_path / 'nope'} does not exist" in err
    assert not (tmp_path / "out").exists()


def test_a_truncated_weights_file_is_named_when_training_or_evaluating_a_folder(tmp_path, shapes):
    model = _segformer()
    model.save_pretrained(tmp_path / "model")
    _processor().save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    from hf_seg.training import evaluate_model

    for call in (lambda: train(str(tmp_path / "model"), shapes, output_dir=str(tmp_path / "out")),
                 lambda: evaluate_model(str(tmp_path / "model"), shapes)):
        with pytest.raises(ValueError, match=f"weights file {weights} .* is truncated or not a safetensors file"):
            call()
