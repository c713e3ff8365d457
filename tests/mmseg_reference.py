"""Import mmsegmentation 1.x on CPU with ``mmcv-lite`` (the reference implementation for parity checks).

``mmcv-lite`` ships ``mmcv/ops/*.py`` but not the compiled ``mmcv._ext`` they load, and several mmseg and mmcv modules
import from ``mmcv.ops`` at import time (point_sample, sigmoid_focal_loss, ...), so ``import mmseg.models`` fails.
None of those ops is used by the models hf_seg compares against (ViT + SETR heads, MiT + SegFormer head, UperNet,
IoUMetric). ``import_mmseg()`` therefore installs a stand-in ``mmcv.ops`` first: every name in it imports fine and
raises a clear error when it is called or instantiated. With a full ``mmcv`` build (``mmcv._ext`` present) nothing is
replaced.

Tests::

    from mmseg_reference import import_mmseg
    mmseg = import_mmseg()   # mmseg is in the `test` extra: an import failure fails the tests, it does not skip them

Scripts outside ``tests/`` (benchmarks) put ``tests/`` on ``sys.path`` and do the same.
"""

import importlib.util
import sys
import types
import warnings

# Names imported from mmcv.ops by mmseg 1.2.2, mmcv-lite 2.1.0 and mmengine 0.10.7, per (sub)module.
_STUB_NAMES = {
    "mmcv.ops": (
        "point_sample",
        "sigmoid_focal_loss",
        "DeformConv2d",
        "ModulatedDeformConv2d",
        "MultiScaleDeformableAttention",
        "get_compiler_version",
        "get_compiling_cuda_version",
        "SyncBatchNorm",
        "SparseSequential",
        "PSAMask",
        "CrissCrossAttention",
    ),
    "mmcv.ops.multi_scale_deform_attn": ("MultiScaleDeformableAttention",),
    "mmcv.ops.deform_conv": ("DeformConv2d", "DeformConv2dPack", "deform_conv2d"),
}


def _unavailable(qualname: str) -> type:
    """A class that can be imported and used in ``isinstance`` checks, but raises when called."""

    def refuse(cls, *args, **kwargs):
        raise RuntimeError(
            f"{qualname} is a compiled mmcv op, which mmcv-lite does not provide; the hf_seg test stand-in for "
            "mmcv.ops only lets mmsegmentation import. Install a full mmcv build to use it."
        )

    return type(qualname.rsplit(".", 1)[-1], (), {"__new__": refuse, "__module__": qualname.rsplit(".", 1)[0]})


def _install_mmcv_ops_stub() -> None:
    if "mmcv.ops" in sys.modules or importlib.util.find_spec("mmcv._ext") is not None:
        return  # already imported (stub or real), or a full mmcv whose ops work
    import mmcv

    modules = {}
    for module_name, names in _STUB_NAMES.items():
        module = types.ModuleType(module_name, "hf_seg test stand-in: mmcv-lite has no compiled ops.")
        module.__path__ = []  # a package, so ``import mmcv.ops.<sub>`` resolves through sys.modules
        for name in names:
            setattr(module, name, _unavailable(f"{module_name}.{name}"))
        modules[module_name] = module
    for module_name, module in modules.items():
        parent, _, child = module_name.rpartition(".")
        sys.modules[module_name] = module
        setattr(modules.get(parent, mmcv), child, module)


def import_mmseg() -> types.ModuleType:
    """Import mmseg with its models, datasets and metrics registered; raise ImportError if that is not possible."""
    try:
        import mmcv  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError as err:
        raise ImportError(f"mmsegmentation needs mmcv(-lite) and mmengine: {err}") from err
    _install_mmcv_ops_stub()
    with warnings.catch_warnings():
        # mmcv.cnn.bricks.transformer warns that MultiScaleDeformableAttention moved when it imports the stand-in.
        warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*")
        # mmengine imports torch.distributed.optim, whose import-time torch.jit.script calls torch 2.13 deprecates.
        warnings.filterwarnings("ignore", message="`torch.jit.", category=DeprecationWarning)
        import mmseg
        import mmseg.datasets
        import mmseg.evaluation
        import mmseg.models  # noqa: F401
    return mmseg


if __name__ == "__main__":
    mmseg = import_mmseg()
    from mmseg.evaluation import IoUMetric  # noqa: F401
    from mmseg.models.backbones import VisionTransformer  # noqa: F401
    from mmseg.models.decode_heads import SETRMLAHead, SETRUPHead  # noqa: F401
    from mmseg.models.necks import MLANeck  # noqa: F401

    print(f"mmseg {mmseg.__version__} imported (mmcv.ops: {sys.modules['mmcv.ops'].__doc__})")
