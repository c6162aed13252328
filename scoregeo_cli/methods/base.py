"""The method interface and the one loop that runs the methods of a run."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from scoregeo_cli.errors import ScoregeoError, check_finite
from scoregeo_cli.spaces.base import Endpoints


@dataclass
class Plan:
    """What every method of a run shares.

    nodes: nodes per path, endpoints included. metric, solver, shooter: the geometry of the
    run (the shooter's ``duration`` and ``steps`` also set how far baselines continue).
    extrapolate: whether paths are continued past b at all. cache: where methods may keep and
    find work that repeats across runs (None: nowhere).
    """

    nodes: int
    metric: object
    solver: object
    shooter: object
    extrapolate: bool = True
    cache: object = None  # a scoregeo_cli.io.cache.Cache: geodesic solves are reused from it

    @property
    def tau(self) -> torch.Tensor:
        """Parameter times past b of the extrapolated points, (steps + 1,), starting at 0."""
        return torch.linspace(0, self.shooter.duration, self.shooter.steps + 1, dtype=torch.float64)


@dataclass
class MethodPath:
    """One method's result for P pairs.

    path: (P, N, D) nodes, endpoints included. extrapolation: (P, steps + 1, D) points past b
    (the first is b), NaN where a shot failed, or None. at_level: the points live where the
    space's paths live (False: clean encoded data, only decoded). score_evals, seconds: cost of
    the path (batched evaluations, wall time per pair); ext_*: the same for the extrapolation.
    energy: (P,) the curve energy under the run's metric when the method computed it.
    extra: further per-pair values (P,) recorded as rows.
    """

    path: torch.Tensor
    extrapolation: torch.Tensor | None = None
    at_level: bool = True
    score_evals: int = 0
    seconds: float = 0.0
    ext_score_evals: int = 0
    ext_seconds: float = 0.0
    energy: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    error: str | None = None  # why the method failed; its path is then NaN and its rows NaN


class Method(ABC):
    """Turns endpoints into a path of ``plan.nodes`` nodes (and, if asked, its continuation)."""

    @abstractmethod
    def __call__(self, ends: Endpoints, plan: Plan, generator: torch.Generator) -> MethodPath:
        ...


def build_methods(cfg: DictConfig) -> dict[str, Method]:
    """The methods selected by ``method: [...]`` (config nodes under ``methods``), in order."""
    from scoregeo_cli.build import instantiate

    nodes = cfg.get("methods") or {}
    if not nodes:
        raise ScoregeoError("no method selected; choose some with method=[geodesic,lerp,...] "
                            "(each a file of conf/method/)")
    return {name: instantiate(node) for name, node in nodes.items()}


def check_methods(methods: dict[str, Method], plan: Plan) -> None:
    """Let every method check, before any work, that it can run with the plan (a geodesic's
    solver against its metric); one sentence if not."""
    for method in methods.values():
        if hasattr(method, "resolve"):
            method.resolve(plan)


def run_methods(methods: dict[str, Method], ends: Endpoints, plan: Plan, generator: torch.Generator,
                verbose: bool = True) -> dict[str, MethodPath]:
    """Every method on the same endpoints; paths checked finite (extrapolations may be NaN)."""
    out = {}
    for name, method in methods.items():
        start = time.perf_counter()
        result = method(ends, plan, generator)
        if result.seconds == 0.0:
            result.seconds = (time.perf_counter() - start) / len(ends.a)
        if result.error is not None:
            print(f"{name} failed, its rows are recorded as NaN: {result.error}")
        else:
            check_finite(result.path, f"the {name} path", "level t" if result.at_level else "data space")
        if not plan.extrapolate:
            result.extrapolation = None
        out[name] = result
        if verbose and getattr(method, "report", None):
            print(f"{name}: {method.report}")
    return out
