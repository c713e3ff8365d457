# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""MPViT configuration."""

import numbers

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin


# Copied from hf_seg.models.segformer.configuration_segformer_mmseg.check_segformer_labels
def check_labels(num_labels, id2label) -> None:
    """Refuse what transformers only warns about and then silently replaces: `num_labels` that is not a positive
    integer, or that disagrees with the number of classes `id2label` names; `id2label` that names no class, or
    whose keys are not the class ids 0..n-1. Called before the configuration is built (`num_labels` is not kept)."""
    if num_labels is not None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, numbers.Integral) or num_labels < 1:
            raise ValueError(f"num_labels={num_labels!r} must be a positive integer (the number of classes)")
        if id2label is not None and len(id2label) != num_labels:
            raise ValueError(
                f"num_labels={num_labels} disagrees with len(id2label)={len(id2label)}; pass one of the two or "
                "make them agree"
            )
    if id2label is not None:
        if len(id2label) == 0:
            raise ValueError("id2label={} names no class: a model needs num_labels >= 1")
        try:
            ids = sorted(int(key) for key in id2label)
        except (TypeError, ValueError):
            keys = list(id2label)[:8]
            raise ValueError(f"id2label keys must be the class ids 0..{len(id2label) - 1}, got {keys}") from None
        if ids != list(range(len(ids))):
            raise ValueError(f"id2label keys must be the class ids 0..{len(ids) - 1}, got {ids[:8]}")


