"""Geometry of paths on synthetic manifolds against their ground truth.

Per pair and method: ``geodesic_error_max``/``_mean`` (distance of the nodes to the true
geodesic, a dense polyline), ``manifold_distance_max``, ``length_ratio`` (Euclidean polyline
length over the true geodesic's), ``energy`` (under the run's metric), ``score_evals`` and
``seconds``; for continuations past b ``extrapolation_error_max`` (distance to the true
continuation).
"""

from __future__ import annotations

import torch

from scoregeo_cli.data.synthetic import polyline_distance
from scoregeo_cli.reporting.results import row


def segment_length(path: torch.Tensor) -> torch.Tensor:
    """Euclidean length of polylines (P, M, D) -> (P,)."""
    return (path[:, 1:] - path[:, :-1]).norm(dim=-1).sum(-1)


@torch.no_grad()
def geometry_rows(manifold, metric, results: dict, a: torch.Tensor, b: torch.Tensor, duration: float,
                  points: int) -> list[dict]:
    """Rows of the metrics above for every method's ``MethodPath`` (``results``)."""
    n_pairs = a.shape[0]
    truths = [manifold.geodesic(a[p], b[p], points) for p in range(n_pairs)]
    lengths = torch.tensor([manifold.geodesic_length(a[p], b[p]) for p in range(n_pairs)], dtype=a.dtype)
    rows: list[dict] = []
    for name, result in results.items():
        path = result.path
        energy = result.energy if result.energy is not None else metric.energy(path)
        ratio = segment_length(path) / lengths
        off = manifold.distance(path).amax(dim=-1)
        for p in range(n_pairs):
            err = polyline_distance(path[p], truths[p])
            rows += [row(p, name, "geodesic_error_max", err.max()),
                     row(p, name, "geodesic_error_mean", err.mean()),
                     row(p, name, "manifold_distance_max", off[p]),
                     row(p, name, "length_ratio", ratio[p]),
                     row(p, name, "energy", energy[p]),
                     row(p, name, "score_evals", result.score_evals),
                     row(p, name, "seconds", result.seconds)]
    for name, result in results.items():
        if result.extrapolation is None:
            continue
        for p in range(n_pairs):
            truth = manifold.continuation(a[p], b[p], 2 * duration, points)
            rows.append(row(p, name, "extrapolation_error_max",
                            polyline_distance(result.extrapolation[p], truth).max()))
        if result.ext_score_evals:
            rows += [row(p, name, "extrapolation_score_evals", result.ext_score_evals) for p in range(n_pairs)]
    return rows
