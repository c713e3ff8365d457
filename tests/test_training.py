"""hf_seg.training: recipes, parameter groups and schedules against mmengine, Trainer runs (a few steps, resume,
gradient accumulation), evaluation protocol, CLI parsing, model card, Hub push (mocked), pretrained encoders."""

import dataclasses
import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForSemanticSegmentation,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ResNetConfig,
    ResNetForImageClassification,
    SegformerConfig,
    SegformerForImageClassification,
    SegformerForSemanticSegmentation,
    TrainerCallback,
    ViTConfig,
    ViTModel,
    get_polynomial_decay_schedule_with_warmup,
)

import hf_seg
from hf_seg.data.quickstart import QUICKSTART_LABELS, make_quickstart_dataset
from hf_seg.inference import segment
from hf_seg.metrics import SegmentationConfusionMatrix
from hf_seg.training import (
    RECIPES,
    build_parameter_groups,
    build_training_arguments,
    evaluate_main,
    evaluate_segmentation,
    get_recipe,
    load_pretrained_encoder,
    parse_train_args,
    poly_learning_rate,
    poly_schedule,
    recipe_name_for_preset,
    train,
    train_main,
    write_model_card,
)
from hf_seg.training.commands import recipe_overrides_from_args


ID2LABEL = dict(enumerate(QUICKSTART_LABELS))
TINY_SETR = dict(
    hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8,
    decoder_channels=8, auxiliary_in_indices=[0],
)


def tiny_segformer_config(**overrides):
    kwargs = dict(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16,
        drop_path_rate=0.0, classifier_dropout_prob=0.0, num_labels=6, id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
    )
    kwargs.update(overrides)
    return SegformerConfig(**kwargs)


@pytest.fixture(scope="module")
def shapes():
    return make_quickstart_dataset(num_train=8, num_validation=3, size=32, seed=1)


def small_args(tmp_path, **overrides):
    args = dict(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, logging_steps=1, save_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=3,
    )
    args.update(overrides)
    return args


def tiny_recipe(name="setr-pup-ade20k-512", **overrides):
    return get_recipe(name, **{"crop_size": 32, "train_scale": (128, 32), "ratio_range": (1.0, 1.5), **overrides})


# ------------------------------------------------------------------------------------------------------ recipes


def test_recipes_hold_the_papers_numbers():
    pup = get_recipe("setr-pup-ade20k-512")
    assert (pup.optimizer, pup.learning_rate, pup.momentum, pup.weight_decay) == ("sgd", 0.001, 0.9, 0.0)
    assert pup.custom_keys == {"head": {"lr_mult": 10.0}}
    assert (pup.poly_power, pup.min_lr, pup.warmup_steps) == (0.9, 1e-4, 0)
    assert (pup.max_steps, pup.batch_size, pup.crop_size, pup.train_scale) == (160_000, 16, 512, (2048, 512))
    assert pup.auxiliary_loss_weight == 0.4 and pup.reduce_labels
    assert get_recipe("setr-naive-ade20k-512").learning_rate == 0.01
    assert get_recipe("setr-mla-cityscapes-768").learning_rate == 0.002
    assert get_recipe("setr-pup-cityscapes-768").max_steps == 80_000
    seg = get_recipe("segformer-ade20k-512")
    assert (seg.optimizer, seg.learning_rate, seg.weight_decay, seg.betas) == ("adamw", 6e-5, 0.01, (0.9, 0.999))
    assert seg.custom_keys == {"head": {"lr_mult": 10.0}, "norm": {"decay_mult": 0.0}, "pos_block": {"decay_mult": 0.0}}
    assert (seg.poly_power, seg.min_lr, seg.warmup_steps, seg.warmup_ratio) == (1.0, 0.0, 1500, 1e-6)
    assert get_recipe("segformer-cityscapes-1024").batch_size == 8
    mpvit = get_recipe("upernet-mpvit-ade20k-512")
    assert mpvit.custom_keys == {} and mpvit.auxiliary_loss_weight == 0.4 and mpvit.learning_rate == 6e-5


