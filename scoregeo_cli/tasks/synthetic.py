"""Geodesics on synthetic manifolds whose true geodesics are known.

For P pairs (a, b) on the manifold: the score-metric geodesic (one batched solve), LERP and
SLERP with the same number of nodes; then extrapolation beyond b by shooting along the
geodesic equation, against the straight continuation of LERP and the continuation of
SLERP. Every path is scored against the ground truth (``evaluation.geometry``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from scoregeo_cli.build import build_metric, build_score, check_memory, instantiate
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.evaluation.geometry import geometry_rows
from scoregeo_cli.methods import Plan, build_methods, check_methods
from scoregeo_cli.evaluation.rows import row
from scoregeo_cli.io import progress
from scoregeo_cli.spaces import IdentitySpace
from scoregeo_cli.tasks import astuple_shallow, run_methods_shown


def _pair_of_numbers(value, key: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple, ListConfig)) or len(value) != 2 \
            or not all(isinstance(v, (int, float)) for v in value):
        raise ScoregeoError(f"{key} must be a list of two numbers, got {value}")
    return float(value[0]), float(value[1])


def validate_manifold(cfg: DictConfig) -> None:
    """Refuse out-of-range dataset, score and eval values with one sentence."""
    if "denoiser" in cfg and not str(cfg.denoiser.get("_target_", "")).endswith(".same_denoiser"):
        raise ScoregeoError("denoiser applies to image experiments (paths brought back by DDIM); synthetic "
                            "manifolds have no denoising step: leave denoiser=same")
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


@dataclass
class Prepared:
    """What a synthetic run builds before it computes (``SyntheticTask.prepare``)."""

    manifold: object
    metric: object
    shooter: object
    methods: dict
    plan: Plan


class SyntheticTask:
    """The synthetic-manifold experiment; ``prepare`` builds and checks, ``run`` returns metrics rows."""

    table_metrics = ["geodesic_error_max", "metric_geodesic_error_max", "manifold_distance_max", "g_length_ratio",
                     "score_evals", "extrapolation_error_max", "extrapolation_pointwise_max"]

    def prepare(self, cfg: DictConfig) -> Prepared:
        """Everything the run builds before it computes, and so every refusal (one sentence)."""
        validate_manifold(cfg)
        if int(cfg.eval.geodesic_points) < 2:
            raise ScoregeoError(f"eval.geodesic_points must be at least 2, got {cfg.eval.geodesic_points}")
        manifold = instantiate(cfg.dataset)
        score = build_score(cfg, manifold=manifold)
        metric = build_metric(cfg, score)
        solver, shooter = instantiate(cfg.solver), instantiate(cfg.extrapolate)
        methods = build_methods(cfg)
        plan = Plan(solver.nodes, metric, solver, shooter)
        check_methods(methods, plan)
        check_memory(cfg, plan.nodes, score.dim, methods)
        return Prepared(manifold, metric, shooter, methods, plan)

    def run(self, cfg: DictConfig, run_dir: Path, prepared: Prepared | None = None) -> list[dict]:
        manifold, metric, shooter, methods, plan = astuple_shallow(prepared or self.prepare(cfg))
        generator = torch.Generator().manual_seed(int(cfg.seed))
        with progress.step("drawing the endpoint pairs"):
            a, b = manifold.pairs(int(cfg.n_pairs), generator)
            ends = IdentitySpace().endpoints(a, b)
        results = run_methods_shown(methods, ends, plan, generator)
        with progress.step("scoring the paths against the true geodesics"):
            rows = geometry_rows(manifold, metric, results, a, b, shooter.duration, int(cfg.eval.geodesic_points))
        rows += [row(p, name, key, float(values[p])) for name, result in results.items()  # converged, grad_rel, ...
                 for key, values in result.extra.items() for p in range(len(a))]
        if cfg.eval.figure:
            from scoregeo_cli.reporting.figures import plot_synthetic_paths

            with progress.step("drawing paths.png"):
                plot_synthetic_paths(manifold, a, b, {m: r.path for m, r in results.items()},
                                     {m: r.extrapolation for m, r in results.items() if r.extrapolation is not None},
                                     run_dir / "paths.png")
        return rows
