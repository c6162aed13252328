"""Geometry of paths on synthetic manifolds against their ground truth.

Per pair and method: ``geodesic_error_max``/``_mean`` (distance of the nodes to the manifold's
own geodesic, e.g. the great circle, a dense polyline), ``manifold_distance_max``,
``length_ratio`` (Euclidean polyline length over the manifold geodesic's), ``energy`` (under
the run's metric), ``g_length`` (continuous g-length of the curve through the nodes, where the
metric has ``length``), ``score_evals`` and ``seconds``; for continuations past b
``extrapolation_error_max`` (distance to the manifold geodesic's continuation, any speed).

Against the metric's own geodesic (``geometry.truth``: spheres and uniform circles under the
Stein metric, solved independently with SciPy) where it exists:
``metric_geodesic_error_max``/``_mean`` (distance of the nodes to it),
``metric_geodesic_pointwise_max`` (node j against its point at t = j/N: the geodesic has
constant speed in t, so this also sees uneven spacing), ``g_length_ratio`` (g-length over the
geodesic's), and for continuations ``extrapolation_pointwise_max``/``_mean`` (the point at
parameter 1 + tau against the geodesic's point at 1 + tau: sees speed errors) and
``end_velocity_error`` (|end tangent - geodesic velocity at b| / |geodesic velocity at b|, the
velocity the shot starts from). Distances to the metric's geodesic are measured in coordinates
that the symmetries fixing a and b do not change (position in the plane of the centre, a and b;
distance to that plane within the sphere's subspace; distance to the subspace): with
codimension > 1 the shortest geodesics leave the subspace in any of the equivalent directions.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from scoregeo_cli.data.synthetic import polyline_distance
from scoregeo_cli.geometry.shooting import end_tangent
from scoregeo_cli.geometry.truth import continue_together, manifold_metric_geodesic
from scoregeo_cli.evaluation.rows import row


def segment_length(path: torch.Tensor) -> torch.Tensor:
    """Euclidean length of polylines (P, M, D) -> (P,)."""
    return (path[:, 1:] - path[:, :-1]).norm(dim=-1).sum(-1)


def _metric_truths(manifold, metric, a, b):
    truths = []
    for p in range(a.shape[0]):
        try:
            truths.append(manifold_metric_geodesic(manifold, metric, a[p], b[p]))
        except RuntimeError:  # the boundary-value solver found nothing: rows are NaN
            truths.append(False)
    return truths


class TruthReference:
    """One pair's metric geodesic, sampled once for every path compared with it: ``points``
    dense samples and the points at t = j/(N-1) for each node count N, in the coordinates
    the symmetries fixing a and b do not change."""

    def __init__(self, truth, points: int):
        self.truth = truth
        self.dense = torch.from_numpy(truth.invariant(truth.at(np.linspace(0, 1, points))))
        self._at_nodes: dict[int, torch.Tensor] = {}

    def at_nodes(self, n: int) -> torch.Tensor:
        if n not in self._at_nodes:
            self._at_nodes[n] = torch.from_numpy(self.truth.invariant(self.truth.at(np.linspace(0, 1, n))))
        return self._at_nodes[n]


def truth_distances(reference: TruthReference, paths: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For paths (M_i, D) of one pair, in one pass: each node's distance to the metric's
    geodesic, and node j's distance to the geodesic's point at t = j/(M_i - 1)."""
    sizes = [len(x) for x in paths]
    inv = torch.from_numpy(reference.truth.invariant(torch.cat(paths).detach().double().cpu().numpy()))
    err = polyline_distance(inv, reference.dense)
    return [(e, (i - reference.at_nodes(len(i))).norm(dim=-1)) for i, e in zip(inv.split(sizes), err.split(sizes))]


