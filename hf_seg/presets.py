"""Named model variants: architecture, image-processor settings, label set and test-time inference settings.

`list_models()` lists the names, `create_model(name, **config_overrides)` builds a randomly initialised model of
that variant and `create_image_processor(name)` its processor. The numbers come from the papers' code (see
`shared/reference/MODELS.md` in the project's design notes: SETR §2.1-2.7).
"""

import copy
import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field

from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import (
    ConvNextImageProcessorPil,
    SegformerConfig,
    SegformerForImageClassification,
    SegformerForSemanticSegmentation,
)

from .labels import load_label_set
from .models.mpvit import MPViTConfig, MPViTForImageClassification, MPViTForSemanticSegmentation
from .models.segformer.configuration_segformer_mmseg import check_segformer_labels, validate_segformer_architecture
from .models.setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor


@dataclass(frozen=True)
class Preset:
    """One named variant. `config` holds the model-configuration fields, `processor` the image-processor ones,
    `inference` the papers' test protocol (mode, crop and stride for sliding windows)."""

    name: str
    family: str
    config: dict
    processor: dict
    label_set: str | None  # None: no names bundled (ImageNet-1k classifiers); the config sets num_labels
    inference: dict = field(default_factory=dict)
    recipe: str | None = None  # the training recipe, when it is not the one named after the family and data set
    note: str | None = None  # a sentence for the model cards of models built from the preset (trained or converted)


# --- SETR ------------------------------------------------------------------------------------------------------------

_VIT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
_VIT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
# encoder name in the preset -> its configuration. DeiT-B/16 is ViT-B/16 with other ImageNet weights: the authors'
# model never creates the distillation token (`--pretrained_encoder` drops it). The hybrid is the paper's ResNet-50
# FCN (last stage dilated: output stride 16) feeding ViT-B/16; its tokens are the 1/16 map's pixels.
_SETR_ENCODERS = {
    "vit-large": _VIT_LARGE,
    "vit-base": _VIT_BASE,
    "deit-base": _VIT_BASE,
    "r50-vit-base": dict(_VIT_BASE, backbone_config=dict(model_type="resnet", out_features=["stage4"])),
}

# The authors' heads (fudan-zvg/SETR configs/SETR/*.py); aux heads read these encoder layers (MLA: neck outputs).
_SETR_DECODERS = {
    "naive": dict(
        decoder_type="naive", decoder_in_index=-1, decoder_num_convs=1, decoder_kernel_size=1,
        decoder_upsample_scale=1, auxiliary_num_convs=1, auxiliary_kernel_size=1, auxiliary_upsample_scale=1,
    ),
    "pup": dict(
        decoder_type="pup", decoder_in_index=-1, decoder_num_convs=4, decoder_kernel_size=3,
        decoder_upsample_scale=2, auxiliary_num_convs=1, auxiliary_kernel_size=3, auxiliary_upsample_scale=4,
    ),
    "mla": dict(decoder_type="mla", auxiliary_in_indices=[0, 1, 2, 3], auxiliary_num_convs=0),
}
# (decoder, encoder depth) -> auxiliary encoder layers. 12 layers: the authors' Naive-Base / -DeiT and PUP-DeiT
# configs; the ViT-B PUP (no config of the authors) takes PUP-DeiT's, as the encoders are the same.
_SETR_AUX_LAYERS = {
    ("naive", 24): [9, 14, 19],
    ("pup", 24): [9, 14, 19, 23],
    ("naive", 12): [2, 5, 8],
    ("pup", 12): [4, 7, 9, 11],
}
_SETR_MLA_LAYERS = {24: [5, 11, 17, 23], 12: [2, 5, 8, 11]}

# dataset -> (crop size, label set, processor resize, reduce labels, slide stride)
_SETR_DATASETS = {
    "ade20k-512": (512, "ade20k", {"shortest_edge": 512, "longest_edge": 2048}, True, 341),
    "cityscapes-768": (768, "cityscapes", {"shortest_edge": 1025, "longest_edge": 2049}, False, 512),
    "pascal-context-480": (480, "pascal_context_60", {"shortest_edge": 520, "longest_edge": 520}, False, 320),
}


