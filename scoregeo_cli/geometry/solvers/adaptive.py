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
   at least the ``nodes`` of the frames asked for, or the nodes reached ``max_nodes``. Each
   pair is refined on its own: a pair whose length agreed leaves the refinement at its level,
   and only the pairs whose rule failed the check re-solve with more points (pairs of one
   resolution are solved as one batch). Refining the batch together had sent all 8 pairs of
   the bench's UNet problem to 33 nodes for the sake of one: 14,080 network passes per pair
   against 8,786 now. (Without the floor at ``nodes`` a curve resolved in length at 9 nodes
   has a less accurate end tangent than the 16 frames suggest: on the sphere experiment its
   extrapolation was 1.5e-2 from the metric's geodesic against 3.5e-3.)
   A level may spend at most a third of the budget left when it starts, so that a level
   that cannot settle does not starve the finer ones.
3. Each pair's last level is solved to ``etol``, the pairs grouped by resolution, each group
   with an equal share of the budget left (a group whose share is spent before it starts:
   its pairs are neither converged nor resolved).

When it stops, per pair: converged (on the last level: the relative gradient below
``gtol``, or the energy stable to ``etol`` as in ``gauss_newton``), resolved (the last
g-length change below ``refine_tol`` between two levels whose solves both converged to
``level_etol``; False also when ``max_nodes`` or the budget stopped the refinement first),
the nodes of its last level (``nodes_per_pair``) and that change (``length_change``).
Every phase counts against ``max_evals``; a solve whose budget ends first is not converged.
The path returned is each pair's last level's curve at ``nodes`` evenly spaced parameters
(the frames the evaluation asks for); its energy is that level's. ``solved_path`` holds every
pair's curve at the finest pair's nodes (``solve_nodes``; the same curves where, as on the
ladder 5, 9, 17, 33, 65, the finer segment count is a multiple of the coarser: the not-a-knot
spline and the polygon then embed exactly), ``nodes_per_pair`` each pair's own.
``refine_tol: None`` fixes the resolution instead: the path is solved at ``nodes`` nodes
after the continuation.
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
    # (2: budget shares per level, the quadrature check, resolved only between solved levels;
    # 3: each pair refined on its own)
    revision = f"3/{GaussNewtonSolver.revision}/{NewtonIteration.revision}"

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

    def ladder_nodes(self, frames: int) -> int:
        """The first node count of the refinement's ladder (``start_nodes`` with doubled
        segments) that holds ``frames`` nodes; ``max_nodes`` where none does."""
        for n in self._levels(self.start_nodes):
            if n >= int(frames):
                return n
        return n

    def _solve(self, metric: Metric, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None,
               progress: SolveProgress) -> GeodesicResult:
        start, points0 = time.perf_counter(), metric.score.points
        work = _Work(self._iteration, metric, self.max_evals, self.gtol, progress)
        interpolation = getattr(metric, "interpolation", "cubic")
        path = self._start(metric, a, b, init, work, interpolation)
        p, own = a.shape[0], self.own_points(metric)
        pairs = _Pairs([path[i] for i in range(p)], [own] * p, a)
        if self.refine_tol is not None:
            self._refine(metric, pairs, work, interpolation, own)
        # the last level of every pair to etol, grouped by resolution, each group with an equal
        # share of what is left; a group whose share is spent before it starts leaves its pairs
        # neither converged nor resolved
        grad_norm, grad_norm0 = torch.zeros_like(pairs.energy), torch.zeros_like(pairs.energy)
        converged = torch.zeros(p, dtype=torch.bool, device=a.device)
        groups = pairs.groups(range(p))
        for k, (idx, points) in enumerate(groups):
            level = metric if self.refine_tol is None else self.level_metric(metric, points)
            share = work.spent() + max(1, (self.max_evals - work.spent()) // (len(groups) - k))
            final = None
            if not work.exhausted():
                final = work.run(level, pairs.stack(idx), self.etol, lambda: work.exhausted() or work.spent() >= share)
                pairs.store(idx, final)
            elif bool(pairs.energy[idx].isnan().any()):  # the continuation spent it all: its path, measured
                pairs.energy[idx] = level.energy_gradient(pairs.stack(idx))[0].detach()
            # the relative gradient of the last level, against the straight line at its nodes
            # (measurements, not counted in the solve's evaluations)
            curves = pairs.stack(idx)
            grad_norm0[idx] = gradient_norm(level, straight_path(a[idx], b[idx], curves.shape[1]))
            grad_norm[idx] = gradient_norm(level, curves)
            if final is not None:
                converged[idx] = final.converged | (grad_norm[idx] <= self.gtol * grad_norm0[idx])
        nodes_per_pair = torch.tensor([c.shape[0] for c in pairs.curves], device=a.device)
        solve_nodes = int(nodes_per_pair.max())
        # every pair's curve at the finest pair's nodes (the same curve where the segment counts
        # divide each other: the not-a-knot spline and the polygon embed exactly)
        solved = torch.stack([resample(c[None], solve_nodes, interpolation)[0] for c in pairs.curves])
        out = torch.stack([resample(c[None], self.nodes, interpolation)[0] for c in pairs.curves])
        out[:, 0], out[:, -1] = a, b
        result = GeodesicResult(out, pairs.energy, work.spent(), 0.0, converged, work.iterations, work.trace,
                                vjp_evals=work.vjp_evals, vjp_points=work.vjp_points)
        result.grad_norm, result.grad_norm0 = grad_norm, grad_norm0
        result.score_points, result.hvp_points = metric.score.points - points0, work.hvp_points
        result.solve_nodes, result.nodes_per_pair, result.solved_path = solve_nodes, nodes_per_pair, solved
        if self.refine_tol is not None:
            result.resolved, result.length_change = pairs.settled & pairs.finished, pairs.change
        result.seconds = time.perf_counter() - start
        return result

    def _start(self, metric: Metric, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None, work: "_Work",
               interpolation: str) -> torch.Tensor:
        """The first level's paths: the continuation in lam from the straight line (each stage
        a share of a quarter of the budget; a tiny budget skips it), or ``init``."""
        if init is None:
            path = straight_path(a, b, self.start_nodes if self.refine_tol is not None else self.nodes)
            stage_budget = self.max_evals // 4 // max(1, len(self.continuation))
            for factor in self.continuation if stage_budget >= 2 else ():
                mild = copy.copy(metric)
                mild.lam = metric.lam * factor
                limit = work.spent() + stage_budget
                path = work.run(mild, path, self.level_etol, lambda: work.exhausted() or work.spent() >= limit).path
            return path
        if self.refine_tol is None and init.shape[1] != self.nodes:
            return resample(init, self.nodes, interpolation)
        if init.shape[1] > self.max_nodes:
            return resample(init, self.max_nodes, interpolation)
        return init.clone()

    def _refine(self, metric: Metric, pairs: "_Pairs", work: "_Work", interpolation: str, own: int | None) -> None:
        """Levels of doubled segments, each pair refined until its own g-length is resolved
        (it then leaves the refinement and keeps its level), with the quadrature check at
        every level; a level may spend a third of the budget left when it starts."""
        active = list(range(len(pairs.curves)))
        for n in self._levels(pairs.curves[0].shape[0]):
            for i in active:
                if pairs.curves[i].shape[0] != n:  # twice the segments: half the points each
                    pairs.curves[i] = resample(pairs.curves[i][None], n, interpolation)[0]
                    pairs.points[i] = None if own is None else max(own, pairs.points[i] // 2)
            limit = work.spent() + max(2, (self.max_evals - work.spent()) // 3)
            stop = lambda: work.exhausted() or work.spent() >= limit  # noqa: E731
            length = torch.full_like(pairs.energy, float("nan"))
            todo = active
            while todo:
                for idx, points in pairs.groups(todo):
                    level = self.level_metric(metric, points)
                    pairs.store(idx, work.run(level, pairs.stack(idx), self.level_etol, stop), final=False)
                    if work.exhausted():
                        return
                # the quadrature resolves its own curve when its energy is not below the
                # continuous bound L^2 / 2 (a coarse rule can be "cheated": its points miss
                # where the curve crosses the stiff directions); else twice the points
                redo = []
                for idx, points in pairs.groups(todo):
                    level = self.level_metric(metric, points)
                    length[idx] = level.length(pairs.stack(idx), points=self.length_points * (points or 4))
                    honest = pairs.energy[idx] >= (1 - 2 * self.refine_tol) * length[idx] ** 2 / 2
                    if points is not None and points < self.max_points and work.spent() < limit:
                        redo += [i for i, ok in zip(idx.tolist(), honest.tolist()) if not ok]
                for i in redo:
                    pairs.points[i] = min(2 * pairs.points[i], self.max_points)
                todo = redo
            if work.exhausted():  # the length measurements took the last evaluations
                return
            # a pair leaves the refinement when its g-length agrees between two levels; it
            # counts as resolved only where both levels' solves converged (a level cut short
            # by its budget leaves the resampled curve where it was, and its length "agrees")
            idx = torch.tensor(active, device=length.device)
            known = ~pairs.length[idx].isnan()
            change = (length[idx] - pairs.length[idx]).abs() / length[idx].abs().clamp_min(1e-300)
            pairs.change[idx] = torch.where(known, change, pairs.change[idx])
            agree = known & (change < self.refine_tol)
            pairs.settled[idx] = agree & pairs.converged[idx] & pairs.solved_before[idx]
            pairs.length[idx], pairs.solved_before[idx] = length[idx], pairs.converged[idx]
            leave = agree & (n >= min(self.nodes, self.max_nodes))
            active = [i for i, gone in zip(active, leave.tolist()) if not gone]
            if not active:
                return


class _Work:
    """The budget of one solve and the work its level solves did (iterations, backward and
    Hessian passes, energy trace), counted as they run."""

    def __init__(self, iteration, metric: Metric, max_evals: int, gtol: float, progress: SolveProgress):
        self.iteration, self.metric, self.max_evals = iteration, metric, max_evals
        self.gtol, self.progress = gtol, progress
        self.evals0 = metric.score.calls
        self.iterations = self.vjp_evals = self.vjp_points = self.hvp_points = 0
        self.trace: list = []

    def spent(self) -> int:
        return self.metric.score.calls - self.evals0

    def exhausted(self) -> bool:
        return self.spent() >= self.max_evals

    def run(self, metric: Metric, path: torch.Tensor, etol: float, stop):
        state = self.iteration.iterate(metric, path, etol, self.gtol, None, stop, self.progress)
        self.iterations += state.iterations
        self.vjp_evals += state.vjp_evals
        self.vjp_points += state.vjp_points
        self.hvp_points += state.hvp_points
        self.trace += state.trace
        return state


class _Pairs:
    """Each pair's own state in the refinement: its curve (nodes, D) and Gauss points per
    segment, the energy and convergence of its last solve, its g-length at the last level and
    the change from the one before, and whether that change settled between solved levels."""

    def __init__(self, curves: list, points: list, a: torch.Tensor):
        p = len(curves)
        self.curves, self.points = curves, points
        self.energy = torch.full((p,), float("nan"), dtype=a.dtype, device=a.device)
        self.length = torch.full_like(self.energy, float("nan"))
        self.change = torch.full_like(self.energy, float("inf"))
        false = torch.zeros(p, dtype=torch.bool, device=a.device)
        self.converged, self.solved_before, self.settled, self.finished = (false.clone() for _ in range(4))

    def groups(self, pairs) -> list[tuple[torch.Tensor, int | None]]:
        """The pairs (indices) grouped by nodes and points per segment: one batched solve each."""
        keys: dict = {}
        for i in pairs:
            keys.setdefault((self.curves[i].shape[0], self.points[i]), []).append(i)
        dev = self.energy.device
        return [(torch.tensor(idx, device=dev), key[1]) for key, idx in sorted(keys.items(), key=lambda kv: kv[1][0])]

    def stack(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.curves[i] for i in idx.tolist()])

    def store(self, idx: torch.Tensor, state, final: bool = True) -> None:
        for j, i in enumerate(idx.tolist()):
            self.curves[i] = state.path[j]
        self.energy[idx], self.converged[idx] = state.energy, state.converged
        self.finished[idx] = final
