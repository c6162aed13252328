"""The fixed-point solver: freeze the metric at the current path, solve the frozen problem in
closed form, re-evaluate the scores, repeat.

It minimises the curve energy with the metric frozen at the current path (an (N k) x (N k)
solve, ``frozen_metric_step``; for the cubic spline the undamped Gauss-Newton step without
the score's Jacobian), one batched score evaluation per iteration and no gradient through
the network; a step that raises the true energy is halved. A pair stops as converged when
the full step moves no node by more than ``tol`` times |b - a|, as stalled when its step
length falls below ``min_step``, and every pair stops when ``max_evals`` evaluations are
spent. Stein metric only (it needs ``evaluate``).
"""

from __future__ import annotations

import time

import torch

from scoregeo_cli.errors import check_finite
from scoregeo_cli.geometry.base import Metric
from scoregeo_cli.geometry.solvers.base import (GeodesicResult, SolveProgress, _check_nodes, _check_positive, _finish,
                                                straight_path)
from scoregeo_cli.geometry.solvers.normal_equations import gauss_newton_step


def _select(mask: torch.Tensor, new, old):
    """Per-pair choice between two factor tensors (P, ...) or two ``Evaluation``s."""
    if isinstance(new, torch.Tensor):
        return torch.where(mask.reshape(-1, *([1] * (new.dim() - 1))), new, old)
    if bool(mask.all()):
        return new
    if not bool(mask.any()):
        return old
    for name in ("path", "r", "_u", "velocity", "energy"):  # the fields _target reads
        value = torch.where(mask.reshape(-1, *([1] * (getattr(new, name).dim() - 1))),
                            getattr(new, name).detach(), getattr(old, name).detach())
        setattr(old, name, value)
    return old


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

    It needs the low-rank structure of the Stein metric (``evaluate``); with any other metric
    the run refuses at start-up (``methods.geodesic.check_solver``).

    Each iteration costs one batched score evaluation. A pair's step is accepted when the
    true energy does not rise; otherwise its step length halves (and doubles again, up to 1,
    after an accepted step). A pair has converged when the full fixed-point step moves no
    node by more than ``tol`` times |b - a|; it stops unconverged ("stalled") when its
    step length falls below ``min_step``. Stalling is expected near the solution at small
    noise levels: the frozen-metric fixed point ignores how the scores move with the nodes,
    so it is not exactly a minimiser of the true energy, and close to it the step stops
    lowering that energy.

    For metrics other than the polygon with one or two rows per segment (e.g. the cubic
    spline, ``metric.interpolation=cubic``) the frozen minimiser comes from
    ``gauss_newton_step`` with the score's Jacobian left out.

    ``converged`` in the result follows the module's rule (true gradient norm below
    ``gtol`` times its start value); the iteration itself stops on ``tol``.

    Args:
        nodes: nodes per path, endpoints included (>= 3).
        max_evals: budget of batched score evaluations (> 0).
        tol: stopping tolerance on the relative node displacement (> 0).
        min_step: smallest damping factor before giving up on a pair.
        gtol: relative gradient-norm tolerance of ``converged`` (> 0).
    """

    needs = ("evaluate",)  # metric methods it relies on

    def __init__(self, nodes: int = 16, max_evals: int = 50, tol: float = 1e-4, min_step: float = 1e-3,
                 gtol: float = 1e-5):
        self.nodes = _check_nodes(nodes)
        _check_positive("solver.max_evals", max_evals)
        _check_positive("solver.tol", tol)
        _check_positive("solver.gtol", gtol)
        self.max_evals, self.tol, self.min_step = int(max_evals), float(tol), float(min_step)
        self.gtol = float(gtol)

    @staticmethod
    def _frozen(metric: Metric, path: torch.Tensor):
        """(target, factors-or-evaluation, energy) of the frozen problem at ``path``."""
        if getattr(metric, "polygon_factors", True):
            factors = metric.factors(path)
            return factors, metric.energy_from_factors(path, factors)
        ev = metric.evaluate(path)
        return ev, ev.energy.detach()

    @staticmethod
    def _target(path: torch.Tensor, state, lam: float) -> torch.Tensor:
        if isinstance(state, torch.Tensor):
            return frozen_metric_step(path, state)
        step, _ = gauss_newton_step(state.model, lam, path, state.r.detach(), state._u.detach(), None)
        out = path.clone()
        out[:, 1:-1] += step
        return out

    def __call__(self, metric: Metric, a: torch.Tensor, b: torch.Tensor,
                 init: torch.Tensor | None = None) -> GeodesicResult:
        with SolveProgress("fixed-point solve", metric, self.max_evals) as progress:
            return self._solve(metric, a, b, init, progress)

    def _solve(self, metric: Metric, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None,
               progress: SolveProgress) -> GeodesicResult:
        start, evals0, points0 = time.perf_counter(), metric.score.calls, metric.score.points
        path = straight_path(a, b, self.nodes) if init is None else init.clone()
        path0 = path
        scale = (b - a).norm(dim=-1).clamp_min(1e-30)  # (P,)
        lam = getattr(metric, "lam", 0.0)
        with torch.no_grad():
            factors, energy = self._frozen(metric, path)
            trace = [energy.tolist()]
            step = torch.ones_like(energy)
            done = torch.zeros_like(energy, dtype=torch.bool)
            it = 0
            while metric.score.calls - evals0 < self.max_evals and not bool(done.all()):
                it += 1
                target = self._target(path, factors, lam)
                check_finite(target, "the fixed-point path", f"solver iteration {it}")
                residual = (target - path).norm(dim=-1).amax(dim=-1) / scale
                done = done | (residual < self.tol) | (step < self.min_step)
                active = ~done
                if not bool(active.any()):
                    break
                trial = path + step[:, None, None] * (target - path)
                trial_factors, trial_energy = self._frozen(metric, trial)
                check_finite(trial_energy, "the curve energy", f"solver iteration {it}")
                accept = active & (trial_energy <= energy * (1 + 1e-12))
                path = torch.where(accept[:, None, None], trial, path)
                factors = _select(accept, trial_factors, factors)
                energy = torch.where(accept, trial_energy, energy)
                step = torch.where(accept, (2 * step).clamp(max=1.0), torch.where(active, step / 2, step))
                trace.append(energy.tolist())
                progress.update(energy)
        result = GeodesicResult(path, energy, metric.score.calls - evals0, 0.0, done, it, trace)
        result = _finish(metric, result, path0, self.gtol, points0)
        result.seconds = time.perf_counter() - start
        return result
