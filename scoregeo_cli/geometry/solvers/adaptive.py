"""The default geodesic solver: Gauss-Newton levels, a continuation in lam on a coarse path,
and a resolution chosen by refinement.

What it minimises: the metric's discrete curve energy (the Stein metric's quadrature of
E = 1/2 int g(y, y')(y', y') dt on the curve through the nodes) with fixed ends, on a
discretisation it refines until the path is resolved. Three phases, each run by the
Gauss-Newton iteration of ``gauss_newton.GaussNewtonSolver.iterate``:

1. Continuation (from the straight line only): on a path of ``start_nodes`` nodes, the
   energy with lam scaled by each factor of ``continuation`` in turn (e.g. 1e-3, 1e-2,
   1e-1), each solve started from the last. A small lam gives a nearly Euclidean metric
   whose minimiser is close to the straight line; raising it moves the path continuously
   into the basin the stiff metric (lam |s|^2 >> 1) selects, where a solve at the full lam
   from the straight line stops in whichever basin its first steps reach. This phase may
   spend at most a quarter of the budget.
2. Refinement: at the full lam, solve (to ``level_etol``), measure the continuous g-length
   L of the curve (``metric.length``, ``length_points`` times the rule's points per segment);
   where the level's quadrature energy is below (1 - 2 refine_tol) L^2 / 2, the continuous
   energy's lower bound, its rule does not resolve its own curve (coarse levels are "cheated":
   on the exact orbit score at t = 400 a 5-node curve with 4 Gauss points per segment had a
   quadrature energy of 87 and a g-length of 34.6, against 13.8 one level finer): the level
   is solved again with twice the points per segment (up to ``max_points``). Then double the segments
   (``n -> 2n - 1`` nodes, the curve resampled), and repeat until the g-length of every
   pair changed by less than ``refine_tol`` (relative) between two levels and the level has
   at least the ``nodes`` of the frames asked for, or the nodes reached ``max_nodes``. The
   batch is refined together. (Without the floor at ``nodes`` a curve resolved in length at
   9 nodes has a less accurate end tangent than the 16 frames suggest: on the sphere
   experiment its extrapolation was 1.5e-2 from the metric's geodesic against 3.5e-3.)
   A level may spend at most a third of the budget left when it starts, so that a level
   that cannot settle does not starve the finer ones.
3. The last level is solved to ``etol`` (skipped when the budget is spent: the pairs are then
   neither converged nor resolved).

When it stops, per pair: converged (on the last level: the relative gradient below
``gtol``, or the energy stable to ``etol`` as in ``gauss_newton``), resolved (the last
g-length change below ``refine_tol`` between two levels whose solves both converged to
``level_etol``; False also when ``max_nodes`` or the budget stopped the refinement first), the nodes of the last level (``solve_nodes``) and that change (``length_change``).
Every phase counts against ``max_evals``; a solve whose budget ends first is not converged.
The path returned is the last level's curve at ``nodes`` evenly spaced parameters (the
frames the evaluation asks for); its energy is the last level's. ``refine_tol: None`` fixes
the resolution instead: the path is solved at ``nodes`` nodes after the continuation.
A start path (``init``) skips the continuation and is refined from its own nodes.
"""

from __future__ import annotations

import copy
import time

import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.geometry.base import Metric
from scoregeo_cli.geometry.solvers.base import (GeodesicResult, SolveProgress, _check_nodes, _check_positive,
                                                gradient_norm, resample, straight_path)
from scoregeo_cli.geometry.solvers.gauss_newton import GaussNewtonSolver
from scoregeo_cli.geometry.solvers.newton import NewtonIteration
from scoregeo_cli.geometry.solvers.optimizer import lbfgs_without_residuals

__all__ = ["AdaptiveSolver"]


