"""scoregeo: geodesics of the score-based Riemannian metric g(x) = I + lambda s(x) s(x)^T.

Importing the package sets two process-wide defaults and nothing heavier:

* ``HF_HUB_OFFLINE=1`` unless the user set it: nothing is downloaded at run time.
* a hook that repairs ``import torchvision`` on CPU-only torch (see ``_compat``).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scoregeo_cli import _compat  # noqa: E402

_compat.install_torchvision_hook()

__version__ = "0.1.0"
