"""Make ``import torchvision`` work beside a CPU-only torch.

PyPI's torchvision 0.28.0 is a CUDA build. Beside the CPU wheel of torch 2.13.0 its import
fails with ``operator torchvision::nms does not exist`` (pytorch/vision#9085), and so does
everything that imports it (torchmetrics, lpips, torch-fidelity, diffusers). Defining the
two operator schemas before torchvision registers its fake kernels fixes the import; only
``torchvision.ops.nms`` and ``torchvision.io`` decoding stay unusable (scoregeo reads images
with Pillow and never calls nms).

The fix must run before the first ``import torchvision``, wherever that happens, so it is
installed as an import hook that fires on that import and then gets out of the way.
"""

from __future__ import annotations

import importlib.abc
import sys

_LIBRARY = None  # keeps the torch.library registration alive


def define_torchvision_ops() -> None:
    """Define ``torchvision::nms`` and ``torchvision::qnms`` if torch has no CUDA."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    import torch

    if torch.cuda.is_available():
        _LIBRARY = False
        return
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        _LIBRARY = False  # a working torchvision build already defines it
        return
    except RuntimeError:
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: D401 - finder protocol
        if name == "torchvision":
            sys.meta_path.remove(self)
            define_torchvision_ops()
        return None  # let the regular finders import it


def install_torchvision_hook() -> None:
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())
