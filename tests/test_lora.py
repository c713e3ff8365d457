"""LoRA fine-tuning (`hf_seg.training.lora`, `train(lora_rank=...)`, `hf-seg train --lora-rank`): the trainable
parameters of every family counted from the module shapes, merge-and-save equal to the adapter model, the command's
saved folder (a plain model, its card and recipe.json), checkpoints and an exact resume, and the refusals."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSemanticSegmentation,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    TrainerCallback,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    set_seed,
)

import hf_seg
from hf_seg.cli import main as cli_main
from hf_seg.data.quickstart import QUICKSTART_LABELS, make_quickstart_dataset
from hf_seg.training import apply_lora, get_recipe, train, train_main
from hf_seg.training.lora import check_lora_checkpoint


ID2LABEL = dict(enumerate(QUICKSTART_LABELS))
LABELS = dict(id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
TINY_VIT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32,
                patch_size=8, decoder_channels=8)
TINY_RESNET = dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                   out_features=["stage4"])
TINY_MIT = dict(depths=[1, 2, 1, 1], hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 1, 1],
                decoder_hidden_size=16, drop_path_rate=0.0, classifier_dropout_prob=0.0, **LABELS)
TINY_MPVIT = dict(hidden_sizes=[16, 16, 24, 32], depths=[1, 2, 1, 1], num_paths=[1, 2, 1, 1], mlp_ratios=[2, 2, 2, 2],
                  decoder_hidden_size=16, auxiliary_channels=8, out_features=["stage1", "stage2", "stage3", "stage4"])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is faster than two on a loaded 2-core machine (and under `-n 2`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes():
    return make_quickstart_dataset(num_train=8, num_validation=3, size=32, seed=1)


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    if family == "setr-pup":
        return hf_seg.create_model("setr-pup-vit-large-ade20k-512", **TINY_VIT, auxiliary_in_indices=[0, 1], **LABELS)
    if family == "setr-mla":
        return hf_seg.create_model("setr-mla-vit-large-ade20k-512", **TINY_VIT, mla_in_indices=[0, 1, 0, 1],
                                   mla_channels=8, mla_head_channels=4, auxiliary_in_indices=[0, 1, 0, 1], **LABELS)
    if family == "setr-hybrid":
        return hf_seg.create_model("setr-naive-r50-vit-base-cityscapes-768", **TINY_VIT, auxiliary_in_indices=[0, 1],
                                   backbone_config=TINY_RESNET, **LABELS)
    if family == "segformer":
        return SegformerForSemanticSegmentation(SegformerConfig(**TINY_MIT))
    if family == "segformer-mmseg":
        return hf_seg.SegformerMmsegForSemanticSegmentation(hf_seg.SegformerMmsegConfig(**TINY_MIT))
    if family == "mpvit":
        return hf_seg.MPViTForSemanticSegmentation(hf_seg.MPViTConfig(**TINY_MPVIT, **LABELS))
    raise KeyError(family)


def expected_layout(family: str, model) -> tuple[list[str], list[str]]:
    """(the linears that get adapters, the modules trained in full), written out here from the architectures and the
    configs (not from hf_seg's spec): every attention and MLP linear of the encoder blocks; the heads."""
    config = model.config
    if family.startswith("setr"):
        linears = [f"setr.layers.{layer}.{name}" for layer in range(config.num_hidden_layers)
                   for name in ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
                                "mlp.fc1", "mlp.fc2")]
        heads = ["decode_head"] + [f"auxiliary_heads.{k}" for k in range(len(config.auxiliary_in_indices))]
        heads += ["neck"] if family == "setr-mla" else []
        heads += ["setr.embeddings.projection"] if family == "setr-hybrid" else []  # new 1x1 conv on the ResNet map
        return linears, heads
    if family.startswith("segformer"):
        linears = [f"segformer.stages.{stage}.blocks.{block}.{name}" for stage, depth in enumerate(config.depths)
                   for block in range(depth)
                   for name in ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
                                "mlp.fc1", "mlp.fc2")]
        return linears, ["decode_head"]
    linears = [f"backbone.encoder.stages.{stage}.paths.{path}.layers.{layer}.{name}"
               for stage in range(4) for path in range(config.num_paths[stage]) for layer in range(config.depths[stage])
               for name in ("attention.qkv", "attention.proj", "mlp.fc1", "mlp.fc2")]
    return linears, ["decode_head", "auxiliary_head"]