# The `*_MS.py` configs' MultiScaleFlipAug (MODELS.md §2.7): img_scale x these ratios, flipped too, each resized by
# `setr_multi_scale` (short side = max(crop, scaled short side), long side unbounded; the crop is the protocol's, so
# the rule follows a crop changed for training or evaluation); ADE20K Naive / MLA use three.
_SIX_RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
_SETR_AUG_SCALES = {("naive", "ade20k-512"): [0.5, 0.75, 1.0], ("mla", "ade20k-512"): [0.5, 0.75, 1.0]}

# The authors' recipes whose batch differs from the default of their (decoder, data set) (MODELS.md §2.1): the
# DeiT MLA configs on ADE20K and Pascal Context train with 16 images, like the ViT-L MLA "bs_16" configs.
_SETR_RECIPES = {
    ("mla", "deit-base", "ade20k-512"): "setr-mla-ade20k-512-bs16",
    ("mla", "deit-base", "pascal-context-480"): "setr-mla-pascal-context-480-bs16",
}
_HYBRID_NOTE = (
    "SETR-Hybrid as the paper's Table 2 describes it: a ResNet-50 FCN encoder (transformers' ResNet, last stage "
    "dilated: output stride 16) whose 1/16 map, projected by a 1x1 convolution, is the token sequence of a ViT-B/16 "
    "with the Naive decoder. Neither the authors nor mmsegmentation released a configuration or weights for it, so "
    "hf_seg has no converter for it: train it, starting from ImageNet weights with "
    "`--pretrained_encoder microsoft/resnet-50,google/vit-base-patch16-384`."
)
_DEFECTIVE_PUP_DEIT = (
    "The authors' configuration of this variant leaves the PUP decode and auxiliary heads 1024 wide for the 768-wide "
    "DeiT-B encoder (its forward pass fails); this preset builds them 768 wide, as their Cityscapes PUP-DeiT config "
    "does."
)
_SETR_NOTES = {
    ("naive", "r50-vit-base", "cityscapes-768"): _HYBRID_NOTE,
    ("pup", "deit-base", "ade20k-512"): _DEFECTIVE_PUP_DEIT,
    ("pup", "deit-base", "pascal-context-480"): _DEFECTIVE_PUP_DEIT,
}


def _setr_preset(decoder: str, encoder: str, dataset: str) -> Preset:
    crop, label_set, resize, reduce_labels, stride = _SETR_DATASETS[dataset]
    config = dict(_SETR_ENCODERS[encoder], image_size=crop, **_SETR_DECODERS[decoder])
    depth = config["num_hidden_layers"]
    if decoder == "mla":
        config["mla_in_indices"] = _SETR_MLA_LAYERS[depth]
    else:
        config["auxiliary_in_indices"] = _SETR_AUX_LAYERS[(decoder, depth)]
    return Preset(
        name=f"setr-{decoder}-{encoder}-{dataset}",
        family="setr",
        config=config,
        processor=dict(size=resize, do_reduce_labels=reduce_labels, size_divisor=16),
        label_set=label_set,
        inference=dict(mode="slide", crop_size=crop, stride=stride, aug_test=dict(
            scales=_SETR_AUG_SCALES[(decoder, dataset)] if (decoder, dataset) in _SETR_AUG_SCALES else _SIX_RATIOS,
            flip=True, short_side_at_least_crop=True,
        )),
        recipe=_SETR_RECIPES.get((decoder, encoder, dataset)),
        note=_SETR_NOTES.get((decoder, encoder, dataset)),
    )


# The variant table of the paper and the authors' configs (MODELS.md §2.1): ViT-L with every decoder on the three
# data sets; ViT-B ("T-Base") with every decoder on Cityscapes, the only data set the paper trains it on; DeiT-B
# where the authors ship a config (no Naive-DeiT on ADE20K / Pascal Context); the Hybrid (ResNet-50 + ViT-B,
# Naive) on Cityscapes, as in the paper's Table 2.
_SETR_VARIANTS = [
    *((decoder, "vit-large", dataset) for decoder in ("naive", "pup", "mla") for dataset in _SETR_DATASETS),
    *((decoder, "vit-base", "cityscapes-768") for decoder in ("naive", "pup", "mla")),
    *((decoder, "deit-base", "cityscapes-768") for decoder in ("naive", "pup", "mla")),
    *((decoder, "deit-base", dataset) for decoder in ("pup", "mla") for dataset in ("ade20k-512", "pascal-context-480")),
    ("naive", "r50-vit-base", "cityscapes-768"),
]
PRESETS: dict[str, Preset] = {preset.name: preset for preset in (_setr_preset(*variant) for variant in _SETR_VARIANTS)}


