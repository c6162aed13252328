"""Boundary-value geodesics: minimise the discrete curve energy with fixed ends.

Solvers are callables ``solver(metric, a, b) -> GeodesicResult`` on P pairs at once
(a, b of shape (P, D)). Every path of every pair goes through the score network in one
batched call per iteration (chunked by the score field).

* ``FixedPointSolver``: freeze the metric at the current path, solve the frozen problem in
  closed form (an (N k) x (N k) solve), re-evaluate the scores, repeat; steps that raise
  the true energy are damped. No gradient through the network.
* ``OptimizerSolver``: torch.optim (Adam or L-BFGS) on the interior nodes, with the score
  differentiated through or frozen per step. ``adam_reference`` in conf/solver is the
  recipe of independent re-implementations of the paper (Adam, lr 1e-3, 500 steps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from scoregeo_cli.errors import ScoregeoError, check_finite
from scoregeo_cli.geometry.metrics import Metric


@dataclass
class GeodesicResult:
    """A solved batch of curves.

    path: (P, N+1, D) nodes, endpoints included. energy: (P,) final curve energy.
    energy_trace: the energies (P,) of the current paths after each iteration. score_evals: batched score
    evaluations used. seconds: wall time. converged: (P,) bool.
    """

    path: torch.Tensor
    energy: torch.Tensor
    score_evals: int
    seconds: float
    converged: torch.Tensor
    iterations: int
    energy_trace: list[list[float]] = field(default_factory=list)


def straight_path(a: torch.Tensor, b: torch.Tensor, nodes: int) -> torch.Tensor:
    """nodes points evenly spaced on the segment from a to b: (P, D) -> (P, nodes, D)."""
    t = torch.linspace(0, 1, nodes, dtype=a.dtype, device=a.device)[None, :, None]
    return (1 - t) * a[:, None] + t * b[:, None]


def _check_nodes(nodes: int) -> int:
    if int(nodes) < 3:
        raise ScoregeoError(f"solver.nodes must be at least 3 (endpoints included), got {nodes}")
    return int(nodes)


def _check_positive(name: str, value) -> None:
    if not value > 0:
        raise ScoregeoError(f"{name} must be positive, got {value}")


def frozen_metric_step(path: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Exact minimiser of the energy with the metric frozen at ``factors``, same endpoints.

    With G_i = I + U_i^T U_i the minimiser has G_i v_i = c for every segment and
    sum_i v_i = x_N - x_0 = delta. G_i^{-1} = I - U_i^T M_i U_i with M_i = (I + U_i U_i^T)^{-1}
    (k x k); writing M_i = L_i L_i^T and B_i = L_i^T U_i,
        (N I - B^T B) c = delta  =>  c = (delta + B^T (N I - B B^T)^{-1} B delta) / N
    (Woodbury; N I - B B^T is positive definite since each |B_i^T B_i| < 1).

    path: (P, N+1, D); factors: (P, N, k, D) -> new path (P, N+1, D).
    """
    p, n, k, d = factors.shape
    eye_k = torch.eye(k, dtype=factors.dtype, device=factors.device)
    m_inv = torch.linalg.inv(eye_k + factors @ factors.transpose(-1, -2))  # M_i, (P, N, k, k)
    m_chol = torch.linalg.cholesky(m_inv)  # L_i
    b = (m_chol.transpose(-1, -2) @ factors).reshape(p, n * k, d)  # stacked B_i
    delta = path[:, -1] - path[:, 0]  # (P, D)
    bd = torch.einsum("pjd,pd->pj", b, delta)
    system = n * torch.eye(n * k, dtype=b.dtype, device=b.device) - b @ b.transpose(-1, -2)
    y = torch.linalg.solve(system, bd.unsqueeze(-1)).squeeze(-1)
    c = (delta + torch.einsum("pjd,pj->pd", b, y)) / n  # (P, D)
    uc = torch.einsum("pnkd,pd->pnk", factors, c)
    v = c[:, None] - torch.einsum("pnkd,pnkl,pnl->pnd", factors, m_inv, uc)
    inner = path[:, :1] + torch.cumsum(v[:, :-1], dim=1)  # the last node stays exactly x_N
    return torch.cat([path[:, :1], inner, path[:, -1:]], dim=1)