def expected_trainable(family: str, model, rank: int) -> int:
    """rank x (in + out) per adapted linear, plus every parameter of the modules trained in full."""
    linears, heads = expected_layout(family, model)
    count = 0
    for name in linears:
        layer = model.get_submodule(name)
        assert type(layer) is torch.nn.Linear, name
        count += rank * (layer.in_features + layer.out_features)
    return count + sum(p.numel() for name in heads for p in model.get_submodule(name).parameters())


FAMILIES = ["setr-pup", "setr-mla", "setr-hybrid", "segformer", "segformer-mmseg", "mpvit"]


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_parameters_are_the_adapters_and_the_heads(family):
    model = build(family)
    rank = 3
    expected = expected_trainable(family, model, rank)
    linears, heads = expected_layout(family, model)
    run = apply_lora(model, rank=rank)
    trainable = {name: p for name, p in run.model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == run.trainable_parameters == expected
    # the adapters sit exactly on those linears (never on a convolution: MPViT's depthwise "proj", SegFormer's dwconv)
    adapted = {name.removeprefix("base_model.model.") for name, module in run.model.named_modules()
               if hasattr(module, "lora_A")}
    assert adapted == set(linears)
    assert sorted(run.modules_to_save) == sorted(heads)
    assert all(".lora_A." in name or ".lora_B." in name or ".modules_to_save." in name for name in trainable)
    print(f"{family}: {expected:,} trainable parameters at rank {rank} ({len(linears)} adapted linears)")


@pytest.mark.parametrize("family", ["setr-pup", "segformer", "segformer-mmseg", "mpvit"])
def test_merged_model_gives_the_adapter_models_logits(family):
    model = build(family)
    initial = copy.deepcopy(model).eval()
    linears, heads = expected_layout(family, model)
    run = apply_lora(model, rank=4, dropout=0.1)
    optimizer = torch.optim.AdamW([p for p in run.model.parameters() if p.requires_grad], lr=0.05)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    labels = torch.randint(0, len(ID2LABEL), (2, 32, 32), generator=generator)
    run.model.train()
    for _ in range(2):
        run.model(pixel_values=pixels, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    run.model.eval()
    with torch.no_grad():
        adapted = run.model(pixel_values=pixels).logits
    merged = run.merge().eval()
    assert type(merged) is type(initial)
    state, before = merged.state_dict(), initial.state_dict()
    assert state.keys() == before.keys()  # a plain model: no lora_A / base_layer / modules_to_save keys
    with torch.no_grad():
        merged_logits, initial_logits = merged(pixel_values=pixels).logits, initial(pixel_values=pixels).logits
    torch.testing.assert_close(merged_logits, adapted, rtol=0, atol=1e-5)
    assert (merged_logits - initial_logits).abs().max() > 1e-3
    # the adapters were merged into the encoder's weights; everything else in the encoder is untouched
    moved = {key for key in before if not torch.equal(state[key], before[key])}
    assert {f"{name}.weight" for name in linears} <= moved
    assert all(key.startswith(tuple(heads)) or key.removesuffix(".weight") in linears for key in moved), moved
    # frozen BatchNorms (MPViT's encoder) kept their statistics while the heads' BatchNorms updated theirs
    statistics = [key for key in before if key.endswith("running_mean")]
    assert any(key in moved for key in statistics if key.startswith(tuple(heads)))
    if family == "mpvit":
        assert [key for key in statistics if key.startswith("backbone.")] and not any(
            key in moved for key in statistics if key.startswith("backbone."))


def test_adapters_get_gradients_with_activation_checkpointing():
    """Frozen embeddings feed the checkpointed layers with tensors that need no gradient: the adapters inside them
    must still get gradients (non-reentrant checkpointing), or only the heads would train."""
    run = apply_lora(build("setr-pup"), rank=2)
    run.model.activation_checkpointing_enable()
    assert run.model.get_base_model().is_activation_checkpointing
    run.model.train()
    pixels, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 6, (2, 32, 32))
    run.model(pixel_values=pixels, labels=labels).loss.backward()
    grads = {name: p.grad for name, p in run.model.named_parameters() if ".lora_B." in name}
    assert len(grads) == 12 and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_hf_seg_train_lora_writes_a_plain_model_folder(tmp_path, shapes, monkeypatch):
    data_dir = tmp_path / "data"
    shapes.save_to_disk(str(data_dir))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(QUICKSTART_LABELS))
    hf_seg.SetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 128}, size_divisor=8).save_pretrained(
        tmp_path / "processor")
    out = tmp_path / "out"
    tiny = dict(TINY_VIT, auxiliary_in_indices=[0])
    code = train_main([
        "--image_processor", str(tmp_path / "processor"), "--model", "setr-pup-vit-large-ade20k-512",
        "--dataset", str(data_dir), "--id2label", str(labels), "--config_overrides", json.dumps(tiny),
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--crop_size", "32",
        "--train_scale", "64", "32", "--save_strategy", "steps", "--save_steps", "2", "--use_cpu", "--report_to",
        "none", "--disable_tqdm", "true", "--reduce_labels", "false", "--learning_rate", "0.05",
        "--lora-rank", "4", "--lora-dropout", "0.05",
    ])
    assert code == 0
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_setr.py", "README.md",
                 "recipe.json", "all_results.json"):
        assert (out / name).is_file(), name
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    # the checkpoint holds the adapters and the heads (peft's files), the optimizer and hf_seg's LoRA record
    checkpoint = out / "checkpoint-2"
    for name in ("adapter_model.safetensors", "adapter_config.json", "hf_seg_lora.json", "optimizer.pt"):
        assert (checkpoint / name).is_file(), name
    assert not (checkpoint / "model.safetensors").exists()

    set_seed(42)  # the run's seed: train() builds the preset's base model right after it
    base = hf_seg.create_model("setr-pup-vit-large-ade20k-512", **tiny, **LABELS)
    rank4 = expected_trainable("setr", base, 4)
    lora = json.loads((out / "recipe.json").read_text())["lora"]
    assert (lora["rank"], lora["alpha"], lora["dropout"], lora["merged"]) == (4, 8.0, 0.05, True)
    assert lora["modules_to_save"] == ["decode_head", "auxiliary_heads.0"] and lora["adapted_layers"] == 12
    assert lora["trainable_parameters"] == rank4
    card = (out / "README.md").read_text()
    assert "LoRA-fine-tuned: rank 4 adapters (alpha 8, dropout 0.05)" in card and f"{rank4:,} parameters" in card
    assert "| disc |" in card and "license: mit" in card

    # the saved folder = the base + the last checkpoint's adapters, merged
    run = apply_lora(base, rank=4, dropout=0.05)
    assert run.base_sha256 == lora["base_sha256"]  # the same base as the run's
    run.model.load_adapter(str(checkpoint), "default", is_trainable=False)
    reference = run.merge().eval()

    # ... and it loads without peft: any import of peft fails from here on
    for name in [name for name in sys.modules if name == "peft" or name.startswith("peft.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "peft", None)
    loaded = AutoModelForSemanticSegmentation.from_pretrained(out).eval()
    assert type(loaded) is hf_seg.SetrForSemanticSegmentation
    assert loaded.state_dict().keys() == base.state_dict().keys()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, reference(pixels).logits, rtol=0, atol=1e-5)


class _Steps(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(state.global_step)


def _mpvit_run(output_dir, shapes, seed=0, **kwargs):
    """UperNet-MPViT: the family with BatchNorm in the frozen encoder."""
    kwargs = {"lora_rank": 2, **kwargs}
    return train(
        build("mpvit", seed), shapes, recipe=get_recipe("upernet-mpvit-ade20k-512", crop_size=32, train_scale=(128, 32),
                                                         ratio_range=(1.0, 1.5), warmup_steps=0),
        id2label=ID2LABEL, image_processor=hf_seg.SetrImageProcessor(size={"shortest_edge": 32}, size_divisor=8),
        reduce_labels=False, do_eval=False, training_args=dict(
            output_dir=str(output_dir), max_steps=3, per_device_train_batch_size=2, logging_steps=1,
            save_strategy="steps", save_steps=2, use_cpu=True, disable_tqdm=True, seed=3, learning_rate=0.01),
        **kwargs,
    )


def test_resumed_lora_run_ends_with_the_uninterrupted_weights(tmp_path, shapes):
    full = _mpvit_run(tmp_path / "full", shapes)  # 3 steps, a checkpoint after step 2
    checkpoint = tmp_path / "full" / "checkpoint-2"
    steps = _Steps()
    resumed = _mpvit_run(tmp_path / "resumed", shapes, resume_from_checkpoint=str(checkpoint), callbacks=[steps])
    assert steps.seen == [3]  # it went on from step 2, and ran step 3 only
    assert type(resumed.model) is hf_seg.MPViTForSemanticSegmentation
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        torch.testing.assert_close(resumed_state[key], full_state[key], rtol=0, atol=0, msg=key)
    untouched = build("mpvit").state_dict()
    for key in ("decode_head.classifier.weight", "backbone.encoder.stages.1.paths.1.layers.1.attention.qkv.weight"):
        assert not torch.equal(untouched[key], full_state[key]), key  # the run moved the heads and the encoder
    # a LoRA checkpoint is resumed only by the same LoRA run on the same base (train() checks before training)
    with pytest.raises(ValueError, match=r"holds LoRA adapters \(rank 2\).*--lora-rank 2"):
        _mpvit_run(tmp_path / "again", shapes, lora_rank=None, resume_from_checkpoint=str(checkpoint))
    with pytest.raises(ValueError, match="other LoRA settings.*--lora-rank: checkpoint 2, now 4"):
        check_lora_checkpoint(str(checkpoint), apply_lora(build("mpvit"), rank=4))
    with pytest.raises(ValueError, match="other LoRA settings.*--lora-alpha: checkpoint 4.0, now 2.0"):
        check_lora_checkpoint(str(checkpoint), apply_lora(build("mpvit"), rank=2, alpha=2))
    with pytest.raises(ValueError, match="another base model.*--pretrained_encoder"):
        check_lora_checkpoint(str(checkpoint), apply_lora(build("mpvit", seed=1), rank=2))
    check_lora_checkpoint(str(checkpoint), apply_lora(build("mpvit"), rank=2))  # the run's own settings and base
    plain = tmp_path / "plain"  # a full fine-tune's checkpoint has the model, no adapters
    plain.mkdir()
    (plain / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match="holds no LoRA adapters.*without --lora-rank"):
        check_lora_checkpoint(str(plain), apply_lora(build("mpvit"), rank=2))
    check_lora_checkpoint(str(plain), None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lora_rank=0), r"--lora-rank \(lora_rank=\) must be a positive integer, got 0"),
    (dict(lora_rank=-4), "--lora-rank .* got -4"),
    (dict(lora_rank=2.5), "--lora-rank .* got 2.5"),
    (dict(lora_rank=4, lora_alpha=0), r"--lora-alpha \(lora_alpha=\) must be positive"),
    (dict(lora_rank=4, lora_dropout=1.0), r"--lora-dropout \(lora_dropout=\) must be in \[0, 1\)"),
    (dict(lora_alpha=16), "--lora-alpha set without --lora-rank"),
    (dict(lora_dropout=0.1), "--lora-dropout set without --lora-rank"),
])
def test_lora_misuse_is_refused_before_anything_loads(tmp_path, kwargs, message):
    # the data set does not exist: the LoRA flags are checked first
    with pytest.raises(ValueError, match=message):
        train("setr-pup-vit-large-ade20k-512", str(tmp_path / "no-such-data"), output_dir=str(tmp_path / "o"),
              **kwargs)


