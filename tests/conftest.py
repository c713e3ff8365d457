"""Session setup for hf_seg's tests: offline, a throw-away Hugging Face cache, transformers' common test mixins.

transformers' ``ModelTesterMixin`` & co. come from ``python tests/fetch_transformers_tests.py`` (see there). When
they are missing, the test modules that use them skip themselves::

    pytest.importorskip("transformers_tests.test_modeling_common", reason=FETCH_HINT)

with ``from fetch_transformers_tests import FETCH_HINT``. ``tests/`` is on ``sys.path``, so tests can also import
``mmseg_reference``.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub / datasets / evaluate, which read these at import time.
_HF_HOME = tempfile.mkdtemp(prefix="hf_seg-tests-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for _var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_EVALUATE_CACHE", "HF_MODULES_CACHE"):
    os.environ.pop(_var, None)  # would otherwise point past the throw-away HF_HOME

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from fetch_transformers_tests import FETCH_HINT, cache_dir, is_complete, transformers_version  # noqa: E402

# Small models on CPU gain little from many threads; HF_SEG_TEST_THREADS (or OMP_NUM_THREADS) overrides.
if "HF_SEG_TEST_THREADS" in os.environ:
    torch.set_num_threads(int(os.environ["HF_SEG_TEST_THREADS"]))
elif "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(min(4, os.cpu_count() or 1))

_TRANSFORMERS_TESTS = cache_dir()
_HAVE_TRANSFORMERS_TESTS = is_complete(_TRANSFORMERS_TESTS, transformers_version())
if _HAVE_TRANSFORMERS_TESTS:
    sys.path.insert(0, str(_TRANSFORMERS_TESTS))


def pytest_report_header(config):
    state = "" if _HAVE_TRANSFORMERS_TESTS else f" ({FETCH_HINT})"
    return [
        f"transformers common tests: {_TRANSFORMERS_TESTS}{state}",
        f"HF_HOME={_HF_HOME} (offline), torch threads={torch.get_num_threads()}",
    ]


def pytest_unconfigure(config):
    shutil.rmtree(_HF_HOME, ignore_errors=True)
