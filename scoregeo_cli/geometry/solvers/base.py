"""What every boundary-value solver shares: its result, its progress bar, the measurements
made after a solve, the straight start path, resampling a curve, and the checks of the
settings.

Every solver reports the true gradient norm of the energy (over the interior nodes) at its
start and end (``grad_norm0``, ``grad_norm``, measured after the solve and not counted in
``score_evals``); ``converged`` means grad_norm <= gtol * grad_norm0 (Gauss-Newton with
float32 tolerances: also an energy stable to ``etol``). ``score_points`` and ``vjp_points``
count single-point forward and backward passes through the score (``network_passes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.geometry.base import Metric
from scoregeo_cli.io import progress as _progress


@dataclass
class GeodesicResult:
    """A solved batch of curves.

    path: (P, N+1, D) nodes, endpoints included. energy: (P,) final curve energy.
    energy_trace: the energies of the current paths after each iteration (of the pairs that
    iteration solved: all P, or the group of one resolution of the default solver).
    score_evals: batched score evaluations used (forward passes). seconds: wall time. converged: (P,) bool, the true
    gradient norm fell below gtol times its value at the start. grad_norm, grad_norm0: (P,)
    norm of the true energy gradient over the interior nodes at the end and at the start.
    vjp_evals: batched vector-Jacobian products through the score (backward passes);
    score_points, vjp_points: points those passes covered (for forward-equivalent costs);
    hvp_points: points of Hessian-vector products (double backward passes; Newton-CG).
    solve_nodes: nodes of the discretisation the energy was minimised on (the returned path
    may be that curve resampled at other nodes; the most of any pair); nodes_per_pair: (P,)
    each pair's own (adaptive resolution; None: all ``solve_nodes``); length_change: (P,) relative change of the
    continuous g-length at the last refinement (adaptive resolution; None otherwise);
    resolved: (P,) that change was below the solver's tolerance (None: fixed resolution).
    solved_path: (P, solve_nodes, D) the nodes the energy was minimised on (None: ``path``).
    """

    path: torch.Tensor
    energy: torch.Tensor
    score_evals: int
    seconds: float
    converged: torch.Tensor
    iterations: int
    energy_trace: list[list[float]] = field(default_factory=list)
    grad_norm: torch.Tensor | None = None
    grad_norm0: torch.Tensor | None = None
    vjp_evals: int = 0
    score_points: int = 0
    vjp_points: int = 0
    hvp_points: int = 0
    solve_nodes: int = 0
    nodes_per_pair: torch.Tensor | None = None
    length_change: torch.Tensor | None = None
    resolved: torch.Tensor | None = None
    solved_path: torch.Tensor | None = None


class SolveProgress:
    """The progress bar of one solve (``io.progress``): batched score evaluations
    spent of the budget, the summed energy of the pairs' paths and, where the solver knows
    it, the largest gradient norm relative to its start. It only reads the solver's values."""

    def __init__(self, name: str, metric: Metric, budget: int):
        self.metric, self.evals0 = metric, metric.score.calls
        self.bar = _progress.bar(int(budget), name, "eval")

    def update(self, energy: torch.Tensor, grad_rel: torch.Tensor | None = None) -> None:
        if self.bar.disable:
            return
        self.bar.update(max(0, self.metric.score.calls - self.evals0 - self.bar.n))
        post = {"energy": f"{float(energy.detach().sum()):.5g}"}
        if grad_rel is not None and grad_rel.numel():
            post["grad_rel"] = f"{float(grad_rel.max()):.2g}"
        self.bar.set_postfix(post, refresh=False)

    def __enter__(self) -> "SolveProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def gradient_norm(metric: Metric, path: torch.Tensor) -> torch.Tensor:
    """|dE/dx_interior| (P,) of the metric's energy at ``path``, left out of the score's
    counters (a measurement, not part of a solve)."""
    score = metric.score
    saved = (score.calls, score.points, score.seconds)
    try:
        if hasattr(metric, "energy_gradient"):
            grad = metric.energy_gradient(path)[1]
        else:
            with torch.enable_grad():
                x = path.detach().requires_grad_(True)
                grad = torch.autograd.grad(metric.energy(x).sum(), x)[0][:, 1:-1]
    finally:
        score.calls, score.points, score.seconds = saved
    return grad.flatten(1).norm(dim=-1).detach()


