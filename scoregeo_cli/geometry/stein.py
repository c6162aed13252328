"""The score-based Riemannian metric g(x) = I + lambda u(x) u(x)^T and its curve energy.

u(x) is the score s(x), or s(x)/|s(x)| with ``normalize="unit"``. A discrete curve has
nodes x_0..x_N (shape (P, N+1, D) for P curves at once) and segments v_i = x_{i+1} - x_i;
its energy is

    E = N/2 * sum_i ( |v_i|^2 + |U_i v_i|^2 ),

where the rows of U_i carry the metric on segment i:
  * ``evaluate_at="midpoints"``: U_i = sqrt(lambda) u((x_i + x_{i+1})/2)      (one row),
  * ``evaluate_at="nodes"``:     U_i = sqrt(lambda/2) [u(x_i); u(x_{i+1})]     (trapezoid).
The factor N/2 makes a straight line in the flat metric cost |x_N - x_0|^2 / 2 whatever N.

That is the polygon through the nodes with one rule per segment. In general the nodes
define a curve y(t), t in [0, 1], x_j = y(j/N), and the energy is a quadrature of the
continuous one, E = 1/2 int_0^1 g(y, y')(y', y') dt ~ 1/2 sum_k w_k (|y'_k|^2 + lam (u(y_k).y'_k)^2):
  * ``interpolation``: "linear" (the polygon) or "cubic" (the not-a-knot cubic spline
    through the nodes at t_j = j/N); both are linear in the nodes, y_k = sum_j phi_kj x_j,
    y'_k = sum_j phi'_kj x_j (``CurveModel``);
  * ``quadrature``: the rule on every segment: "midpoint", "trapezoid", "simpson" or
    "gauss<k>" (k-point Gauss-Legendre); None takes it from ``evaluate_at``.
A polygon does not resolve g = I + lam s s^T when lam |s|^2 is large: on the smoothed sphere
(sigma 0.15, lam 1000) the chord of each of 16 segments already moves along s, so even
nodes exactly on the geodesic give a polygon 35% longer than the geodesic, and the
midpoint energy's minimiser instead parks its end segments' midpoints on the density
ridge (|s| ~ 0) for a continuous g-length twice the geodesic's. The cubic spline through
the same 16 nodes is within 1e-5 of the geodesic's length. ``length(path)`` is the
continuous g-length of the curve through the nodes (dense composite Gauss-Legendre,
quadrature-independent), the quantity to compare discretisations by.
"""

from __future__ import annotations

import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.geometry.base import INTERPOLATION, CurveModel, Metric, curve_model, quadrature_rule
from scoregeo_cli.scores.base import ScoreField

NORMALIZE = ("none", "unit")
EVALUATE_AT = ("midpoints", "nodes")


class Evaluation:
    """The metric on a batch of paths at its quadrature points, the score's graph kept.

    energy: (P,). ``linearize()`` returns, with one batched vector-Jacobian product
    through the score, the residuals r_k = sqrt(lam w_k) u(y_k).y'_k (P, K), the directions
    u_k (P, K, D) and g_k = J(y_k)^T y'_k (P, K, D), J = du/dy: then
        dr_k = sqrt(lam w_k) sum_j (phi'_kj u_k + phi_kj g_k) . dx_j.
    """

    def __init__(self, path: torch.Tensor, model: CurveModel, points: torch.Tensor, u: torch.Tensor,
                 lam: float):
        self.path, self.model, self._points, self._u, self.lam = path, model, points, u, lam
        phi, dphi, w = model.tensors(path)
        self.velocity = torch.einsum("kj,pjd->pkd", dphi, path)
        ud = (u.detach() * self.velocity).sum(-1)
        self.r = (lam * w) ** 0.5 * ud
        self.energy = 0.5 * (w * (self.velocity * self.velocity).sum(-1)).sum(-1) + 0.5 * (self.r**2).sum(-1)

    def linearize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (jt_v,) = torch.autograd.grad(self._u, self._points, grad_outputs=self.velocity)
        return self.r, self._u.detach(), jt_v


