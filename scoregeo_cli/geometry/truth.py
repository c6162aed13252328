"""The exact geodesic of the Stein metric g = I + lam u u^T on a smoothed sphere, computed
independently of scoregeo's solvers (numpy, SciPy's ``solve_bvp`` and ``solve_ivp``, the
score and its Jacobian in closed form).

For the uniform measure on a sphere S^d (radius r, centre c, subspace V = span Q) smoothed
by N(0, sigma^2 I), every reflection that fixes the 2-plane through c, a, b and maps V to
itself is an isometry of g; so is every rotation of the directions orthogonal to V. A
geodesic from a therefore stays in span(e1, e2, e3, w): e1, e2 the plane of a and b, e3 a
third direction of V (d >= 2), w a direction orthogonal to V (D > d + 1). In those
coordinates z = (p1, p2, p3, q) the score is s = -z / sigma^2 + h(rho) (p1, p2, p3, 0),
rho = |(p1, p2, p3)|, h = r R_nu(r rho / sigma^2) / (rho sigma^2), R_nu = I_{nu+1}/I_nu,
nu = (d - 1)/2, and the geodesic equation is (science.md section 3)

    (I + lam u u^T) z'' = -lam (z'^T J_u z') u + lam (u.z') (J_u^T - J_u) z',

u = s (``normalize="none"``) or s/|s| (``"unit"``), J_u its Jacobian, here in closed form.
The boundary-value problem z(0) = a, z(1) = b is solved from several starts: the great
circle (the in-plane branch, a critical point by symmetry) and the great circle dipped
inwards and bent towards e3 or w (branches that break the symmetry; with codimension > 1 the bent-towards-w
branch is the shorter). ``MetricGeodesic`` keeps the shortest solution; its parameter t is
proportional to g-arc length (t in [0, 1] from a to b), and it continues past b by
integrating the same equation.

Tolerances: ``solve_bvp`` at tol 1e-7 and the continuation (DOP853) at rtol 1e-10 agree with
solutions at tol 1e-8 and rtol 1e-12 to within 2e-9 (S^2 in R^3) and 4e-8 (R^10, past b) on
eight pairs at lambda 100 and 1000: far below the smallest distances the evaluation reports
(about 5e-7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_bvp, solve_ivp
from scipy.special import ive


def _bessel_ratio(nu: float, k: np.ndarray) -> np.ndarray:
    """I_{nu+1}(k) / I_nu(k) for the moderate orders of low-dimensional spheres."""
    k = np.maximum(k, 1e-12)
    if nu == 0.5:  # S^2: the Langevin function coth k - 1/k
        return np.where(k < 1e-4, k / 3 - k**3 / 45, 1 / np.tanh(k) - 1 / k)
    return ive(nu + 1, k) / ive(nu, k)


_RTOL, _ATOL = 1e-10, 1e-12  # the continuation past b (see the tolerances above)


class ReducedSphereMetric:
    """g = I + lam u u^T on the reduced coordinates z (m = 2..4 of them: the plane, then e3
    and w when present), with the closed-form score and Jacobian."""

    def __init__(self, radius: float, sigma: float, nu: float, lam: float, normalize: str, dims: int):
        self.r, self.var, self.nu, self.lam = radius, sigma**2, nu, lam
        self.normalize, self.m = normalize, dims
        self.in_v = np.array([1.0, 1.0, 1.0, 0.0][:dims]) if dims == 4 else np.ones(dims)

    def key(self) -> tuple:
        """What defines the equation: metrics with equal keys share one right-hand side."""
        return (self.r, self.var, self.nu, self.lam, self.normalize, self.m, tuple(self.in_v))

    def with_w(self, has_w: bool):
        """Mark the last coordinate as the direction orthogonal to V."""
        self.in_v = np.ones(self.m)
        if has_w:
            self.in_v[-1] = 0.0
        return self

    def field(self, z: np.ndarray, v: np.ndarray | None = None):
        """u at points z (m, n); with directions v (m, n) also J_u v and J_u^T v (m, n)."""
        with np.errstate(all="ignore"):  # trial meshes of solve_bvp may pass through the centre
            return self._field(z, v)

    def _field(self, z: np.ndarray, v: np.ndarray | None):
        # s = -z / var + h(rho) pv with pv the part of z in V: its Jacobian
        # J = -I / var + h diag(in_v) + (h'(rho) / rho) pv pv^T is symmetric and is only
        # applied to vectors, never formed
        pv = z * self.in_v[:, None]
        rho = np.maximum(np.sqrt((pv * pv).sum(0)), 1e-300)
        kappa = self.r * rho / self.var
        ratio = _bessel_ratio(self.nu, kappa)
        h = self.r * ratio / (rho * self.var)
        s = -z / self.var + h * pv
        if v is None:
            return s / np.sqrt((s * s).sum(0)) if self.normalize == "unit" else s
        dratio = 1 - ratio**2 - (2 * self.nu + 1) * ratio / np.maximum(kappa, 1e-300)
        dh_rho = self.r / self.var * (dratio * self.r / self.var / rho - ratio / rho**2) / rho

        def jac(w):
            return -w / self.var + h * self.in_v[:, None] * w + dh_rho * pv * (pv * w).sum(0)

        if self.normalize == "unit":  # u = s/|s|: J_u = P J / |s| with P = I - u u^T
            norm = np.sqrt((s * s).sum(0))
            u = s / norm
            jv = jac(v)
            return u, (jv - u * (u * jv).sum(0)) / norm, jac(v - u * (u * v).sum(0)) / norm
        jv = jac(v)
        return s, jv, jv

    def rhs(self, t, y):
        if y.ndim == 1:
            return self.rhs(t, y[:, None])[:, 0]
        m = self.m
        z, zd = y[:m], y[m:]
        u, jzd, jtzd = self.field(z, zd)
        ud = (u * zd).sum(0)
        rhs = -self.lam * (zd * jzd).sum(0) * u + self.lam * ud * (jtzd - jzd)
        acc = rhs - self.lam * u * (u * rhs).sum(0) / (1 + self.lam * (u * u).sum(0))
        return np.concatenate([zd, acc])

    def rhs_jacobian(self, t, y):
        """d rhs / d y at every node (n, n, M) by forward differences (``solve_bvp``'s own
        steps), the n perturbed states in one vectorised call of ``rhs``."""
        n, nodes = y.shape
        h = np.finfo(float).eps ** 0.5 * (1 + np.abs(y))  # (n, M)
        moved = y[None] + np.eye(n)[:, :, None] * h[None]  # (j, n, M): row j of y moved by h_j
        f = self.rhs(t, np.concatenate([y, moved.transpose(1, 0, 2).reshape(n, n * nodes)], axis=1))
        f0, f = f[:, :nodes], f[:, nodes:].reshape(n, n, nodes)
        return (f - f0[:, None]) / h[None]

    def speed(self, z, zd) -> np.ndarray:
        u = self.field(z)
        return np.sqrt((zd * zd).sum(0) + self.lam * (u * zd).sum(0) ** 2)


@dataclass
class MetricGeodesic:
    """The geodesic of g from a (t = 0) to b (t = 1), continued past b, in R^D.

    ``at(t)``: points (len(t), D). ``velocity(t)``: dx/dt. ``length``: g-length from a to b.
    ``branch``: which start the shortest solution came from. ``lengths``: every branch found.
    """

    frame: np.ndarray      # (m, D) orthonormal rows e1, e2, [e3], [w]
    centre: np.ndarray
    bvp: object
    reduced: ReducedSphereMetric
    length: float
    branch: str
    lengths: dict
    _continued: object = None

    def _state(self, t: np.ndarray) -> np.ndarray:
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        out = np.empty((2 * self.reduced.m, t.size))
        inside = t <= 1.0
        out[:, inside] = self.bvp.sol(t[inside])
        if (~inside).any():
            out[:, ~inside] = self.continuation(float(t.max())).sol(t[~inside])
        return out

    def continuation(self, until: float):
        if self._continued is None or self._continued.t[-1] < until:
            y1 = self.bvp.sol(1.0)
            self._continued = solve_ivp(self.reduced.rhs, (1.0, until), y1, method="DOP853", rtol=_RTOL,
                                        atol=_ATOL, dense_output=True)
        return self._continued

    def at(self, t) -> np.ndarray:
        z = self._state(t)[: self.reduced.m]
        return self.centre + z.T @ self.frame

    def velocity(self, t) -> np.ndarray:
        return self._state(t)[self.reduced.m:].T @ self.frame

    def invariant(self, x: np.ndarray, vectors: bool = False) -> np.ndarray:
        """Coordinates of points (n, D) unchanged by the symmetries that fix a and b:
        (p1, p2, |rest in V|, |part orthogonal to V|); of vectors with ``vectors``."""
        rel = x if vectors else x - self.centre
        p12 = rel @ self.frame[:2].T
        rest = rel - p12 @ self.frame[:2]
        v_part = rest @ self._basis @ self._basis.T
        return np.concatenate([p12, np.linalg.norm(v_part, axis=1, keepdims=True),
                               np.linalg.norm(rest - v_part, axis=1, keepdims=True)], axis=1)


class _PairRows:
    """One pair's rows of a continuation integrated for several pairs together."""

    def __init__(self, joint, index: int, pairs: int):
        self.joint, self.index, self.pairs = joint, index, pairs
        self.t = joint.t

    def sol(self, t):
        y = self.joint.sol(t)
        return y.reshape(-1, self.pairs, *y.shape[1:])[:, self.index]


