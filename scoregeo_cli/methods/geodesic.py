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
        key = solve_key(metric, solver, ends) if plan.cache is not None and not plan.extrapolate else None
        entry = plan.cache.load_many("geodesic", key) if key is not None else None
        if key is not None:
            plan.cache.count("geodesic", entry is not None)
        if entry is not None:
            geo = CachedSolve(entry)
        else:
            try:
                geo = geodesic(metric.score, ends.a, ends.b, metric=metric, solver=solver, nodes=solver.nodes)
            except NonFiniteError as err:  # e.g. the conformal weights overflow at small t
                nan = torch.full((n_pairs, plan.nodes, ends.a.shape[-1]), float("nan"), dtype=ends.a.dtype,
                                 device=ends.a.device)
                return MethodPath(nan, None, score_evals=metric.score.calls - evals0, error=str(err))
            if key is not None:
                plan.cache.store_many("geodesic", key, CachedSolve.entry(geo))
        path = geo.path
        # single-point passes per pair: forward, backward (vector-Jacobian products through the
        # score), and both with a backward counted as one pass (deterministic, so that a run's
        # summary repeats; `scoregeo bench` weighs backward passes by their measured cost)
        forward, backward = geo.network_passes / n_pairs, geo.backward_passes / n_pairs
        hessian = geo.hessian_passes / n_pairs  # double backward passes (solver.hessian=exact)
        passes = forward + backward + hessian
        nodes = geo.nodes_per_pair.double().cpu()
        resolution = (f"{int(nodes.min())}" + ("" if nodes.min() == nodes.max() else f"-{int(nodes.max())}")
                      + " nodes")
        if geo.resolved is not None:
            resolution += (f", {int(geo.resolved.sum())}/{n_pairs} resolved (last g-length change "
                           f"{float(geo.length_change.max()):.2%} at most)")
        self.report = (f"{geo.score_evals} batched score evaluations, {geo.iterations} iterations, "
                       f"{int(geo.converged.sum())}/{n_pairs} converged, {resolution}, "
                       f"{passes:.0f} network passes per pair, "
                       f"{geo.seconds:.2f} s" + (" (that solve, reused from the cache)" if entry is not None else ""))
        energy = None if metric is not plan.metric else geo.energy  # rows report the run's metric
        out = MethodPath(path, None, score_evals=geo.score_evals, seconds=geo.seconds / n_pairs, energy=energy)
        # per path: how the solve ended, the resolution it chose and what it cost
        out.extra = {"converged": geo.converged.double().cpu(), "grad_rel": geo.grad_rel.double().cpu(),
                     "solve_nodes": nodes,
                     **{key: torch.full((n_pairs,), value, dtype=torch.float64) for key, value in (
                         ("forward_passes_per_pair", forward),
                         ("backward_passes_per_pair", backward), ("hessian_passes_per_pair", hessian),
                         ("network_passes_per_pair", passes))}}
        if geo.resolved is not None:
            out.extra["resolved"] = geo.resolved.double().cpu()
            out.extra["length_change"] = geo.length_change.double().cpu()
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


# --------------------------------------------------------------------------- reused solves

def _parameters(obj) -> str | None:
    """A metric's or solver's settings as text (its type and public plain attributes; the
    score is keyed apart, private attributes are working state), or None when some setting is
    not plain (then the solve is not cached)."""
    plain = (bool, int, float, str, type(None))
    items = []
    for name, value in sorted(vars(obj).items()):
        if name == "score" or name.startswith("_"):
            continue
        if isinstance(value, (list, tuple)) and all(isinstance(v, plain) for v in value):
            value = tuple(value)
        elif not isinstance(value, plain):
            return None
        items.append((name, value))
    return f"{type(obj).__module__}.{type(obj).__qualname__}{items!r}"


def solve_key(metric, solver, ends: Endpoints) -> str | None:
    """The cache key of one batched solve: the score (its ``fingerprint()``: network weights or
    reference set, and schedule), its level, chunking and dtype, the metric's and solver's
    settings, the solver's ``revision`` (a class attribute bumped when its algorithm changes
    the paths it returns) and the exact endpoints; None when any of them cannot be keyed."""
    from scoregeo_cli.io.cache import digest

    score = metric.score
    fingerprint = getattr(score, "fingerprint", None)
    settings = [_parameters(metric), _parameters(solver)]
    if fingerprint is None or None in settings:
        return None
    return digest("geodesic solve", type(score).__name__, fingerprint(), getattr(score, "t", None),
                  getattr(score, "chunk_size", None), *settings, getattr(solver, "revision", 0), ends.a, ends.b)


class CachedSolve:
    """The parts of an ``api.Geodesic`` that a run records, kept in and read from the cache."""

    STATS = ("score_evals", "iterations", "network_passes", "backward_passes", "hessian_passes", "seconds",
             "solve_nodes")

    def __init__(self, entry: dict[str, torch.Tensor]):
        self.path, self.energy, self.grad_rel = entry["path"], entry["energy"], entry["grad_rel"]
        self.converged = entry["converged"].bool()
        for name, value in zip(self.STATS, entry["stats"].tolist()):
            setattr(self, name, value if name == "seconds" else int(value))
        self.resolved = entry["resolved"].bool() if "resolved" in entry else None
        self.length_change = entry.get("length_change")
        self.nodes_per_pair = entry.get("nodes_per_pair", torch.full((len(self.energy),), self.solve_nodes))

    @classmethod
    def entry(cls, geo) -> dict[str, torch.Tensor]:
        stats = torch.tensor([float(getattr(geo, name)) for name in cls.STATS], dtype=torch.float64)
        entry = {"path": geo.path, "energy": geo.energy, "grad_rel": geo.grad_rel,
                 "converged": geo.converged.to(torch.uint8), "stats": stats, "nodes_per_pair": geo.nodes_per_pair}
        if geo.resolved is not None:
            entry["resolved"] = geo.resolved.to(torch.uint8)
            entry["length_change"] = geo.length_change
        return entry