def test_every_segmentation_preset_has_a_recipe():
    names = [n for n in hf_seg.list_models() if hf_seg.get_preset(n).family in ("setr", "segformer", "upernet")]
    assert len(names) >= 20
    for name in names:
        assert recipe_name_for_preset(name) in RECIPES
    assert recipe_name_for_preset("setr-mla-vit-large-pascal-context-480") == "setr-mla-pascal-context-480"
    assert recipe_name_for_preset("segformer-b5-ade20k-640") == "segformer-ade20k-640"
    # the authors' DeiT MLA configs train with 16 images where the ViT-L MLA recipe (released weights) has 8
    assert recipe_name_for_preset("setr-mla-deit-base-ade20k-512") == "setr-mla-ade20k-512-bs16"
    assert get_recipe("setr-mla-ade20k-512-bs16").batch_size == 16 and get_recipe("setr-mla-ade20k-512").batch_size == 8
    assert recipe_name_for_preset("setr-naive-r50-vit-base-cityscapes-768") == "setr-naive-cityscapes-768"
    for decoder in ("naive", "pup", "mla"):  # the authors' 40k Cityscapes schedules
        short, long = get_recipe(f"setr-{decoder}-cityscapes-768-40k"), get_recipe(f"setr-{decoder}-cityscapes-768")
        assert short.max_steps == 40_000 and long.max_steps == 80_000
        assert dataclasses.replace(short, name=long.name, max_steps=long.max_steps) == long
    with pytest.raises(KeyError, match="no training recipe"):
        recipe_name_for_preset("mit-b0")


def test_recipe_overrides_are_checked():
    recipe = get_recipe("segformer-ade20k-512", max_steps=10, ratio_range=[0.5, 1.0])
    assert recipe.max_steps == 10 and recipe.ratio_range == (0.5, 1.0)
    with pytest.raises(ValueError, match="unknown recipe field.*'max_iters'"):
        get_recipe("segformer-ade20k-512", max_iters=10)
    with pytest.raises(KeyError, match="unknown recipe"):
        get_recipe("segformer-ade99")


# ------------------------------------------------------------------------------------------------------ mmengine


def _mmengine_settings(model, optimizer_cfg, custom_keys):
    from mmengine.optim import DefaultOptimWrapperConstructor

    wrapper = DefaultOptimWrapperConstructor(
        dict(type="OptimWrapper", optimizer=optimizer_cfg), dict(custom_keys=custom_keys)
    )(model)
    by_id = {id(group["params"][0]): (group["lr"], group["weight_decay"]) for group in wrapper.optimizer.param_groups}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def _our_settings(model, lr, decay, custom_keys):
    groups = build_parameter_groups(model, lr, decay, custom_keys)
    return {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["param_names"]}


@pytest.mark.parametrize("decoder", ["naive", "pup", "mla"])
def test_setr_parameter_groups_equal_mmengine(decoder):
    model = hf_seg.create_model(f"setr-{decoder}-vit-large-ade20k-512", **{**TINY_SETR, **(
        dict(mla_in_indices=[0, 1, 0, 1], auxiliary_in_indices=[0, 1]) if decoder == "mla" else {})})
    recipe = get_recipe(f"setr-{decoder}-ade20k-512")
    ours = _our_settings(model, recipe.learning_rate, recipe.weight_decay, recipe.custom_keys)
    reference = _mmengine_settings(
        model, dict(type="SGD", lr=recipe.learning_rate, momentum=0.9, weight_decay=0.0), recipe.custom_keys
    )
    assert ours == reference
    head = recipe.learning_rate * 10
    assert all(lr == head for n, (lr, _) in ours.items() if n.startswith(("decode_head.", "auxiliary_heads.")))
    # the encoder and (MLA) the neck train at the base lr, as in both SETR sources
    assert all(lr == recipe.learning_rate for n, (lr, _) in ours.items() if n.startswith(("setr.", "neck.")))


