"""Geodesics on synthetic manifolds whose true geodesics are known.

For P pairs (a, b) on the manifold: the score-metric geodesic (one batched solve), LERP and
SLERP with the same number of nodes; then extrapolation beyond b by shooting along the
geodesic equation, against the straight continuation of LERP and the continuation of
SLERP. Every path is scored against the ground truth.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from scoregeo_cli.baselines import lerp, slerp, slerp_at
from scoregeo_cli.build import build_metric, build_score, instantiate
from scoregeo_cli.data.synthetic import polyline_distance
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.geometry.shooting import end_tangent, linear_extrapolation
from scoregeo_cli.reporting.results import row

INTERPOLATION_METRICS = ["geodesic_error_max", "geodesic_error_mean", "manifold_distance_max",
                         "length_ratio", "energy", "score_evals", "seconds"]
EXTRAPOLATION_METRICS = ["extrapolation_error_max"]
BASELINES = ("lerp", "slerp")


def _pair_of_numbers(value, key: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple, ListConfig)) or len(value) != 2 \
            or not all(isinstance(v, (int, float)) for v in value):
        raise ScoregeoError(f"{key} must be a list of two numbers, got {value}")
    return float(value[0]), float(value[1])


def validate_manifold(cfg: DictConfig) -> None:
    """Refuse out-of-range dataset, score and eval values with one sentence."""
    d = cfg.dataset
    if "intrinsic_dim" in d:
        if not isinstance(d.intrinsic_dim, int) or d.intrinsic_dim < 1:
            raise ScoregeoError(f"dataset.intrinsic_dim must be an integer >= 1, got {d.intrinsic_dim}")
        if not isinstance(d.ambient_dim, int) or d.intrinsic_dim >= d.ambient_dim:
            raise ScoregeoError(f"dataset.intrinsic_dim must be below dataset.ambient_dim "
                                f"(d < D), got d={d.intrinsic_dim}, D={d.ambient_dim}")
        if not d.radius > 0:
            raise ScoregeoError(f"dataset.radius must be positive, got {d.radius}")
    else:
        if not isinstance(d.ambient_dim, int) or d.ambient_dim < 2:
            raise ScoregeoError(f"dataset.ambient_dim must be an integer >= 2 for a plane curve, got {d.ambient_dim}")
        axes = _pair_of_numbers(d.semi_axes, "dataset.semi_axes")
        if min(axes) <= 0:
            raise ScoregeoError(f"dataset.semi_axes must both be positive, got {list(axes)}")
        if d.density not in ("uniform", "von_mises"):
            raise ScoregeoError(f"dataset.density must be 'uniform' or 'von_mises', got '{d.density}'")
    lo, hi = _pair_of_numbers(d.angle_range, "dataset.angle_range")
    if not 0 < lo <= hi < 180:
        raise ScoregeoError(f"dataset.angle_range must satisfy 0 < low <= high < 180 degrees, got {[lo, hi]}")
    if "sigma" in cfg.score and not cfg.score.sigma > 0:
        raise ScoregeoError(f"score.sigma must be positive, got {cfg.score.sigma}")
    if cfg.n_pairs < 1:
        raise ScoregeoError(f"n_pairs must be at least 1, got {cfg.n_pairs}")


def segment_length(path: torch.Tensor) -> torch.Tensor:
    """Euclidean length of polylines (P, M, D) -> (P,)."""
    return (path[:, 1:] - path[:, :-1]).norm(dim=-1).sum(-1)


class SyntheticTask:
    """The synthetic-manifold experiment; ``run`` returns metrics rows."""

    table_metrics = INTERPOLATION_METRICS[:4] + ["energy", "score_evals"] + EXTRAPOLATION_METRICS

    def run(self, cfg: DictConfig, run_dir: Path) -> list[dict]:
        validate_manifold(cfg)
        manifold = instantiate(cfg.dataset)
        score = build_score(cfg, manifold=manifold)
        metric = build_metric(cfg, score)
        solver = instantiate(cfg.solver)
        shooter = instantiate(cfg.extrapolate)
        methods = list(cfg.eval.methods)
        unknown = set(methods) - {"geodesic", *BASELINES}
        if unknown or not methods:
            raise ScoregeoError(f"eval.methods must list some of geodesic, lerp, slerp; got {methods}")
        if int(cfg.eval.geodesic_points) < 2:
            raise ScoregeoError(f"eval.geodesic_points must be at least 2, got {cfg.eval.geodesic_points}")

        generator = torch.Generator().manual_seed(int(cfg.seed))
        a, b = manifold.pairs(int(cfg.n_pairs), generator)
        n_pairs = a.shape[0]

        paths, evals, seconds = {}, {}, {}
        if "geodesic" in methods:
            result = solver(metric, a, b)
            paths["geodesic"] = result.path
            evals["geodesic"], seconds["geodesic"] = result.score_evals, result.seconds / n_pairs
            print(f"geodesic: {result.score_evals} batched score evaluations, "
                  f"{int(result.converged.sum())}/{n_pairs} converged, {result.seconds:.2f} s")
        for name, fn in (("lerp", lerp), ("slerp", slerp)):
            if name in methods:
                paths[name] = fn(a, b, solver.nodes)
                evals[name], seconds[name] = 0, 0.0

        rows: list[dict] = []
        m = int(cfg.eval.geodesic_points)
        truths = [manifold.geodesic(a[p], b[p], m) for p in range(n_pairs)]
        lengths = torch.tensor([manifold.geodesic_length(a[p], b[p]) for p in range(n_pairs)], dtype=a.dtype)
        with torch.no_grad():
            for name, path in paths.items():
                energy = metric.energy(path)
                ratio = segment_length(path) / lengths
                off = manifold.distance(path).amax(dim=-1)
                for p in range(n_pairs):
                    err = polyline_distance(path[p], truths[p])
                    rows += [row(p, name, "geodesic_error_max", err.max()),
                             row(p, name, "geodesic_error_mean", err.mean()),
                             row(p, name, "manifold_distance_max", off[p]),
                             row(p, name, "length_ratio", ratio[p]),
                             row(p, name, "energy", energy[p]),
                             row(p, name, "score_evals", evals[name]),
                             row(p, name, "seconds", seconds[name])]

        extrapolated, shoot_evals = self._extrapolate(metric, shooter, paths, a, b)
        for name, path in extrapolated.items():
            for p in range(n_pairs):
                truth = manifold.continuation(a[p], b[p], 2 * shooter.duration, m)
                rows.append(row(p, name, "extrapolation_error_max", polyline_distance(path[p], truth).max()))
        if "geodesic" in extrapolated:
            rows += [row(p, "geodesic", "extrapolation_score_evals", shoot_evals) for p in range(n_pairs)]

        if cfg.eval.figure:
            from scoregeo_cli.reporting.figures import plot_synthetic_paths

            plot_synthetic_paths(manifold, a, b, paths, extrapolated, run_dir / "paths.png")
        return rows

    @staticmethod
    def _extrapolate(metric, shooter, paths, a, b) -> tuple[dict[str, torch.Tensor], int]:
        """Extrapolated paths per method, and the score evaluations of the geodesic shot."""
        out, shoot_evals = {}, 0
        if "geodesic" in paths:
            path = paths["geodesic"]
            shot = shooter(metric, path[:, -1], end_tangent(path))
            if shot.error:
                print(f"geodesic shooting failed, extrapolation recorded as NaN: {shot.error}")
            shoot_evals = shot.score_evals
            out["geodesic"] = shot.path
        if "lerp" in paths:
            out["lerp"] = linear_extrapolation(a, b, shooter.duration, shooter.steps)
        if "slerp" in paths:  # SLERP's own continuation of its arc
            t = torch.linspace(1, 1 + shooter.duration, shooter.steps + 1, dtype=a.dtype)
            out["slerp"] = slerp_at(a, b, t)
        return out, shoot_evals
