"""Where paths live, and how data gets there and back.

A space turns data (points of a synthetic manifold, images) into the points where paths
are computed, and paths back into data:

* ``IdentitySpace``: paths live in data space (synthetic manifolds).
* ``PixelDiffusionSpace``: images scaled to [-1, 1], brought to level t of a pixel-space
  diffusion model; DDIM back to t = 0.
* ``LatentDiffusionSpace``: the same around a VAE (Stable Diffusion latents).

DDIM is implemented once, in ``ddim``; the schedule and forward noising in ``scoregeo_cli.schedule``.
"""

from scoregeo_cli.spaces.base import Endpoints, IdentitySpace, Space
from scoregeo_cli.spaces.diffusion import DiffusionSpace, LatentDiffusionSpace, PixelDiffusionSpace

__all__ = ["Endpoints", "Space", "IdentitySpace", "DiffusionSpace", "PixelDiffusionSpace", "LatentDiffusionSpace"]
