"""NoiseDiffusion (Zheng et al., ICLR 2024, arXiv 2403.08840): corrected noise interpolation.

Given clean latents z_A, z_B and their noisy versions x_A, x_B at level t, the frame at
interpolation weight l in (0, 1) is

    x(l) = clip_B( alpha clip_B(x_A) + beta clip_B(x_B)
                   + (mu - alpha) sqrt(abar_t) z_A + (nu - beta) sqrt(abar_t) z_B
                   + gamma sqrt(1 - abar_t) eps ),

with alpha = sqrt(1 - gamma^2) cos(pi l / 2), beta = sqrt(1 - gamma^2) sin(pi l / 2) (so that
alpha^2 + beta^2 = 1 - gamma^2), mu = boost alpha / (alpha + beta), nu = boost beta / (alpha + beta),
clip_B clamping every value to [-B, B] and eps fresh Gaussian noise per frame. Defaults are
the official ones: B = 2, gamma = 0, boost = 1.2. As in the official code, the two end
frames are the endpoints themselves (x_A, x_B, unclipped): the formula is used for the
interior frames only (at l = 0 it would not return x_A: mu = 1.2 adds 0.2 sqrt(abar) z_A).

The clip bites harder at small t than at the official t ~ 700, so the fraction of values it
changes is returned alongside the path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.methods.base import Method, MethodPath, Plan
from scoregeo_cli.spaces.base import Endpoints


@dataclass
class NoiseDiffusionPath:
    """path: (P, nodes, D), endpoints included. clipped_fraction: (P,) fraction of the interior
    frames' values changed by the outer clip. clipped_fraction_endpoints: (P,) fraction of
    the values of x_A and x_B changed by the inner clip."""

    path: torch.Tensor
    clipped_fraction: torch.Tensor
    clipped_fraction_endpoints: torch.Tensor


def coefficients(ell: float, gamma: float = 0.0, boost: float = 1.2) -> tuple[float, float, float, float]:
    """(alpha, beta, mu, nu) of NoiseDiffusion at interpolation weight 0 < ell < 1."""
    scale = math.sqrt(1.0 - gamma * gamma)
    alpha = scale * math.cos(math.pi * ell / 2)
    beta = scale * math.sin(math.pi * ell / 2)
    return alpha, beta, boost * alpha / (alpha + beta), boost * beta / (alpha + beta)


class NoiseDiffusion(Method):
    """The NoiseDiffusion interpolation of noisy latents (see the module docstring).

    Args:
        bound: B, the clipping bound (> 0).
        gamma: weight of the fresh noise, 0 <= gamma < 1.
        boost: the factor 1.2 in mu and nu (> 0).
    """

    def __init__(self, bound: float = 2.0, gamma: float = 0.0, boost: float = 1.2):
        if not bound > 0:
            raise ScoregeoError(f"noisediffusion.bound must be positive, got {bound}")
        if not 0 <= gamma < 1:
            raise ScoregeoError(f"noisediffusion.gamma must lie in [0, 1), got {gamma}")
        if not boost > 0:
            raise ScoregeoError(f"noisediffusion.boost must be positive, got {boost}")
        self.bound, self.gamma, self.boost = float(bound), float(gamma), float(boost)

    def __call__(self, ends: Endpoints, plan: Plan, generator: torch.Generator) -> MethodPath:
        """The method: frames between the ends at level t (no extrapolation), with the clip fractions."""
        nd = self.frames(ends.clean_a, ends.clean_b, ends.a, ends.b, ends.abar_t, plan.nodes, generator=generator)
        return MethodPath(nd.path, None, extra={"clipped_fraction": nd.clipped_fraction,
                                                "clipped_fraction_endpoints": nd.clipped_fraction_endpoints})

    def frames(self, z_a: torch.Tensor, z_b: torch.Tensor, x_a: torch.Tensor, x_b: torch.Tensor,
               abar_t: float, nodes: int, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> NoiseDiffusionPath:
        """Frames at l = i / (nodes - 1), i = 0..nodes-1, for P pairs of flat latents (P, D).

        ``noise`` (P, nodes - 2, D): the fresh noise of the interior frames; drawn from
        ``generator`` when None and gamma > 0 (with gamma = 0 it has no effect).
        """
        if nodes < 2:
            raise ScoregeoError(f"NoiseDiffusion needs at least 2 frames, got {nodes}")
        p, d = x_a.shape
        inner = nodes - 2
        if noise is None:
            noise = (torch.randn(p, inner, d, generator=generator, dtype=x_a.dtype).to(x_a.device)
                     if self.gamma > 0 else torch.zeros(p, inner, d, dtype=x_a.dtype, device=x_a.device))
        b = self.bound
        xa_c, xb_c = x_a.clamp(-b, b), x_b.clamp(-b, b)
        abar = torch.as_tensor(abar_t, dtype=torch.float64)
        root_abar, root_rest = float(abar.sqrt()), float((1 - abar).sqrt())
        frames, clipped = [x_a], torch.zeros(p, dtype=torch.float64, device=x_a.device)
        for i in range(1, nodes - 1):
            alpha, beta, mu, nu = coefficients(i / (nodes - 1), self.gamma, self.boost)
            raw = (alpha * xa_c + beta * xb_c + (mu - alpha) * root_abar * z_a
                   + (nu - beta) * root_abar * z_b + self.gamma * root_rest * noise[:, i - 1])
            clipped += (raw.abs() > b).double().mean(-1)
            frames.append(raw.clamp(-b, b))
        frames.append(x_b)
        inputs = torch.cat([x_a, x_b], dim=-1)
        return NoiseDiffusionPath(
            path=torch.stack(frames, dim=1),
            clipped_fraction=clipped / max(inner, 1),
            clipped_fraction_endpoints=(inputs.abs() > b).double().mean(-1),
        )