# --- SegFormer -------------------------------------------------------------------------------------------------------
# transformers' built-in Segformer classes (MODELS.md §3.1, §3.6): MiT size -> (hidden sizes, depths, decoder width).
_MIT = {
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
    "b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768),
    "b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768),
}

# dataset -> (label set, processor resize, reduce labels, inference). The test resize is keep-ratio (fit inside
# (2048, short)); transformers' SegformerImageProcessor only resizes to a fixed size, so SETR's processor is used.
# `--aug-test` of the authors' tools/test.py: ADE20K ratios 0.75 ... 1.25, Cityscapes 0.5 ... 2.0, both flipped.
_SEGFORMER_ADE20K_AUG = dict(scales=[0.75, 0.875, 1.0, 1.125, 1.25], flip=True)
_SEGFORMER_CITYSCAPES_AUG = dict(scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], flip=True)
_SEGFORMER_OTHER_AUG = dict(scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True)  # its other data sets
_SEGFORMER_DATASETS = {
    "ade20k-512": (
        "ade20k", {"shortest_edge": 512, "longest_edge": 2048}, True, dict(mode="whole", aug_test=_SEGFORMER_ADE20K_AUG)
    ),
    "ade20k-640": (
        "ade20k", {"shortest_edge": 640, "longest_edge": 2048}, True, dict(mode="whole", aug_test=_SEGFORMER_ADE20K_AUG)
    ),
    "cityscapes-1024": (
        "cityscapes", {"shortest_edge": 1024, "longest_edge": 2048}, False,
        dict(mode="slide", crop_size=1024, stride=768, aug_test=_SEGFORMER_CITYSCAPES_AUG),
    ),
    # The authors' B0-only Cityscapes settings (local_configs/segformer/B0/segformer.b0.{768x768,512x1024,640x1280}
    # .city.160k.py): test scale (1536, 768) + slide 768 / 768, and the real-time (1024, 512) / (1280, 640) whole.
    "cityscapes-768": (
        "cityscapes", {"shortest_edge": 768, "longest_edge": 1536}, False,
        dict(mode="slide", crop_size=768, stride=768, aug_test=_SEGFORMER_CITYSCAPES_AUG),
    ),
    "cityscapes-512x1024": (
        "cityscapes", {"shortest_edge": 512, "longest_edge": 1024}, False,
        dict(mode="whole", aug_test=_SEGFORMER_CITYSCAPES_AUG),
    ),
    "cityscapes-640x1280": (
        "cityscapes", {"shortest_edge": 640, "longest_edge": 1280}, False,
        dict(mode="whole", aug_test=_SEGFORMER_CITYSCAPES_AUG),
    ),
    # The successors' data sets. Neither the authors nor mmsegmentation 1.x ship a SegFormer config for them, so the
    # test protocol is mmseg 1.x's dataset configs' (configs/_base_/datasets/{coco-stuff164k,coco-stuff10k,
    # pascal_voc12_aug,pascal_context,pascal_context_59}.py: keep-ratio resize into (2048, 512) / (520, 520), whole;
    # Pascal Context slides 480 / 320 as mmseg's Pascal Context models and SETR do) and the authors' tools/test.py
    # `--aug-test` for data sets other than ADE20K / Cityscapes (ratios 0.5 ... 1.75, flipped).
    **{
        dataset: (label_set, resize, reduce_labels, dict(inference, aug_test=_SEGFORMER_OTHER_AUG))
        for dataset, label_set, resize, reduce_labels, inference in (
            ("coco-stuff164k-512", "coco_stuff", {"shortest_edge": 512, "longest_edge": 2048}, False,
             dict(mode="whole")),
            ("coco-stuff10k-512", "coco_stuff", {"shortest_edge": 512, "longest_edge": 2048}, True, dict(mode="whole")),
            ("voc12aug-512", "pascal_voc", {"shortest_edge": 512, "longest_edge": 2048}, False, dict(mode="whole")),
            ("pascal-context-480", "pascal_context_60", {"shortest_edge": 520, "longest_edge": 520}, False,
             dict(mode="slide", crop_size=480, stride=320)),
            ("pascal-context-59-480", "pascal_context_59", {"shortest_edge": 520, "longest_edge": 520}, True,
             dict(mode="slide", crop_size=480, stride=320)),
        )
    },
}
#: data sets whose SegFormer presets exist for every MiT size (the B0-only Cityscapes settings are added below)
_SEGFORMER_ALL_SIZES = ("ade20k-512", "cityscapes-1024", "coco-stuff164k-512", "coco-stuff10k-512", "voc12aug-512",
                        "pascal-context-480", "pascal-context-59-480")


