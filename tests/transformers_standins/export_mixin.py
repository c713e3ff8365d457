"""Stand-in for transformers' ``tests/exporters/test_export.py`` (not in the transformers sdist).

``ModelTesterMixin`` inherits from ``ExportTesterMixin``, which upstream holds the ``torch.export`` tests. This mixin
is empty, so hf_seg's suite does not run transformers' torch.export tests.
"""


class ExportTesterMixin:
    """No torch.export tests: see the module docstring."""