@strict
class MPViTConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of the MPViT models (Lee et al., "MPViT: Multi-Path Vision Transformer for Dense Prediction",
    CVPR 2022): [`MPViTModel`], [`MPViTBackbone`], [`MPViTForImageClassification`] and
    [`MPViTForSemanticSegmentation`] (MPViT + UperNet). The defaults give MPViT-Small as the authors' code
    (`youngwanLEE/MPViT`) builds it, with mmsegmentation's UperNet head of the paper's ADE20K configs; the named
    variants live in `hf_seg.presets`.

    Backbone (the authors' argument names in brackets):
        num_channels (`int`, defaults to 3): input channels (`in_chans`).
        num_stages (`int`, defaults to 4): stages, each at half the resolution of the previous (strides 4 to 32).
        hidden_sizes (`list[int]`, defaults to `[64, 128, 216, 288]`): stage widths C0..C3 (`embed_dims`). The stem
            is Conv3x3(s2) to C0/2 and Conv3x3(s2) to C0; stage i outputs C(i+1) (the last stage C3), because its
            aggregation convolution already projects to the next stage's width.
        depths (`list[int]`, defaults to `[1, 3, 6, 3]`): transformer blocks per path in each stage (`num_layers`).
        num_paths (`list[int]`, defaults to `[2, 3, 3, 3]`): parallel paths per stage (`num_path`); path p sees the
            image through p + 1 chained depthwise-separable 3x3 patch embeddings (receptive fields 3, 5, 7).
        num_attention_heads (`list[int]`, defaults to `[8, 8, 8, 8]`): heads per stage (`num_heads`).
        mlp_ratios (`list[int]`, defaults to `[4, 4, 4, 4]`): MLP width / stage width.
        crpe_window_sizes (`list[int]`, defaults to `[3, 5, 7]`) and crpe_head_splits (`list[int]`, defaults to
            `[2, 3, 3]`): the convolutional relative position encoding's depthwise kernels and how many heads each
            one covers, in that order (the authors' `crpe_window={3: 2, 5: 3, 7: 3}`). The splits must add up to
            every stage's head count.
        qkv_bias (`bool`, defaults to `True`).
        hidden_act (`str`, defaults to `"gelu"`): MLP activation (the convolutions use Hardswish, as in the paper).
        layer_norm_eps (`float`, defaults to 1e-6), batch_norm_eps (`float`, defaults to 1e-5).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth, rising linearly over all blocks of all stages
            (every path of a stage uses the same per-block rates). The paper: ImageNet T/XS 0, S 0.05, B 0.3;
            UperNet on ADE20K S 0.2, B 0.4.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal of the Linear weights.
        out_features / out_indices: stages returned by [`MPViTBackbone`] from `stage_names` = `["stem", "stage1",
            ..., "stage4"]` (default: the last stage).

    UperNet head of [`MPViTForSemanticSegmentation`] (mmsegmentation's `UPerHead` + `FCNHead`):
        decoder_hidden_size (`int`, defaults to 512): UPerHead `channels`.
        pool_scales (`list[int]`, defaults to `[1, 2, 3, 6]`): pyramid pooling scales.
        classifier_dropout_prob (`float`, defaults to 0.1): Dropout2d before both classifiers (training only).
        use_auxiliary_head (`bool`, defaults to `True`): the FCN auxiliary head on stage 3 (runs only with labels).
        auxiliary_in_index (`int`, defaults to 2), auxiliary_channels (`int`, defaults to 256),
        auxiliary_num_convs (`int`, defaults to 1), auxiliary_concat_input (`bool`, defaults to `False`).
        auxiliary_loss_weight (`float`, defaults to 0.4).
        semantic_loss_ignore_index (`int`, defaults to 255): label value ignored by the loss.
    """

    model_type = "mpvit"
    attribute_map = {"num_hidden_layers": "num_stages"}

    num_channels: int = 3
    num_stages: int = 4
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 216, 288)
    depths: list[int] | tuple[int, ...] = (1, 3, 6, 3)
    num_paths: list[int] | tuple[int, ...] = (2, 3, 3, 3)
    num_attention_heads: list[int] | tuple[int, ...] = (8, 8, 8, 8)
    mlp_ratios: list[int] | tuple[int, ...] = (4, 4, 4, 4)
    crpe_window_sizes: list[int] | tuple[int, ...] = (3, 5, 7)
    crpe_head_splits: list[int] | tuple[int, ...] = (2, 3, 3)
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    batch_norm_eps: float = 1e-5
    drop_path_rate: float | int = 0.0
    initializer_range: float = 0.02
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    decoder_hidden_size: int = 512
    pool_scales: list[int] | tuple[int, ...] = (1, 2, 3, 6)
    classifier_dropout_prob: float | int = 0.1
    use_auxiliary_head: bool = True
    auxiliary_in_index: int = 2
    auxiliary_channels: int = 256
    auxiliary_num_convs: int = 1
    auxiliary_concat_input: bool = False
    auxiliary_loss_weight: float | int = 0.4
    semantic_loss_ignore_index: int = 255

    def __post_init__(self, **kwargs):
        check_labels(kwargs.get("num_labels"), self.id2label)
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, self.num_stages + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`from_pretrained(folder, num_labels=n)` asks for n new classes in place of the saved ones (transformers
        warns, then replaces `id2label` with LABEL_0..n-1): the saved names are dropped here, so that the strict
        check of `num_labels` against `id2label` only ever sees what the caller passed."""
        num_labels = kwargs.get("num_labels")
        if num_labels is not None:
            check_labels(num_labels, kwargs.get("id2label"))
            saved = config_dict.get("id2label")
            if saved is not None and len(saved) != num_labels:
                config_dict = {key: value for key, value in config_dict.items() if key not in ("id2label", "label2id")}
        return super().from_dict(config_dict, **kwargs)

    @property
    def stage_out_channels(self) -> list[int]:
        """Channels of the stem and of each stage's output (stage i projects to the next stage's width)."""
        return [self.hidden_sizes[0]] + list(self.hidden_sizes[1:]) + [self.hidden_sizes[-1]]

    def validate_architecture(self):
        """Part of `@strict` validation: refuse configurations the model cannot build, naming the field."""
        super().validate_architecture()
        for name in ("num_stages", "num_channels", "decoder_hidden_size", "auxiliary_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name in ("pool_scales", "crpe_window_sizes", "crpe_head_splits"):
            value = list(getattr(self, name))
            if not value or any(item < 1 for item in value):
                raise ValueError(f"{name}={value} must be a non-empty list of positive integers")
        for name in ("drop_path_rate", "classifier_dropout_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.auxiliary_num_convs < 0:
            raise ValueError(f"auxiliary_num_convs={self.auxiliary_num_convs} must be at least 0")
        if self.auxiliary_loss_weight < 0:
            raise ValueError(f"auxiliary_loss_weight={self.auxiliary_loss_weight} must be at least 0")
        for name in ("layer_norm_eps", "batch_norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if not self.id2label:
            raise ValueError(f"id2label={self.id2label} names no class: a model needs num_labels >= 1")
        for name in ("hidden_sizes", "depths", "num_paths", "num_attention_heads", "mlp_ratios"):
            value = getattr(self, name)
            if len(value) != self.num_stages:
                raise ValueError(f"{name}={list(value)} must have num_stages={self.num_stages} entries")
            if any(item < 1 for item in value):
                raise ValueError(f"{name}={list(value)} must be positive")
        if len(self.crpe_window_sizes) != len(self.crpe_head_splits):
            raise ValueError(
                f"crpe_window_sizes={list(self.crpe_window_sizes)} and crpe_head_splits={list(self.crpe_head_splits)} "
                "must have the same length"
            )
        if any(size % 2 == 0 for size in self.crpe_window_sizes):
            raise ValueError(f"crpe_window_sizes={list(self.crpe_window_sizes)} must be odd (same-size padding)")
        for stage, (width, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads)):
            if width % heads:
                raise ValueError(f"hidden_sizes[{stage}]={width} is not a multiple of num_attention_heads={heads}")
            if sum(self.crpe_head_splits) != heads:
                raise ValueError(
                    f"crpe_head_splits={list(self.crpe_head_splits)} must add up to the {heads} heads of stage {stage}"
                )
        if self.hidden_sizes[0] % 2:
            raise ValueError(f"hidden_sizes[0]={self.hidden_sizes[0]} must be even (the stem's first conv has half)")
        if not 0 <= self.auxiliary_in_index < self.num_stages:
            raise ValueError(f"auxiliary_in_index={self.auxiliary_in_index} is not a stage in [0, {self.num_stages})")


__all__ = ["MPViTConfig"]
