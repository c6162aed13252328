"""The one implementation of DDIM shared by every diffusion space (variance-preserving
convention; the schedule and forward noising are in ``scoregeo_cli.schedule``).

* ``ddim_denoise`` / ``ddim_invert``: deterministic DDIM (eta = 0) between level t and 0
  on any grid of timesteps, written from the DDIM update itself so that t need not lie on
  a scheduler's inference grid (checked against diffusers' DDIMScheduler in
  tests/test_diffusion.py).
"""

from __future__ import annotations

import torch

from scoregeo_cli.errors import ScoregeoError, check_finite
from scoregeo_cli.io import progress
from scoregeo_cli.schedule import EpsModel


def ddim_grid(t: int, steps: int) -> list[int]:
    """Descending integer levels t = t_0 > t_1 > ... > t_k >= 0 for ``steps`` DDIM steps."""
    if steps < 1:
        raise ScoregeoError(f"DDIM steps must be at least 1, got {steps}")
    grid = torch.linspace(t, 0, steps + 1).round().long().tolist()
    return sorted(set(grid), reverse=True)


def _ddim_move(x, eps, abar_from, abar_to):
    x0 = (x - (1 - abar_from).sqrt() * eps) / abar_from.sqrt()
    return abar_to.sqrt() * x0 + (1 - abar_to).sqrt() * eps


@torch.no_grad()
def ddim_denoise(eps_model: EpsModel, x_t: torch.Tensor, t: int, alphas_cumprod: torch.Tensor,
                 steps: int = 20, batch_size: int = 64, final_alpha: float = 1.0) -> torch.Tensor:
    """Deterministic DDIM from level t to a clean sample, for a batch (B, *shape).

    The levels are ``ddim_grid(t, steps)`` (t down to 0), and a last step goes from level 0
    to abar = ``final_alpha`` (1: the predicted x_0), as diffusers' DDIMScheduler does with
    ``set_alpha_to_one``: ``steps + 1`` network calls per sample. diffusers' 10-step
    "leading" schedule from 900 equals ``t=900, steps=9``.
    """
    grid = ddim_grid(t, steps)
    out = []
    chunks = x_t.split(batch_size)
    with progress.bar(len(chunks) * len(grid), f"DDIM from level {t} to 0", "call") as bar:
        for chunk in chunks:
            x = chunk
            for i, level in enumerate(grid):
                abar = alphas_cumprod[level].to(x.dtype)
                nxt = alphas_cumprod[grid[i + 1]].to(x.dtype) if i + 1 < len(grid) else torch.tensor(final_alpha, dtype=x.dtype)
                eps = eps_model(x, level)
                check_finite(eps, "the noise prediction", f"DDIM level {level}")
                x = _ddim_move(x, eps, abar, nxt)
                bar.update(1)
            out.append(x)
    return torch.cat(out)


@torch.no_grad()
def ddim_invert(eps_model: EpsModel, x0: torch.Tensor, t: int, alphas_cumprod: torch.Tensor,
                steps: int = 20, batch_size: int = 64) -> torch.Tensor:
    """Deterministic DDIM inversion of clean samples (B, *shape) up to level t."""
    grid = ddim_grid(t, steps)[::-1]  # ascending, from 0 (or near) to t
    out = []
    chunks = x0.split(batch_size)
    with progress.bar(len(chunks) * (len(grid) - 1), f"DDIM inversion to level {t}", "call") as bar:
        for chunk in chunks:
            x = chunk
            for i in range(len(grid) - 1):
                lo, hi = grid[i], grid[i + 1]
                eps = eps_model(x, lo)
                check_finite(eps, "the noise prediction", f"DDIM inversion level {lo}")
                x = _ddim_move(x, eps, alphas_cumprod[lo].to(x.dtype), alphas_cumprod[hi].to(x.dtype))
                bar.update(1)
            out.append(x)
    return torch.cat(out)