def test_segformer_parameter_groups_equal_mmengine():
    model = SegformerForSemanticSegmentation(tiny_segformer_config())
    recipe = get_recipe("segformer-ade20k-512")
    ours = _our_settings(model, recipe.learning_rate, recipe.weight_decay, recipe.custom_keys)
    reference = _mmengine_settings(
        model, dict(type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01), recipe.custom_keys
    )
    assert ours == reference
    # the authors' semantics: encoder norms without decay, head (its BatchNorm included) at lr x 10 with decay
    assert ours["segformer.stages.0.blocks.0.layernorm_before.weight"] == (6e-5, 0.0)
    assert ours["segformer.stages.0.patch_embeddings.layer_norm.bias"] == (6e-5, 0.0)
    assert ours["segformer.stages.0.blocks.0.attention.q_proj.weight"] == (6e-5, 0.01)
    assert ours["decode_head.batch_norm.weight"] == pytest.approx((6e-4, 0.01))
    assert ours["decode_head.classifier.weight"] == pytest.approx((6e-4, 0.01))
    groups = build_parameter_groups(model, 6e-5, 0.01, recipe.custom_keys)
    assert sorted((g["lr_mult"], g["decay_mult"]) for g in groups) == [(1.0, 0.0), (1.0, 1.0), (10.0, 1.0)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def _lr_trace(scheduler, optimizer, steps):
    trace = []
    for _ in range(steps):
        trace.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return np.asarray(trace)


def _two_groups(lrs=(0.01, 0.1)):
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs], lr=lrs[0])


@pytest.mark.parametrize(
    "power, min_lr, warmup, total", [(0.9, 1e-4, 0, 40), (1.0, 0.0, 7, 40), (0.9, 1e-3, 5, 23)]
)
def test_poly_schedule_equals_mmengine(power, min_lr, warmup, total):
    """mmseg 1.x: LinearLR(start_factor=1e-6, end=warmup) then PolyLR(eta_min, begin=warmup, end=total), per group."""
    from mmengine.optim.scheduler import LinearLR, PolyLR

    reference_optimizer = _two_groups()
    schedulers = []
    if warmup:
        schedulers.append(LinearLR(reference_optimizer, start_factor=1e-6, by_epoch=False, begin=0, end=warmup))
    schedulers.append(PolyLR(reference_optimizer, eta_min=min_lr, power=power, begin=warmup, end=total, by_epoch=False))
    reference = []
    for _ in range(total + 3):
        reference.append([group["lr"] for group in reference_optimizer.param_groups])
        reference_optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    optimizer = _two_groups()
    ours = _lr_trace(poly_schedule(optimizer, total, power, min_lr, warmup, 1e-6, style="mmengine"), optimizer, total + 3)
    np.testing.assert_allclose(ours, np.asarray(reference), rtol=1e-9, atol=1e-15)
    assert ours[total - 1, 1] == pytest.approx(min_lr, abs=1e-15)  # the floor is absolute for the x10 group too


def test_poly_schedule_mmcv_style():
    """The authors' mmcv 1.x hooks: poly over all iterations, the linear warmup multiplies it."""
    optimizer = _two_groups()
    trace = _lr_trace(poly_schedule(optimizer, 100, 1.0, 0.0, 10, 1e-6, style="mmcv"), optimizer, 101)
    for step in (0, 5, 9, 10, 50, 99, 100):
        regular = 0.1 * (1 - step / 100)
        warm = 1 - (1 - step / 10) * (1 - 1e-6) if step < 10 else 1.0
        assert trace[step, 1] == pytest.approx(regular * warm, rel=1e-12, abs=1e-18)
    assert trace[0, 0] == pytest.approx(0.01 * 1e-6)


def test_transformers_polynomial_schedule_is_not_mmseg_with_min_lr():
    """Why hf_seg has its own schedule: transformers scales all groups by one factor, so a x10 head group ends at
    10 * min_lr instead of min_lr (SETR: min_lr 1e-4), and its warmup starts at 0."""
    optimizer = _two_groups((0.01, 0.1))
    scheduler = get_polynomial_decay_schedule_with_warmup(optimizer, 0, 50, lr_end=1e-4, power=0.9)
    trace = _lr_trace(scheduler, optimizer, 51)
    assert trace[50, 1] == pytest.approx(1e-3)  # not 1e-4
    assert poly_learning_rate(50, 0.1, 50, 0.9, 1e-4, style="mmcv") == pytest.approx(1e-4)


# ------------------------------------------------------------------------------------------------------ training


def small_processor():
    """The tiny models' test resize (the presets' processors resize to 512 and more)."""
    return hf_seg.SetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 128}, size_divisor=8)


