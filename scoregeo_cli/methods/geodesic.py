"""The score-metric geodesic: a boundary-value solve between the ends, and its continuation
by shooting along the geodesic equation from the end tangent."""

from __future__ import annotations

import torch

from scoregeo_cli.geometry.shooting import end_tangent
from scoregeo_cli.methods.base import Method, MethodPath, Plan
from scoregeo_cli.spaces.base import Endpoints


class Geodesic(Method):
    """The geodesic of the run's metric (``metric``), solved by ``solver`` and extrapolated by
    ``extrapolate`` (the run's config groups). A shot that spends its budget or diverges
    gives a NaN extrapolation and says why."""

    report = ""

    def __call__(self, ends: Endpoints, plan: Plan, generator: torch.Generator) -> MethodPath:
        n_pairs = len(ends.a)
        result = plan.solver(plan.metric, ends.a, ends.b)
        path = result.path.detach()
        self.report = (f"{result.score_evals} batched score evaluations, {result.iterations} iterations, "
                       f"{int(result.converged.sum())}/{n_pairs} converged, {result.seconds:.2f} s")
        out = MethodPath(path, None, score_evals=result.score_evals, seconds=result.seconds / n_pairs,
                         energy=result.energy.detach())
        if plan.extrapolate:
            shot = plan.shooter(plan.metric, path[:, -1], end_tangent(path))
            out.extrapolation = shot.path.detach()
            out.ext_score_evals, out.ext_seconds = shot.score_evals, shot.seconds / n_pairs
            if shot.error is None:
                self.report += f"; shooting: {shot.score_evals} score evaluations, {shot.seconds:.1f} s"
            else:
                self.report += (f"; shooting failed after {shot.seconds:.1f} s, extrapolation recorded as NaN: "
                                f"{shot.error}; the geodesic equation is stiff when lam |s|^2 is large "
                                "(raise extrapolate.max_evals, or try metric.normalize=unit)")
        return out
