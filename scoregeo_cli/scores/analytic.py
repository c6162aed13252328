"""Exact scores of smoothed synthetic manifolds (science.md section 2).

* ``SphereScore``: the uniform measure on a sphere S^d of radius r, embedded isometrically
  in R^D, convolved with N(0, sigma^2 I) (variance-exploding convention). Closed form with
  a ratio of modified Bessel functions.
* ``EmpiricalScore``: the exact score of a smoothed weighted point measure
  sum_i pi_i delta(y_i): sum_i w_i(x) (y_i - x) / sigma^2 with w_i proportional to
  pi_i exp(-|x - y_i|^2 / 2 sigma^2). With a fine quadrature of a manifold's density (curves)
  it is that density's smoothed score to quadrature accuracy; with random samples, the
  score of the smoothed empirical measure.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import ive

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.scores.base import ScoreField


def _ratio_continued_fraction(nu: float, k: np.ndarray, tol: float = 1e-15,
                               max_terms: int = 200_000) -> np.ndarray:
    """I_{nu+1}(k)/I_nu(k) = 1 / (b_1 + 1 / (b_2 + ...)), b_j = 2 (nu + j) / k (k > 0).

    Gauss' continued fraction, evaluated by the modified Lentz method. It needs about
    k / nu terms, so it serves where SciPy's scaled Bessel values underflow (large nu,
    moderate k), not for k >> nu.
    """
    tiny = 1e-300
    f = 2 * (nu + 1) / k
    c, d = f.copy(), np.zeros_like(k)
    for j in range(2, max_terms):
        b = 2 * (nu + j) / k
        d = b + d
        d = 1 / np.where(d == 0, tiny, d)
        c = b + 1 / c
        delta = c * d
        f = f * delta
        if np.all(np.abs(delta - 1) < tol):
            break
    return 1 / f


def _ratio(nu: float, k: np.ndarray) -> np.ndarray:
    small = k < 1e-8
    safe = np.where(small, 1.0, k)
    with np.errstate(invalid="ignore", divide="ignore", under="ignore"):
        top = ive(nu + 1, safe)
        ratio = top / ive(nu, safe)
    # where ive(nu + 1, k) underflows (or is subnormal: few digits left), the quotient is 0 or
    # inaccurate although I_{nu+1}/I_nu is not small (e.g. nu = 100, k in [0.069, 0.074])
    bad = (~np.isfinite(ratio) | (top < 1e-290)) & np.isfinite(safe)
    if bad.any():
        ratio[bad] = _ratio_continued_fraction(nu, safe[bad])
    return np.where(small, k / (2 * nu + 2), ratio)


class _BesselRatio(torch.autograd.Function):
    """R_nu(k) = I_{nu+1}(k) / I_nu(k), elementwise, differentiable to any order.

    Values come from SciPy's exponentially scaled Bessel functions (stable for large k),
    or from the continued fraction where ive(nu + 1, k) < 1e-290 (underflow, large nu); the derivative uses
    the identity R' = 1 - R^2 - (2 nu + 1) R / k, written in torch ops on the saved output
    so that double backward works too.
    """

    @staticmethod
    def forward(ctx, kappa: torch.Tensor, nu: float) -> torch.Tensor:
        ratio = _ratio(nu, kappa.detach().cpu().double().numpy())
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
    """Exact score of sum_i pi_i N(y_i, sigma^2 I): sum_i w_i(x) (y_i - x) / sigma^2.

    Args:
        samples: (n, D) points of the manifold.
        sigma: noise standard deviation > 0.
        log_weights: (n,) log pi_i up to a constant; None for equal weights.
    """

    def __init__(self, samples: torch.Tensor, sigma: float, chunk_size: int | None = None,
                 log_weights: torch.Tensor | None = None):
        super().__init__(samples.shape[1], chunk_size)
        self.samples = samples.double()
        self.sigma = float(sigma)
        self._sq = (self.samples**2).sum(-1)
        self.log_weights = None if log_weights is None else log_weights.double()

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        var = self.sigma**2
        sq_dist = (x**2).sum(-1, keepdim=True) - 2 * x @ self.samples.T + self._sq
        logits = -sq_dist / (2 * var)
        if self.log_weights is not None:
            logits = logits + self.log_weights
        weights = torch.softmax(logits, dim=-1)  # (B, n)
        return (weights @ self.samples - x) / var


def analytic_score(manifold, sigma: float, exact: bool = True, n_samples: int = 4096,
                   seed: int = 0, chunk_size: int | None = None) -> ScoreField:
    """The exact score of ``manifold`` smoothed at ``sigma``.

    Uses the closed form when the manifold has one and ``exact`` is true; else, for a
    manifold with a ``quadrature`` (curves), the smoothed score of an ``n_samples``-point
    quadrature of its density; else the smoothed empirical measure of ``n_samples``
    random samples.
    """
    if not sigma > 0:
        raise ScoregeoError(f"score.sigma must be positive, got {sigma}")
    if int(n_samples) < 1:
        raise ScoregeoError(f"score.n_samples must be at least 1, got {n_samples}")
    if exact and manifold.exact_score(sigma, chunk_size=chunk_size) is not None:
        return manifold.exact_score(sigma, chunk_size=chunk_size)
    if hasattr(manifold, "quadrature"):
        points, log_weights = manifold.quadrature(int(n_samples))
        return EmpiricalScore(points, sigma, chunk_size, log_weights)
    generator = torch.Generator().manual_seed(seed + 7919)
    return EmpiricalScore(manifold.sample(int(n_samples), generator), sigma, chunk_size)
