"""transformers' own conformance suite (ModelTesterMixin, ConfigTester, BackboneTesterMixin) run against MPViT.

The mixins come from the pinned transformers source distribution (tests/fetch_transformers_tests.py puts them on
the path as the `transformers_tests` package). Each skipped test says why in its reason.
"""

import unittest

import pytest
import torch

from hf_seg import MPViTBackbone, MPViTConfig, MPViTForImageClassification, MPViTForSemanticSegmentation, MPViTModel


common = pytest.importorskip(
    "transformers_tests.test_modeling_common", reason="run tests/fetch_transformers_tests.py first"
)
config_common = pytest.importorskip("transformers_tests.test_configuration_common")
backbone_common = pytest.importorskip("transformers_tests.test_backbone_common")
ModelTesterMixin, floats_tensor, ids_tensor = common.ModelTesterMixin, common.floats_tensor, common.ids_tensor
ConfigTester = config_common.ConfigTester
BackboneTesterMixin = backbone_common.BackboneTesterMixin


class MPViTModelTester:
    """Tiny MPViT: widths 16..40 with 2 heads (head dim 8..20), one block per path, 2 paths in every stage, a
    non-square 64x96 input (odd sizes are covered in test_modeling_mpvit.py)."""

    def __init__(self, parent, batch_size=2, num_labels=3, out_features=("stage1", "stage2", "stage3", "stage4")):
        self.parent = parent
        self.batch_size = batch_size
        self.num_channels = 3
        self.input_size = (64, 96)
        self.hidden_sizes = [16, 24, 32, 40]
        self.num_labels = num_labels
        self.out_features = list(out_features)
        self.is_training = True

    def get_config(self):
        return MPViTConfig(
            num_channels=self.num_channels,
            hidden_sizes=self.hidden_sizes,
            depths=[1, 1, 1, 1],
            num_paths=[2, 2, 2, 2],
            num_attention_heads=[2, 2, 2, 2],
            mlp_ratios=[2, 2, 2, 2],
            crpe_window_sizes=[3, 5],
            crpe_head_splits=[1, 1],
            decoder_hidden_size=16,
            pool_scales=[1, 2],
            auxiliary_channels=8,
            num_labels=self.num_labels,
            out_features=self.out_features,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, *self.input_size])
        labels = ids_tensor([self.batch_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class MPViTModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MPViTModel, MPViTForImageClassification, MPViTForSemanticSegmentation, MPViTBackbone)
    pipeline_model_mapping = {}
    test_resize_embeddings = False  # no token embeddings
    test_torch_exportable = False  # ExportTesterMixin is a stand-in: the sdist lacks tests/exporters
    has_attentions = False  # factorized attention has no token-to-token attention map to return

    def test_bc_torch_dtype(self):
        # The mixin loads every class in 7 dtypes, twice, and compares each parameter in a subtest: 6,700 subtests and
        # 50 s for the four MPViT classes. The dtype handling is transformers' and the same for every class: check it
        # on the segmentation model, whose weights include the encoder's.
        self.all_model_classes = (MPViTForSemanticSegmentation,)
        super().test_bc_torch_dtype()

    def setUp(self):
        self.model_tester = MPViTModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=MPViTConfig, has_text_modality=False,
            common_properties=["num_attention_heads", "num_hidden_layers", "hidden_sizes"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=False)
        # transformers only adds labels for its own (statically listed) model classes
        if return_labels:
            batch_size, _, height, width = inputs_dict["pixel_values"].shape
            if model_class is MPViTForSemanticSegmentation:
                inputs_dict["labels"] = torch.zeros([batch_size, height, width], dtype=torch.long)
            elif model_class is MPViTForImageClassification:
                inputs_dict["labels"] = torch.zeros(batch_size, dtype=torch.long)
        return inputs_dict

    def test_hidden_states_output(self):
        """The stem's and every stage's output, at strides 4, 4, 8, 16, 32 (ceil), with the stage widths."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        height, width = self.model_tester.input_size
        expected = [(16, height // 4, width // 4)] + [
            (channels, height // stride, width // stride)
            for channels, stride in zip([24, 32, 40, 40], [4, 8, 16, 32])
        ]
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class), output_hidden_states=True)
            hidden_states = outputs.hidden_states
            self.assertEqual(len(hidden_states), 5, model_class.__name__)
            self.assertEqual([tuple(state.shape[1:]) for state in hidden_states], expected, model_class.__name__)

    # The mixin skips base models in training tests by looking them up in transformers' static name lists, which
    # cannot list a third-party model: run those tests on the task models alone.
    def test_training(self):
        self.all_model_classes = (MPViTForImageClassification, MPViTForSemanticSegmentation)
        super().test_training()

    def check_training_gradient_checkpointing(self, gradient_checkpointing_kwargs=None):
        self.all_model_classes = (MPViTForImageClassification, MPViTForSemanticSegmentation)
        super().check_training_gradient_checkpointing(gradient_checkpointing_kwargs)

    @unittest.skip(reason="the Hub is not reachable from the tests (offline by design)")
    def test_model_from_pretrained(self):
        pass

    @unittest.skip(reason="MPViT has no input embedding matrix (pixel input): nothing to get or set")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(reason="pixel input: there is no inputs_embeds path")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="pixel input: there is no inputs_embeds path to compare")
    def test_inputs_embeds_matches_input_ids(self):
        pass


class MPViTBackboneTest(BackboneTesterMixin, unittest.TestCase):
    all_model_classes = (MPViTBackbone,)
    config_class = MPViTConfig
    has_attentions = False

    def setUp(self):
        self.model_tester = MPViTModelTester(self)
