"""Exact scores of smoothed synthetic manifolds (science.md section 2).

* ``SphereScore``: the uniform measure on a sphere S^d of radius r, embedded isometrically
  in R^D, convolved with N(0, sigma^2 I) (variance-exploding convention). Closed form with
  a ratio of modified Bessel functions.
* ``EmpiricalScore``: the exact score of the smoothed empirical measure of samples
  y_1..y_n, sum_i w_i(x) (y_i - x) / sigma^2 with softmax weights. An oracle for any
  manifold that can be sampled.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import ive

from scoregeo_cli.scores.base import ScoreField


class _BesselRatio(torch.autograd.Function):
    """R_nu(k) = I_{nu+1}(k) / I_nu(k), elementwise, differentiable to any order.

    Values come from SciPy's exponentially scaled Bessel functions (stable for large k);
    the derivative uses the identity R' = 1 - R^2 - (2 nu + 1) R / k, written in torch ops
    on the saved output so that double backward works too.
    """

    @staticmethod
    def forward(ctx, kappa: torch.Tensor, nu: float) -> torch.Tensor:
        k = kappa.detach().cpu().double().numpy()
        small = k < 1e-8
        safe = np.where(small, 1.0, k)
        ratio = np.where(small, k / (2 * nu + 2), ive(nu + 1, safe) / ive(nu, safe))
        out = torch.from_numpy(ratio).to(kappa)
        ctx.nu = nu
        ctx.save_for_backward(kappa, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        kappa, ratio = ctx.saved_tensors
        nu = ctx.nu
        safe = kappa.clamp_min(1e-8)
        deriv = torch.where(kappa < 1e-8, torch.full_like(ratio, 1.0 / (2 * nu + 2)),
                            1 - ratio**2 - (2 * nu + 1) * ratio / safe)
        return grad * deriv, None


def bessel_ratio(kappa: torch.Tensor, nu: float) -> torch.Tensor:
    """I_{nu+1}(kappa) / I_nu(kappa) for kappa >= 0, with gradients."""
    return _BesselRatio.apply(kappa, float(nu))


class SphereScore(ScoreField):
    """Score of Uniform(S^d of radius r, centre c, in span(Q)) * N(0, sigma^2 I).

    With u = x - c and u_V = Q Q^T u, kappa = r |u_V| / sigma^2 and nu = (d - 1) / 2:
    s(x) = -u / sigma^2 + r R_nu(kappa) u_V / (|u_V| sigma^2).

    Args:
        basis: (D, d+1) orthonormal columns spanning the sphere's subspace.
        centre: (D,) centre.
        radius: sphere radius r > 0.
        sigma: noise standard deviation > 0.
    """

    def __init__(self, basis: torch.Tensor, centre: torch.Tensor, radius: float, sigma: float,
                 chunk_size: int | None = None):
        super().__init__(basis.shape[0], chunk_size)
        self.basis = basis.double()
        self.centre = centre.double()
        self.radius = float(radius)
        self.sigma = float(sigma)
        self.nu = (basis.shape[1] - 2) / 2  # (d - 1) / 2 with d + 1 = basis columns

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        var = self.sigma**2
        u = x - self.centre
        coords = u @ self.basis  # (B, d+1)
        norm = coords.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        kappa = self.radius * norm / var
        ratio = bessel_ratio(kappa, self.nu)
        return -u / var + self.radius * ratio * (coords / norm) @ self.basis.T / var


class EmpiricalScore(ScoreField):
    """Exact score of (1/n) sum_i N(y_i, sigma^2 I): sum_i w_i(x) (y_i - x) / sigma^2.

    Args:
        samples: (n, D) points of the manifold.
        sigma: noise standard deviation > 0.
    """

    def __init__(self, samples: torch.Tensor, sigma: float, chunk_size: int | None = None):
        super().__init__(samples.shape[1], chunk_size)
        self.samples = samples.double()
        self.sigma = float(sigma)
        self._sq = (self.samples**2).sum(-1)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        var = self.sigma**2
        sq_dist = (x**2).sum(-1, keepdim=True) - 2 * x @ self.samples.T + self._sq
        weights = torch.softmax(-sq_dist / (2 * var), dim=-1)  # (B, n)
        return (weights @ self.samples - x) / var


def analytic_score(manifold, sigma: float, exact: bool = True, n_samples: int = 4096,
                   seed: int = 0, chunk_size: int | None = None) -> ScoreField:
    """The exact score of ``manifold`` smoothed at ``sigma``.

    Uses the closed form when the manifold has one and ``exact`` is true, else the exact
    score of the smoothed empirical measure of ``n_samples`` samples of the manifold.
    """
    if exact and hasattr(manifold, "exact_score"):
        return manifold.exact_score(sigma, chunk_size=chunk_size)
    generator = torch.Generator().manual_seed(seed + 7919)
    return EmpiricalScore(manifold.sample(n_samples, generator), sigma, chunk_size)
