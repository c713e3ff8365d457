"""hf_seg's own SETR model tests: losses, any input size, attention backends, save/load, Auto and remote code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForSemanticSegmentation

import hf_seg
from hf_seg import SetrConfig, SetrForSemanticSegmentation


def tiny_config(decoder_type="pup", **overrides):
    heads = {
        "naive": dict(decoder_num_convs=1, decoder_kernel_size=1, decoder_upsample_scale=1,
                      auxiliary_in_indices=[0, 1], auxiliary_num_convs=1, auxiliary_kernel_size=1,
                      auxiliary_upsample_scale=1),
        "pup": dict(auxiliary_in_indices=[0, 1, 2]),
        "mla": dict(mla_in_indices=[0, 1, 2, 3], auxiliary_in_indices=[0, 1, 2, 3], auxiliary_num_convs=0),
    }.get(decoder_type, {})
    kwargs = dict(
        image_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        decoder_type=decoder_type, decoder_channels=16, mla_channels=16, mla_head_channels=8, num_labels=5,
        **heads,
    )
    kwargs.update(overrides)
    return SetrConfig(**kwargs)


def tiny_model(decoder_type="pup", seed=0, **overrides):
    torch.manual_seed(seed)
    model = SetrForSemanticSegmentation(tiny_config(decoder_type, **overrides)).eval()
    # non-trivial BatchNorm statistics, so that a wrong BN path cannot hide
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


DECODERS = ["naive", "pup", "mla"]


@pytest.mark.parametrize("decoder_type", DECODERS)
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (96, 32), (16, 16)])
def test_any_multiple_of_the_patch_size(decoder_type, size):
    model = tiny_model(decoder_type)
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = model(pixel_values).logits
    assert logits.shape == (2, 5, *size)  # logits come at the input's resolution
    assert torch.isfinite(logits).all()


def test_position_embeddings_resized_bilinearly_at_run_time():
    model = tiny_model("pup")
    embeddings = model.setr.embeddings
    stored = embeddings.position_embeddings
    assert embeddings.resize_position_embeddings((4, 4)) is stored  # stored grid: no resize
    resized = embeddings.resize_position_embeddings((3, 5))
    grid = stored[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(3, 5), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(resized[:, 1:], expected, rtol=0, atol=0)
    torch.testing.assert_close(resized[:, :1], stored[:, :1], rtol=0, atol=0)
    bicubic = F.interpolate(grid, size=(3, 5), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert not torch.allclose(resized[:, 1:], bicubic)  # not transformers ViT's interpolate_pos_encoding


def test_non_square_input_equals_manual_encoder():
    """The encoder on a 48x80 input equals patch-embed + bilinear position grid + the same ViT layers by hand."""
    model = tiny_model("pup")
    pixel_values = torch.randn(1, 3, 48, 80)
    embeddings = model.setr.embeddings
    patches = embeddings.projection(pixel_values).flatten(2).transpose(1, 2)
    tokens = torch.cat([embeddings.cls_token, patches], dim=1) + embeddings.resize_position_embeddings((3, 5))
    for layer in model.setr.layers:
        tokens = layer(tokens)
    with torch.no_grad():
        torch.testing.assert_close(model.setr(pixel_values).last_hidden_state, tokens, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_loss_is_decode_plus_weighted_auxiliary_cross_entropy_with_ignore_index(decoder_type):
    model = tiny_model(decoder_type)
    model.train()  # BatchNorm in training mode, as in fine-tuning
    pixel_values = torch.randn(2, 3, 48, 64)
    labels = torch.randint(0, 5, (2, 48, 64))
    labels[0, :20] = 255
    labels[1, :, :7] = 255
    outputs = model(pixel_values, labels=labels, output_hidden_states=True)

    # Recompute the loss from the heads by hand, with the encoder states the model returned.
    grid = (3, 4)
    states = outputs.hidden_states
    config = model.config
    if decoder_type == "mla":
        neck = model.neck([states[i + 1] for i in config.mla_in_indices], grid)
        decode_logits = model.decode_head(neck)
        aux_inputs = [neck[i] for i in config.auxiliary_in_indices]
    else:
        decode_logits = model.decode_head(states[config.decoder_in_index % config.num_hidden_layers + 1], grid)
        aux_inputs = [states[i + 1] for i in config.auxiliary_in_indices]

    def cross_entropy(head_logits):
        logits = F.interpolate(head_logits, size=(48, 64), mode="bilinear", align_corners=False)
        valid = labels != 255
        log_probs = logits.log_softmax(dim=1).permute(0, 2, 3, 1)[valid]
        return -log_probs.gather(1, labels[valid][:, None]).sum() / labels.numel()  # ignored pixels count as 0

    expected = cross_entropy(decode_logits)
    for head, head_input in zip(model.auxiliary_heads, aux_inputs):
        expected = expected + 0.4 * cross_entropy(head(head_input, grid))
    assert len(model.auxiliary_heads) == len(config.auxiliary_in_indices) > 0
    torch.testing.assert_close(outputs.loss, expected, rtol=1e-5, atol=1e-6)
    outputs.loss.backward()
    assert all(p.grad is not None for p in model.auxiliary_heads.parameters())


def test_all_ignored_crop_gives_zero_loss_not_nan():
    model = tiny_model("pup")
    loss = model(torch.randn(1, 3, 32, 32), labels=torch.full((1, 32, 32), 255)).loss
    assert loss.item() == 0  # mmsegmentation's average over all pixels; torch's default mean would be NaN


def test_labels_at_another_size_than_the_input():
    model = tiny_model("naive")
    loss = model(torch.randn(1, 3, 32, 48), labels=torch.randint(0, 5, (1, 64, 96))).loss
    assert torch.isfinite(loss)


def test_auxiliary_heads_only_run_with_labels():
    model = tiny_model("pup")
    calls = []
    for head in model.auxiliary_heads:
        head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert calls == []
    model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 32, 32, dtype=torch.long))
    assert len(calls) == 3


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_eager_and_sdpa_give_the_same_logits(decoder_type):
    torch.manual_seed(0)
    sdpa = SetrForSemanticSegmentation._from_config(tiny_config(decoder_type), attn_implementation="sdpa").eval()
    eager = SetrForSemanticSegmentation._from_config(tiny_config(decoder_type), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    pixel_values = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(pixel_values).logits, eager(pixel_values).logits, rtol=0, atol=1e-5)


def test_sdpa_is_the_default():
    assert SetrForSemanticSegmentation(tiny_config()).config._attn_implementation == "sdpa"


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model("pup")
    model.train()
    pixel_values = torch.randn(1, 3, 32, 48)
    labels = torch.randint(0, 5, (1, 32, 48))
    model(pixel_values, labels=labels).loss.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    model(pixel_values, labels=labels).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_save_load_round_trip(tmp_path, decoder_type):
    model = tiny_model(decoder_type)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "setr"
    assert config["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_setr.SetrForSemanticSegmentation"
    assert (tmp_path / "modeling_setr.py").exists() and (tmp_path / "configuration_setr.py").exists()
    loaded = SetrForSemanticSegmentation.from_pretrained(tmp_path).eval()
    pixel_values = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)


def test_weight_init_follows_the_authors_code():
    torch.manual_seed(0)
    model = SetrForSemanticSegmentation(tiny_config("pup", hidden_size=256, intermediate_size=1024))
    fc1 = model.setr.layers[0].mlp.fc1
    assert abs(fc1.weight.std().item() - 0.02) < 0.002 and fc1.bias.abs().max() == 0  # trunc_normal(std=0.02)
    assert abs(model.setr.embeddings.position_embeddings.std().item() - 0.02) < 0.003
    conv = model.decode_head.convs[0].conv  # PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
    bound = 1 / conv.weight[0].numel() ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert conv.bias.abs().max() <= bound and conv.bias.abs().max() > 0
    norm = model.decode_head.convs[0].batch_norm
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, message",
    [((1, 3, 50, 64), "multiples of the patch size 16"), ((1, 3, 64, 40), "multiples of the patch size 16"),
     ((1, 1, 64, 64), "shape \\(batch, 3, height, width\\)"), ((3, 64, 64), "shape \\(batch, 3, height, width\\)")],
)
def test_bad_pixel_values_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(torch.randn(*shape))


@pytest.mark.parametrize(
    "labels, message",
    [(torch.full((1, 32, 32), 5), "values \\[5\\] outside \\[0, 5\\)"),
     (torch.full((1, 32, 32), -1), "values \\[-1\\]"),
     (torch.zeros(1, 1, 32, 32, dtype=torch.long), "labels must have shape \\(batch, height, width\\)"),
     (torch.zeros(2, 32, 32, dtype=torch.long), "with batch 1"),
     (torch.zeros(1, 32, 32), "integer tensor")],
)
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(torch.randn(1, 3, 32, 32), labels=labels)


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(decoder_type="fcn"), "decoder_type='fcn'"), (dict(image_size=60), "image_size=60"),
     (dict(hidden_size=30), "hidden_size=30"), (dict(auxiliary_in_indices=[7]), "auxiliary_in_indices"),
     (dict(decoder_kernel_size=2), "decoder_kernel_size=2"),
     (dict(decoder_type="mla", mla_in_indices=[0, 1, 2]), "mla_in_indices")],
)
def test_bad_configs_are_refused(overrides, message):
    # transformers' strict configs wrap the validator's ValueError in StrictDataclassClassValidationError
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_config(**overrides)


# --- presets ---------------------------------------------------------------------------------------------------------

# Parameters of the authors' models without auxiliary heads and without their unused `conv_seg` layers
# (counted from the authors' configs; MODELS.md §2.11).
AUTHORS_INFERENCE_PARAMETERS = {
    "setr-naive-vit-large-ade20k-512": 304_450_966,
    "setr-pup-vit-large-ade20k-512": 308_319_894,
    "setr-mla-vit-large-ade20k-512": 310_030_486,
    "setr-naive-vit-large-cityscapes-768": 305_728_019,
    "setr-pup-vit-large-cityscapes-768": 309_596_947,
    "setr-mla-vit-large-cityscapes-768": 310_737_427,
    "setr-naive-vit-large-pascal-context-480": 304_300_860,
    "setr-pup-vit-large-pascal-context-480": 308_169_788,
    "setr-mla-vit-large-pascal-context-480": 309_488_700,
    "setr-naive-vit-base-cityscapes-768": 87_619_859,
    "setr-naive-deit-base-cityscapes-768": 87_619_859,
    "setr-pup-deit-base-cityscapes-768": 90_964_499,
    "setr-mla-deit-base-cityscapes-768": 92_431_123,
}
# The other variants, from those counts: (preset, the counted preset it differs from, difference in parameters).
# ViT-B is DeiT-B's architecture; on ADE20K (150 classes, 32x32 grid) and Pascal Context (60, 30x30) only the
# position embeddings (768 wide) and the classifier (PUP 1x1 on 256 channels, MLA 3x3 on 512, with bias) change
# against Cityscapes (19 classes, 48x48); the hybrid swaps ViT's 16x16 patch embedding (3*256*768 + 768) for
# ResNet-50 without its classifier (23,508,032) and a 1x1 projection of its 2048 channels (2048*768 + 768).
DERIVED_INFERENCE_PARAMETERS = {
    "setr-pup-vit-base-cityscapes-768": ("setr-pup-deit-base-cityscapes-768", 0),
    "setr-mla-vit-base-cityscapes-768": ("setr-mla-deit-base-cityscapes-768", 0),
    "setr-pup-deit-base-ade20k-512": ("setr-pup-deit-base-cityscapes-768", (1025 - 2305) * 768 + (150 - 19) * 257),
    "setr-mla-deit-base-ade20k-512": ("setr-mla-deit-base-cityscapes-768", (1025 - 2305) * 768 + (150 - 19) * 4609),
    "setr-pup-deit-base-pascal-context-480": ("setr-pup-deit-base-cityscapes-768",
                                              (901 - 2305) * 768 + (60 - 19) * 257),
    "setr-mla-deit-base-pascal-context-480": ("setr-mla-deit-base-cityscapes-768",
                                              (901 - 2305) * 768 + (60 - 19) * 4609),
    "setr-naive-r50-vit-base-cityscapes-768": ("setr-naive-vit-base-cityscapes-768",
                                               -(3 * 256 * 768 + 768) + 23_508_032 + 2048 * 768 + 768),
}


def test_presets_are_listed():
    assert hf_seg.list_models("setr") == sorted({**AUTHORS_INFERENCE_PARAMETERS, **DERIVED_INFERENCE_PARAMETERS})
    with pytest.raises(KeyError, match="unknown model preset 'setr-huge'"):
        hf_seg.create_model("setr-huge")


def _inference_parameters(name: str) -> int:
    with torch.device("meta"):
        model = hf_seg.create_model(name)
    total = sum(p.numel() for p in model.parameters())
    return total - sum(p.numel() for p in model.auxiliary_heads.parameters())


@pytest.mark.parametrize("name", sorted(AUTHORS_INFERENCE_PARAMETERS))
def test_preset_parameter_counts_match_the_authors(name):
    assert _inference_parameters(name) == AUTHORS_INFERENCE_PARAMETERS[name]


def test_the_other_variants_parameter_counts_follow_from_the_authors():
    for name, (counted, difference) in DERIVED_INFERENCE_PARAMETERS.items():
        assert _inference_parameters(name) == AUTHORS_INFERENCE_PARAMETERS[counted] + difference, name


def test_default_config_is_setr_pup_vit_large_ade20k():
    preset = hf_seg.create_config("setr-pup-vit-large-ade20k-512")
    default = SetrConfig()
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                  "decoder_type", "decoder_num_convs", "decoder_kernel_size", "decoder_upsample_scale",
                  "auxiliary_in_indices", "auxiliary_num_convs", "auxiliary_kernel_size", "auxiliary_upsample_scale",
                  "auxiliary_loss_weight", "layer_norm_eps", "patch_bias", "head_conv_bias"):
        normalise = lambda value: list(value) if isinstance(value, tuple) else value  # noqa: E731
        assert normalise(getattr(default, field)) == normalise(getattr(preset, field)), field
    assert preset.num_labels == 150 and preset.id2label[0] == "wall" and preset.id2label[149] == "flag"


def test_create_model_overrides():
    with torch.device("meta"):
        model = hf_seg.create_model("setr-naive-vit-base-cityscapes-768", num_labels=7)
    assert model.config.num_labels == 7 and model.decode_head.classifier.out_channels == 7
    assert model.config.id2label[6] == "LABEL_6"


# --- Auto classes, the Hub cache and remote code ---------------------------------------------------------------------


def test_auto_classes_after_import(tmp_path):
    model = tiny_model("mla")
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is SetrConfig
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    assert type(loaded) is SetrForSemanticSegmentation


def populate_hub_cache(cache_dir, repo_id, folder, revision="0" * 40):
    """Lay a saved folder out as huggingface_hub's cache does after a download of `repo_id`."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_load_hub_repo_id_from_the_local_cache_offline(tmp_path, monkeypatch):
    model = tiny_model("pup")
    processor = hf_seg.create_image_processor("setr-pup-vit-large-ade20k-512")
    model.save_pretrained(tmp_path / "saved")
    processor.save_pretrained(tmp_path / "saved")
    populate_hub_cache(tmp_path / "hub", "some-org/setr-tiny", tmp_path / "saved")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = AutoModelForSemanticSegmentation.from_pretrained("some-org/setr-tiny", cache_dir=tmp_path / "hub")
    pixel_values = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)
    from transformers import AutoImageProcessor

    loaded_processor = AutoImageProcessor.from_pretrained("some-org/setr-tiny", cache_dir=tmp_path / "hub")
    assert type(loaded_processor).__name__ == "SetrImageProcessor"
    assert loaded_processor.do_reduce_labels is True


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["hf_seg"] = None  # any `import hf_seg` now fails: only the folder's own code may be used
    import numpy as np, torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation
    folder = sys.argv[1]
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    image = (np.arange(40 * 56 * 3) % 251).astype(np.uint8).reshape(40, 56, 3)
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        logits = model(torch.load(folder + "/pixel_values.pt")).logits
    torch.testing.assert_close(logits, torch.load(folder + "/logits.pt"), rtol=0, atol=0)
    maps = processor.post_process_semantic_segmentation(model(**inputs), target_sizes=[(40, 56)])
    assert maps[0].shape == (40, 56)
    print("remote code OK", type(model).__name__, type(processor).__name__)
    """
)


def test_trust_remote_code_without_hf_seg(tmp_path):
    model = tiny_model("mla")
    processor = hf_seg.create_image_processor("setr-mla-vit-large-ade20k-512")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    preprocessor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert "AutoImageProcessor" in json.dumps(preprocessor["auto_map"])
    pixel_values = torch.randn(1, 3, 48, 64)
    torch.save(pixel_values, tmp_path / "pixel_values.pt")
    with torch.no_grad():
        torch.save(model(pixel_values).logits, tmp_path / "logits.pt")
    # the child runs as many threads as this process: the GEMMs' summation order, and so the last bits, depend on it
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="",
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code OK SetrForSemanticSegmentation SetrImageProcessor" in result.stdout