class SteinMetric(Metric):
    """g(x) = I + lam u(x) u(x)^T on R^D, built on a score field.

    Args:
        score: the score field s(x).
        lam: lambda >= 0, the weight of the score direction.
        normalize: "none" (u = s) or "unit" (u = s / |s|).
        evaluate_at: "midpoints" or "nodes" (see module docstring).
        interpolation: "linear" (the polygon through the nodes) or "cubic" (not-a-knot spline).
        quadrature: the rule on every segment ("midpoint", "trapezoid", "simpson",
            "gauss<k>"); None: "midpoint" or "trapezoid" after ``evaluate_at``.
        length_points: points per segment of ``length`` (composite 4-point Gauss-Legendre).
    """

    def __init__(self, score: ScoreField, lam: float = 1000.0, normalize: str = "none",
                 evaluate_at: str = "midpoints", interpolation: str = "linear",
                 quadrature: str | None = None, length_points: int = 64):
        if lam < 0:
            raise ScoregeoError(f"metric.lam must be >= 0, got {lam}")
        if normalize not in NORMALIZE:
            raise ScoregeoError(f"metric.normalize must be one of {NORMALIZE}, got '{normalize}'")
        if evaluate_at not in EVALUATE_AT:
            raise ScoregeoError(f"metric.evaluate_at must be one of {EVALUATE_AT}, got '{evaluate_at}'")
        if interpolation not in INTERPOLATION:
            raise ScoregeoError(f"metric.interpolation must be one of {INTERPOLATION}, got '{interpolation}'")
        if quadrature is None:
            quadrature = "midpoint" if evaluate_at == "midpoints" else "trapezoid"
        quadrature_rule(str(quadrature))  # validates
        if int(length_points) < 1:
            raise ScoregeoError(f"metric.length_points must be at least 1, got {length_points}")
        self.score = score
        self.lam = float(lam)
        self.normalize = normalize
        self.evaluate_at = evaluate_at
        self.interpolation = interpolation
        self.quadrature = str(quadrature)
        self.length_points = int(length_points)

    @property
    def polygon_factors(self) -> bool:
        """True when the energy is the module's polygon formula with one or two rows per
        segment (``factors``; what the closed-form ``frozen_metric_step`` needs)."""
        return self.interpolation == "linear" and self.quadrature in ("midpoint", "trapezoid")

    def curve(self, nodes: int) -> CurveModel:
        return curve_model(int(nodes), self.interpolation, self.quadrature)

    def direction(self, x: torch.Tensor) -> torch.Tensor:
        """u(x): the score, or the unit score; (..., D) -> (..., D). One score evaluation."""
        s = self.score(x)
        if self.normalize == "unit":
            s = s / s.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        return s

    def norm_sq(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """g_x(v, v) = |v|^2 + lam (u(x).v)^2 for points and vectors (..., D) -> (...)."""
        u = self.direction(x)
        return (v * v).sum(-1) + self.lam * (u * v).sum(-1) ** 2

    def factors(self, path: torch.Tensor) -> torch.Tensor:
        """U of every segment, (P, N, k, D), with one batched score evaluation (polygon
        with the midpoint or trapezoid rule only, see ``polygon_factors``)."""
        if not self.polygon_factors:
            raise ScoregeoError("segment factors exist for metric.interpolation=linear with the "
                                "midpoint or trapezoid rule only")
        if self.quadrature == "midpoint":
            u = self.direction(0.5 * (path[:, 1:] + path[:, :-1]))
            return (self.lam**0.5) * u[:, :, None, :]
        u = self.direction(path)
        return (self.lam / 2) ** 0.5 * torch.stack([u[:, :-1], u[:, 1:]], dim=2)

    @staticmethod
    def energy_from_factors(path: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Curve energy (P,) of paths (P, N+1, D) given segment factors (P, N, k, D)."""
        v = path[:, 1:] - path[:, :-1]
        n = v.shape[1]
        quad = (v * v).sum(-1) + (torch.einsum("pnkd,pnd->pnk", factors, v) ** 2).sum(-1)
        return 0.5 * n * quad.sum(-1)

    def energy(self, path: torch.Tensor, detach_score: bool = False) -> torch.Tensor:
        """Curve energy (P,) of paths (P, N+1, D); differentiable through the score unless
        ``detach_score`` (then the scores are constants, as in a frozen-metric step)."""
        kinetic, score_part = self.energy_terms(path, detach_score)
        return kinetic + self.lam * score_part

    def energy_terms(self, path: torch.Tensor, detach_score: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The energy's parts (P,) each: energy = kinetic + lam * score part, with the kinetic
        part 1/2 int |x'|^2 dt and the score part 1/2 int (u.x')^2 dt under the curve model.
        Neither depends on lam, so a path's energy for any lam needs one score evaluation."""
        grad = torch.is_grad_enabled() and not detach_score
        if self.polygon_factors:  # the polygon: one (midpoint) or two (trapezoid) rows per segment
            v = path[:, 1:] - path[:, :-1]
            n = v.shape[1]
            with torch.set_grad_enabled(grad):
                if self.quadrature == "midpoint":
                    rows = [self.direction(0.5 * (path[:, 1:] + path[:, :-1]))]
                else:
                    u = self.direction(path)
                    rows = [u[:, :-1], u[:, 1:]]
            score_part = sum(((r * v).sum(-1) ** 2).sum(-1) for r in rows) / len(rows)
            return 0.5 * n * (v * v).sum(-1).sum(-1), 0.5 * n * score_part
        phi, dphi, w = self.curve(path.shape[1]).tensors(path)
        y, yd = torch.einsum("kj,pjd->pkd", phi, path), torch.einsum("kj,pjd->pkd", dphi, path)
        with torch.set_grad_enabled(grad):
            u = self.direction(y)
        return 0.5 * (w * (yd * yd).sum(-1)).sum(-1), 0.5 * (w * (u * yd).sum(-1) ** 2).sum(-1)

    def evaluate(self, path: torch.Tensor) -> Evaluation:
        """Energy of paths (P, N+1, D) with the score's graph kept for
        ``Evaluation.linearize`` (one batched score evaluation)."""
        path = path.detach()
        model = self.curve(path.shape[1])
        phi = model.tensors(path)[0]
        with torch.enable_grad():
            points = torch.einsum("kj,pjd->pkd", phi, path).requires_grad_(True)
            u = self.direction(points)
        return Evaluation(path, model, points, u, self.lam)

    def energy_gradient(self, path: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy (P,) and its gradient (P, N-1, D) with respect to the interior nodes
        (one score evaluation and one backward pass)."""
        with torch.enable_grad():
            x = path.detach().requires_grad_(True)
            energy = self.energy(x)
            (grad,) = torch.autograd.grad(energy.sum(), x)
        return energy.detach(), grad[:, 1:-1]

    def length(self, path: torch.Tensor, points: int | None = None, per_segment: bool = False) -> torch.Tensor:
        """Continuous g-length (P,) of the curves through the nodes (P, N+1, D) (the
        metric's interpolation): int_0^1 sqrt(g(y, y')(y', y')) dt by composite 4-point
        Gauss-Legendre with ``points`` (default ``length_points``) per segment; one batched
        score evaluation of P * N * points points. ``per_segment``: (P, N), each segment's."""
        model = curve_model(path.shape[1], self.interpolation, self.quadrature,
                            int(points or self.length_points))
        phi, dphi, w = model.tensors(path)
        with torch.no_grad():
            y, yd = torch.einsum("kj,pjd->pkd", phi, path), torch.einsum("kj,pjd->pkd", dphi, path)
            u = self.direction(y)
            speed = ((yd * yd).sum(-1) + self.lam * (u * yd).sum(-1) ** 2).sqrt()
        if per_segment:
            return (w * speed).reshape(path.shape[0], path.shape[1] - 1, -1).sum(-1)
        return (w * speed).sum(-1)

    def acceleration(self, x: torch.Tensor, xdot: torch.Tensor) -> torch.Tensor:
        """x'' from the geodesic equation at points x with velocities xdot, both (B, D).

        (I + lam u u^T) x'' = -lam (xdot^T J xdot) u + lam (u.xdot) (J^T - J) xdot, with
        J = du/dx. J^T xdot is a vector-Jacobian product; J xdot comes from the derivative
        of that product with respect to its cotangent (double backward), which works for any
        differentiable score. The left side is inverted by Sherman-Morrison. One score
        evaluation.
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            u = self.direction(x)
            cot = torch.zeros_like(u, requires_grad=True)
            (jt_cot,) = torch.autograd.grad(u, x, grad_outputs=cot, create_graph=True)
            jt_v = torch.autograd.grad(u, x, grad_outputs=xdot, retain_graph=True)[0]
            (j_v,) = torch.autograd.grad(jt_cot, cot, grad_outputs=xdot)
        u = u.detach()
        lam = self.lam
        rhs = -lam * (xdot * j_v).sum(-1, keepdim=True) * u + lam * (u * xdot).sum(-1, keepdim=True) * (jt_v - j_v)
        return rhs - lam * u * (u * rhs).sum(-1, keepdim=True) / (1 + lam * (u * u).sum(-1, keepdim=True))
