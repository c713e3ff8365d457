# Copyright 2026 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""SETR configuration."""

import numbers

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


SETR_DECODER_TYPES = ("naive", "pup", "mla")


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
class SetrConfig(PreTrainedConfig):
    r"""
    Configuration of [`SetrForSemanticSegmentation`]: a plain ViT encoder (SETR, Zheng et al., CVPR 2021) with the
    Naive, PUP (progressive upsampling) or MLA (multi-level aggregation) decoder and auxiliary heads. The defaults give
    the paper's SETR-PUP with ViT-Large/16 at 512x512 as the authors' code (`fudan-zvg/SETR`) builds it; the named
    variants live in `hf_seg.presets`.

    Encoder (the field names are those of `ViTConfig`, whose layers are reused):
        image_size (`int` or `(height, width)`, defaults to 512): input size the position embeddings are stored for.
            Other sizes (any multiple of `patch_size`) work: the stored grid is resized bilinearly at run time.
        patch_size (`int`, defaults to 16), num_channels (`int`, defaults to 3).
        hidden_size (`int`, defaults to 1024), num_hidden_layers (`int`, defaults to 24),
        num_attention_heads (`int`, defaults to 16).
        intermediate_size (`int`, defaults to 4096): MLP width, i.e. hidden_size x MLP ratio 4.
        hidden_act (`str`, defaults to `"gelu"`, the exact erf GELU).
        qkv_bias (`bool`, defaults to `True`).
        patch_bias (`bool`, defaults to `True`): whether the patch-embedding convolution has a bias. The authors' and
            timm's ViT have one; mmsegmentation 1.x builds SETR without it.
        layer_norm_eps (`float`, defaults to 1e-6): for every LayerNorm (encoder, heads, MLA neck).
        hidden_dropout_prob (`float`, defaults to 0.0): dropout after the position embedding, the attention output
            and the MLP (every SETR config sets 0). attention_probs_dropout_prob (`float`, defaults to 0.0).
        initializer_range (`float`, defaults to 0.02): std of the truncated normal for Linear weights, class token
            and position embeddings; convolutions keep PyTorch's default init, as in the authors' code.

    Hybrid encoder (the paper's "Hybrid" baseline: a ResNet-50 FCN feeding the transformer):
        backbone_config (`dict` or `PreTrainedConfig`, *optional*): a convolutional backbone (transformers'
            `AutoBackbone`, e.g. `ResNetConfig(out_features=["stage4"])`) whose last output map replaces the patch
            embedding: a 1x1 convolution projects it to `hidden_size` and its pixels are the tokens. Its stride must
            be `patch_size`, which keeps the meaning of `image_size` / `patch_size` (the token grid).
        backbone_dilate_last_stage (`bool`, defaults to `True`): give a ResNet's last stage stride 1 and dilation 2
            (the first block keeps dilation 1, mmsegmentation's `contract_dilation`), so that ResNet-50's stage 4 ends
            at 1/16 as the paper's FCN encoder with output stride 16 does.

    Decoder:
        decoder_type (`str`, defaults to `"pup"`): `"naive"`, `"pup"` or `"mla"`. Naive and PUP share one head
            (LayerNorm on the tokens of layer `decoder_in_index`, then `decoder_num_convs` x [conv, BN, ReLU, bilinear
            upsample by `decoder_upsample_scale`], then a 1x1 classifier). With `"mla"` the class token is dropped
            before the first block (both sources do this) and the MLA neck + head read layers `mla_in_indices`.
        decoder_in_index (`int`, defaults to -1): encoder layer read by the Naive/PUP head (-1 = last).
        decoder_channels (`int`, defaults to 256), decoder_num_convs (`int`, defaults to 4),
        decoder_kernel_size (`int`, defaults to 3), decoder_upsample_scale (`int`, defaults to 2).
            Authors' Naive: 1 conv, kernel 1, scale 1 (classify at 1/16, one resize to the input). mmsegmentation's
            Naive: 1 conv, kernel 1, scale 4. PUP (both): 4 convs, kernel 3, scale 2.
        head_conv_bias (`bool`, defaults to `True`): bias on the convolutions before BatchNorm in the Naive/PUP
            decode and auxiliary heads (authors: yes; mmsegmentation 1.x: no).
        mla_in_indices (`list[int]`, defaults to `[5, 11, 17, 23]`): encoder layers of the MLA neck, shallow to deep.
        mla_channels (`int`, defaults to 256), mla_head_channels (`int`, defaults to 128).
        mla_head_align_corners (`bool`, defaults to `True`): `align_corners` of the MLA head's x4 upsampling (authors:
            True, mmsegmentation 1.x: False).
        mla_classifier_kernel_size (`int`, defaults to 3): MLA classifier kernel (authors: 3, mmsegmentation 1.x: 1).
            The MLA head concatenates its four branches shallow to deep; a checkpoint with the opposite order maps
            onto it by permuting the classifier's input channels.

    Auxiliary heads (training only; they run only when `labels` are given):
        auxiliary_in_indices (`list[int]`, defaults to `[9, 14, 19, 23]`): encoder layers read by one auxiliary head
            each (Naive/PUP), or MLA neck outputs 0-3 (shallow to deep) for MLA. Empty: no auxiliary head.
        auxiliary_num_convs (`int`, defaults to 1), auxiliary_kernel_size (`int`, defaults to 3),
        auxiliary_upsample_scale (`int`, defaults to 4): the same head as the Naive/PUP decoder (for MLA: a 1x1
            classifier on the neck output after `auxiliary_num_convs` convs, 0 in both sources).
        auxiliary_loss_weight (`float`, defaults to 0.4).
        semantic_loss_ignore_index (`int`, defaults to 255): label value ignored by the loss.
    """

    model_type = "setr"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig, model_type="resnet", init_kwargs={"out_features": ["stage4"]}, optional=True
        ),
    }

    image_size: int | list[int] | tuple[int, int] = 512
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    patch_bias: bool = True
    layer_norm_eps: float = 1e-6
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    backbone_config: dict | PreTrainedConfig | None = None
    backbone_dilate_last_stage: bool = True

    decoder_type: str = "pup"
    decoder_in_index: int = -1
    decoder_channels: int = 256
    decoder_num_convs: int = 4
    decoder_kernel_size: int = 3
    decoder_upsample_scale: int = 2
    head_conv_bias: bool = True
    mla_in_indices: list[int] | tuple[int, ...] = (5, 11, 17, 23)
    mla_channels: int = 256
    mla_head_channels: int = 128
    mla_head_align_corners: bool = True
    mla_classifier_kernel_size: int = 3

    auxiliary_in_indices: list[int] | tuple[int, ...] = (9, 14, 19, 23)
    auxiliary_num_convs: int = 1
    auxiliary_kernel_size: int = 3
    auxiliary_upsample_scale: int = 4
    auxiliary_loss_weight: float | int = 0.4
    semantic_loss_ignore_index: int = 255

    def __post_init__(self, **kwargs):
        check_labels(kwargs.get("num_labels"), self.id2label)
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
    def image_grid_size(self) -> tuple[int, int]:
        """(rows, columns) of the stored position-embedding grid."""
        height, width = (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size
        return height // self.patch_size, width // self.patch_size

    def validate_architecture(self):
        """Part of `@strict` validation: refuse configurations the model cannot build, naming the field."""
        super().validate_architecture()
        for name in ("patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "decoder_channels", "mla_channels", "mla_head_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.auxiliary_num_convs < 0:
            raise ValueError(f"auxiliary_num_convs={self.auxiliary_num_convs} must be at least 0")
        if self.auxiliary_loss_weight < 0:
            raise ValueError(f"auxiliary_loss_weight={self.auxiliary_loss_weight} must be at least 0")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps} must be positive")
        if not self.id2label:
            raise ValueError(f"id2label={self.id2label} names no class: a model needs num_labels >= 1")
        if self.backbone_config is not None:
            out_features = getattr(self.backbone_config, "out_features", None)
            if not out_features or len(out_features) != 1:
                raise ValueError(
                    f"backbone_config.out_features={out_features} must name the one stage whose map becomes the tokens"
                )
            if self.backbone_dilate_last_stage and self.backbone_config.model_type != "resnet":
                raise ValueError(
                    "backbone_dilate_last_stage=True applies to transformers' ResNet; a "
                    f"{self.backbone_config.model_type!r} backbone must reach stride patch_size={self.patch_size} "
                    "by itself (set backbone_dilate_last_stage=False)"
                )
        if self.decoder_type not in SETR_DECODER_TYPES:
            raise ValueError(f"decoder_type={self.decoder_type!r} is not one of {SETR_DECODER_TYPES}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )
        image_size = [self.image_size] * 2 if isinstance(self.image_size, int) else list(self.image_size)
        if len(image_size) != 2 or any(side <= 0 or side % self.patch_size for side in image_size):
            raise ValueError(
                f"image_size={self.image_size} must be one or two positive multiples of patch_size={self.patch_size}"
            )
        if self.decoder_type == "mla" and len(self.mla_in_indices) != 4:
            raise ValueError(f"mla_in_indices={self.mla_in_indices} must name exactly 4 encoder layers")
        index_fields = ("mla_in_indices" if self.decoder_type == "mla" else "decoder_in_index", "auxiliary_in_indices")
        for name in index_fields:
            value = getattr(self, name)
            indices = [value] if isinstance(value, int) else list(value)
            if name == "auxiliary_in_indices" and self.decoder_type == "mla":
                bound = len(self.mla_in_indices)  # MLA auxiliary heads read the neck outputs
            else:
                bound = self.num_hidden_layers
            bad = [index for index in indices if not -bound <= index < bound]
            if bad:
                raise ValueError(f"{name}={value} has indices {bad} outside the {bound} available inputs")
        for name in ("decoder_kernel_size", "auxiliary_kernel_size", "mla_classifier_kernel_size"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name}={getattr(self, name)} must be odd so that padding keeps the map size")
        if self.decoder_num_convs < 1:
            raise ValueError(f"decoder_num_convs={self.decoder_num_convs} must be at least 1")
        for name in ("decoder_upsample_scale", "auxiliary_upsample_scale"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")


__all__ = ["SetrConfig"]