def _setr_run(tmp_path, shapes, **kwargs):
    return train(
        "setr-pup-vit-large-ade20k-512", shapes, config_overrides=TINY_SETR, recipe=tiny_recipe(), id2label=ID2LABEL,
        image_processor=small_processor(), reduce_labels=False, eval_mode="slide", eval_crop_size=32, eval_stride=16,
        **kwargs,
    )


def test_train_a_few_steps_writes_a_hub_ready_folder(tmp_path, shapes):
    out = tmp_path / "run"
    result = _setr_run(out, shapes, training_args=small_args(out, max_steps=3, learning_rate=0.05))
    trainer = result.trainer
    # optimizer: the recipe's SGD with the head at lr x 10; schedule: poly (power 0.9, min_lr 1e-4) over 3 steps
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer,
                      torch.optim.SGD)
    lrs = sorted({round(g["initial_lr"], 12) for g in trainer.optimizer.param_groups})
    assert lrs == [0.05, 0.5]
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(poly_learning_rate(3, 0.05, 3, 0.9, 1e-4))
    assert result.model.config.auxiliary_loss_weight == 0.4
    for key in ("eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "eval_iou_disc", "train_loss"):
        assert key in result.metrics
    folder = Path(result.output_dir)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_setr.py",
                 "configuration_setr.py", "README.md", "all_results.json", "recipe.json"):
        assert (folder / name).is_file(), name
    saved = json.loads((folder / "all_results.json").read_text())
    assert saved["eval_mean_iou"] == pytest.approx(result.metrics["eval_mean_iou"])
    card = (folder / "README.md").read_text()
    assert "license: mit" in card and f"value: {result.metrics['eval_mean_iou']:.4f}" in card
    assert "Recipe `setr-pup-ade20k-512`" in card and "| disc |" in card
    # the folder loads through the Auto classes and gives the trained model's logits
    loaded = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, result.model.eval()(pixels).logits)
    assert type(processor).__name__ == "SetrImageProcessor"
    assert loaded.config.id2label[1] == "disc"


class _Crash(Exception):
    pass


class _CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Crash(f"killed at step {state.global_step}")


