"""The Gauss-Newton solver (the default): Levenberg-Marquardt on the true curve energy.

It minimises the true curve energy, how the scores move with the nodes included: each
iteration linearises the residuals r_k = sqrt(lam w_k) u(y_k).y'_k (one batched score
evaluation and one vector-Jacobian product), solves the damped normal equations
(``normal_equations.gauss_newton_step``) and backtracks on the true energy; it converges to
a stationary point of that energy. A pair stops as converged when its true gradient norm
falls below ``gtol`` times its value on the first path (with ``etol``, also when its energy
is stable), as stalled when the damping exceeds ``max_damping``, and every pair stops when
``max_evals`` evaluations are spent. Coarse to fine (``levels``): most iterations on paths
of a few nodes, the last from their resampled curve. A metric without residual structure is
handed to L-BFGS (``optimizer``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from scoregeo_cli.errors import ScoregeoError, check_finite
from scoregeo_cli.geometry.base import Metric
from scoregeo_cli.geometry.solvers.base import (GeodesicResult, SolveProgress, _check_nodes, _check_positive, _finish,
                                                resample, score_is_float32, straight_path)
from scoregeo_cli.geometry.solvers.fixed_point import FixedPointSolver
from scoregeo_cli.geometry.solvers.normal_equations import gauss_newton_step
from scoregeo_cli.geometry.solvers.optimizer import OptimizerSolver

__all__ = ["GaussNewtonSolver", "gauss_newton_step"]


@dataclass
class _Solve:
    """State of one Gauss-Newton solve at one discretisation."""

    path: torch.Tensor
    energy: torch.Tensor
    converged: torch.Tensor
    grad_norm0: torch.Tensor | None
    iterations: int = 0
    trace: list = field(default_factory=list)
    vjp_evals: int = 0
    vjp_points: int = 0


class GaussNewtonSolver:
    """Gauss-Newton (Levenberg-Marquardt) on the true curve energy.

    Each iteration linearises the residuals at the current path (one batched score
    evaluation, kept differentiable, and one vector-Jacobian product through the score) and
    solves the normal equations, damped by mu I, with ``gauss_newton_step``. The trial is
    accepted when the true energy falls by at least 1e-4 of the decrease the linear model
    predicts (one batched score evaluation per trial; an accepted trial's evaluation is the
    next linearisation's, also when it came after rejected ones). mu starts at 0 (pure
    Gauss-Newton: quadratic convergence where the residuals vanish at the solution); a
    rejected trial raises it and re-solves without a new evaluation; a good step lowers it.
    ``damping="lm"``: x4 (at least 1e-2 of the mean stiffness) on a rejection, /10 after a
    very good step and back to 0 below a tenth of its unit; ``damping="nielsen"`` (Nielsen's
    rule): x2, x4, x8 ... on successive rejections, x max(1/3, 1 - (2 rho - 1)^3) after an
    accepted step with gain ratio rho, so that a problem whose undamped steps overshoot keeps
    the damping it needed. Damping matters where the residuals' own curvature, which
    Gauss-Newton leaves out, is large: e.g. when a path leaves the sphere's subspace
    (codimension > 1), or on a learned score with lam |s|^2 large. A pair stops as converged
    when its true gradient norm falls below ``gtol`` times its value on the first path, and
    as stalled when mu exceeds ``max_damping`` times its unit.

    Float32 scores (``float32_gtol`` set): a relative gradient of 1e-8 is below float32's
    rounding, so a score that computes in float32 (``score_is_float32``) gets
    ``float32_gtol`` instead. With ``etol`` > 0 a pair has also converged when its energy is
    stable: its last accepted step changed the energy by less than ``etol`` relative, and the
    Gauss-Newton model predicts that a full, undamped step would lower it by no more (checked
    at each linearisation; the undamped step costs a K x K solve, no network pass). Energy
    changes below 16 float32 rounding units then count as no change (in the acceptance test
    too). A metric without residual linearisation (no ``evaluate``) is handed to L-BFGS with
    the same budget.

    Coarse-to-fine (``levels``): the geodesic is first solved on paths of ``levels[0]``,
    ``levels[1]``, ... nodes (to ``coarse_gtol``, with the quadrature rule
    ``coarse_quadrature`` on every segment), each start resampled from the previous
    level's curve (the metric's interpolation); the finest path then starts from the last
    coarse curve. Most iterations run on a few cheap points; the path returned has
    ``nodes`` nodes and is a stationary point of the energy at ``nodes`` nodes.

    Args:
        nodes: nodes per path, endpoints included (>= 3).
        max_evals: budget of batched score evaluations (forward passes, > 0), all levels
            together; the coarse levels spend at most half of it, and stop once their points
            reach a quarter of the budget's (an evaluation of all P paths at ``nodes`` nodes
            counting as one).
        gtol: relative gradient-norm tolerance (> 0).
        warm_start: fixed-point iterations first (0: none); each costs one evaluation.
        max_damping: largest damping, in units of 1e-2 of the mean stiffness, before a
            pair stops as stalled.
        levels: node counts (increasing, each >= 3) of the coarse paths solved first; those
            above ``nodes`` are skipped, and one equal to ``nodes`` solves the final path with
            ``coarse_quadrature`` before its own rule; empty: none.
        coarse_quadrature: the rule per segment at the coarse levels ("gauss2", ...);
            None: the metric's own.
        coarse_gtol: relative gradient tolerance of the coarse levels (> 0).
        damping: "lm" or "nielsen" (see above).
        etol: relative energy change of the energy criterion (>= 0; 0: none).
        float32_gtol: the relative gradient tolerance for scores that compute in float32;
            None: ``gtol`` for every score.
    """

    DAMPING = ("lm", "nielsen")
    revision = 2  # of the algorithm: the solve cache keys on it (2: the undamped energy criterion)

    def __init__(self, nodes: int = 16, max_evals: int = 200, gtol: float = 1e-8, warm_start: int = 0,
                 max_damping: float = 1e12, levels=(), coarse_quadrature: str | None = None,
                 coarse_gtol: float = 1e-3, damping: str = "lm", etol: float = 0.0,
                 float32_gtol: float | None = None):
        self.nodes = _check_nodes(nodes)
        _check_positive("solver.max_evals", max_evals)
        _check_positive("solver.gtol", gtol)
        if int(warm_start) < 0:
            raise ScoregeoError(f"solver.warm_start must be >= 0, got {warm_start}")
        self.max_evals, self.gtol = int(max_evals), float(gtol)
        _check_positive("solver.max_damping", max_damping)
        self.warm_start, self.max_damping = int(warm_start), float(max_damping)
        levels = [int(n) for n in (levels or ())]
        if any(n < 3 for n in levels) or levels != sorted(set(levels)):
            raise ScoregeoError(f"solver.levels must be increasing node counts >= 3, got {levels}")
        self.levels = [n for n in levels if n <= self.nodes]  # those above nodes: skipped
        if coarse_quadrature is not None:
            from scoregeo_cli.geometry.base import quadrature_rule

            quadrature_rule(str(coarse_quadrature))  # validates
        self.coarse_quadrature = None if coarse_quadrature is None else str(coarse_quadrature)
        _check_positive("solver.coarse_gtol", coarse_gtol)
        self.coarse_gtol = float(coarse_gtol)
        if damping not in self.DAMPING:
            raise ScoregeoError(f"solver.damping must be one of {self.DAMPING}, got '{damping}'")
        self.damping = damping
        if not etol >= 0:
            raise ScoregeoError(f"solver.etol must be >= 0, got {etol}")
        self.etol = float(etol)
        if float32_gtol is not None:
            _check_positive("solver.float32_gtol", float32_gtol)
        self.float32_gtol = None if float32_gtol is None else float(float32_gtol)

    def __call__(self, metric: Metric, a: torch.Tensor, b: torch.Tensor,
                 init: torch.Tensor | None = None) -> GeodesicResult:
        if not hasattr(metric, "evaluate"):  # no residual structure: L-BFGS on its energy
            return OptimizerSolver(self.nodes, "lbfgs", 1.0, max(self.max_evals, 2), 1e-12,
                                   gtol=self.gtol)(metric, a, b, init)
        with SolveProgress("Gauss-Newton solve", metric, self.max_evals) as progress:
            return self._solve(metric, a, b, init, progress)

    def _coarse_metric(self, metric: Metric) -> Metric:
        if self.coarse_quadrature is None or getattr(metric, "quadrature", None) in (None, self.coarse_quadrature):
            return metric
        import copy

        coarse = copy.copy(metric)
        coarse.quadrature = self.coarse_quadrature
        return coarse

    def tolerances(self, metric: Metric, a: torch.Tensor) -> tuple[float, float]:
        """(gtol, etol) of a solve: ``float32_gtol`` for a score that computes in float32 (a
        network), else (or with ``float32_gtol`` None) ``gtol``; ``etol`` for both."""
        if self.float32_gtol is None:
            return self.gtol, self.etol
        if score_is_float32(metric.score, a):
            return self.float32_gtol, self.etol
        return self.gtol, self.etol

    def _solve(self, metric: Metric, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None,
               progress: SolveProgress) -> GeodesicResult:
        start, evals0, points0 = time.perf_counter(), metric.score.calls, metric.score.points
        path = straight_path(a, b, self.nodes) if init is None else init.clone()
        path0 = path
        trace: list[list[float]] = []
        vjps = vjp_points = it = 0
        gtol, etol = self.tolerances(metric, a)
        gnorm0 = None
        if self.warm_start:
            warm = FixedPointSolver(self.nodes, max_evals=min(self.warm_start, self.max_evals - 1) or 1,
                                    tol=1e-6)(metric, a, b, path)
            path, trace, it = warm.path, warm.energy_trace[:-1], warm.iterations
            gnorm0 = warm.grad_norm0.clone()  # at the first path
        elif self.levels and self.max_evals >= 3:
            interpolation = getattr(metric, "interpolation", "cubic")
            coarse_metric = self._coarse_metric(metric)
            coarse = None
            # the coarse levels spend at most a quarter of the budget, counted in points scored
            # (an evaluation of all paths at the final discretisation is one evaluation)
            full = path0.shape[0] * metric.curve(self.nodes).weights.shape[0]
            coarse_points = points0 + self.max_evals * full / 4
            coarse_calls = evals0 + max(1, min(self.max_evals // 2, self.max_evals - 2))  # half of the calls
            for n in self.levels:
                first = (straight_path(a, b, n) if coarse is None and init is None
                         else resample(path0 if coarse is None else coarse, n, interpolation))
                state = self._iterate(coarse_metric, first, self.coarse_gtol, None,
                                      lambda: metric.score.points >= coarse_points
                                      or metric.score.calls >= coarse_calls, progress, 10 * etol)
                coarse, it = state.path, it + state.iterations
                vjps, vjp_points = vjps + state.vjp_evals, vjp_points + state.vjp_points
            path = resample(coarse, self.nodes, interpolation)
            # the tolerance stays relative to the first path: its gradient, counted as a solve's work
            points = metric.score.points
            gnorm0 = metric.energy_gradient(path0)[1].flatten(1).norm(dim=-1)
            vjps, vjp_points = vjps + 1, vjp_points + metric.score.points - points
        state = self._iterate(metric, path, gtol, gnorm0, lambda: metric.score.calls - evals0 >= self.max_evals,
                              progress, etol)
        result = GeodesicResult(state.path, state.energy, metric.score.calls - evals0, 0.0, state.converged,
                                it + state.iterations, trace + state.trace, grad_norm0=state.grad_norm0,
                                vjp_evals=vjps + state.vjp_evals, vjp_points=vjp_points + state.vjp_points)
        result = _finish(metric, result, path0, gtol, points0)
        result.converged = result.converged | state.converged  # the energy criterion (etol) too
        result.seconds = time.perf_counter() - start
        return result

    @staticmethod
    def _linearize(pieces: list, active: torch.Tensor, p: int, state: _Solve):
        """r, u, g (``Evaluation.linearize``) of the active pairs, from the evaluations that
        hold their current paths: ``pieces`` is a list of (pair indices, evaluation, rows
        wanted), one vector-Jacobian product per evaluation still needed."""
        wanted = torch.zeros(p, dtype=torch.bool, device=active.device)
        wanted[active] = True
        out = None
        for idx, ev, rows in pieces:
            take = rows & wanted[idx]
            if not bool(take.any()):
                continue
            r, u, g = ev.linearize()
            state.vjp_evals, state.vjp_points = state.vjp_evals + 1, state.vjp_points + u.shape[0] * u.shape[1]
            if out is None:
                out = [torch.zeros((p, *x.shape[1:]), dtype=x.dtype, device=x.device) for x in (r, u, g)]
            for full, part in zip(out, (r, u, g)):
                full[idx[take]] = part[take].detach()
        return tuple(x[active] for x in out)

    def _iterate(self, metric: Metric, path: torch.Tensor, gtol: float, gnorm0: torch.Tensor | None,
                 exhausted, progress: SolveProgress, etol: float = 0.0) -> _Solve:
        """Levenberg-Marquardt from ``path`` until every pair has converged (gradient norm
        <= gtol * gnorm0; None: its value at ``path``) or stalled, or the score's call
        budget is spent (``exhausted()``)."""
        path = path.clone()
        p = path.shape[0]
        dev, dtype = path.device, path.dtype
        ev = metric.evaluate(path)
        energy = ev.energy.detach().clone()
        state = _Solve(path, energy, torch.zeros(p, dtype=torch.bool, device=dev), gnorm0, trace=[energy.tolist()])
        idx_all = torch.arange(p, device=dev)
        pieces = [(idx_all, ev, torch.ones(p, dtype=torch.bool, device=dev))]
        done = torch.zeros(p, dtype=torch.bool, device=dev)
        gnorm = torch.zeros(p, dtype=dtype, device=dev)
        model = metric.curve(path.shape[1])
        diag = torch.as_tensor(model.stiffness.diagonal()[1:-1].mean(), dtype=dtype, device=dev)
        mu_unit = torch.full((p,), 1e-2, dtype=dtype, device=dev) * diag
        mu = torch.zeros(p, dtype=dtype, device=dev)  # Levenberg-Marquardt damping
        nu = torch.full((p,), 2.0, dtype=dtype, device=dev)  # Nielsen's growth factor
        nielsen = self.damping == "nielsen"
        last_gain = torch.full((p,), float("inf"), dtype=dtype, device=dev)  # of each pair's last accepted step
        # energy changes below 16 rounding units are noise: of the path's dtype, or of float32,
        # the precision networks run in, when etol asks for a float32-reachable criterion
        self._floor = 16 * torch.finfo(torch.float32 if etol > 0 else dtype).eps
        while True:
            active = idx_all[~done]
            if active.numel() == 0:
                break
            r, u, g = self._linearize(pieces, active, p, state)
            pieces = []
            step, grad = gauss_newton_step(model, metric.lam, path[active], r, u, g, mu[active])
            norm = grad.flatten(1).norm(dim=-1)
            if state.grad_norm0 is None:
                state.grad_norm0 = norm.clone()
            gnorm[active] = norm
            conv = norm <= gtol * state.grad_norm0[active]
            limit_e = etol * energy[active].abs()
            quiet = (last_gain[active] <= limit_e) & ~conv  # candidates of the energy criterion
            if etol > 0 and bool(quiet.any()):  # energy stable: the undamped model promises < etol too
                q = quiet.nonzero().squeeze(1)
                undamped, _ = gauss_newton_step(model, metric.lam, path[active[q]], r[q], u[q], g[q], None)
                promise = -0.5 * (undamped * grad[q]).flatten(1).sum(-1)
                conv[q] = promise <= limit_e[q]
            state.converged[active] |= conv
            done[active] |= conv
            if exhausted():
                break
            keep = ~conv
            active, step, grad = active[keep], step[keep], grad[keep]
            if active.numel() == 0:
                break
            state.iterations += 1
            r, u, g = r[keep], u[keep], g[keep]
            e0 = energy[active]
            pending = torch.ones_like(e0, dtype=torch.bool)
            first = True
            while bool(pending.any()) and not exhausted():
                sel = pending.nonzero().squeeze(1)
                if not first:  # re-solve the rejected pairs with their raised damping
                    step[sel], _ = gauss_newton_step(model, metric.lam, path[active[sel]], r[sel], u[sel],
                                                     g[sel], mu[active[sel]])
                first = False
                mu_sel = mu[active[sel]]
                pred = (-0.5 * (step[sel] * grad[sel]).flatten(1).sum(-1)
                        + 0.5 * mu_sel * (step[sel] ** 2).flatten(1).sum(-1))
                trial = path[active[sel]].clone()
                trial[:, 1:-1] += step[sel]
                ev_trial = metric.evaluate(trial)
                e_trial = ev_trial.energy.detach()
                check_finite(e_trial, "the curve energy", f"solver iteration {state.iterations}")
                gain = e0[sel] - e_trial
                floor = self._floor * e0[sel].abs()  # rounding: not measurable below
                rho = gain / pred.clamp_min(1e-300)
                ok = (rho > 1e-4) | ((pred <= floor) & (gain >= -floor))
                acc = sel[ok]
                last_gain[active[acc]] = gain[ok].abs()
                path[active[acc]] = trial[ok]
                energy[active[acc]] = e_trial[ok]
                if bool(ok.any()):
                    pieces.append((active[sel], ev_trial, ok))
                pending[acc] = False
                scale = mu_unit[active[sel]]
                if nielsen:
                    nu_sel = nu[active[sel]]
                    shrink = (1 - (2 * rho - 1) ** 3).clamp(min=1 / 3, max=1.0)
                    new_mu = torch.where(ok, mu_sel * shrink, torch.maximum(mu_sel, scale) * nu_sel)
                    nu[active[sel]] = torch.where(ok, torch.full_like(nu_sel, 2.0), 2 * nu_sel)
                else:  # trust the model more after good steps, less after poor ones
                    new_mu = torch.where(rho > 0.75, mu_sel / 10,
                                         torch.where(rho < 0.25, (2 * mu_sel).clamp_min(scale), mu_sel))
                    new_mu = torch.where(ok, torch.where(new_mu < 0.1 * scale, torch.zeros_like(new_mu), new_mu),
                                         (4 * mu_sel).clamp_min(scale))
                mu[active[sel]] = new_mu
                stalled = ~ok & (new_mu > self.max_damping * scale)
                done[active[sel[stalled]]] = True
                pending[sel[stalled]] = False
            done[active[pending]] = True  # budget spent in the line search
            state.trace.append(energy.tolist())
            progress.update(energy, gnorm / state.grad_norm0)
            if bool(done.all()) or exhausted():
                break
        state.path, state.energy = path, energy
        return state
