"""`hf_seg.optimize_for_inference`: the opt-in CPU inference rewrites compute the plain model's function for every
family (transformers' own SegFormer and UperNet included), only where the data flow allows it, with the plain
computation under autograd / autocast / compile / other dtypes / oneDNN disabled or missing; the optimized model
saves the plain weights and code; the model files themselves carry none of it."""

import copy
import json
import re
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForSemanticSegmentation, UperNetConfig, UperNetForSemanticSegmentation

import hf_seg
from hf_seg import optimize
from hf_seg.optimize import is_optimized_for_inference, optimize_for_inference, undo_inference_optimizations
from tiny_models import NUM_LABELS, tiny_mpvit, tiny_segformer, tiny_setr


ONEDNN_LINEAR = "mkldnn::_linear_pointwise"
TOLERANCE = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:The use of `x.T`")


def randomized(model):
    """Non-trivial BatchNorm statistics and affine parameters, so that a wrong fold cannot hide."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 0.6 - 0.3)
    return model.eval()


def tiny_segformer_mmseg():
    torch.manual_seed(0)
    config = hf_seg.SegformerMmsegConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16, num_labels=NUM_LABELS,
    )
    return hf_seg.SegformerMmsegForSemanticSegmentation(config).eval()


def tiny_transformers_upernet_mpvit():
    """transformers' own UperNetForSemanticSegmentation with an MPViT backbone (its heads: transformers' classes)."""
    backbone_config = tiny_mpvit().config
    torch.manual_seed(0)
    config = UperNetConfig(
        backbone_config=backbone_config, hidden_size=backbone_config.decoder_hidden_size,
        pool_scales=list(backbone_config.pool_scales), use_auxiliary_head=True, auxiliary_channels=8,
        auxiliary_in_channels=None, num_labels=NUM_LABELS,
    )
    return UperNetForSemanticSegmentation(config).eval()


FAMILIES = {
    "setr-naive": (lambda: tiny_setr("naive"), (48, 80)),
    "setr-pup": (lambda: tiny_setr("pup"), (48, 80)),
    "setr-mla": (lambda: tiny_setr("mla"), (64, 48)),
    "segformer": (tiny_segformer, (45, 70)),
    "segformer-mmseg": (tiny_segformer_mmseg, (45, 70)),
    "mpvit-upernet": (tiny_mpvit, (45, 70)),
    "transformers-upernet-mpvit": (tiny_transformers_upernet_mpvit, (40, 72)),
}
UPERNET = {"mpvit-upernet", "transformers-upernet-mpvit"}
SEGFORMER = {"segformer", "segformer-mmseg"}


def operators_run(function) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        function()
    return {event.key for event in profile.key_averages()}


def pair(family):
    make, size = FAMILIES[family]
    plain = randomized(make())
    optimized = optimize_for_inference(copy.deepcopy(plain))
    pixel_values = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    return plain, optimized, pixel_values


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_optimized_model_gives_the_plain_models_logits(family):
    plain, optimized, pixel_values = pair(family)
    record = optimized._hf_seg_inference_optimizations
    assert record.traced and record.folded_batch_norms >= 1 and record.inplace_activations >= 1, record
    assert record.coarse_bottleneck_heads == (family in UPERNET)
    # SegFormer: the all-MLP head fused on the coarse stages; at 45 x 70 the stride-8 sequence reduction of the
    # 12 x 18 stage drops a remainder, as the convolution does; 4 patch embeddings + 4 depthwise convolutions
    assert record.coarse_fuse_heads == (family in SEGFORMER)
    assert (record.patch_reductions, record.channels_last_convs) == ((3, 8) if family in SEGFORMER else (0, 0))
    if optimize.onednn_linear_available():
        assert record.onednn_linears >= 1
    with torch.inference_mode():
        expected = plain(pixel_values).logits
        actual = optimized(pixel_values).logits
        ops = operators_run(lambda: optimized(pixel_values))
    torch.testing.assert_close(actual, expected, rtol=0, atol=TOLERANCE)
    assert (ONEDNN_LINEAR in ops) == optimize.onednn_linear_available()
    assert "aten::native_batch_norm" not in ops  # every BatchNorm that ran was folded
    # autograd recording: the plain computation (no oneDNN, BatchNorm as a module) and the same logits
    ops = operators_run(lambda: optimized(pixel_values))
    assert ONEDNN_LINEAR not in ops and "aten::native_batch_norm" in ops
    torch.testing.assert_close(optimized(pixel_values).logits.detach(), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", ["setr-pup", "mpvit-upernet"])
def test_the_model_code_and_state_dict_stay_plain(family, tmp_path):
    """Parameter names, the state dict and the module classes are the plain model's; `save_pretrained` of an
    optimized model writes the plain weights and the plain model files (no `torch.ops.mkldnn` anywhere in them), and
    the folder loads as a plain model with the same logits."""
    plain, optimized, pixel_values = pair(family)
    assert list(optimized.state_dict()) == list(plain.state_dict())
    assert [type(module) for module in optimized.modules()] == [type(module) for module in plain.modules()]
    optimized.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert sorted(saved) == sorted(plain.state_dict())
    for name, tensor in plain.state_dict().items():
        assert torch.equal(saved[name], tensor), name
    code = sorted(tmp_path.glob("*.py"))
    assert any(path.name.startswith("modeling_") for path in code)
    for path in code:
        text = path.read_text()
        assert "mkldnn" not in text and not re.search(r"^\s*(from|import) hf_seg", text, re.MULTILINE), path.name
    assert "optimiz" not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert not is_optimized_for_inference(loaded)
    assert not any("forward" in vars(module) for module in loaded.modules())
    with torch.inference_mode():
        torch.testing.assert_close(loaded(pixel_values).logits, plain(pixel_values).logits, rtol=0, atol=1e-6)


def test_new_weights_take_effect():
    """The folded weights follow `load_state_dict` and in-place edits of the convolutions and BatchNorms."""
    plain, optimized, pixel_values = pair("mpvit-upernet")
    with torch.inference_mode():
        optimized(pixel_values)  # folds every pair once
    generator = torch.Generator().manual_seed(3)
    state = {name: tensor * (1 + 0.2 * torch.rand(tensor.shape, generator=generator)) if tensor.is_floating_point()
             else tensor for name, tensor in plain.state_dict().items()}
    for model in (plain, optimized):
        model.load_state_dict(state)
    with torch.inference_mode():
        torch.testing.assert_close(optimized(pixel_values).logits, plain(pixel_values).logits, rtol=0, atol=TOLERANCE)
    with torch.no_grad():
        for model in (plain, optimized):
            model.decode_head.fpn_bottleneck.batch_norm.running_var.mul_(3)
            model.backbone.embeddings.conv1.conv.weight.neg_()
    with torch.inference_mode():
        torch.testing.assert_close(optimized(pixel_values).logits, plain(pixel_values).logits, rtol=0, atol=TOLERANCE)


def test_the_package_model_files_are_plain():
    root = Path(hf_seg.__file__).parent / "models"
    files = sorted(root.glob("*/modeling_*.py"))
    assert len(files) >= 3
    for path in files:
        text = path.read_text()
        for forbidden in ("torch.ops.mkldnn", "_linear_pointwise", "__class__ =", "is_grad_enabled", "relu_(", "gelu_"):
            assert forbidden not in text, (path.name, forbidden)


def test_idempotent_and_undone_by_train():
    plain, optimized, pixel_values = pair("mpvit-upernet")
    record = optimized._hf_seg_inference_optimizations
    forwards = {name: module.forward for name, module in optimized.named_modules() if "forward" in vars(module)}
    assert optimize_for_inference(optimized) is optimized
    assert optimized._hf_seg_inference_optimizations is record
    assert {name: module.forward for name, module in optimized.named_modules() if "forward" in vars(module)} == forwards
    optimized.eval()  # eval keeps it
    assert is_optimized_for_inference(optimized)

    optimized.train()  # training undoes it: the plain model trains
    assert optimized.training and not is_optimized_for_inference(optimized)
    assert not any("forward" in vars(module) for module in optimized.modules())
    assert "train" not in vars(optimized)
    optimized.eval()
    with torch.inference_mode():
        assert "aten::native_batch_norm" in operators_run(lambda: optimized(pixel_values))
    optimize_for_inference(optimized)  # and it can be optimized again
    assert is_optimized_for_inference(optimized) and not optimized.training
    with torch.inference_mode():
        torch.testing.assert_close(optimized(pixel_values).logits, plain(pixel_values).logits, rtol=0, atol=TOLERANCE)
    assert undo_inference_optimizations(optimized) is optimized and not is_optimized_for_inference(optimized)


def test_a_deep_copy_is_optimized_on_its_own_modules():
    _, optimized, pixel_values = pair("setr-pup")
    duplicate = copy.deepcopy(optimized)
    originals = {id(module) for module in optimized.modules()}
    for module in duplicate.modules():
        if "forward" in vars(module):
            assert module.forward.args[0] is module
            bound_modules = [argument for argument in module.forward.args if isinstance(argument, nn.Module)]
            assert not any(id(argument) in originals for argument in bound_modules)
    with torch.inference_mode():
        torch.testing.assert_close(duplicate(pixel_values).logits, optimized(pixel_values).logits, rtol=0, atol=0)


def test_fallback_when_the_onednn_op_is_missing(monkeypatch):
    """A PyTorch without `torch.ops.mkldnn._linear_pointwise`: the linear layers stay `F.linear`, the rest applies."""
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())
    assert not optimize.onednn_linear_available()
    plain, optimized, pixel_values = pair("setr-pup")
    record = optimized._hf_seg_inference_optimizations
    assert record.onednn_linears == 0 and record.folded_batch_norms >= 1 and record.inplace_activations >= 1
    with torch.inference_mode():
        ops = operators_run(lambda: optimized(pixel_values))
        torch.testing.assert_close(optimized(pixel_values).logits, plain(pixel_values).logits, rtol=0, atol=TOLERANCE)
    assert ONEDNN_LINEAR not in ops and "aten::native_batch_norm" not in ops


@pytest.mark.skipif(not optimize.onednn_linear_available(), reason="this PyTorch has no oneDNN linear op")
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_dispatch(bias):
    """An optimized `nn.Linear` computes `F.linear` for any leading shape and strided inputs; oneDNN's op runs only
    at fp32 CPU inference and everything else (autograd, autocast, float64, `torch.backends.mkldnn` disabled,
    compiling / exporting) takes `F.linear`, so gradients, reduced precision and the user's backend switch keep
    working."""
    torch.manual_seed(0)
    model = optimize_for_inference(nn.Sequential(nn.Linear(24, 40, bias=bias)), example_inputs=torch.randn(2, 24))
    layer = model[0]
    assert "forward" in vars(layer)
    inputs = [torch.randn(2, 7, 24), torch.randn(5, 24), torch.randn(3, 24, 9).transpose(1, 2)]
    for features in inputs:
        with torch.no_grad():
            assert ONEDNN_LINEAR in operators_run(lambda: layer(features))
            torch.testing.assert_close(layer(features), F.linear(features, layer.weight, layer.bias))
            with torch.backends.mkldnn.flags(enabled=False):
                assert ONEDNN_LINEAR not in operators_run(lambda: layer(features))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert ONEDNN_LINEAR not in operators_run(lambda: layer(features))
                assert layer(features).dtype == torch.bfloat16
            assert layer.double()(features.double()).dtype == torch.float64
            layer.float()
        assert ONEDNN_LINEAR not in operators_run(lambda: layer(features))
        layer(features).sum().backward()
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
        layer.zero_grad()


def test_compiling_autocast_and_float64_take_the_plain_computation(monkeypatch):
    plain, optimized, pixel_values = pair("mpvit-upernet")
    with torch.inference_mode():
        expected = plain(pixel_values).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ops = operators_run(lambda: optimized(pixel_values))
        assert ONEDNN_LINEAR not in ops and "aten::native_batch_norm" in ops
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # what dynamo / torch.export report
        ops = operators_run(lambda: optimized(pixel_values))
        assert ONEDNN_LINEAR not in ops and "aten::native_batch_norm" in ops
        torch.testing.assert_close(optimized(pixel_values).logits, expected, rtol=0, atol=TOLERANCE)
        monkeypatch.undo()
        optimized.double()
        ops = operators_run(lambda: optimized(pixel_values.double()))
        assert ONEDNN_LINEAR not in ops and "aten::native_batch_norm" in ops
        torch.testing.assert_close(optimized(pixel_values.double()).logits.float(), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", ["setr-pup", "mpvit-upernet"])
def test_torch_compile_of_an_optimized_model(family):
    """Dynamo traces the rewritten forwards (instance `forward`s) and takes their plain branch."""
    torch._dynamo.reset()
    plain, optimized, pixel_values = pair(family)
    compiled = torch.compile(optimized, backend="eager")
    with torch.inference_mode():
        torch.testing.assert_close(compiled(pixel_values).logits, plain(pixel_values).logits, rtol=0, atol=TOLERANCE)
    torch._dynamo.reset()


class Branches(nn.Module):
    """conv -> BN -> ReLU where other code also reads the convolution's or the BatchNorm's output, or returns it."""

    def __init__(self, reuse):
        super().__init__()
        self.reuse = reuse
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.batch_norm = nn.BatchNorm2d(4)
        self.activation = nn.ReLU()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, pixel_values):
        convolved = self.conv(pixel_values)
        normalized = self.batch_norm(convolved)
        activated = self.activation(normalized)
        if self.reuse == "conv-skip":
            return self.head(activated + convolved)
        if self.reuse == "norm-skip":
            return self.head(activated) + normalized.mean()
        if self.reuse == "conv-returned":
            return self.head(activated), convolved
        return self.head(activated)


@pytest.mark.parametrize(("reuse", "folds", "activations"),
                         [("none", 1, 1), ("conv-skip", 0, 0), ("norm-skip", 1, 0), ("conv-returned", 0, 0)])
def test_fusions_follow_the_data_flow(reuse, folds, activations):
    """BatchNorm folds into the convolution only where nothing else reads (or receives) the convolution's output;
    an activation runs in place only where nothing else reads its input."""
    model = randomized(Branches(reuse))
    plain = copy.deepcopy(model)
    pixel_values = torch.randn(2, 3, 9, 13)
    optimize_for_inference(model, example_inputs=pixel_values)
    record = model._hf_seg_inference_optimizations
    assert (record.folded_batch_norms, record.inplace_activations) == (folds, activations)
    with torch.inference_mode():
        for expected, actual in zip(*(optimize._tensors(m(pixel_values)) for m in (plain, model))):
            torch.testing.assert_close(actual, expected, rtol=0, atol=TOLERANCE)


def test_a_wrong_rewrite_is_caught_and_undone(monkeypatch):
    """The check after optimizing runs the example again: a rewrite that changed the function leaves the model
    plain and raises, naming the difference."""
    model = randomized(tiny_mpvit())
    monkeypatch.setattr(optimize, "fold_batch_norm", lambda conv, norm: (conv.weight * 2, None))
    with pytest.raises(RuntimeError, match="changed MPViTForSemanticSegmentation's outputs"):
        optimize_for_inference(model)
    assert not is_optimized_for_inference(model)
    assert not any("forward" in vars(module) for module in model.modules())


def test_a_meta_model_counts_the_inference_flops():
    """On the meta device (no compute) the rewrites that change FLOPs apply: the UperNet head's bottleneck on the
    coarse levels; oneDNN linears are CPU-only and fall back to `F.linear`, which the flop counter sees."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = tiny_mpvit()
        pixel_values = torch.randn(1, 3, 64, 64)
    counts = []
    for step in ("plain", "optimized"):
        if step == "optimized":
            optimize_for_inference(model)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(pixel_values)
        counts.append(counter.get_total_flops())
    assert counts[1] < counts[0]
