"""Fetch transformers' common test mixins for hf_seg's test suite.

transformers ships ``ModelTesterMixin``, ``ConfigTester``, ``ImageProcessingTestMixin`` and ``BackboneTesterMixin``
in its source distribution on PyPI, not in the wheel. This script downloads the sdist of the installed transformers
version, unpacks only those common test files into a cache folder outside the repository as the package
``transformers_tests``, and adds hf_seg's stand-ins (``tests/transformers_standins/``) for the helper modules the
sdist lacks:

    <cache>/transformers_tests/__init__.py
    <cache>/transformers_tests/test_modeling_common.py, ...           from the sdist
    <cache>/transformers_tests/exporters/test_export.py               <- transformers_standins/export_mixin.py
    <cache>/transformers_tests/generation/test_utils.py               <- transformers_standins/generation_mixin.py
    <cache>/transformers_tests/utils/test_configuration_utils.py      <- transformers_standins/configuration_kwargs.py
    <cache>/utils/fetch_hub_objects_for_ci.py                         <- transformers_standins/hub_objects.py

``<cache>`` is ``$HF_SEG_TRANSFORMERS_TESTS`` if set, else ``~/.cache/hf_seg/transformers-tests-<version>``.
``tests/conftest.py`` puts it on ``sys.path``. Re-running is instant when the files are there (``--force`` fetches
again). ``test_pipeline_mixin.py`` is not taken: it needs transformers' repository layout (``src/``,
``tests/utils/tiny_model_summary.json``, ``tests/pipelines/``), which the sdist does not have.

Usage: python tests/fetch_transformers_tests.py [--force]
"""

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "transformers_tests"
COMMON_FILES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_image_processing_common.py",
    "test_backbone_common.py",
    "test_training_mixin.py",
)
# destination (relative to the cache folder) -> stand-in source in tests/transformers_standins/
STANDINS = {
    f"{PACKAGE}/exporters/test_export.py": "export_mixin.py",
    f"{PACKAGE}/generation/test_utils.py": "generation_mixin.py",
    f"{PACKAGE}/utils/test_configuration_utils.py": "configuration_kwargs.py",
    "utils/fetch_hub_objects_for_ci.py": "hub_objects.py",
}
SUBPACKAGES = ("", "exporters", "generation", "utils")
VERSION_FILE = "TRANSFORMERS_VERSION"
STANDINS_DIR = Path(__file__).resolve().parent / "transformers_standins"
FETCH_HINT = "transformers' common test files are missing: run python tests/fetch_transformers_tests.py"


def transformers_version() -> str:
    return importlib.metadata.version("transformers")


def cache_dir(version: str | None = None) -> Path:
    """The folder that holds the ``transformers_tests`` package (the one to put on ``sys.path``)."""
    override = os.environ.get("HF_SEG_TRANSFORMERS_TESTS")
    if override:
        return Path(override).expanduser().resolve()
    version = version or transformers_version()
    return Path.home() / ".cache" / "hf_seg" / f"transformers-tests-{version}"


def is_complete(root: Path, version: str) -> bool:
    """True if ``root`` holds the common test files of transformers ``version`` and every stand-in."""
    marker = root / VERSION_FILE
    return (
        marker.is_file()
        and marker.read_text().strip() == version
        and all((root / PACKAGE / name).is_file() for name in COMMON_FILES)
        and all((root / dest).is_file() for dest in STANDINS)
    )


def _download_sdist(version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", f"transformers=={version}"]
    cmd += ["--no-binary", ":all:", "--no-deps", "--dest", str(dest)]
    print("running:", " ".join(cmd[2:]), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(dest.glob("transformers-*.tar.gz"))
    if result.returncode != 0 or not archives:
        sys.exit(
            f"error: could not download the transformers {version} source distribution "
            f"(pip exit status {result.returncode}).\n{(result.stdout + result.stderr)[-3000:]}\n"
            "The common test mixins come from that sdist; without it the tests that use them are skipped."
        )
    return archives[0]


def _unpack_common_files(archive: Path, package_dir: Path) -> None:
    with tarfile.open(archive) as tar:
        members = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): m for m in tar.getmembers()}
        missing = [name for name in COMMON_FILES if f"tests/{name}" not in members]
        if missing:
            sys.exit(f"error: {archive.name} has no tests/{', tests/'.join(missing)}")
        for name in COMMON_FILES:
            (package_dir / name).write_bytes(tar.extractfile(members[f"tests/{name}"]).read())


def _write_standins(root: Path) -> list[str]:
    """Copy the stand-ins and the ``__init__.py`` files; return what changed."""
    changed = []
    for sub in SUBPACKAGES:
        init = root / PACKAGE / sub / "__init__.py"
        if not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text("")
            changed.append(init.relative_to(root).as_posix())
    for dest, source in STANDINS.items():
        target = root / dest
        text = (STANDINS_DIR / source).read_text()
        if not target.is_file() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            changed.append(dest)
    return changed


def fetch(force: bool = False) -> Path:
    version = transformers_version()
    root = cache_dir(version)
    if not force and is_complete(root, version):
        changed = _write_standins(root)  # cheap; picks up edits of the stand-ins
        print(f"transformers {version} common tests already in {root}" + (f"; updated {changed}" if changed else ""))
        return root

    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}-") as tmp:
        tmp = Path(tmp)
        archive = _download_sdist(version, tmp / "download")
        staging = tmp / "staging"
        (staging / PACKAGE).mkdir(parents=True)
        _unpack_common_files(archive, staging / PACKAGE)
        _write_standins(staging)
        (staging / VERSION_FILE).write_text(version + "\n")
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    print(f"unpacked {', '.join(COMMON_FILES)} from {archive.name}")
    print(f"wrote stand-ins {', '.join(STANDINS)}")
    print(f"transformers {version} common tests ready in {root}")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="download and unpack again even if present")
    fetch(force=parser.parse_args().force)


if __name__ == "__main__":
    main()