def _mit_config(size: str) -> dict:
    hidden_sizes, depths, decoder_hidden_size = _MIT[size]
    return dict(
        hidden_sizes=hidden_sizes, depths=depths, decoder_hidden_size=decoder_hidden_size,
        num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4],
        drop_path_rate=0.1, classifier_dropout_prob=0.1, semantic_loss_ignore_index=255,
    )


def _segformer_preset(size: str, dataset: str) -> Preset:
    label_set, resize, reduce_labels, inference = _SEGFORMER_DATASETS[dataset]
    return Preset(
        name=f"segformer-{size}-{dataset}",
        family="segformer",
        config=_mit_config(size),
        # size_divisor 1: no padding (MiT takes any size; the authors resize to a multiple of 32 instead of padding,
        # mmsegmentation 1.x neither resizes nor pads)
        processor=dict(size=resize, do_reduce_labels=reduce_labels, size_divisor=1),
        label_set=label_set,
        inference=inference,
    )


def _mit_preset(size: str) -> Preset:
    """ImageNet-1k MiT encoder with its classifier; the DeiT/PVT evaluation: bicubic resize of the short side to
    224 / 0.875 = 256, centre crop 224."""
    return Preset(
        name=f"mit-{size}",
        family="mit",
        config=dict(_mit_config(size), reshape_last_stage=False, num_labels=1000),
        processor=dict(
            size={"shortest_edge": 224}, crop_pct=0.875, resample=3,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],  # ConvNext's defaults are 0.5
        ),
        label_set=None,  # ImageNet-1k: no names bundled with hf_seg (the classes keep transformers' LABEL_i names)
    )


PRESETS.update(
    (preset.name, preset)
    for preset in [
        *(_segformer_preset(size, dataset) for size in _MIT for dataset in _SEGFORMER_ALL_SIZES),
        _segformer_preset("b5", "ade20k-640"),
        *(_segformer_preset("b0", dataset) for dataset in ("cityscapes-768", "cityscapes-512x1024",
                                                            "cityscapes-640x1280")),
        *(_mit_preset(size) for size in _MIT),
    ]
)


# --- MPViT -----------------------------------------------------------------------------------------------------------

# variant -> architecture (youngwanLEE/MPViT mpvit.py: mpvit_tiny ... mpvit_base; MODELS.md §4.1)
_MPVIT = {
    "tiny": dict(hidden_sizes=[64, 96, 176, 216], depths=[1, 2, 4, 1], mlp_ratios=[2, 2, 2, 2]),
    "xsmall": dict(hidden_sizes=[64, 128, 192, 256], depths=[1, 2, 4, 1], mlp_ratios=[4, 4, 4, 4]),
    "small": dict(hidden_sizes=[64, 128, 216, 288], depths=[1, 3, 6, 3], mlp_ratios=[4, 4, 4, 4]),
    "base": dict(hidden_sizes=[128, 224, 368, 480], depths=[1, 3, 8, 3], mlp_ratios=[4, 4, 4, 4]),
}
_MPVIT_COMMON = dict(num_paths=[2, 3, 3, 3], num_attention_heads=[8, 8, 8, 8])
# Drop-path rates: ImageNet from GET_STARTED.md; UperNet from the ADE20K configs (S 0.2, B 0.4). The authors publish
# no UperNet config for T / XS: 0.1 is our choice, between no drop-path and Small's.
_MPVIT_IMAGENET_DROP_PATH = {"tiny": 0.0, "xsmall": 0.0, "small": 0.05, "base": 0.3}
_MPVIT_UPERNET_DROP_PATH = {"tiny": 0.1, "xsmall": 0.1, "small": 0.2, "base": 0.4}


