"""Trust-region Newton-CG on the true curve energy, at one discretisation.

What it minimises: the same discrete curve energy as ``gauss_newton`` (the Stein metric's
quadrature of 1/2 int g(y, y')(y', y') dt on the curve through the nodes, fixed ends), with
its exact second derivatives. Gauss-Newton keeps J^T J and drops sum_k r_k grad^2 r_k, the
residuals' own curvature; where lam |s|^2 >> 1 that term dominates (it holds the score's
Jacobian and Hessian contracted with the velocity), and Gauss-Newton's steps are then many
times too long along its own direction (on the exact orbit score at t = 200 the full step
raised the energy 60-fold, and steps shortened to 1-2% of it gained 3% an iteration).

Each iteration: the energy and its gradient with the score's graph kept (one batched score
evaluation and one backward pass), the Gauss-Newton factors of the same graph as the
preconditioner (one vector-Jacobian product), then Steihaug-Toint conjugate gradients on
the Newton equations H d = -grad inside a trust region measured in the Gauss-Newton norm
|d|_G = sqrt(d^T G d) (each CG step one Hessian-vector product: a double backward through
the score; at most ``max_cg``, stopped at a relative residual of ``cg_tol``, on negative
curvature or at the region's boundary), and the trial's energy (one batched evaluation). The
region grows after good steps and shrinks after poor ones (Nocedal and Wright, Alg. 4.1 and
7.2); a pair's step is accepted when the energy falls by at least 1e-4 of the model's
prediction. The preconditioner is the Gauss-Newton matrix, solved through its low-rank
structure (``normal_equations.gauss_newton_solve``), so CG converges in a few steps where
G approximates H except in a few directions.

When it stops, per pair: converged (the relative gradient below ``gtol``, or the energy
stable: the last accepted step lowered it by less than ``etol`` relative and an interior
Newton step, one that CG ended inside the region, promises no more), stalled (the region
shrank below ``min_radius`` of its first size without an acceptable step) or the budget
spent (``exhausted()``).
"""

from __future__ import annotations

from typing import Callable

import torch

from scoregeo_cli.errors import ScoregeoError, check_finite
from scoregeo_cli.geometry.base import Metric
from scoregeo_cli.geometry.solvers.base import SolveProgress, _check_positive
from scoregeo_cli.geometry.solvers.gauss_newton import LevelSolve
from scoregeo_cli.geometry.solvers.normal_equations import gauss_newton_apply, gauss_newton_solve

__all__ = ["NewtonIteration"]


