"""The conformal density metric g(x) = (p(x) / p(x_0))^(-beta) I.

Yu et al. (CVPR 2025, arXiv 2504.06675); Béthune & Boutin's G_{1/p} (arXiv 2505.18230).
Length is cheap where the density is high. A score network gives no log p, but its
differences along a path: with nodes x_0..x_N,

    l_k = log p(x_k) - log p(x_0) ~ sum_{j<k} 1/2 (s(x_j) + s(x_{j+1})) . (x_{j+1} - x_j)

(trapezoid). This is exact, up to the quadrature, for a conservative (true) score; for a
learned score, whose curl is not zero, it depends on the path and is an approximation. A
constant factor does not change geodesics, so the reference x_0 (the path's first node, a
fixed endpoint) does not matter. Discrete energy, segments v_i, weights w = exp(-beta l)
averaged over each segment's two nodes:

    E = N/2 sum_i 1/2 (w_i + w_{i+1}) |v_i|^2.

Geodesic equation (g = e^phi I, phi = -beta log p, grad phi = -beta s):
x'' = beta (s.x') x' - beta/2 |x'|^2 s; one score evaluation.
"""

from __future__ import annotations

import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.geometry.base import Metric
from scoregeo_cli.scores.base import ScoreField


def log_density_along(score: ScoreField, path: torch.Tensor) -> torch.Tensor:
    """log p(x_k) - log p(x_0) (P, N+1) at the nodes of paths (P, N+1, D), by the trapezoid rule
    on s . dx. One batched score evaluation."""
    s = score(path)
    v = path[:, 1:] - path[:, :-1]
    steps = 0.5 * ((s[:, 1:] + s[:, :-1]) * v).sum(-1)
    return torch.cat([torch.zeros_like(steps[:, :1]), torch.cumsum(steps, dim=1)], dim=1)


class ConformalMetric(Metric):
    """g(x) = (p(x) / p(x_0))^(-beta) I along a path (module docstring).

    Args:
        score: the score field s(x).
        beta: the exponent (>= 0; 0 is the Euclidean metric; 1 is G_{1/p}).
    """

    def __init__(self, score: ScoreField, beta: float = 1.0):
        if beta < 0:
            raise ScoregeoError(f"metric.beta must be >= 0, got {beta}")
        self.score, self.beta = score, float(beta)

    def weights(self, path: torch.Tensor) -> torch.Tensor:
        """exp(-beta (log p(x_k) - log p(x_0))) at the nodes, (P, N+1)."""
        return torch.exp(-self.beta * log_density_along(self.score, path))

    def energy(self, path: torch.Tensor) -> torch.Tensor:
        w = self.weights(path)
        v = path[:, 1:] - path[:, :-1]
        n = v.shape[1]
        return 0.5 * n * (0.5 * (w[:, 1:] + w[:, :-1]) * (v * v).sum(-1)).sum(-1)

    def length(self, path: torch.Tensor) -> torch.Tensor:
        """g-length (P,) of the polygon, sqrt of the weight averaged over each segment's nodes."""
        w = self.weights(path)
        v = path[:, 1:] - path[:, :-1]
        return (0.5 * (w[:, 1:].sqrt() + w[:, :-1].sqrt()) * v.norm(dim=-1)).sum(-1)

    def norm_sq(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise ScoregeoError("the conformal metric has no pointwise norm: log p is known only as differences "
                            "along a path (use energy or length of a path)")

    def acceleration(self, x: torch.Tensor, xdot: torch.Tensor) -> torch.Tensor:
        s = self.score(x)
        return self.beta * ((s * xdot).sum(-1, keepdim=True) * xdot
                            - 0.5 * (xdot * xdot).sum(-1, keepdim=True) * s)
