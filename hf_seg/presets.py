"""Named model variants: architecture, image-processor settings, label set and test-time inference settings.

`list_models()` lists the names, `create_model(name, **config_overrides)` builds a randomly initialised model of
that variant and `create_image_processor(name)` its processor. The numbers come from the papers' code (see
`shared/reference/MODELS.md` in the project's design notes: SETR §2.1-2.7).
"""

from dataclasses import dataclass, field

from .labels import load_label_set
from .models.setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor


@dataclass(frozen=True)
class Preset:
    """One named variant. `config` holds the model-configuration fields, `processor` the image-processor ones,
    `inference` the papers' test protocol (mode, crop and stride for sliding windows)."""

    name: str
    family: str
    config: dict
    processor: dict
    label_set: str
    inference: dict = field(default_factory=dict)


# --- SETR ------------------------------------------------------------------------------------------------------------

_VIT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
_VIT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)

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
_SETR_AUX_LAYERS = {  # (decoder, encoder) -> auxiliary encoder layers
    ("naive", "large"): [9, 14, 19],
    ("pup", "large"): [9, 14, 19, 23],
    ("naive", "base"): [2, 5, 8],
}
_SETR_MLA_LAYERS = {"large": [5, 11, 17, 23], "base": [2, 5, 8, 11]}

# dataset -> (crop size, label set, processor resize, reduce labels, slide stride)
_SETR_DATASETS = {
    "ade20k-512": (512, "ade20k", {"shortest_edge": 512, "longest_edge": 2048}, True, 341),
    "cityscapes-768": (768, "cityscapes", {"shortest_edge": 1025, "longest_edge": 2049}, False, 512),
    "pascal-context-480": (480, "pascal_context_60", {"shortest_edge": 520, "longest_edge": 520}, False, 320),
}


def _setr_preset(decoder: str, encoder: str, dataset: str) -> Preset:
    crop, label_set, resize, reduce_labels, stride = _SETR_DATASETS[dataset]
    config = dict(_VIT_LARGE if encoder == "large" else _VIT_BASE, image_size=crop, **_SETR_DECODERS[decoder])
    if decoder == "mla":
        config["mla_in_indices"] = _SETR_MLA_LAYERS[encoder]
    else:
        config["auxiliary_in_indices"] = _SETR_AUX_LAYERS[(decoder, encoder)]
    return Preset(
        name=f"setr-{decoder}-vit-{encoder}-{dataset}",
        family="setr",
        config=config,
        processor=dict(size=resize, do_reduce_labels=reduce_labels, size_divisor=16),
        label_set=label_set,
        inference=dict(mode="slide", crop_size=crop, stride=stride),
    )


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in [
        *(_setr_preset(decoder, "large", dataset) for decoder in ("naive", "pup", "mla") for dataset in _SETR_DATASETS),
        _setr_preset("naive", "base", "cityscapes-768"),
    ]
}


# family -> (configuration, model, image processor) classes
FAMILY_CLASSES = {"setr": (SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor)}


def list_models(family: str | None = None) -> list[str]:
    """Names of the presets, optionally of one family ("setr", ...)."""
    return sorted(name for name, preset in PRESETS.items() if family is None or preset.family == family)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; hf_seg.list_models() gives the {len(PRESETS)} valid names")
    return PRESETS[name]


def create_config(name: str, **overrides):
    """The preset's configuration, labelled with its dataset's classes unless `num_labels`/`id2label` are given."""
    preset = get_preset(name)
    config_class = FAMILY_CLASSES[preset.family][0]
    kwargs = dict(preset.config)
    if "num_labels" not in overrides and "id2label" not in overrides:
        id2label, _ = load_label_set(preset.label_set)
        kwargs.update(id2label=id2label, label2id={label: index for index, label in id2label.items()})
    kwargs.update(overrides)
    return config_class(**kwargs)


def create_model(name: str, **config_overrides):
    """A randomly initialised model of the preset (e.g. `create_model("setr-pup-vit-large-ade20k-512")`)."""
    model_class = FAMILY_CLASSES[get_preset(name).family][1]
    return model_class(create_config(name, **config_overrides))


def create_image_processor(name: str, **overrides):
    """The preset's image processor: the papers' test-time resize, ImageNet normalisation, padding."""
    preset = get_preset(name)
    processor_class = FAMILY_CLASSES[preset.family][2]
    return processor_class(**{**preset.processor, **overrides})
