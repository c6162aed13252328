"""scoregeo: geodesics of the score-based Riemannian metric g(x) = I + lambda s(x) s(x)^T.

Two front doors onto one core: the ``scoregeo`` command (experiments from configs) and a
small Python API for a score model you bring (see ``scoregeo_cli.api`` and the README's
"Use from Python")::

    import scoregeo_cli as sg
    geo = sg.geodesic(score, a, b, lam=1000.0)     # a, b: (P, D) or (P, *shape)
    ext = sg.extrapolate(geo, duration=0.5, steps=8)

Public names: ``geodesic``, ``extrapolate``, ``Geodesic``, ``Extrapolation``,
``score_from_unet``, ``score_from_conditional_unet``, ``noise``, ``denoise`` and the module
``families`` (the metric families, ``scoregeo_cli.api.families``). They are imported on
first use, so ``import scoregeo_cli`` stays light (no torch, no Hydra).

Importing the package also sets two process-wide defaults and nothing heavier:

* ``HF_HUB_OFFLINE=1`` unless the user set it: nothing is downloaded at run time.
* a hook that repairs ``import torchvision`` on CPU-only torch (see ``_compat``).
"""

import os
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scoregeo_cli import _compat  # noqa: E402

_compat.install_torchvision_hook()

__version__ = "0.1.0"

_API = ("geodesic", "extrapolate", "Geodesic", "Extrapolation", "score_from_unet",
        "score_from_conditional_unet", "noise", "denoise")
__all__ = [*_API, "families", "__version__"]

if TYPE_CHECKING:  # for type checkers and editors; at run time the names load lazily
    from scoregeo_cli.api import families  # noqa: F401
    from scoregeo_cli.api import (Extrapolation, Geodesic, denoise, extrapolate, geodesic, noise,  # noqa: F401
                                  score_from_conditional_unet, score_from_unet)


def __getattr__(name: str):
    if name in _API:
        from scoregeo_cli import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    if name == "families":
        import importlib

        return importlib.import_module("scoregeo_cli.api.families")
    raise AttributeError(f"module 'scoregeo_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
