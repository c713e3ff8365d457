"""Stand-in for transformers' ``tests/generation/test_utils.py`` (not in the transformers sdist).

``test_modeling_common`` imports only ``GenerationTesterMixin`` from it, to check that a model test class inherits
the generation tests exactly when the model can ``generate()``. hf_seg's segmentation models never generate, so
their test classes do not inherit it, and an empty class is all that check needs.
"""


class GenerationTesterMixin:
    """Marker class: no generation tests (hf_seg models do not generate)."""