def network_passes(result: "GeodesicResult", cost: float) -> float:
    """Single-point network passes per pair of a solve: (forward points + backward points x
    ``cost``) / pairs."""
    return (result.score_points + cost * result.vjp_points) / max(1, result.path.shape[0])


def _finish(metric: Metric, result: "GeodesicResult", path0: torch.Tensor, gtol: float,
            points0: int) -> "GeodesicResult":
    """Fill the gradient norms, ``converged`` and the point counts of a result."""
    if result.grad_norm0 is None:
        result.grad_norm0 = gradient_norm(metric, path0)
    if result.grad_norm is None:
        result.grad_norm = gradient_norm(metric, result.path)
    result.converged = result.grad_norm <= gtol * result.grad_norm0
    result.score_points = metric.score.points - points0
    return result


def score_is_float32(score, points: torch.Tensor) -> bool:
    """Whether ``score`` computes in float32 (a network): points of a float32 dtype, or a
    score whose value does not change when its float64 input is rounded to float32 (one
    point, two evaluations, left out of the score's counters)."""
    if points.dtype != torch.float64:
        return True
    x = points[:1].detach()
    saved = (score.calls, score.points, score.seconds)
    try:
        with torch.no_grad():
            return bool(torch.equal(score(x), score(x.float().to(x.dtype))))
    finally:  # two single-point passes: a measurement, not counted
        score.calls, score.points, score.seconds = saved


def straight_path(a: torch.Tensor, b: torch.Tensor, nodes: int) -> torch.Tensor:
    """nodes points evenly spaced on the segment from a to b: (P, D) -> (P, nodes, D)."""
    t = torch.linspace(0, 1, nodes, dtype=a.dtype, device=a.device)[None, :, None]
    return (1 - t) * a[:, None] + t * b[:, None]


def _check_nodes(nodes: int) -> int:
    if int(nodes) < 3:
        raise ScoregeoError(f"solver.nodes must be at least 3 (endpoints included), got {nodes}")
    return int(nodes)


def _check_positive(name: str, value) -> None:
    if not value > 0:
        raise ScoregeoError(f"{name} must be positive, got {value}")


def _resample_matrix(nodes_from: int, nodes_to: int, interpolation: str) -> np.ndarray:
    """(nodes_to, nodes_from): the curve through ``nodes_from`` nodes at t_j = j / (nodes_from - 1)
    (not-a-knot cubic spline or polygon), evaluated at ``nodes_to`` evenly spaced parameters."""
    t = np.linspace(0, 1, nodes_to)
    knots, eye = np.linspace(0, 1, nodes_from), np.eye(nodes_from)
    if interpolation == "linear":
        return np.stack([np.interp(t, knots, eye[j]) for j in range(nodes_from)], axis=1)
    from scipy.interpolate import CubicSpline

    return CubicSpline(knots, eye, bc_type="not-a-knot")(t)


def resample(path: torch.Tensor, nodes: int, interpolation: str = "cubic") -> torch.Tensor:
    """The curve through the nodes of ``path`` (P, M, D) (``interpolation``: "cubic", the
    not-a-knot spline, or "linear") at ``nodes`` evenly spaced parameters: (P, nodes, D),
    with the end nodes kept exactly."""
    mat = torch.as_tensor(_resample_matrix(path.shape[1], int(nodes), interpolation), dtype=path.dtype,
                          device=path.device)
    out = torch.einsum("nm,pmd->pnd", mat, path)
    out[:, 0], out[:, -1] = path[:, 0], path[:, -1]
    return out
