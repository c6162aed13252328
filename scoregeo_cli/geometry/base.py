"""What every Riemannian metric of scoregeo shares: the ``Metric`` interface that solvers and
shooting use, and the curve machinery of the discrete energies.

A discrete curve has nodes x_0..x_N (shape (P, N+1, D) for P curves at once). The nodes
define a curve y(t), t in [0, 1], x_j = y(j/N), linear in the nodes (``CurveModel``):
``interpolation`` "linear" (the polygon) or "cubic" (the not-a-knot cubic spline through the
nodes), evaluated at the points of a quadrature rule on every segment (``quadrature_rule``:
"midpoint", "trapezoid", "simpson" or "gauss<k>"). Each metric is one file beside this one:
``stein``, ``pullback``, ``conformal``, ``euclidean``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import lru_cache

import numpy as np
import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.scores.base import ScoreField

INTERPOLATION = ("linear", "cubic")
QUADRATURES = ("midpoint", "trapezoid", "simpson", "gauss<k>")


def quadrature_rule(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Points t_q in [0, 1] and weights w_q (summing to 1) of a rule on one segment."""
    if name == "midpoint":
        return np.array([0.5]), np.array([1.0])
    if name == "trapezoid":
        return np.array([0.0, 1.0]), np.array([0.5, 0.5])
    if name == "simpson":
        return np.array([0.0, 0.5, 1.0]), np.array([1.0, 4.0, 1.0]) / 6
    if name.startswith("gauss") and name[5:].isdigit() and int(name[5:]) >= 1:
        x, w = np.polynomial.legendre.leggauss(int(name[5:]))
        return (x + 1) / 2, w / 2
    raise ScoregeoError(f"metric.quadrature must be one of {QUADRATURES} (e.g. gauss4), got '{name}'")


def composite_gauss(points: int) -> tuple[np.ndarray, np.ndarray]:
    """``points`` (rounded up to a multiple of 4) composite 4-point Gauss-Legendre on [0, 1]."""
    m = max(1, -(-int(points) // 4))
    x, w = np.polynomial.legendre.leggauss(4)
    return ((np.arange(m)[:, None] + (x[None] + 1) / 2) / m).ravel(), np.tile(w / 2 / m, m)


class CurveModel:
    """Quadrature points of a curve through N+1 nodes, linear in the nodes.

    phi, dphi: (K, N+1) with y_k = phi @ x, y'_k = dphi @ x (t in [0, 1]); weights: (K,)
    (summing to 1); stiffness: dphi^T diag(weights) dphi, so that 1/2 x^T stiffness x is the
    Euclidean part of the energy. All float64 numpy.
    """

    def __init__(self, nodes: int, interpolation: str, t_local: np.ndarray, w_local: np.ndarray):
        n = nodes - 1
        t = ((np.arange(n)[:, None] + t_local[None]) / n).ravel()
        seg = np.repeat(np.arange(n), len(t_local))
        self.weights = np.tile(w_local, n) / n
        if interpolation == "linear":
            tl = np.tile(t_local, n)
            self.phi = np.zeros((len(t), nodes))
            self.dphi = np.zeros((len(t), nodes))
            rows = np.arange(len(t))
            self.phi[rows, seg], self.phi[rows, seg + 1] = 1 - tl, tl
            self.dphi[rows, seg], self.dphi[rows, seg + 1] = -n, n
        else:
            from scipy.interpolate import CubicSpline

            spline = CubicSpline(np.linspace(0, 1, nodes), np.eye(nodes), bc_type="not-a-knot")
            self.phi, self.dphi = spline(t), spline(t, 1)
        self.stiffness = self.dphi.T @ (self.weights[:, None] * self.dphi)
        self._tensors: dict = {}  # converted once per dtype and device (solvers ask every iteration)

    def tensors(self, like: torch.Tensor):
        """phi, dphi, weights as tensors of ``like``'s dtype and device."""
        key = ("phi", like.dtype, like.device)
        if key not in self._tensors:
            self._tensors[key] = tuple(torch.as_tensor(a, dtype=like.dtype, device=like.device)
                                       for a in (self.phi, self.dphi, self.weights))
        return self._tensors[key]

    def residual_rows(self, lam: float, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
        """sqrt(lam w_k) dphi_k and sqrt(lam w_k) phi_k over the interior nodes (K, N-1) and
        the stiffness (N+1, N+1): the constant parts of Gauss-Newton's normal equations."""
        key = ("rows", float(lam), dtype, device)
        if key not in self._tensors:
            scale = torch.as_tensor(np.sqrt(lam * self.weights), dtype=dtype, device=device)[:, None]
            self._tensors[key] = (scale * torch.as_tensor(self.dphi[:, 1:-1], dtype=dtype, device=device),
                                  scale * torch.as_tensor(self.phi[:, 1:-1], dtype=dtype, device=device),
                                  torch.as_tensor(self.stiffness, dtype=dtype, device=device))
        return self._tensors[key]


@lru_cache(maxsize=64)
def curve_model(nodes: int, interpolation: str, rule: str, length_points: int = 0) -> CurveModel:
    """Cached ``CurveModel``; ``length_points`` > 0 asks for the dense rule of ``length``."""
    t, w = composite_gauss(length_points) if length_points else quadrature_rule(rule)
    return CurveModel(nodes, interpolation, t, w)


class Metric(ABC):
    """A Riemannian metric g(x) on R^D built on a score field: what solvers and shooting need.

    Every metric has a ``score`` (whose ``calls`` counter measures cost), the discrete curve
    energy of paths (P, N+1, D) that boundary-value solvers minimise, the squared norm
    g_x(v, v), and the geodesic acceleration x'' = a(x, x') that shooting integrates.
    Solvers needing more (e.g. the fixed point's low-rank factors) check for it at start-up.
    """

    score: ScoreField

    @abstractmethod
    def energy(self, path: torch.Tensor) -> torch.Tensor:
        """Discrete curve energy (P,) of paths (P, N+1, D); differentiable through the score."""

    @abstractmethod
    def norm_sq(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """g_x(v, v) for points and vectors (..., D) -> (...)."""

    @abstractmethod
    def acceleration(self, x: torch.Tensor, xdot: torch.Tensor) -> torch.Tensor:
        """x'' of the geodesic equation at points x with velocities xdot, both (B, D)."""