class FixedPointSolver:
    """Alternate the frozen-metric closed-form step with re-evaluating the scores.

    Each iteration costs one batched score evaluation. A pair's step is accepted when the
    true energy does not rise; otherwise its step length halves (and doubles again, up to 1,
    after an accepted step). A pair has converged when the full fixed-point step moves no
    node by more than ``tol`` times |b - a|; it stops unconverged ("stalled") when its
    step length falls below ``min_step``. Stalling is expected near the solution at small
    noise levels: the frozen-metric fixed point ignores how the scores move with the nodes,
    so it is not exactly a minimiser of the true energy, and close to it the step stops
    lowering that energy.

    Args:
        nodes: nodes per path, endpoints included (>= 3).
        max_evals: budget of batched score evaluations (> 0).
        tol: convergence tolerance on the relative node displacement (> 0).
        min_step: smallest damping factor before giving up on a pair.
    """

    def __init__(self, nodes: int = 16, max_evals: int = 50, tol: float = 1e-4, min_step: float = 1e-3):
        self.nodes = _check_nodes(nodes)
        _check_positive("solver.max_evals", max_evals)
        _check_positive("solver.tol", tol)
        self.max_evals, self.tol, self.min_step = int(max_evals), float(tol), float(min_step)

    def __call__(self, metric: Metric, a: torch.Tensor, b: torch.Tensor,
                 init: torch.Tensor | None = None) -> GeodesicResult:
        start, evals0 = time.perf_counter(), metric.score.calls
        path = straight_path(a, b, self.nodes) if init is None else init.clone()
        scale = (b - a).norm(dim=-1).clamp_min(1e-30)  # (P,)
        with torch.no_grad():
            factors = metric.factors(path)
            energy = metric.energy_from_factors(path, factors)
            trace = [energy.tolist()]
            step = torch.ones_like(energy)
            done = torch.zeros_like(energy, dtype=torch.bool)
            it = 0
            while metric.score.calls - evals0 < self.max_evals and not bool(done.all()):
                it += 1
                target = frozen_metric_step(path, factors)
                check_finite(target, "the fixed-point path", f"solver iteration {it}")
                residual = (target - path).norm(dim=-1).amax(dim=-1) / scale
                done = done | (residual < self.tol) | (step < self.min_step)
                active = ~done
                if not bool(active.any()):
                    break
                trial = path + step[:, None, None] * (target - path)
                trial_factors = metric.factors(trial)
                trial_energy = metric.energy_from_factors(trial, trial_factors)
                check_finite(trial_energy, "the curve energy", f"solver iteration {it}")
                accept = active & (trial_energy <= energy * (1 + 1e-12))
                path = torch.where(accept[:, None, None], trial, path)
                factors = torch.where(accept[:, None, None, None], trial_factors, factors)
                energy = torch.where(accept, trial_energy, energy)
                step = torch.where(accept, (2 * step).clamp(max=1.0), torch.where(active, step / 2, step))
                trace.append(energy.tolist())
        converged = done & (step >= self.min_step)
        return GeodesicResult(path, energy, metric.score.calls - evals0, time.perf_counter() - start,
                              converged, it, trace)


class OptimizerSolver:
    """Minimise the curve energy over the interior nodes with a torch.optim optimiser.

    Args:
        nodes: nodes per path, endpoints included (>= 3).
        optimizer: "adam" or "lbfgs".
        lr: learning rate (> 0).
        max_evals: budget of batched score evaluations (> 0); Adam uses one per step.
        tol: stop when the total energy changes by less than tol (relative) between steps;
            0 runs the whole budget.
        freeze_score: treat the scores as constants within each step (no backward pass
            through the network) instead of differentiating through them.
    """

    OPTIMIZERS = ("adam", "lbfgs")

    def __init__(self, nodes: int = 16, optimizer: str = "adam", lr: float = 1e-3,
                 max_evals: int = 500, tol: float = 0.0, freeze_score: bool = False):
        self.nodes = _check_nodes(nodes)
        if optimizer not in self.OPTIMIZERS:
            raise ScoregeoError(f"solver.optimizer must be one of {self.OPTIMIZERS}, got '{optimizer}'")
        _check_positive("solver.lr", lr)
        if int(max_evals) < 2:
            raise ScoregeoError(f"solver.max_evals must be at least 2 for an optimiser "
                                f"(one step and the final energy), got {max_evals}")
        if tol < 0:
            raise ScoregeoError(f"solver.tol must be >= 0, got {tol}")
        self.optimizer, self.lr, self.max_evals = optimizer, float(lr), int(max_evals)
        self.tol, self.freeze_score = float(tol), bool(freeze_score)

    def __call__(self, metric: Metric, a: torch.Tensor, b: torch.Tensor,
                 init: torch.Tensor | None = None) -> GeodesicResult:
        start, evals0 = time.perf_counter(), metric.score.calls
        path0 = straight_path(a, b, self.nodes) if init is None else init
        interior = path0[:, 1:-1].clone().requires_grad_(True)
        trace: list[list[float]] = []

        def full_path() -> torch.Tensor:
            return torch.cat([a[:, None], interior, b[:, None]], dim=1)

        def energy_of(path: torch.Tensor) -> torch.Tensor:
            if self.freeze_score:
                with torch.no_grad():
                    factors = metric.factors(path)
                return metric.energy_from_factors(path, factors)
            return metric.energy(path)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            energy = energy_of(full_path())
            check_finite(energy.detach(), "the curve energy", f"score evaluation {metric.score.calls - evals0}")
            total = energy.sum()
            total.backward()
            trace.append(energy.detach().tolist())
            return total

        if self.optimizer == "adam":
            opt = torch.optim.Adam([interior], lr=self.lr)
            previous = None
            while metric.score.calls - evals0 < self.max_evals - 1:
                total = float(opt.step(closure).detach())
                if self.tol and previous is not None and abs(previous - total) <= self.tol * abs(previous):
                    break
                previous = total
        else:
            opt = torch.optim.LBFGS([interior], lr=self.lr, max_iter=self.max_evals - 1,
                                    max_eval=self.max_evals - 1, tolerance_change=self.tol or 1e-12,
                                    tolerance_grad=1e-12, history_size=20, line_search_fn="strong_wolfe")
            opt.step(closure)
        with torch.no_grad():
            path = full_path().detach()
            energy = metric.energy(path)  # the final energy costs one evaluation
        converged = torch.full_like(energy, metric.score.calls - evals0 < self.max_evals, dtype=torch.bool)
        return GeodesicResult(path, energy, metric.score.calls - evals0, time.perf_counter() - start,
                              converged, len(trace), trace)
