"""The optimiser solver: torch.optim (Adam or L-BFGS) on the interior nodes.

It minimises the curve energy of the metric directly, the score differentiated through (one
forward and one backward pass per step) or frozen within each step. Adam stops when the
total energy changes by less than ``tol`` (relative) between steps or when ``max_evals``
evaluations are spent; L-BFGS (strong Wolfe line search) when its own tolerances are met or
the same budget is spent. ``adam_reference`` in conf/solver is the recipe of independent
re-implementations of the paper (Adam, lr 1e-3, 500 steps). Works with every metric.
"""

from __future__ import annotations

import time

import torch

from scoregeo_cli.errors import ScoregeoError, check_finite
from scoregeo_cli.geometry.base import Metric
from scoregeo_cli.geometry.solvers.base import (GeodesicResult, SolveProgress, _check_nodes, _check_positive, _finish,
                                                straight_path)


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
        gtol: relative gradient-norm tolerance of ``converged`` (> 0).
    """

    OPTIMIZERS = ("adam", "lbfgs")

    def __init__(self, nodes: int = 16, optimizer: str = "adam", lr: float = 1e-3,
                 max_evals: int = 500, tol: float = 0.0, freeze_score: bool = False, gtol: float = 1e-6):
        self.nodes = _check_nodes(nodes)
        _check_positive("solver.gtol", gtol)
        self.gtol = float(gtol)
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
        name = "Adam solve" if self.optimizer == "adam" else "L-BFGS solve"
        with SolveProgress(name, metric, self.max_evals) as progress:
            return self._solve(metric, a, b, init, progress)

    def _solve(self, metric: Metric, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None,
               progress: SolveProgress) -> GeodesicResult:
        start, evals0, points0 = time.perf_counter(), metric.score.calls, metric.score.points
        path0 = straight_path(a, b, self.nodes) if init is None else init
        interior = path0[:, 1:-1].clone().requires_grad_(True)
        backward = [0, 0]  # vector-Jacobian products through the score and their points
        trace: list[list[float]] = []

        def full_path() -> torch.Tensor:
            return torch.cat([a[:, None], interior, b[:, None]], dim=1)

        def energy_of(path: torch.Tensor) -> torch.Tensor:
            if self.freeze_score:
                return metric.energy(path, detach_score=True)
            points = metric.score.points
            energy = metric.energy(path)
            backward[0], backward[1] = backward[0] + 1, backward[1] + metric.score.points - points
            return energy

        def closure() -> torch.Tensor:
            opt.zero_grad()
            energy = energy_of(full_path())
            check_finite(energy.detach(), "the curve energy", f"score evaluation {metric.score.calls - evals0}")
            total = energy.sum()
            total.backward()
            trace.append(energy.detach().tolist())
            progress.update(energy)
            return total

        if self.optimizer == "adam":
            opt = torch.optim.Adam([interior], lr=self.lr)
            previous, steps = None, 0
            # the budget counts score evaluations, and steps for a metric that needs none (euclidean)
            while metric.score.calls - evals0 < self.max_evals - 1 and steps < self.max_evals - 1:
                steps += 1
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
        result = GeodesicResult(path, energy, metric.score.calls - evals0, 0.0,
                                torch.zeros_like(energy, dtype=torch.bool), len(trace), trace,
                                vjp_evals=backward[0], vjp_points=backward[1])
        result = _finish(metric, result, path0, self.gtol, points0)
        result.seconds = time.perf_counter() - start
        return result


def lbfgs_without_residuals(metric: Metric, nodes: int, max_evals: int, gtol: float, a: torch.Tensor,
                            b: torch.Tensor, init: torch.Tensor | None) -> GeodesicResult:
    """What the Gauss-Newton solvers do with a metric that has no residual structure (no
    ``evaluate``: pullback, conformal): L-BFGS on its energy with their budget and tolerance."""
    return OptimizerSolver(nodes, "lbfgs", 1.0, max(max_evals, 2), 1e-12, gtol=gtol)(metric, a, b, init)