class AdaptiveSolver:
    """Continuation in lam, then Gauss-Newton levels refined until the g-length is resolved
    (module docstring).

    Args:
        nodes: nodes of the path returned (the frames), endpoints included (>= 3); with
            ``refine_tol`` None also the nodes solved on.
        max_evals: budget of batched score evaluations of all phases (forward passes, > 0).
        etol: relative energy change of the last level's energy criterion (> 0).
        level_etol: the same for the continuation stages and the levels before the last.
        gtol: relative gradient tolerance (> 0): converged also when the gradient norm falls
            below gtol times its value on the straight line at the last level's nodes.
        refine_tol: relative change of the continuous g-length between two levels below
            which the path counts as resolved (> 0); None: no refinement, solve at ``nodes``.
        start_nodes: nodes of the first level and of the continuation (>= 3).
        max_nodes: most nodes a level may have (>= start_nodes).
        continuation: factors (0 < f < 1, increasing) of lam solved before lam itself;
            empty: none.
        length_points: the g-length measurement's quadrature points per segment, as a multiple
            of the level's own (>= 1; composite 4-point Gauss-Legendre, rounded up to 4).
        max_points: most Gauss points per segment a level's rule may be raised to (>= 1).
        hessian: the iteration of every level: "gauss_newton" (Levenberg-Marquardt with the
            parabolic step length, ``gauss_newton``) or "exact" (trust-region Newton-CG with
            exact Hessian-vector products, ``newton``).
        max_cg, cg_tol: of the Newton-CG iteration.
        max_damping, damping, line_search: of the Gauss-Newton iteration.
    """

    HESSIANS = ("exact", "gauss_newton")

    # of the algorithm, with that of the Gauss-Newton iteration it runs: the solve cache keys on it
    # (2: budget shares per level, the quadrature check, resolved only between solved levels)
    revision = f"2/{GaussNewtonSolver.revision}/{NewtonIteration.revision}"

    def __init__(self, nodes: int = 16, max_evals: int = 400, etol: float = 1e-4, level_etol: float = 1e-3,
                 gtol: float = 1e-8, refine_tol: float | None = 0.01, start_nodes: int = 5, max_nodes: int = 65,
                 continuation=(1e-3, 1e-2, 1e-1), length_points: int = 2, max_points: int = 32,
                 hessian: str = "gauss_newton",
                 max_cg: int = 20, cg_tol: float = 0.1, max_damping: float = 1e12, damping: str = "lm",
                 line_search: bool = True):
        self.nodes = _check_nodes(nodes)
        for name, value in (("solver.max_evals", max_evals), ("solver.etol", etol), ("solver.level_etol", level_etol),
                            ("solver.gtol", gtol)):
            _check_positive(name, value)
        if refine_tol is not None:
            _check_positive("solver.refine_tol", refine_tol)
        self.start_nodes = _check_nodes(start_nodes)
        if int(max_nodes) < self.start_nodes:
            raise ScoregeoError(f"solver.max_nodes must be at least solver.start_nodes ({self.start_nodes}), "
                                f"got {max_nodes}")
        factors = [float(f) for f in (continuation or ())]
        if any(not 0 < f < 1 for f in factors) or factors != sorted(set(factors)):
            raise ScoregeoError(f"solver.continuation must be increasing factors of lam between 0 and 1, got {factors}")
        if int(length_points) < 1:
            raise ScoregeoError(f"solver.length_points must be at least 1, got {length_points}")
        if int(max_points) < 1:
            raise ScoregeoError(f"solver.max_points must be at least 1, got {max_points}")
        self.max_evals, self.etol, self.level_etol, self.gtol = int(max_evals), float(etol), float(level_etol), float(gtol)
        self.refine_tol = None if refine_tol is None else float(refine_tol)
        self.max_nodes, self.continuation, self.length_points = int(max_nodes), factors, int(length_points)
        self.max_points = int(max_points)
        if hessian not in self.HESSIANS:
            raise ScoregeoError(f"solver.hessian must be one of {self.HESSIANS}, got '{hessian}'")
        # the iteration of every level (each validates its own settings)
        gauss_newton = GaussNewtonSolver(self.nodes, self.max_evals, self.etol, self.gtol, 0, max_damping, damping,
                                         line_search)
        newton = NewtonIteration(max_cg, cg_tol)
        self._iteration = newton if hessian == "exact" else gauss_newton
        self.hessian, self.max_cg, self.cg_tol = hessian, int(max_cg), float(cg_tol)
        self.max_damping, self.damping, self.line_search = float(max_damping), damping, bool(line_search)

    def __call__(self, metric: Metric, a: torch.Tensor, b: torch.Tensor,
                 init: torch.Tensor | None = None) -> GeodesicResult:
        if not hasattr(metric, "evaluate"):  # no residual structure: L-BFGS on its energy
            return lbfgs_without_residuals(metric, self.nodes, self.max_evals, self.gtol, a, b, init)
        with SolveProgress("geodesic solve", metric, self.max_evals) as progress:
            return self._solve(metric, a, b, init, progress)

    @staticmethod
    def own_points(metric: Metric) -> int | None:
        """Points per segment of the metric's Gauss rule (None: not a Gauss rule)."""
        rule = getattr(metric, "quadrature", "")
        return int(rule[5:]) if isinstance(rule, str) and rule.startswith("gauss") and rule[5:].isdigit() else None

    @classmethod
    def level_metric(cls, metric: Metric, points: int | None) -> Metric:
        """The metric with a Gauss rule of ``points`` per segment (None or the metric's own:
        the metric itself; a rule that is not Gauss's is kept)."""
        own = cls.own_points(metric)
        if points is None or own is None or own == points:
            return metric
        level = copy.copy(metric)
        level.quadrature = f"gauss{points}"
        return level

    def _levels(self, first: int):
        """Node counts of the refinement from ``first``: doubled segments up to max_nodes."""
        n = min(first, self.max_nodes)
        while True:
            yield n
            if n >= self.max_nodes:
                return
            n = min(2 * n - 1, self.max_nodes)

    def _solve(self, metric: Metric, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None,
               progress: SolveProgress) -> GeodesicResult:
        start, evals0, points0 = time.perf_counter(), metric.score.calls, metric.score.points
        interpolation = getattr(metric, "interpolation", "cubic")
        spent = lambda: metric.score.calls - evals0  # noqa: E731
        exhausted = lambda: spent() >= self.max_evals  # noqa: E731
        work = {"iterations": 0, "vjp_evals": 0, "vjp_points": 0, "hvp_points": 0, "trace": []}

        def run(m: Metric, path: torch.Tensor, etol: float, stop) -> torch.Tensor:
            state = self._iteration.iterate(m, path, etol, self.gtol, None, stop, progress)
            work["iterations"] += state.iterations
            work["vjp_evals"] += state.vjp_evals
            work["vjp_points"] += state.vjp_points
            work["hvp_points"] += state.hvp_points
            work["trace"] += state.trace
            return state

        first = self.start_nodes if self.refine_tol is not None or init is None else self.nodes
        if init is None:
            path = straight_path(a, b, min(first, self.nodes) if self.refine_tol is None else first)
            stage_budget = self.max_evals // 4 // max(1, len(self.continuation))
            for factor in self.continuation if stage_budget >= 2 else ():  # a tiny budget skips it
                mild = copy.copy(metric)
                mild.lam = metric.lam * factor
                limit = spent() + stage_budget
                path = run(mild, path, self.level_etol, lambda: exhausted() or spent() >= limit).path
        else:
            path = init.clone()
            if self.refine_tol is None and path.shape[1] != self.nodes:
                path = resample(path, self.nodes, interpolation)
            elif path.shape[1] > self.max_nodes:
                path = resample(path, self.max_nodes, interpolation)

        p = a.shape[0]
        change = torch.full((p,), float("inf"), dtype=a.dtype, device=a.device)
        resolved, state = None, None
        settled = torch.zeros(p, dtype=torch.bool, device=a.device)
        if self.refine_tol is None:
            if path.shape[1] != self.nodes:
                path = resample(path, self.nodes, interpolation)
        else:
            length, own = None, self.own_points(metric)
            points, solved_before = own, None
            for n in self._levels(path.shape[1]):
                if n != path.shape[1]:
                    points = None if own is None else max(own, points // 2)  # twice the segments: half the points each
                    path = resample(path, n, interpolation)
                # a level may spend a third of what is left: the refinement always goes on
                limit = spent() + max(2, (self.max_evals - spent()) // 3)
                while True:
                    level = self.level_metric(metric, points)
                    state = run(level, path, self.level_etol, lambda: exhausted() or spent() >= limit)
                    path = state.path
                    if exhausted():
                        break
                    per_segment = self.length_points * (points or 4)
                    new_length = level.length(path, points=per_segment)
                    # the quadrature resolves its own curve when its energy is not below the
                    # continuous bound L^2 / 2 (a coarse rule can be "cheated": its points miss
                    # where the curve crosses the stiff directions); else twice the points
                    honest = state.energy >= (1 - 2 * self.refine_tol) * new_length ** 2 / 2
                    if points is None or bool(honest.all()) or points >= self.max_points or spent() >= limit:
                        break
                    points = min(2 * points, self.max_points)
                if exhausted():
                    break
                # the refinement stops when the g-length agrees between two levels; a pair counts
                # as resolved only where both levels' solves converged (a level cut short by its
                # budget leaves the resampled curve where it was, and its length "agrees")
                solved = state.converged.clone()
                if length is not None:
                    change = (new_length - length).abs() / new_length.abs().clamp_min(1e-300)
                    settled = (change < self.refine_tol) & solved & solved_before
                    if bool((change < self.refine_tol).all()) and n >= min(self.nodes, self.max_nodes):
                        break
                length, solved_before = new_length, solved
            resolved = settled
        # the last level to etol (a fixed resolution: on the metric's own rule); a budget spent
        # before it leaves the pairs unconverged
        level = metric if self.refine_tol is None else self.level_metric(metric, points)
        ended = exhausted()
        final = run(level, path, self.etol, exhausted) if not ended else None
        final_path = path if final is None else final.path
        solve_nodes = final_path.shape[1]
        out = final_path if solve_nodes == self.nodes else resample(final_path, self.nodes, interpolation)
        out[:, 0], out[:, -1] = a, b
        if final is None and state is None:  # the continuation spent the budget: its path, measured
            energy = level.energy_gradient(final_path)[0]
        else:
            energy = (state if final is None else final).energy
        converged = torch.zeros(p, dtype=torch.bool, device=a.device) if final is None else final.converged
        result = GeodesicResult(out, energy, spent(), 0.0, converged, work["iterations"], work["trace"],
                                vjp_evals=work["vjp_evals"], vjp_points=work["vjp_points"])
        # the relative gradient of the last level, against the straight line at its nodes
        # (measurements, not counted in the solve's evaluations)
        result.grad_norm0 = gradient_norm(level, straight_path(a, b, solve_nodes))
        result.grad_norm = gradient_norm(level, final_path)
        if final is not None:
            result.converged = converged | (result.grad_norm <= self.gtol * result.grad_norm0)
        else:
            resolved = None if resolved is None else torch.zeros_like(resolved)
        result.score_points = metric.score.points - points0
        result.hvp_points = work["hvp_points"]
        result.solve_nodes, result.resolved, result.solved_path = solve_nodes, resolved, final_path
        result.length_change = None if resolved is None else change
        result.seconds = time.perf_counter() - start
        return result