def truth_rows(reference: TruthReference | bool, name: str, p: int, path: torch.Tensor,
               distances: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[dict]:
    """Rows of one pair's path against the metric's own geodesic (False: none was found);
    ``distances`` from ``truth_distances`` where already computed."""
    if reference is False:
        nan = float("nan")
        return [row(p, name, k, nan) for k in ("metric_geodesic_error_max", "metric_geodesic_error_mean",
                                               "metric_geodesic_pointwise_max")]
    err, pointwise = distances if distances is not None else truth_distances(reference, [path])[0]
    return [row(p, name, "metric_geodesic_error_max", err.max()),
            row(p, name, "metric_geodesic_error_mean", err.mean()),
            row(p, name, "metric_geodesic_pointwise_max", pointwise.max())]


def _each_method(nodes: dict[str, torch.Tensor], distances) -> dict:
    """``distances`` computed once on a list of node arrays, one per method -> {method: result}."""
    return dict(zip(nodes, distances(list(nodes.values()))))


def _to_polyline(polyline: torch.Tensor):
    """Distances of node arrays to a polyline, in one projection for all of them."""
    def distances(arrays: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(polyline_distance(torch.cat(arrays), polyline).split([len(x) for x in arrays]))
    return distances


@torch.no_grad()
def geometry_rows(manifold, metric, results: dict, a: torch.Tensor, b: torch.Tensor, duration: float,
                  points: int) -> list[dict]:
    """Rows of the metrics above for every method's ``MethodPath`` (``results``)."""
    n_pairs = a.shape[0]
    truths = [manifold.geodesic(a[p], b[p], points) for p in range(n_pairs)]
    lengths = torch.tensor([manifold.geodesic_length(a[p], b[p]) for p in range(n_pairs)], dtype=a.dtype)
    metric_truths = _metric_truths(manifold, metric, a, b)
    has_length = hasattr(metric, "length")
    nan = torch.full((n_pairs,), float("nan"), dtype=a.dtype)
    g_lengths = {name: (nan if getattr(result, "error", None) is not None else metric.length(result.path))
                 for name, result in results.items()} if has_length else {}
    for p, truth in enumerate(metric_truths):
        # the boundary-value solution is a reference only if it is the shortest: a returned path
        # shorter by more than 0.1% shows it converged to a saddle (e.g. the in-plane path in R^10)
        shortest = min((float(g[p]) for g in g_lengths.values() if torch.isfinite(g[p])), default=float("inf"))
        if truth not in (None, False) and shortest < truth.length * (1 - 1e-3):
            print(f"pair {p}: the metric's geodesic from solve_bvp (g-length {truth.length:.5g}) is longer than "
                  f"a returned path ({shortest:.5g}); its rows are NaN")
            metric_truths[p] = False
    references = [t if t in (None, False) else TruthReference(t, points) for t in metric_truths]
    # distances of every method's nodes, one computation per pair and reference
    nodes = [{name: result.path[p] for name, result in results.items()} for p in range(n_pairs)]
    to_geodesic = [_each_method(nodes[p], _to_polyline(truths[p])) for p in range(n_pairs)]
    to_metric_geodesic = [{} if references[p] in (None, False) else
                          _each_method(nodes[p], functools.partial(truth_distances, references[p]))
                          for p in range(n_pairs)]
    rows: list[dict] = []
    for name, result in results.items():
        path = result.path
        failed = getattr(result, "error", None) is not None  # a NaN path: NaN rows, no score evaluation
        energy = nan if failed else result.energy if result.energy is not None else metric.energy(path)
        ratio = segment_length(path) / lengths
        off = manifold.distance(path).amax(dim=-1)
        g_length = g_lengths.get(name)
        for p in range(n_pairs):
            err = to_geodesic[p][name]
            rows += [row(p, name, "geodesic_error_max", err.max()),
                     row(p, name, "geodesic_error_mean", err.mean()),
                     row(p, name, "manifold_distance_max", off[p]),
                     row(p, name, "length_ratio", ratio[p]),
                     row(p, name, "energy", energy[p]),
                     row(p, name, "score_evals", result.score_evals),
                     row(p, name, "seconds", result.seconds)]
            if g_length is not None:
                rows.append(row(p, name, "g_length", g_length[p]))
            if metric_truths[p] is not None:
                rows += truth_rows(references[p], name, p, path[p], to_metric_geodesic[p].get(name))
                if g_length is not None:
                    truth_length = metric_truths[p].length if metric_truths[p] is not False else float("nan")
                    rows.append(row(p, name, "g_length_ratio", g_length[p] / truth_length))
    continuations: dict = {}  # (pair, points): the metric geodesic at 1 + tau
    if any(result.extrapolation is not None for result in results.values()):
        continue_together(metric_truths, 1 + duration)
    extrapolated = {name: result for name, result in results.items() if result.extrapolation is not None}
    ext_error = [_each_method({name: result.extrapolation[p] for name, result in extrapolated.items()},
                              _to_polyline(manifold.continuation(a[p], b[p], 2 * duration, points)))
                 if extrapolated else {} for p in range(n_pairs)]
    for name, result in extrapolated.items():
        ext = result.extrapolation
        taus = 1 + np.linspace(0, duration, ext.shape[1])
        for p in range(n_pairs):
            rows.append(row(p, name, "extrapolation_error_max", ext_error[p][name].max()))
            geo = metric_truths[p]
            if geo is None:
                continue
            if geo is False:
                pointwise, velocity = torch.full((ext.shape[1],), float("nan")), float("nan")
            else:
                if (p, len(taus)) not in continuations:
                    continuations[p, len(taus)] = torch.from_numpy(geo.invariant(geo.at(taus)))
                inv = torch.from_numpy(geo.invariant(ext[p].double().cpu().numpy()))
                pointwise = (inv - continuations[p, len(taus)]).norm(dim=-1)
                v_true = torch.from_numpy(geo.invariant(geo.velocity([1.0]), vectors=True)[0])
                v_path = torch.from_numpy(geo.invariant(
                    end_tangent(result.path[p:p + 1].double().cpu()).numpy(), vectors=True)[0])
                velocity = (v_path - v_true).norm() / v_true.norm()
            rows += [row(p, name, "extrapolation_pointwise_max", pointwise.max()),
                     row(p, name, "extrapolation_pointwise_mean", pointwise.mean()),
                     row(p, name, "end_velocity_error", velocity)]
        if result.ext_score_evals:
            rows += [row(p, name, "extrapolation_score_evals", result.ext_score_evals) for p in range(n_pairs)]
    return rows
