"""transformers' own conformance suite (ModelTesterMixin, ConfigTester) run against SETR.

The mixins come from the pinned transformers source distribution (tests/fetch_transformers_tests.py puts them on
the path as the `transformers_tests` package). Each skipped test says why in its reason.
"""

import unittest

import pytest
import torch
from transformers import ResNetConfig

from hf_seg import SetrConfig, SetrForSemanticSegmentation, SetrModel


common = pytest.importorskip(
    "transformers_tests.test_modeling_common", reason="run tests/fetch_transformers_tests.py first"
)
config_common = pytest.importorskip("transformers_tests.test_configuration_common")
ModelTesterMixin, floats_tensor = common.ModelTesterMixin, common.floats_tensor
ConfigTester = config_common.ConfigTester


class SetrModelTester:
    """Tiny SETR configs: 2 layers (the mixin's limit), 32x48 inputs (non-square on purpose), stored grid 2x2."""

    def __init__(self, parent, decoder_type="pup", batch_size=2, image_size=32, num_labels=3, hybrid=False):
        self.parent = parent
        self.decoder_type = decoder_type
        self.hybrid = hybrid
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = 16
        self.input_size = (32, 48)
        self.num_channels = 3
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.num_labels = num_labels
        self.is_training = True
        num_patches = (self.input_size[0] // 16) * (self.input_size[1] // 16)
        self.seq_length = num_patches if decoder_type == "mla" else num_patches + 1

    def get_config(self):
        heads = {
            "naive": dict(decoder_num_convs=1, decoder_kernel_size=1, decoder_upsample_scale=1,
                          auxiliary_in_indices=[0], auxiliary_num_convs=1, auxiliary_kernel_size=1,
                          auxiliary_upsample_scale=1),
            "pup": dict(auxiliary_in_indices=[0, 1]),
            "mla": dict(mla_in_indices=[0, 0, 1, 1], auxiliary_in_indices=[0, 3], auxiliary_num_convs=0),
        }[self.decoder_type]
        if self.hybrid:  # a tiny transformers ResNet, its last stage dilated: tokens at 1/16
            heads["backbone_config"] = ResNetConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], embedding_size=8,
                                                    out_features=["stage4"])
        return SetrConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=37,
            decoder_type=self.decoder_type,
            decoder_channels=8,
            mla_channels=8,
            mla_head_channels=4,
            num_labels=self.num_labels,
            **heads,
        )

    def prepare_config_and_inputs_for_common(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, *self.input_size])
        return self.get_config(), {"pixel_values": pixel_values}


class _SetrCommonTests(ModelTesterMixin):
    all_model_classes = (SetrModel, SetrForSemanticSegmentation)
    pipeline_model_mapping = {}
    decoder_type = "pup"
    hybrid = False
    test_resize_embeddings = False  # no token embeddings
    test_torch_exportable = False  # ExportTesterMixin is a stand-in: the sdist lacks tests/exporters
    has_attentions = True

    def setUp(self):
        self.model_tester = SetrModelTester(self, decoder_type=self.decoder_type, hybrid=self.hybrid)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=False)
        # transformers only adds segmentation labels for its own (statically listed) model classes
        if return_labels and model_class is SetrForSemanticSegmentation:
            batch_size, _, height, width = inputs_dict["pixel_values"].shape
            inputs_dict["labels"] = torch.zeros([batch_size, height, width], dtype=torch.long)
        return inputs_dict

    # The mixin skips base models in training tests by looking them up in transformers' static name lists, which
    # cannot list a third-party SetrModel: run those tests on the segmentation model alone.
    def test_training(self):
        self.all_model_classes = (SetrForSemanticSegmentation,)
        super().test_training()

    def test_bc_torch_dtype(self):
        # transformers' dtype handling, the same for both classes; the segmentation model holds the encoder's weights
        self.all_model_classes = (SetrForSemanticSegmentation,)
        super().test_bc_torch_dtype()

    def check_training_gradient_checkpointing(self, gradient_checkpointing_kwargs=None):
        self.all_model_classes = (SetrForSemanticSegmentation,)
        super().check_training_gradient_checkpointing(gradient_checkpointing_kwargs)

    @unittest.skip(reason="the Hub is not reachable from the tests (offline by design)")
    def test_model_from_pretrained(self):
        pass

    @unittest.skip(reason="SETR has no input embedding matrix (pixel input): nothing to get or set")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(reason="SETR has no token embeddings to resize; position embeddings are resized at run time")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="pixel input: there is no inputs_embeds path to compare")
    def test_inputs_embeds_matches_input_ids(self):
        pass


class SetrPupModelTest(_SetrCommonTests, unittest.TestCase):
    decoder_type = "pup"

    def test_config(self):
        ConfigTester(
            self, config_class=SetrConfig, has_text_modality=False, hidden_size=64, num_attention_heads=4
        ).run_common_tests()


class SetrNaiveModelTest(_SetrCommonTests, unittest.TestCase):
    decoder_type = "naive"


class SetrMlaModelTest(_SetrCommonTests, unittest.TestCase):
    decoder_type = "mla"


class SetrHybridModelTest(_SetrCommonTests, unittest.TestCase):
    """The paper's Hybrid: a ResNet backbone (transformers' AutoBackbone) in place of the patch embedding, Naive head."""

    decoder_type = "naive"
    hybrid = True