def continue_together(geodesics, until: float) -> None:
    """Continue geodesics of one reduced metric (one run's pairs) past b up to ``until`` in a
    single integration, their states side by side: each step evaluates the vectorised
    equation once for all of them. The error control is tightened by sqrt(pairs), since
    solve_ivp measures the error as a root mean square over all components."""
    todo = [g for g in geodesics if g is not None and g is not False
            and (g._continued is None or g._continued.t[-1] < until)]
    if not todo:
        return
    reduced = todo[0].reduced
    if any(g.reduced.key() != reduced.key() for g in todo):
        raise ValueError("continue_together needs geodesics of one metric")
    n, pairs = 2 * reduced.m, len(todo)
    y1 = np.stack([g.bvp.sol(1.0) for g in todo], axis=1)  # (n, pairs)

    def rhs(t, y):
        return reduced.rhs(t, y.reshape(n, pairs)).reshape(-1)

    joint = solve_ivp(rhs, (1.0, until), y1.reshape(-1), method="DOP853", rtol=_RTOL / math.sqrt(pairs),
                      atol=_ATOL / math.sqrt(pairs), dense_output=True)
    for i, g in enumerate(todo):
        g._continued = _PairRows(joint, i, pairs)


def sphere_metric_geodesic(basis, centre, radius: float, sigma: float, lam: float, normalize: str,
                           a, b, tol: float = 1e-7, bend: float = 0.02) -> MetricGeodesic:
    """The shortest geodesic of g between a and b (points of the sphere), see the module.

    basis: (D, d+1) orthonormal columns of V; centre: (D,). Arrays or tensors.
    """
    q = np.asarray(basis, dtype=np.float64)
    c = np.asarray(centre, dtype=np.float64)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    dim_d, ambient = q.shape[1] - 1, q.shape[0]
    e1 = (a - c) / np.linalg.norm(a - c)
    rb = b - c
    e2 = rb - (rb @ e1) * e1
    e2 /= np.linalg.norm(e2)
    theta = math.atan2(rb @ e2, rb @ e1)
    frame = [e1, e2]
    names = ["in-plane"]
    if dim_d >= 2:  # a third direction of V
        rest = q - np.outer(e1, e1 @ q) - np.outer(e2, e2 @ q)
        e3 = rest[:, np.argmax(np.linalg.norm(rest, axis=0))]
        frame.append(e3 / np.linalg.norm(e3))
        names.append("bent within V")
    has_w = ambient > dim_d + 1
    if has_w:
        w = np.zeros(ambient)
        w[np.argmin(np.linalg.norm(q, axis=1))] = 1.0  # least inside V, then orthogonalised
        w = w - q @ (q.T @ w)
        frame.append(w / np.linalg.norm(w))
        names.append("bent out of V")
    frame = np.stack(frame)
    m = frame.shape[0]
    reduced = ReducedSphereMetric(radius, sigma, (dim_d - 1) / 2, lam, normalize, m).with_w(has_w)

    t = np.linspace(0, 1, 129)
    z_end = radius * np.array([math.cos(theta), math.sin(theta)] + [0.0] * (m - 2))
    z_start = np.array([radius] + [0.0] * (m - 1))

    def bc(ya, yb):
        return np.concatenate([ya[:m] - z_start, yb[:m] - z_end])

    # starts: the great circle; bent towards e3 / w by a sine bump; or dipped to a plateau
    # 2 sigma^2 inside (near the density's ridge) with excursions towards e3 / w of sigma^2
    # near both ends (the shape of the shortest paths found in R^10 by Gauss-Newton)
    var = sigma**2
    starts = [(0, "circle", 0.0)] + [(k, "bump" if names[k] == "bent within V" else "plateau", 0.0)
                                     for k in range(1, len(names))]
    best, lengths = None, {}
    for k, shape, _ in starts:
        name = names[k]
        guess = np.zeros((m, t.size))
        rad = np.full_like(t, radius)
        if shape == "bump":
            guess[k + 1] = bend * np.sin(math.pi * t)
        elif shape == "plateau":
            edge = np.minimum(np.minimum(t, 1 - t) / 0.2, 1.0)
            rad = radius - 2 * var * np.sin(math.pi / 2 * edge)
            guess[k + 1] = var * np.sin(math.pi * edge) * (edge < 1)
        guess[0], guess[1] = rad * np.cos(theta * t), rad * np.sin(theta * t)
        guess = np.concatenate([guess, np.gradient(guess, t, axis=1)])
        sol = solve_bvp(reduced.rhs, bc, t, guess, fun_jac=reduced.rhs_jacobian, tol=tol, max_nodes=5000)
        if sol.status != 0:  # continuation in lam from a nearly flat metric
            lam_full = reduced.lam
            for factor in (1e-3, 1e-2, 1e-1, 0.3, 1.0):
                reduced.lam = lam_full * factor
                sol = solve_bvp(reduced.rhs, bc, t, guess, fun_jac=reduced.rhs_jacobian, tol=tol,
                                max_nodes=5000)
                if sol.status != 0:
                    break
                t, guess = sol.x, sol.y
            reduced.lam = lam_full
            t = np.linspace(0, 1, 129)
        if sol.status != 0:
            continue
        tt = np.linspace(0, 1, 2001)
        y = sol.sol(tt)
        speed = reduced.speed(y[:m], y[m:])
        length = float(np.trapezoid(speed, tt)) if hasattr(np, "trapezoid") else float(np.trapz(speed, tt))
        off = float(np.abs(y[2:m]).max()) if m > 2 else 0.0
        label = name if (k == 0 or off > 1e-6) else "in-plane"
        lengths[label] = min(length, lengths.get(label, np.inf))
        if best is None or length < best[0] - 1e-12:
            best = (length, sol, label)
    if best is None:
        raise RuntimeError("solve_bvp found no geodesic of the metric between the endpoints")
    geo = MetricGeodesic(frame, c, best[1], reduced, best[0], best[2], lengths)
    geo._basis = q
    return geo


def manifold_metric_geodesic(manifold, metric, a, b) -> MetricGeodesic | None:
    """The metric's exact geodesic between a and b on a ``Sphere`` or a uniform circle
    (``PlaneCurve`` with equal semi-axes), for a Stein metric (``lam``, ``normalize``) whose
    score has a ``sigma``; None where no closed form applies."""
    lam, normalize = getattr(metric, "lam", None), getattr(metric, "normalize", None)
    sigma = getattr(getattr(metric, "score", None), "sigma", None)
    if lam is None or normalize is None or sigma is None:
        return None
    if hasattr(manifold, "radius") and hasattr(manifold, "basis"):
        radius = manifold.radius
    elif getattr(manifold, "semi_axes", (1, 2))[0] == getattr(manifold, "semi_axes", (1, 2))[1] \
            and getattr(manifold, "density", None) == "uniform":
        radius = manifold.semi_axes[0]
    else:
        return None
    return sphere_metric_geodesic(manifold.basis, manifold.centre, radius, sigma, lam, normalize, a, b)
