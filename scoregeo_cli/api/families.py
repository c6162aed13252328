"""The four families of score-based Riemannian metrics, built from a score you bring.

    import scoregeo_cli as sg

    metric = sg.families.Stein(score, lam=1000.0, normalize="none", shape=(2,))
    metric.energy(paths)      # (P,)   paths (P, N, *shape)
    metric.length(paths)      # (P,)   continuous g-length
    metric.norm_sq(x, v)      # (...)  g_x(v, v) for points and vectors (..., *shape)
    sg.geodesic(None, a, b, metric=metric)

* ``Stein``: g(x) = I + lam u(x) u(x)^T, u = s or s/|s| (Azeglio & Di Bernardo; the
  paper's metric). It penalises moving along the score.
* ``Pullback``: g(x) = alpha I + lam J(x)^T J(x), J = ds/dx (Saito & Matsubara); it
  penalises every normal direction near a manifold.
* ``Conformal``: g(x) = (p(x) / p(x_ref))^(-beta) I, log p integrated from the score
  along the path (Yu et al.; Bethune & Boutin's G_{1/p} at beta = 1). Exact for a true
  score, an approximation for a learned one.
* ``Euclidean``: g = I (every solver must return the straight line).

``score`` is any callable on a batch of points (B, *shape) returning the same shape (or a
score field from ``score_from_unet``); ``shape`` is the shape of one point (None: points
are flat vectors (B, D)). Paths are (P, N, *shape) with nodes at t = j / (N - 1) in [0, 1];
flat (P, N, D) works too. Energies are in squared data units (a straight line under g = I
costs |b - a|^2 / 2), lengths in data units. Every evaluation is one batched score call on
the paths' device and dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from scoregeo_cli.api.checks import ArgumentError, as_argument_errors, choice, integer, number, prod
from scoregeo_cli.api.score_fields import as_score_field, score_types
from scoregeo_cli.geometry.base import INTERPOLATION
from scoregeo_cli.geometry.conformal import ConformalMetric
from scoregeo_cli.geometry.euclidean import EuclideanMetric
from scoregeo_cli.geometry.pullback import PullbackMetric
from scoregeo_cli.geometry.stein import NORMALIZE, SteinMetric

if TYPE_CHECKING:
    from scoregeo_cli.scores.base import ScoreField

__all__ = ["Stein", "Pullback", "Conformal", "Euclidean"]


class _Shaped:
    """Flattening of (..., *shape) tensors to the flat points (..., D) the solvers use."""

    score: "ScoreField"
    shape: tuple[int, ...] | None

    def _flat(self, x: torch.Tensor, name: str, lead: int) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ArgumentError(f"{name} must be a torch tensor, got {type(x).__name__}")
        shape = self.shape
        if shape is not None and len(shape) > 1 and x.dim() >= lead + len(shape) \
                and tuple(x.shape[x.dim() - len(shape):]) == shape:
            return x.reshape(*x.shape[:x.dim() - len(shape)], prod(shape))
        dim = prod(shape) if shape is not None else None
        if x.dim() < lead + 1 or (dim is not None and x.shape[-1] != dim):
            want = "(P, N, *shape)" if lead == 2 else "(..., *shape)"
            raise ArgumentError(f"{name} must have shape {want} with shape {shape}, got {tuple(x.shape)}")
        return x


def _shape(shape) -> tuple[int, ...] | None:
    if shape is None:
        return None
    try:
        out = tuple(shape)
    except TypeError:
        out = None
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in out):
        raise ArgumentError(f"shape must be None or a tuple of positive integers, got {shape!r}")
    return out


def _field(owner: _Shaped, score, shape) -> "ScoreField":
    """The score field of ``score``; sets ``owner.shape`` (a score field of an image model
    brings its sample shape when none is given)."""
    shape = _shape(shape)
    field = as_score_field(score, shape)
    own = getattr(field, "shape", None)
    owner.shape = shape if shape is not None or own is None else tuple(own)
    return field


class Stein(_Shaped, SteinMetric):
    """g(x) = I + lam u(x) u(x)^T, u = s(x) (``normalize="none"``) or s(x)/|s(x)| ("unit").

    Args:
        score: the score s(x), a callable on batches (B, *shape).
        lam: weight lam >= 0 of the score direction (the paper: 1000).
        normalize: "none" or "unit".
        shape: the shape of one point, e.g. (1, 28, 28); None: flat vectors.
        interpolation: the curve through a path's nodes that the energy integrates:
            "cubic" (not-a-knot spline; the default of ``scoregeo run``) or "linear".
        quadrature: the rule on every segment: "gauss4" (default), "midpoint",
            "trapezoid", "simpson" or "gauss<k>".
        evaluate_at: "midpoints" or "nodes": the rule when quadrature is None.
        length_points: points per segment of ``length`` (>= 1).

    ``energy(path)`` = 1/2 int_0^1 g(y, y')(y', y') dt on the curve y through the nodes, by
    the quadrature (K = (N - 1) x points-per-segment score evaluations).
    """

    def __init__(self, score: Callable, lam: float = 1000.0, normalize: str = "none", *,
                 shape: Sequence[int] | None = None, interpolation: str = "cubic", quadrature: str | None = "gauss4",
                 evaluate_at: str = "midpoints", length_points: int = 64):
        lam = number("lam", lam, minimum=0)
        choice("normalize", normalize, NORMALIZE)
        choice("interpolation", interpolation, INTERPOLATION)
        choice("evaluate_at", evaluate_at, ("midpoints", "nodes"))
        if quadrature is not None and not isinstance(quadrature, str):
            raise ArgumentError(f"quadrature must be a rule name such as 'gauss4', got {quadrature!r}")
        length_points = integer("length_points", length_points, 1)
        with as_argument_errors():
            super().__init__(_field(self, score, shape), lam, normalize, evaluate_at, interpolation, quadrature,
                             length_points)

    def energy(self, path: torch.Tensor, detach_score: bool = False) -> torch.Tensor:
        """Curve energy (P,) of paths (P, N, *shape); differentiable in the path through the
        score unless ``detach_score``."""
        return super().energy(self._flat(path, "path", 2), detach_score)

    def length(self, path: torch.Tensor, points: int | None = None, per_segment: bool = False) -> torch.Tensor:
        """Continuous g-length (P,) of the curves through the nodes of paths (P, N, *shape),
        int_0^1 sqrt(g(y', y')) dt, ``points`` (default ``length_points``) Gauss-Legendre
        points per segment; ``per_segment``: (P, N - 1)."""
        return super().length(self._flat(path, "path", 2), points, per_segment)

    def norm_sq(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """g_x(v, v) = |v|^2 + lam (u(x).v)^2 for points and vectors (..., *shape) -> (...)."""
        return super().norm_sq(self._flat(x, "x", 0), self._flat(v, "v", 0))


class Pullback(_Shaped, PullbackMetric):
    """g(x) = alpha I + lam J(x)^T J(x), J = ds/dx (no D x D matrix is formed: J v is a
    Jacobian-vector product by double backward).

    Args:
        score: the score s(x), a differentiable callable on batches (B, *shape).
        alpha: weight of the Euclidean part (> 0).
        lam: weight of |J v|^2 (>= 0); J ~ 1/sigma^2 near a manifold, so small values suffice.
        shape: the shape of one point; None: flat vectors.

    ``energy(path)`` = N/2 sum_i (alpha |v_i|^2 + lam |J(midpoint_i) v_i|^2) over the
    polygon's N segments v_i. No geodesic equation: its geodesics cannot be extrapolated.
    """

    def __init__(self, score: Callable, alpha: float = 1.0, lam: float = 1.0, *,
                 shape: Sequence[int] | None = None):
        alpha = number("alpha", alpha, positive=True)
        lam = number("lam", lam, minimum=0)
        with as_argument_errors():
            super().__init__(_field(self, score, shape), alpha, lam)

    def energy(self, path: torch.Tensor) -> torch.Tensor:
        """Curve energy (P,) of paths (P, N, *shape)."""
        return super().energy(self._flat(path, "path", 2))

    def length(self, path: torch.Tensor, points: int = 8) -> torch.Tensor:
        """g-length (P,) of the polygon through the nodes of paths (P, N, *shape), ``points``
        midpoint-rule points per segment."""
        return super().length(self._flat(path, "path", 2), integer("points", points, 1))

    def norm_sq(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """g_x(v, v) = alpha |v|^2 + lam |J(x) v|^2 for points and vectors (..., *shape) -> (...)."""
        x, v = self._flat(x, "x", 0), self._flat(v, "v", 0)
        if x.shape != v.shape:
            raise ArgumentError(f"v has shape {tuple(v.shape)} but x has {tuple(x.shape)}")
        return super().norm_sq(x, v)


class Conformal(_Shaped, ConformalMetric):
    """g(x) = (p(x) / p(x_ref))^(-beta) I, with log p(x) - log p(x_ref) integrated from the
    score (trapezoid rule along a path; a constant factor does not change geodesics).

    Args:
        score: the score s(x), a callable on batches (B, *shape).
        beta: the exponent (>= 0; 0 is Euclidean, 1 is G_{1/p}).
        shape: the shape of one point; None: flat vectors.

    ``energy(path)`` = N/2 sum_i 1/2 (w_i + w_{i+1}) |v_i|^2, w_k = exp(-beta (log p(x_k) -
    log p(x_0))), x_0 the path's first node.
    """

    def __init__(self, score: Callable, beta: float = 1.0, *, shape: Sequence[int] | None = None):
        beta = number("beta", beta, minimum=0)
        with as_argument_errors():
            super().__init__(_field(self, score, shape), beta)

    def energy(self, path: torch.Tensor) -> torch.Tensor:
        """Curve energy (P,) of paths (P, N, *shape), relative to the density at each path's start."""
        return super().energy(self._flat(path, "path", 2))

    def length(self, path: torch.Tensor) -> torch.Tensor:
        """g-length (P,) of the polygon through the nodes of paths (P, N, *shape), relative
        to the density at each path's start."""
        return super().length(self._flat(path, "path", 2))

    def norm_sq(self, x: torch.Tensor, v: torch.Tensor, reference: torch.Tensor | None = None,
                points: int = 8) -> torch.Tensor:
        """g_x(v, v) = (p(x) / p(reference))^(-beta) |v|^2 for points, vectors and reference
        points (..., *shape) -> (...). The metric is defined up to the density at a reference
        point: log p(x) - log p(reference) is the integral of s . dx along the segment from
        reference to x (``points``-point Gauss-Legendre; one batched score evaluation)."""
        import numpy as np

        if reference is None:
            raise ArgumentError("reference is required: the conformal metric is defined relative to the "
                                "density at a reference point (e.g. a path's start)")
        x, v, ref = self._flat(x, "x", 0), self._flat(v, "v", 0), self._flat(reference, "reference", 0)
        if x.shape != v.shape or x.shape != ref.shape:
            raise ArgumentError(f"x, v and reference must have one shape, got {tuple(x.shape)}, "
                                f"{tuple(v.shape)} and {tuple(ref.shape)}")
        nodes, weights = np.polynomial.legendre.leggauss(integer("points", points, 1))
        tau = torch.as_tensor((nodes + 1) / 2, dtype=x.dtype, device=x.device)
        w = torch.as_tensor(weights / 2, dtype=x.dtype, device=x.device)
        delta = x - ref
        pts = ref[..., None, :] + tau[:, None] * delta[..., None, :]
        s = self.score(pts.reshape(-1, x.shape[-1])).reshape(pts.shape)
        log_ratio = ((s * delta[..., None, :]).sum(-1) * w).sum(-1)
        return torch.exp(-self.beta * log_ratio) * (v * v).sum(-1)


class Euclidean(_Shaped, EuclideanMetric):
    """g = I: energy N/2 sum_i |v_i|^2, length sum_i |v_i|, norm_sq |v|^2.

    Args:
        score: optional; with one, its cost counters are kept as for every metric.
        shape: the shape of one point; None: flat vectors.
    """

    def __init__(self, score: Callable | None = None, *, shape: Sequence[int] | None = None):
        if score is None:
            self.shape = _shape(shape)
            field = score_types()[1]()
            field.dim = prod(self.shape) if self.shape is not None else 0
        else:
            field = _field(self, score, shape)
        super().__init__(field)

    def energy(self, path: torch.Tensor) -> torch.Tensor:
        """Curve energy (P,) of paths (P, N, *shape)."""
        return super().energy(self._flat(path, "path", 2))

    def length(self, path: torch.Tensor) -> torch.Tensor:
        """Length (P,) of the polygon through the nodes of paths (P, N, *shape)."""
        return super().length(self._flat(path, "path", 2))

    def norm_sq(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """|v|^2 for vectors (..., *shape) -> (...)."""
        self._flat(x, "x", 0)
        return super().norm_sq(x, self._flat(v, "v", 0))