class _Graph:
    """The energy of paths (P, N, D) with the score's graph kept: the energy (P,), its
    gradient over the interior nodes, Hessian-vector products, and the Gauss-Newton factors
    (r, u, g) of the same evaluation (one batched score evaluation, one backward pass, one
    vector-Jacobian product)."""

    def __init__(self, metric: Metric, path: torch.Tensor):
        self.path = path.detach()
        self.x = self.path.clone().requires_grad_(True)
        model = metric.curve(path.shape[1])
        phi, dphi, w = model.tensors(self.x)
        with torch.enable_grad():
            points = torch.einsum("kj,pjd->pkd", phi, self.x)
            velocity = torch.einsum("kj,pjd->pkd", dphi, self.x)
            u = metric.direction(points)
            r = (metric.lam * w) ** 0.5 * (u * velocity).sum(-1)
            self.energy_graph = 0.5 * (w * (velocity * velocity).sum(-1)).sum(-1) + 0.5 * (r * r).sum(-1)
            (grad,) = torch.autograd.grad(self.energy_graph.sum(), self.x, create_graph=True)
            (jt_v,) = torch.autograd.grad(u, points, grad_outputs=velocity.detach(), retain_graph=True)
        self.grad_graph = grad
        self.energy = self.energy_graph.detach()
        self.grad = grad[:, 1:-1].detach()
        self.r, self.u, self.g = r.detach(), u.detach(), jt_v.detach()
        self.points = self.r.shape[0] * self.r.shape[1]

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v over the interior nodes (a double backward through the score)."""
        full = torch.zeros_like(self.x)
        full[:, 1:-1] = v.to(self.x.dtype)
        (h,) = torch.autograd.grad(self.grad_graph, self.x, grad_outputs=full, retain_graph=True)
        return h[:, 1:-1].detach()


class NewtonIteration:
    """Trust-region Newton-CG at the discretisation of the path it is given (module docstring).

    Used by ``adaptive.AdaptiveSolver`` for every level (``solver.hessian: exact``).

    Args:
        max_cg: most conjugate-gradient steps (Hessian-vector products) per iteration (>= 1).
        cg_tol: relative residual at which CG stops (0 < cg_tol < 1).
        min_radius: smallest trust region, relative to the first, before a pair stops as
            stalled (> 0).
    """

    revision = 1  # of the algorithm: the solve cache keys on it (through the adaptive solver's)

    def __init__(self, max_cg: int = 20, cg_tol: float = 0.1, min_radius: float = 1e-9):
        if int(max_cg) < 1:
            raise ScoregeoError(f"solver.max_cg must be at least 1, got {max_cg}")
        if not 0 < cg_tol < 1:
            raise ScoregeoError(f"solver.cg_tol must be between 0 and 1, got {cg_tol}")
        _check_positive("solver.min_radius", min_radius)
        self.max_cg, self.cg_tol, self.min_radius = int(max_cg), float(cg_tol), float(min_radius)

    def iterate(self, metric: Metric, path: torch.Tensor, etol: float, gtol: float,
                gnorm0: torch.Tensor | None, exhausted: Callable[[], bool],
                progress: SolveProgress | None = None) -> LevelSolve:
        """Newton-CG from ``path`` (P, N, D) until every pair has converged or stalled, or
        ``exhausted()``; the discretisation is ``path``'s own."""
        path = path.detach().clone()
        p, dev, dtype = path.shape[0], path.device, path.dtype
        model = metric.curve(path.shape[1])
        graph = _Graph(metric, path)
        state = LevelSolve(path, graph.energy.clone(), torch.zeros(p, dtype=torch.bool, device=dev), gnorm0,
                           trace=[graph.energy.tolist()])
        state.vjp_evals, state.vjp_points = 2, 2 * graph.points  # the gradient and the VJP of the factors
        state.hvp_points = 0
        energy = graph.energy.clone()
        radius = torch.full((p,), float("nan"), dtype=torch.float64, device=dev)
        radius0 = radius.clone()
        last_gain = torch.full((p,), float("inf"), dtype=torch.float64, device=dev)
        interior = torch.zeros(p, dtype=torch.bool, device=dev)
        promise = torch.full((p,), float("inf"), dtype=torch.float64, device=dev)
        done = torch.zeros(p, dtype=torch.bool, device=dev)
        floor_rel = 16 * torch.finfo(torch.float32 if etol > 0 else dtype).eps
        while True:
            grad = graph.grad.double()
            norm = grad.flatten(1).norm(dim=-1)
            if state.grad_norm0 is None:
                state.grad_norm0 = norm.clone().to(dtype)
            conv = (norm <= gtol * state.grad_norm0.double()) | (
                (etol > 0) & interior & (last_gain <= etol * energy.abs()) & (promise <= etol * energy.abs()))
            conv &= ~done
            state.converged |= conv
            done |= conv
            if bool(done.all()) or exhausted():
                break
            state.iterations += 1
            r, u, g = graph.r.double(), graph.u.double(), graph.g.double()
            lam = metric.lam

            def precondition(v):
                return gauss_newton_solve(model, lam, u, g, v)

            def g_norm(v):
                return (v * gauss_newton_apply(model, lam, u, g, v)).flatten(1).sum(-1).clamp_min(0).sqrt()

            if bool(torch.isnan(radius).any()):  # first size: the Gauss-Newton step's G-norm
                first = g_norm(precondition(-grad))
                radius = torch.where(torch.isnan(radius), first, radius)
                radius0 = torch.where(torch.isnan(radius0), first, radius0)
            step, model_value, inside, products = self._steihaug(grad, graph.hvp, precondition, g_norm, radius, ~done)
            state.hvp_points += products * graph.points
            trial = path.clone()
            trial[:, 1:-1] += step.to(dtype)
            trial[done] = path[done]
            e_trial = metric.energy(trial).detach().double()  # one evaluation, no graph
            check_finite(e_trial, "the curve energy", f"solver iteration {state.iterations}")
            pred = -model_value
            gain = energy - e_trial
            floor = floor_rel * energy.abs()
            rho = gain / pred.clamp_min(1e-300)
            ok = ~done & ((rho > 1e-4) | ((pred <= floor) & (gain >= -floor)))
            size = g_norm(step)
            radius = torch.where(rho < 0.25, 0.25 * size,
                                 torch.where((rho > 0.75) & ~inside, 2 * radius, radius))
            last_gain = torch.where(ok, gain.abs(), last_gain)
            interior = torch.where(ok, inside, interior)
            promise = torch.where(ok, pred.abs(), promise)
            energy = torch.where(ok, e_trial, energy)
            path = torch.where(ok[:, None, None], trial, path)
            stalled = ~done & ~ok & (radius < self.min_radius * radius0)
            done |= stalled
            state.trace.append(energy.tolist())
            if progress is not None:
                progress.update(energy, norm / state.grad_norm0.double())
            if bool(done.all()) or exhausted():
                break
            graph = _Graph(metric, path)
            state.vjp_evals, state.vjp_points = state.vjp_evals + 2, state.vjp_points + 2 * graph.points
        state.path, state.energy = path, energy.to(dtype)
        return state

    def _steihaug(self, grad, hvp, precondition, g_norm, radius, active):
        """Steihaug-Toint CG on H d = -grad per pair inside |d|_G <= radius: the step, the
        model value grad.d + 1/2 d^T H d, whether CG ended inside the region, and the
        Hessian-vector products spent (each covers all pairs)."""
        d = torch.zeros_like(grad)
        res = grad.clone()
        z = precondition(res)
        direction = -z
        rz = (res * z).flatten(1).sum(-1)
        rz0 = rz.clone()
        running = active.clone()
        inside = active.clone()
        products = 0
        for _ in range(self.max_cg):
            h_dir = hvp(direction).double()
            products += 1
            curv = (direction * h_dir).flatten(1).sum(-1)
            alpha = rz / curv.where(curv != 0, torch.ones_like(curv))
            candidate = d + alpha[:, None, None] * direction
            leave = running & ((curv <= 0) | (g_norm(candidate) >= radius))
            if bool(leave.any()):  # negative curvature or the boundary: go to the boundary along direction
                tau = _to_boundary(d, direction, radius, g_norm)
                d = torch.where(leave[:, None, None], d + tau[:, None, None] * direction, d)
                inside &= ~leave
                running &= ~leave
            d = torch.where(running[:, None, None], candidate, d)
            res = torch.where(running[:, None, None], res + alpha[:, None, None] * h_dir, res)
            if not bool(running.any()):
                break
            z = precondition(res)
            rz_new = (res * z).flatten(1).sum(-1)
            running &= rz_new > (self.cg_tol ** 2) * rz0
            if not bool(running.any()):
                break
            beta = rz_new / rz.clamp_min(1e-300)
            direction = torch.where(running[:, None, None], -z + beta[:, None, None] * direction, direction)
            rz = torch.where(running, rz_new, rz)
        h_d = hvp(d).double()
        products += 1
        value = (grad * d).flatten(1).sum(-1) + 0.5 * (d * h_d).flatten(1).sum(-1)
        return d, value, inside, products


def _to_boundary(d, direction, radius, g_norm):
    """tau >= 0 with |d + tau direction|_G = radius (per pair), from three G-norms."""
    dd = g_norm(d) ** 2
    pp = g_norm(direction) ** 2
    both = g_norm(d + direction) ** 2
    dp = 0.5 * (both - dd - pp)
    return (-dp + (dp * dp + pp * (radius ** 2 - dd).clamp_min(0)).clamp_min(0).sqrt()) / pp.clamp_min(1e-300)
