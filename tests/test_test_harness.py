"""The test harness itself: offline session, transformers' common mixins with hf_seg's stand-ins, mmseg reference."""

import os
import unittest

import pytest
from fetch_transformers_tests import FETCH_HINT
from mmseg_reference import import_mmseg


def test_session_is_offline_with_a_private_cache():
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE
    assert os.path.basename(os.environ["HF_HOME"]).startswith("hf_seg-tests-hf-home-")
    assert huggingface_hub.constants.HF_HOME == os.environ["HF_HOME"]


def test_common_mixins_import():
    modeling = pytest.importorskip("transformers_tests.test_modeling_common", reason=FETCH_HINT)
    images = pytest.importorskip("transformers_tests.test_image_processing_common", reason=FETCH_HINT)
    backbone = pytest.importorskip("transformers_tests.test_backbone_common", reason=FETCH_HINT)
    from transformers_tests.exporters.test_export import ExportTesterMixin

    assert issubclass(modeling.ModelTesterMixin, ExportTesterMixin)
    assert images.ImageProcessingTestMixin and images.PostProcessSemanticSegmentationTestMixin
    assert backbone.BackboneTesterMixin


class ConfigStandInTest(unittest.TestCase):
    """``ConfigTester`` with the stand-in ``config_common_kwargs``, on a built-in vision config."""

    def test_config_tester_on_segformer_config(self):
        configuration = pytest.importorskip("transformers_tests.test_configuration_common", reason=FETCH_HINT)
        from transformers import SegformerConfig

        tester = configuration.ConfigTester(
            self, config_class=SegformerConfig, has_text_modality=False, num_encoder_blocks=2, common_properties=[]
        )
        tester.run_common_tests()


def test_mmseg_reference_imports_and_refuses_compiled_ops():
    try:
        import_mmseg()
    except ImportError as err:
        pytest.skip(f"mmsegmentation reference not available: {err}")
    from mmcv.ops import point_sample
    from mmseg.evaluation import IoUMetric  # noqa: F401
    from mmseg.models.backbones import VisionTransformer  # noqa: F401
    from mmseg.models.decode_heads import SETRMLAHead, SETRUPHead  # noqa: F401
    from mmseg.models.necks import MLANeck  # noqa: F401

    with pytest.raises(RuntimeError, match="mmcv-lite does not provide"):
        point_sample(None, None)