def test_resumed_run_ends_with_the_uninterrupted_weights(tmp_path, shapes):
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, learning_rate=0.02)
    full = _setr_run(tmp_path / "full", shapes, training_args=small_args(tmp_path / "full", **common), do_eval=False)
    with pytest.raises(_Crash):
        _setr_run(tmp_path / "cut", shapes, training_args=small_args(tmp_path / "cut", **common), do_eval=False,
                  callbacks=[_CrashAt(4)])
    assert (tmp_path / "cut" / "checkpoint-3").is_dir() and not (tmp_path / "cut" / "checkpoint-6").exists()
    resumed = _setr_run(tmp_path / "cut", shapes, training_args=small_args(tmp_path / "cut", **common),
                        do_eval=False, resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-3"))
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        torch.testing.assert_close(resumed_state[key], full_state[key], rtol=0, atol=0, msg=key)
    # and the run really moved the weights (the comparison is not between two untouched models)
    fresh = hf_seg.create_model("setr-pup-vit-large-ade20k-512", **TINY_SETR, id2label=ID2LABEL,
                                label2id={v: k for k, v in ID2LABEL.items()})
    assert not torch.equal(fresh.state_dict()["decode_head.classifier.weight"],
                           full_state["decode_head.classifier.weight"])


def test_gradient_accumulation_equals_the_large_batch(tmp_path, shapes):
    """2 x 2 accumulated micro-batches give the weights of batches of 4 (a model without BatchNorm, so that the
    batch composition cannot matter; every crop is fully labelled, so per-batch means combine exactly)."""

    def model():
        torch.manual_seed(0)
        built = SegformerForSemanticSegmentation(tiny_segformer_config())
        built.decode_head.batch_norm = torch.nn.Identity()
        return built

    # SGD: Adam's normalised update would turn float rounding in near-zero gradients into lr-sized differences
    recipe = tiny_recipe("segformer-ade20k-512", warmup_steps=0, ratio_range=(1.0, 1.0), optimizer="sgd")
    kwargs = dict(recipe=recipe, reduce_labels=False, do_eval=False, id2label=ID2LABEL, image_processor=hf_seg.SetrImageProcessor())
    big = train(model(), shapes, training_args=small_args(tmp_path / "big", per_device_train_batch_size=4,
                                                          learning_rate=0.1), **kwargs)
    accumulated = train(model(), shapes, training_args=small_args(
        tmp_path / "acc", per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=0.1), **kwargs)
    assert big.trainer.state.global_step == accumulated.trainer.state.global_step == 2
    moved = 0
    for (name, a), b in zip(big.model.state_dict().items(), accumulated.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
        moved += int(not torch.equal(a, model().state_dict()[name]))
    assert moved > 10


def test_evaluation_scores_at_the_original_label_resolution(shapes):
    """evaluate_segmentation = segment() (keep-ratio resize, slide, logits back to the original size) + a confusion
    matrix over the original label maps; also with reduce_labels and images of different sizes."""
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(tiny_segformer_config()).eval()
    processor = hf_seg.SetrImageProcessor(size={"shortest_edge": 48, "longest_edge": 96}, size_divisor=1)
    data = make_quickstart_dataset(num_train=1, num_validation=3, size=40, seed=5)["validation"]
    # a different size for one image: the protocol must score it at its own resolution
    from datasets import Dataset

    rows = [data[i] for i in range(3)]
    rows[1] = {"image": rows[1]["image"].resize((56, 40)), "label": rows[1]["label"].resize((56, 40), 0)}
    data = Dataset.from_list(rows, features=data.features)
    metrics = evaluate_segmentation(model, processor, data, mode="slide", crop_size=32, stride=24, reduce_labels=True,
                                    id2label=ID2LABEL, batch_size=2)
    reference = SegmentationConfusionMatrix(6, reduce_labels=True)
    for row in rows:
        image, label = np.asarray(row["image"]), np.asarray(row["label"])
        (prediction,) = segment(model, processor, [image], mode="slide", crop_size=32, stride=24)
        assert prediction.shape == label.shape
        reference.update(prediction, label)
    expected = reference.compute()
    assert metrics["mean_iou"] == pytest.approx(expected["mIoU"], nan_ok=True)
    assert metrics["overall_accuracy"] == pytest.approx(expected["aAcc"])
    assert metrics["num_examples"] == 3
    assert math.isnan(metrics["iou_cross"]) or 0 <= metrics["iou_cross"] <= 1


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_parsing_keeps_recipe_defaults_unless_flags_are_given():
    model_args, data_args, recipe_args, training = parse_train_args([
        "--model", "segformer-b0-ade20k-512", "--dataset", "some/data", "--output_dir", "out", "--learning_rate",
        "0.5", "--gradient_checkpointing", "--crop_size", "64", "--custom_keys", '{"head": {"lr_mult": 5}}',
        "--ratio_range", "0.5", "1.0", "--no_remove_unused_columns", "--eval_mode", "slide",
    ])
    assert model_args.model == "segformer-b0-ade20k-512" and data_args.eval_mode == "slide"
    assert training == {"output_dir": "out", "learning_rate": 0.5, "gradient_checkpointing": True,
                        "remove_unused_columns": False}
    overrides = recipe_overrides_from_args(recipe_args)
    assert overrides == {"crop_size": 64, "ratio_range": [0.5, 1.0], "custom_keys": {"head": {"lr_mult": 5}}}
    recipe = get_recipe("segformer-ade20k-512", **overrides)
    args = build_training_arguments(training, recipe, None)
    assert args.learning_rate == 0.5  # the flag wins
    assert (args.weight_decay, args.max_steps, args.warmup_steps) == (0.01, 160_000, 1500)  # the recipe's
    assert args.per_device_train_batch_size == 16 and args.gradient_checkpointing and not args.remove_unused_columns
    with pytest.raises(ValueError, match="not divisible by 1 process.*3 accumulation"):
        build_training_arguments({"output_dir": "o", "gradient_accumulation_steps": 3}, recipe, None)


def test_train_and_evaluate_commands(tmp_path, shapes, capsys):
    data_dir = tmp_path / "data"
    shapes.save_to_disk(str(data_dir))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(QUICKSTART_LABELS))
    out = tmp_path / "out"
    small_processor().save_pretrained(tmp_path / "processor")
    code = train_main([
        "--image_processor", str(tmp_path / "processor"),
        "--model", "setr-naive-vit-large-ade20k-512", "--dataset", str(data_dir), "--id2label", str(labels),
        "--config_overrides", json.dumps(TINY_SETR), "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--crop_size", "32", "--train_scale", "64", "32", "--save_strategy",
        "no", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--reduce_labels", "false",
    ])
    assert code == 0
    trained = json.loads((out / "all_results.json").read_text())
    assert json.loads((out / "config.json").read_text())["id2label"]["5"] == "cross"
    capsys.readouterr()
    metrics_file = tmp_path / "metrics.json"
    assert evaluate_main(["--model", str(out), "--dataset", str(data_dir), "--output_file", str(metrics_file),
                          "--reduce_labels", "false"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(metrics_file.read_text()) == printed
    # the same protocol (the preset's slide windows at the tiny model's size) gives the training run's numbers
    assert printed["mean_iou"] == pytest.approx(trained["eval_mean_iou"])
    assert printed["num_examples"] == 3


# ------------------------------------------------------------------------------------------------------ card, hub


def test_model_card_states_license_and_metrics(tmp_path):
    model = SegformerForSemanticSegmentation(tiny_segformer_config())
    path = write_model_card(str(tmp_path), model, {"eval_mean_iou": 0.8123456, "eval_overall_accuracy": 0.9,
                                                   "eval_iou_disc": 0.7}, get_recipe("segformer-ade20k-512"),
                            "my/data", model_name="me/tiny")
    card = Path(path).read_text()
    assert card.startswith("---\nlicense: other\n")
    assert "non-commercial" in card and "- name: me/tiny" in card and "value: 0.8123" in card
    assert "| mean_iou | 0.8123 |" in card and "| disc | 0.7000 |" in card and "- my/data" in card


def test_push_to_hub_uploads_the_final_folder(tmp_path, shapes):
    out = tmp_path / "run"
    with mock.patch("huggingface_hub.HfApi.create_repo") as create_repo, mock.patch(
        "huggingface_hub.HfApi.upload_folder"
    ) as upload_folder:
        _setr_run(out, shapes, training_args=small_args(out, max_steps=1, push_to_hub=True, hub_model_id="me/setr-tiny",
                                                        save_strategy="steps", save_steps=1))
    create_repo.assert_called_once()
    assert create_repo.call_args.args[0] == "me/setr-tiny"
    kwargs = upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/setr-tiny" and kwargs["folder_path"] == str(out)
    assert "checkpoint-*" in kwargs["ignore_patterns"]
    pushed = {p.name for p in out.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "modeling_setr.py", "preprocessor_config.json"} <= pushed
    assert "checkpoint-1" in pushed  # present locally, left out of the upload by the ignore pattern
    assert "- name: me/setr-tiny" in (out / "README.md").read_text()


# ------------------------------------------------------------------------------------------------------ encoders


def test_setr_from_a_transformers_vit(tmp_path):
    vit = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                             image_size=32, patch_size=8, layer_norm_eps=1e-6), add_pooling_layer=True).eval()
    vit.save_pretrained(tmp_path / "vit")
    same = hf_seg.create_model("setr-naive-vit-large-ade20k-512", **TINY_SETR).eval()
    load_pretrained_encoder(same, str(tmp_path / "vit"))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = vit(pixels, output_hidden_states=True).hidden_states[-1]  # before ViT's final LayerNorm
        torch.testing.assert_close(same.setr(pixels).last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    # another grid: the position embeddings are resized as mmseg's ViT does at load time (bilinear)
    from mmseg_reference import import_mmseg

    import_mmseg()
    from mmseg.models.backbones.vit import VisionTransformer

    bigger = hf_seg.create_model("setr-naive-vit-large-ade20k-512", **{**TINY_SETR, "image_size": 48}).eval()
    load_pretrained_encoder(bigger, str(tmp_path / "vit"))
    reference = VisionTransformer.resize_pos_embed(vit.embeddings.position_embeddings.detach(), (6, 6), (4, 4),
                                                   "bilinear")
    torch.testing.assert_close(bigger.setr.embeddings.position_embeddings.detach(), reference, rtol=0, atol=1e-7)
    torch.testing.assert_close(bigger.setr.layers[1].mlp.fc2.weight, vit.layers[1].mlp.fc2.weight)
    wrong = hf_seg.create_model("setr-naive-vit-large-ade20k-512", **{**TINY_SETR, "intermediate_size": 48})
    with pytest.raises(ValueError, match="intermediate_size = 32 but the SETR model has 48"):
        load_pretrained_encoder(wrong, str(tmp_path / "vit"))


def test_setr_from_a_transformers_deit_drops_the_distillation_token(tmp_path):
    """The distilled DeiT-B/16-384 of SETR-DeiT: its position embeddings hold class + distillation + patches; the
    distillation token and its position are dropped (the authors' load_pretrained), the grid is resized."""
    deit = DeiTForImageClassificationWithTeacher(DeiTConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8,
        num_labels=3)).eval()
    deit.save_pretrained(tmp_path / "deit")
    model = hf_seg.create_model("setr-pup-deit-base-cityscapes-768", **{**TINY_SETR, "image_size": 48}).eval()
    load_pretrained_encoder(model, str(tmp_path / "deit"))  # strict: every SETR encoder weight is filled
    source = deit.deit.embeddings.position_embeddings.detach()  # [1, 2 + 4*4, 16]
    patches = source[:, 2:].reshape(1, 4, 4, 16).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(patches, size=(6, 6), mode="bilinear", align_corners=False)
    expected = torch.cat([source[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)
    torch.testing.assert_close(model.setr.embeddings.position_embeddings.detach(), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(model.setr.embeddings.cls_token, deit.deit.embeddings.cls_token)
    torch.testing.assert_close(model.setr.embeddings.projection.weight,
                               deit.deit.embeddings.patch_embeddings.projection.weight)
    torch.testing.assert_close(model.setr.layers[1].attention.v_proj.bias, deit.deit.layers[1].attention.v_proj.bias)


def test_setr_hybrid_from_a_transformers_resnet_and_vit(tmp_path):
    """The hybrid takes two checkpoints: the ResNet fills its backbone (every key), the ViT the transformer (every key
    but the patch embedding, which the hybrid does not have); the 1x1 projection keeps its initialisation."""
    resnet_config = ResNetConfig(out_features=["stage4"])  # ResNet-50 (random weights), the hybrid's backbone
    ResNetForImageClassification(resnet_config).save_pretrained(tmp_path / "resnet")
    vit = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                             image_size=64, patch_size=16, layer_norm_eps=1e-6)).eval()
    vit.save_pretrained(tmp_path / "vit")
    tiny_hybrid = dict(TINY_SETR, image_size=64, patch_size=16, backbone_config=resnet_config.to_dict())
    model = hf_seg.create_model("setr-naive-r50-vit-base-cityscapes-768", **tiny_hybrid).eval()
    projection = model.setr.embeddings.projection.weight.detach().clone()
    load_pretrained_encoder(model, f"{tmp_path / 'resnet'}, {tmp_path / 'vit'}")
    resnet = ResNetForImageClassification.from_pretrained(tmp_path / "resnet").resnet
    backbone = model.setr.embeddings.backbone
    for name, tensor in resnet.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(model.setr.layers[0].mlp.fc1.weight, vit.layers[0].mlp.fc1.weight)
    torch.testing.assert_close(model.setr.embeddings.position_embeddings, vit.embeddings.position_embeddings)
    torch.testing.assert_close(model.setr.embeddings.projection.weight, projection, rtol=0, atol=0)
    # the dilated last stage: the tokens are the 1/16 map (64x96 -> 4x6), not 1/32
    assert backbone(torch.randn(1, 3, 64, 96)).feature_maps[-1].shape[-2:] == (4, 6)
    with pytest.raises(ValueError, match="takes a ResNet and a ViT checkpoint"):
        load_pretrained_encoder(model, str(tmp_path / "vit"))
    with pytest.raises(ValueError, match="one ViT or DeiT encoder checkpoint"):
        load_pretrained_encoder(model, f"{tmp_path / 'resnet'},{tmp_path / 'resnet'}")


def test_segformer_from_a_mit_classifier(tmp_path):
    classifier = SegformerForImageClassification(tiny_segformer_config(num_labels=10, id2label=None, label2id=None,
                                                                       reshape_last_stage=False))
    classifier.save_pretrained(tmp_path / "mit")
    model = SegformerForSemanticSegmentation(tiny_segformer_config())
    load_pretrained_encoder(model, str(tmp_path / "mit"))
    for key, value in classifier.segformer.state_dict().items():
        torch.testing.assert_close(model.segformer.state_dict()[key], value, msg=key)
    other = SegformerForSemanticSegmentation(tiny_segformer_config(hidden_sizes=[8, 8, 16, 24]))
    with pytest.raises(ValueError, match="cannot load a MiT encoder.*shape mismatches"):
        load_pretrained_encoder(other, str(tmp_path / "mit"))


def test_activation_checkpointing_and_bf16_run_through_trainer(tmp_path, shapes):
    """Trainer's memory / precision flags reach the model: checkpointed training gives the plain run's weights,
    and a bf16 (CPU autocast) run trains and evaluates."""
    plain = _setr_run(tmp_path / "plain", shapes, training_args=small_args(tmp_path / "plain"), do_eval=False)
    checkpointed = _setr_run(tmp_path / "ckpt", shapes, do_eval=False,
                             training_args=small_args(tmp_path / "ckpt", activation_checkpointing=True))
    assert checkpointed.model.is_gradient_checkpointing
    for (name, a), b in zip(plain.model.state_dict().items(), checkpointed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    half = _setr_run(tmp_path / "bf16", shapes, training_args=small_args(tmp_path / "bf16", bf16=True))
    assert half.trainer.args.bf16 and 0.0 <= half.metrics["eval_mean_iou"] <= 1.0


# ------------------------------------------------------------------------------------------------------ MPViT

TINY_MPVIT = dict(
    hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 1, 1], num_paths=[2, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
    decoder_hidden_size=16, auxiliary_channels=8, drop_path_rate=0.0,
)


def test_mpvit_from_an_imagenet_classifier(tmp_path):
    classifier = hf_seg.MPViTForImageClassification(hf_seg.MPViTConfig(**TINY_MPVIT, num_labels=10)).eval()
    classifier.save_pretrained(tmp_path / "mpvit")
    model = hf_seg.create_model("upernet-mpvit-small-ade20k-512", **TINY_MPVIT, num_labels=6)
    load_pretrained_encoder(model, str(tmp_path / "mpvit"))
    encoder = classifier.mpvit.state_dict()
    backbone = model.backbone.state_dict()
    loaded = [key for key in backbone if key in encoder]
    assert len(loaded) > 20
    for key in loaded:
        torch.testing.assert_close(backbone[key], encoder[key], rtol=0, atol=0, msg=key)
    wider = hf_seg.create_model("upernet-mpvit-small-ade20k-512", **{**TINY_MPVIT, "hidden_sizes": [16, 24, 32, 48]})
    with pytest.raises(ValueError, match="MPViT encoder"):
        load_pretrained_encoder(wider, str(tmp_path / "mpvit"))


def test_mpvit_upernet_trains_with_its_recipe(tmp_path, shapes):
    out = tmp_path / "mpvit-run"
    result = train(
        "upernet-mpvit-small-ade20k-512", shapes, config_overrides=TINY_MPVIT, id2label=ID2LABEL,
        recipe=tiny_recipe("upernet-mpvit-ade20k-512", warmup_steps=1), image_processor=small_processor(),
        reduce_labels=False, training_args=small_args(out, max_steps=2),
    )
    optimizer = result.trainer.optimizer
    optimizer = getattr(optimizer, "optimizer", optimizer)
    # the paper's recipe: AdamW, lr 6e-5, weight decay 0.01 on every parameter (no paramwise_cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {(group["initial_lr"], group["weight_decay"]) for group in optimizer.param_groups} == {(6e-5, 0.01)}
    assert result.model.config.model_type == "mpvit" and result.model.auxiliary_head is not None
    assert "eval_mean_iou" in result.metrics and math.isfinite(result.metrics["train_loss"])
    loaded = AutoModelForSemanticSegmentation.from_pretrained(result.output_dir).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, result.model.eval()(pixels).logits)