def test_lora_without_peft_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r'needs peft.*pip install "hf_seg\[peft\]"'):
        train("setr-pup-vit-large-ade20k-512", str(tmp_path / "no-such-data"), output_dir=str(tmp_path / "o"),
              lora_rank=8)
    assert cli_main(["train", "--model", "setr-pup-vit-large-ade20k-512", "--dataset", str(tmp_path / "no-such-data"),
                     "--output_dir", str(tmp_path / "o"), "--lora-rank", "8"]) != 0
    assert 'pip install "hf_seg[peft]"' in capsys.readouterr().err


def test_lora_refuses_models_without_a_recipe():
    backbone = hf_seg.MPViTConfig(hidden_sizes=[16, 16, 24, 32], depths=[1, 1, 1, 1], num_paths=[1, 1, 1, 1],
                                  mlp_ratios=[2, 2, 2, 2], out_features=["stage1", "stage2", "stage3", "stage4"])
    upernet = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, hidden_size=16,
                                                           auxiliary_channels=8, num_labels=6))
    with pytest.raises(ValueError, match="no LoRA recipe for a UperNetForSemanticSegmentation .*'upernet'.*mpvit"):
        apply_lora(upernet, rank=2)
    classifier = hf_seg.MPViTForImageClassification(hf_seg.MPViTConfig(**TINY_MPVIT))
    with pytest.raises(ValueError, match="has no decode_head"):
        apply_lora(classifier, rank=2)


def test_lora_with_sharded_weights_is_refused(tmp_path, shapes, monkeypatch):
    """FSDP / DeepSpeed shard the weights that the adapters are merged into at the end: refused before training."""
    from hf_seg.training import SegmentationTrainer

    original = SegmentationTrainer.__init__

    def as_if_fsdp(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.is_fsdp_enabled = True

    monkeypatch.setattr(SegmentationTrainer, "__init__", as_if_fsdp)
    with pytest.raises(ValueError, match="--lora-rank .* FSDP or DeepSpeed"):
        _mpvit_run(tmp_path / "fsdp", shapes)
    assert not (tmp_path / "fsdp" / "checkpoint-2").exists()
