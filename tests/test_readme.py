"""The README's Python example runs as written (so that it cannot rot)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)  # it saves a folder next to itself
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert tuple(namespace["label_map"].shape) == namespace["image"].shape[:2]
    assert (tmp_path / "setr-demo" / "modeling_setr.py").exists()