def _mpvit_preset(size: str) -> Preset:
    """ImageNet-1k MPViT classifier; the authors' evaluation (datasets.py): bicubic resize of the short side to
    int(224 / 0.875) = 256, centre crop 224, ImageNet mean/std."""
    return Preset(
        name=f"mpvit-{size}",
        family="mpvit",
        config=dict(_MPVIT[size], **_MPVIT_COMMON, drop_path_rate=_MPVIT_IMAGENET_DROP_PATH[size], num_labels=1000),
        processor=dict(
            size={"shortest_edge": 224}, crop_pct=0.875, resample=3,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],  # ConvNext's defaults are 0.5
        ),
        label_set=None,  # ImageNet-1k: no names bundled with hf_seg (the classes keep transformers' LABEL_i names)
    )


def _upernet_mpvit_preset(size: str) -> Preset:
    """MPViT + UperNet on ADE20K (semantic_segmentation/configs: UPerHead 512 channels, FCN aux head on stage 3 with
    loss weight 0.4); test: keep-ratio resize into (2048, 512), whole image, no padding (MPViT takes any size)."""
    return Preset(
        name=f"upernet-mpvit-{size}-ade20k-512",
        family="upernet",
        config=dict(
            _MPVIT[size], **_MPVIT_COMMON, drop_path_rate=_MPVIT_UPERNET_DROP_PATH[size],
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
        processor=dict(size={"shortest_edge": 512, "longest_edge": 2048}, do_reduce_labels=True, size_divisor=1),
        label_set="ade20k",
        inference=dict(mode="whole"),
    )


PRESETS.update(
    (preset.name, preset)
    for preset in [*(_mpvit_preset(size) for size in _MPVIT), *(_upernet_mpvit_preset(size) for size in _MPVIT)]
)


# family -> (configuration, model, image processor) classes
FAMILY_CLASSES = {
    "setr": (SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor),
    "segformer": (SegformerConfig, SegformerForSemanticSegmentation, SetrImageProcessor),
    "mit": (SegformerConfig, SegformerForImageClassification, ConvNextImageProcessorPil),
    "mpvit": (MPViTConfig, MPViTForImageClassification, ConvNextImageProcessorPil),
    "upernet": (MPViTConfig, MPViTForSemanticSegmentation, SetrImageProcessor),
}


def did_you_mean(name: str, choices, n: int = 3, cutoff: float = 0.6) -> str:
    """The sentence `" Did you mean 'a', 'b'?"` naming the choices close to `name` (difflib), or "" when none is
    close. Shared by every "unknown name" error of hf_seg (presets, configuration and processor keys, `--model`)."""
    close = difflib.get_close_matches(str(name), sorted(choices), n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(repr(choice) for choice in close)}?" if close else ""


class UnknownPresetError(KeyError):
    """`get_preset` & co. on a name that is no preset. A `KeyError` whose message reads as a sentence (a plain
    `KeyError` shows the repr of its argument)."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(
            f"unknown model preset {name!r}; hf_seg.list_models() gives the {len(PRESETS)} valid names."
            + did_you_mean(name, PRESETS)
        )

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownModelError(UnknownPresetError):
    """A model name (`--model`, `train(model=...)`) that is no preset, no local folder and no Hub id."""

    def __init__(self, name: str):
        self.name = name
        KeyError.__init__(
            self,
            f"unknown model {name!r}: not a preset (`hf-seg list` shows them), a local folder or a Hub id "
            "(owner/name)." + did_you_mean(name, PRESETS),
        )


def list_models(family: str | None = None) -> list[str]:
    """Names of the presets, optionally of one family ("setr", ...)."""
    return sorted(name for name, preset in PRESETS.items() if family is None or preset.family == family)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UnknownPresetError(name)
    return PRESETS[name]


def config_keys(config_class) -> set[str]:
    """The keyword arguments a configuration class uses: its dataclass fields, the settable properties of it and
    its bases (`num_labels`, `output_attentions`, `out_features`, ...; a private one `_x` is passed as `x`, e.g.
    `attn_implementation`) and its `attribute_map` aliases. Anything else transformers would store unread."""
    keys = {item.name for item in dataclasses.fields(config_class)} | set(getattr(config_class, "attribute_map", {}))
    for klass in config_class.__mro__:
        for name, value in vars(klass).items():
            if isinstance(value, property) and value.fset is not None:
                keys.add(name)
    return keys | {key.lstrip("_") for key in keys if key.startswith("_")}


def processor_keys(processor_class) -> set[str]:
    """The keyword arguments of an image processor's `__init__`: its named parameters and the keys of the
    `Unpack[...Kwargs]` typed dict of its `**kwargs` (transformers' processors take all their settings that way)."""
    keys, typed_dict = set(), None
    for parameter in list(inspect.signature(processor_class.__init__).parameters.values())[1:]:
        if parameter.kind is parameter.VAR_KEYWORD:
            annotation = parameter.annotation
            if typing.get_origin(annotation) is typing.Unpack:
                typed_dict = typing.get_args(annotation)[0]
        elif parameter.kind is not parameter.VAR_POSITIONAL:
            keys.add(parameter.name)
    typed_dict = typed_dict or getattr(processor_class, "valid_kwargs", None)
    if typed_dict is not None:
        keys |= set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)
    return keys


def _check_keys(overrides: dict, known: set[str], what: str, name: str) -> None:
    unknown = sorted(set(overrides) - known)
    if unknown:
        public = {key for key in known if not key.startswith("_")}
        if len(unknown) == 1:
            hints = did_you_mean(unknown[0], public)
        else:  # say which key each suggestion is for
            hints = "".join(f" {key!r}:{hint}" for key in unknown[:3] if (hint := did_you_mean(key, public)))
        raise TypeError(f"{what} of preset {name!r} got unknown key{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(key) for key in unknown)}.{hints}")


def create_config(name: str, **overrides):
    """The preset's configuration, labelled with its dataset's classes unless `num_labels`/`id2label` are given.

    Raises `UnknownPresetError` (a `KeyError`) for an unknown name, `TypeError` for an override key that the
    configuration class does not have ("did you mean"), and `ValueError` naming the field and value for a
    configuration the model cannot build (e.g. `num_labels=0`, a hidden size not divisible by the heads)."""
    preset = get_preset(name)
    config_class = FAMILY_CLASSES[preset.family][0]
    _check_keys(overrides, config_keys(config_class) | {"test_protocol"}, "create_config", name)
    kwargs = dict(preset.config)
    if preset.inference:  # the papers' test protocol travels with the model (`hf_seg.segment`, `hf-seg evaluate`)
        kwargs["test_protocol"] = copy.deepcopy(preset.inference)
    if preset.label_set is not None and "num_labels" not in overrides and "id2label" not in overrides:
        id2label, _ = load_label_set(preset.label_set)
        kwargs.update(id2label=id2label, label2id={label: index for index, label in id2label.items()})
    kwargs.update(overrides)
    try:
        if config_class is SegformerConfig:  # transformers' class: hf_seg checks what it creates from it
            check_segformer_labels(kwargs.get("num_labels"), kwargs.get("id2label"))
        config = config_class(**kwargs)
        if config_class is SegformerConfig:
            validate_segformer_architecture(config)
    except StrictDataclassClassValidationError as error:  # the config's own validator: its ValueError, unwrapped
        cause = error.__cause__ if isinstance(error.__cause__, (ValueError, TypeError)) else error
        raise ValueError(f"preset {name!r}: {cause}") from error
    except ValueError as error:
        raise ValueError(f"preset {name!r}: {error}") from error
    return config


def create_model(name: str, **config_overrides):
    """A randomly initialised model of the preset (e.g. `create_model("setr-pup-vit-large-ade20k-512")`); the
    overrides are configuration fields, checked as `create_config` does."""
    model_class = FAMILY_CLASSES[get_preset(name).family][1]
    return model_class(create_config(name, **config_overrides))


def create_image_processor(name: str, **overrides):
    """The preset's image processor: the papers' test-time resize, ImageNet normalisation, padding. An override key
    that the processor's `__init__` does not take is a `TypeError` ("did you mean")."""
    preset = get_preset(name)
    processor_class = FAMILY_CLASSES[preset.family][2]
    _check_keys(overrides, processor_keys(processor_class), "create_image_processor", name)
    return processor_class(**{**preset.processor, **overrides})
