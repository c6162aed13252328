"""The score-metric geodesic: a boundary-value solve between the ends, and its continuation
by shooting along the geodesic equation from the end tangent."""

from __future__ import annotations

import torch

from scoregeo_cli.errors import NonFiniteError, ScoregeoError
from scoregeo_cli.api import extrapolate, geodesic
from scoregeo_cli.methods.base import Method, MethodPath, Plan
from scoregeo_cli.spaces.base import Endpoints


def check_solver(solver, metric) -> None:
    """Refuse, before any work, a solver that cannot minimise the metric's energy (a solver
    lists the metric methods it relies on in ``needs``)."""
    missing = [name for name in getattr(solver, "needs", ()) if not hasattr(metric, name)]
    if missing:
        raise ScoregeoError(f"solver {type(solver).__name__} needs a metric with {', '.join(missing)} "
                            f"(the Stein metric); metric {type(metric).__name__} works with solver=lbfgs or solver=adam")


class Geodesic(Method):
    """The geodesic of a metric, solved by a solver and extrapolated by ``extrapolate``,
    both through the public API (``scoregeo_cli.api.geodesic`` and ``extrapolate``).

    Args:
        metric: this method's own metric (a partial completed with the run's score), for
            comparing several metrics in one run (``conf/method/geodesic_pullback.yaml``, ...);
            None: the run's ``metric`` group.
        solver: this method's own solver; None: the run's ``solver`` group.

    A shot that spends its budget or diverges gives a NaN extrapolation and says why; a
    metric without a geodesic equation is not extrapolated.
    """

    def __init__(self, metric=None, solver=None):
        self.metric_factory, self.solver = metric, solver
        self.report = ""
        self._metric = None

    def resolve(self, plan: Plan):
        """This method's (metric, solver), built once and checked against each other."""
        if self._metric is None:
            self._metric = plan.metric if self.metric_factory is None else self.metric_factory(score=plan.metric.score)
            solver = self.solver or plan.solver
            if solver.nodes != plan.nodes:
                raise ScoregeoError(f"a method's solver has {solver.nodes} nodes but the run uses {plan.nodes} "
                                    "(solver.nodes); set both alike")
            check_solver(solver, self._metric)
        return self._metric, self.solver or plan.solver

    def __call__(self, ends: Endpoints, plan: Plan, generator: torch.Generator) -> MethodPath:
        # the public API's functions: `scoregeo run` and Python users share one implementation
        metric, solver = self.resolve(plan)
        n_pairs, evals0 = len(ends.a), metric.score.calls
        try:
            geo = geodesic(metric.score, ends.a, ends.b, metric=metric, solver=solver, nodes=solver.nodes)
        except NonFiniteError as err:  # e.g. the conformal weights overflow at small t
            nan = torch.full((n_pairs, plan.nodes, ends.a.shape[-1]), float("nan"), dtype=ends.a.dtype,
                             device=ends.a.device)
            return MethodPath(nan, None, score_evals=metric.score.calls - evals0, error=str(err))
        path = geo.path
        # single-point passes per pair: forward, backward (vector-Jacobian products through the
        # score), and both with a backward counted as one pass (deterministic, so that a run's
        # summary repeats; `scoregeo bench` weighs backward passes by their measured cost)
        forward, backward = geo.network_passes / n_pairs, geo.backward_passes / n_pairs
        passes = forward + backward
        self.report = (f"{geo.score_evals} batched score evaluations, {geo.iterations} iterations, "
                       f"{int(geo.converged.sum())}/{n_pairs} converged, {passes:.0f} network passes per pair, "
                       f"{geo.seconds:.2f} s")
        energy = None if metric is not plan.metric else geo.energy  # rows report the run's metric
        out = MethodPath(path, None, score_evals=geo.score_evals, seconds=geo.seconds / n_pairs, energy=energy)
        out.extra = {"converged": geo.converged.double().cpu(), "grad_rel": geo.grad_rel.double().cpu(),
                     **{key: torch.full((n_pairs,), value, dtype=torch.float64) for key, value in (
                         ("forward_passes_per_pair", forward), ("backward_passes_per_pair", backward),
                         ("network_passes_per_pair", passes))}}
        if plan.extrapolate and not getattr(metric, "has_geodesic_equation", True):
            self.report += f"; no extrapolation: {type(metric).__name__} has no geodesic equation here"
        elif plan.extrapolate:
            shooter = plan.shooter
            shot = extrapolate(geo, shooter.duration, shooter.steps, method=shooter.method,
                               substeps=shooter.substeps, rtol=shooter.rtol, atol=shooter.atol,
                               max_evals=shooter.max_evals)
            out.extrapolation = shot.path
            out.ext_score_evals, out.ext_seconds = shot.score_evals, shot.seconds / n_pairs
            if shot.error is None:
                self.report += f"; shooting: {shot.score_evals} score evaluations, {shot.seconds:.1f} s"
            else:
                hint = "raise extrapolate.max_evals" + (
                    "" if getattr(metric, "normalize", "unit") == "unit" else ", or try metric.normalize=unit")
                self.report += (f"; shooting failed after {shot.seconds:.1f} s, extrapolation recorded as NaN: "
                                f"{shot.error}; the geodesic equation is stiff when lam |s|^2 is large ({hint})")
        return out
