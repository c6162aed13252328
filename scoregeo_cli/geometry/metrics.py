"""The score-based Riemannian metric g(x) = I + lambda u(x) u(x)^T and its curve energy.

u(x) is the score s(x), or s(x)/|s(x)| with ``normalize="unit"``. A discrete curve has
nodes x_0..x_N (shape (P, N+1, D) for P curves at once) and segments v_i = x_{i+1} - x_i;
its energy is

    E = N/2 * sum_i ( |v_i|^2 + |U_i v_i|^2 ),

where the rows of U_i carry the metric on segment i:
  * ``evaluate_at="midpoints"``: U_i = sqrt(lambda) u((x_i + x_{i+1})/2)      (one row),
  * ``evaluate_at="nodes"``:     U_i = sqrt(lambda/2) [u(x_i); u(x_{i+1})]     (trapezoid).
The factor N/2 makes a straight line in the flat metric cost |x_N - x_0|^2 / 2 whatever N.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.scores.base import ScoreField

NORMALIZE = ("none", "unit")
EVALUATE_AT = ("midpoints", "nodes")


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


class SteinMetric(Metric):
    """g(x) = I + lam u(x) u(x)^T on R^D, built on a score field.

    Args:
        score: the score field s(x).
        lam: lambda >= 0, the weight of the score direction.
        normalize: "none" (u = s) or "unit" (u = s / |s|).
        evaluate_at: "midpoints" or "nodes" (see module docstring).
    """

    def __init__(self, score: ScoreField, lam: float = 1000.0, normalize: str = "none",
                 evaluate_at: str = "midpoints"):
        if lam < 0:
            raise ScoregeoError(f"metric.lam must be >= 0, got {lam}")
        if normalize not in NORMALIZE:
            raise ScoregeoError(f"metric.normalize must be one of {NORMALIZE}, got '{normalize}'")
        if evaluate_at not in EVALUATE_AT:
            raise ScoregeoError(f"metric.evaluate_at must be one of {EVALUATE_AT}, got '{evaluate_at}'")
        self.score = score
        self.lam = float(lam)
        self.normalize = normalize
        self.evaluate_at = evaluate_at

    def direction(self, x: torch.Tensor) -> torch.Tensor:
        """u(x): the score, or the unit score; (..., D) -> (..., D). One score evaluation."""
        s = self.score(x)
        if self.normalize == "unit":
            s = s / s.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        return s

    def norm_sq(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """g_x(v, v) = |v|^2 + lam (u(x).v)^2 for points and vectors (..., D) -> (...)."""
        u = self.direction(x)
        return (v * v).sum(-1) + self.lam * (u * v).sum(-1) ** 2

    def factors(self, path: torch.Tensor) -> torch.Tensor:
        """U of every segment, (P, N, k, D), with one batched score evaluation."""
        if self.evaluate_at == "midpoints":
            u = self.direction(0.5 * (path[:, 1:] + path[:, :-1]))
            return (self.lam**0.5) * u[:, :, None, :]
        u = self.direction(path)
        return (self.lam / 2) ** 0.5 * torch.stack([u[:, :-1], u[:, 1:]], dim=2)

    @staticmethod
    def energy_from_factors(path: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Curve energy (P,) of paths (P, N+1, D) given segment factors (P, N, k, D)."""
        v = path[:, 1:] - path[:, :-1]
        n = v.shape[1]
        quad = (v * v).sum(-1) + (torch.einsum("pnkd,pnd->pnk", factors, v) ** 2).sum(-1)
        return 0.5 * n * quad.sum(-1)

    def energy(self, path: torch.Tensor) -> torch.Tensor:
        """Curve energy (P,) of paths (P, N+1, D); differentiable through the score."""
        return self.energy_from_factors(path, self.factors(path))

    def acceleration(self, x: torch.Tensor, xdot: torch.Tensor) -> torch.Tensor:
        """x'' from the geodesic equation at points x with velocities xdot, both (B, D).

        (I + lam u u^T) x'' = -lam (xdot^T J xdot) u + lam (u.xdot) (J^T - J) xdot, with
        J = du/dx. J^T xdot is a vector-Jacobian product; J xdot comes from the derivative
        of that product with respect to its cotangent (double backward), which works for any
        differentiable score. The left side is inverted by Sherman-Morrison. One score
        evaluation.
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            u = self.direction(x)
            cot = torch.zeros_like(u, requires_grad=True)
            (jt_cot,) = torch.autograd.grad(u, x, grad_outputs=cot, create_graph=True)
            jt_v = torch.autograd.grad(u, x, grad_outputs=xdot, retain_graph=True)[0]
            (j_v,) = torch.autograd.grad(jt_cot, cot, grad_outputs=xdot)
        u = u.detach()
        lam = self.lam
        rhs = -lam * (xdot * j_v).sum(-1, keepdim=True) * u + lam * (u * xdot).sum(-1, keepdim=True) * (jt_v - j_v)
        return rhs - lam * u * (u * rhs).sum(-1, keepdim=True) / (1 + lam * (u * u).sum(-1, keepdim=True))
