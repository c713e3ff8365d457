"""Helpers for the conversion tests: seeded randomisation of every parameter and buffer, mmsegmentation's own model
converters (shipped in the mmseg wheel under `.mim/tools/model_converters`), tiny presets, subprocess runs of the
conversion scripts with those presets registered (the scripts only accept preset names; the tiny presets exist only
inside the test process)."""

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn


REPO = Path(__file__).resolve().parents[1]


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter and buffer with seeded random values: norm scales near 1, BatchNorm statistics random
    (positive variances, a random `num_batches_tracked`), everything else N(0, 0.05^2). Returns the module in eval."""
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor, mean=0.0, std=0.05):
        tensor.copy_(mean + std * torch.randn(tensor.shape, generator=generator))

    with torch.no_grad():
        for submodule in module.modules():
            is_norm = isinstance(submodule, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm))
            for name, parameter in submodule.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    normal(parameter, 1.0, 0.1)
                else:
                    normal(parameter, 0.0, 0.1 if is_norm else 0.05)
            if isinstance(submodule, nn.modules.batchnorm._BatchNorm):
                normal(submodule.running_mean, 0.0, 0.1)
                submodule.running_var.copy_(0.5 + torch.rand(submodule.running_var.shape, generator=generator))
                submodule.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=generator)))
    return module.eval()


@contextlib.contextmanager
def batch_norm_statistics_of_next_batch(module: nn.Module):
    """Inside: `module`'s BatchNorm layers in train mode with reset statistics and a cumulative average, so that one
    forward pass leaves exactly that batch's statistics (random but sane, as training leaves them: `randomize_`'s
    random statistics compound over a real-size model, where an absolute tolerance then means little)."""
    norms = [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        yield
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
            layer.eval()


def random_like(reference: torch.Tensor, seed: int, std: float = 0.05) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return std * torch.randn(reference.shape, generator=generator)


def load_mmseg_converter(name: str):
    """mmsegmentation's `tools/model_converters/<name>.py`, from the installed wheel's `.mim` folder."""
    import mmseg

    path = Path(mmseg.__file__).parent / ".mim" / "tools" / "model_converters" / f"{name}.py"
    if not path.is_file():
        raise ImportError(f"{path} is not installed")
    spec = importlib.util.spec_from_file_location(f"mmseg_converter_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


_RUNNER = """
import json, runpy, sys
from hf_seg.presets import PRESETS, Preset
for preset in json.loads(sys.argv[1]):
    PRESETS[preset["name"]] = Preset(**preset)
script = sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def run_script(family: str, args: list[str], extra_presets: list[dict] = ()) -> subprocess.CompletedProcess:
    """Run `python conversion/convert_<family>.py ARGS` in a fresh process where `extra_presets` (Preset fields as
    dicts) are registered first. hf_seg is importable through PYTHONPATH; the environment stays offline."""
    script = str(REPO / "conversion" / f"convert_{family}.py")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-c", _RUNNER, json.dumps(list(extra_presets)), script, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)


# Hub-code loading in a process where `import hf_seg` fails (a meta-path finder refuses it).
REMOTE_LOADER = """
import sys, json, torch
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_seg" or name.startswith("hf_seg."):
            raise ImportError("hf_seg is blocked in this test")
sys.meta_path.insert(0, Refuse())
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation
folder, inputs, out = sys.argv[1:4]
model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = model(pixel_values=torch.load(inputs)).logits
torch.save(logits, out)
print(type(model).__module__, type(model).__name__, type(processor).__name__, "hf_seg" in sys.modules)
"""


def load_without_hf_seg(folder, tmp_path, pixels):
    """Load `folder` with trust_remote_code in a Python where `import hf_seg` fails; return its logits for `pixels`
    and the printed `(model module, model class, processor class, "hf_seg" imported?)`."""
    inputs, out = tmp_path / "inputs.pt", tmp_path / "logits.pt"
    torch.save(pixels, inputs)
    result = subprocess.run([sys.executable, "-c", REMOTE_LOADER, str(folder), str(inputs), str(out)],
                            capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path),
                                 "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out), result.stdout.split()
