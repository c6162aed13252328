"""The diffusion schedule (variance-preserving convention), below the scores that use it.

* ``alphas_cumprod_from(scheduler_config)``: the schedule, from a diffusers scheduler.
* ``check_level``: an integer level t in 1..T-1.
* ``noise_to``: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (the same eps for both ends
  of a pair gives the paper's shared-noise endpoints).

DDIM between levels (a sampler that calls a model) is in ``spaces/ddim.py``.
"""

from __future__ import annotations

from typing import Callable

import torch

from scoregeo_cli.errors import ScoregeoError

# eps_model(x_t of shape (B, *shape), t: int) -> predicted noise, same shape
EpsModel = Callable[[torch.Tensor, int], torch.Tensor]


def alphas_cumprod_from(scheduler_config: dict) -> torch.Tensor:
    """abar_t for t = 0..T-1 (float64) of a diffusers scheduler configuration."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(dict(scheduler_config))
    return scheduler.alphas_cumprod.double()


def check_level(t: int, alphas_cumprod: torch.Tensor) -> int:
    n = alphas_cumprod.numel()
    if not 0 < int(t) < n:
        raise ScoregeoError(f"the diffusion level t must lie in 1..{n - 1}, got {t}")
    return int(t)


def noise_to(x0: torch.Tensor, eps: torch.Tensor, t: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward-noise clean samples to level t: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    abar = alphas_cumprod[t].to(x0.dtype)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps
