"""Synthetic manifolds with known geodesics: embedded spheres, circles and ellipses.

Every manifold is a subset of R^D with

* ``sample(n, generator)``: points drawn from its density, (n, D);
* ``pairs(n, generator)``: endpoint pairs (a, b), each (n, D), at the configured separation;
* ``geodesic(a, b, m)``: m points along the true minimising geodesic from a to b, (m, D);
* ``continuation(a, b, extra, m)``: the true geodesic extended beyond b, (m, D);
* ``distance(x)``: Euclidean distance of points (..., D) to the manifold;
* ``exact_score(sigma)``: the closed-form score of its smoothed density, or None.
"""

from __future__ import annotations

import math

import torch

from scoregeo_cli.scores.analytic import SphereScore


def random_basis(ambient_dim: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """A (D, k) matrix with orthonormal columns, uniformly random (QR of a Gaussian)."""
    gauss = torch.randn(ambient_dim, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    return q * torch.sign(torch.diagonal(r))


def random_direction(dim: int, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return v / v.norm()


def polyline_project(points: torch.Tensor, polyline: torch.Tensor) -> torch.Tensor:
    """Nearest point of a polyline (K, D) to each point (M, D) -> (M, D).

    Exact, without projecting every point on every segment: a segment of length L whose
    endpoints lie at d0 and d1 from x has no point nearer to x than min(d0, d1) - L/2, so
    only segments with that bound below x's distance to its nearest vertex are candidates
    (a few per point for a densely sampled curve)."""
    start, seg = polyline[:-1], polyline[1:] - polyline[:-1]  # (K-1, D)
    to_vertex = torch.cdist(points, polyline, compute_mode="donot_use_mm_for_euclid_dist")  # (M, K)
    bound = torch.minimum(to_vertex[:, :-1], to_vertex[:, 1:]) - seg.norm(dim=-1) / 2
    nearest_vertex = to_vertex.min(dim=1).values
    slack = 1e-9 * (1 + nearest_vertex)  # rounding of the bound
    m, k = torch.nonzero(bound <= (nearest_vertex + slack)[:, None], as_tuple=True)
    rel = points[m] - start[k]
    t = ((rel * seg[k]).sum(-1) / (seg[k] * seg[k]).sum(-1).clamp_min(1e-300)).clamp(0, 1)
    foot = start[k] + t[:, None] * seg[k]  # (C, D): feet on the candidate segments
    dist = (points[m] - foot).norm(dim=-1)
    best = torch.full((points.shape[0],), float("inf"), dtype=dist.dtype).scatter_reduce(0, m, dist, "amin")
    tied = torch.nonzero(dist == best[m], as_tuple=True)[0]
    first = torch.full_like(best, len(m), dtype=torch.long).scatter_reduce(0, m[tied], tied, "amin")
    foot = torch.cat([foot, torch.full_like(points[:1], float("nan"))])  # a NaN point has no candidate
    return foot[first]  # ties: the first segment, as a full search's argmin


def polyline_distance(points: torch.Tensor, polyline: torch.Tensor) -> torch.Tensor:
    """Distance of each point (M, D) to the nearest point of a polyline (K, D) -> (M,)."""
    return (points - polyline_project(points, polyline)).norm(dim=-1)


class Sphere:
    """A sphere S^d of radius r in a random (d+1)-dimensional subspace of R^D, uniform density.

    The centre sits at distance ``centre_offset`` from the origin in a random direction, so
    that spherical interpolation about the origin is not the answer.
    """

    def __init__(self, intrinsic_dim: int, ambient_dim: int, radius: float = 1.0,
                 centre_offset: float = 0.0, angle_range: tuple[float, float] = (60.0, 150.0),
                 seed: int = 0):
        self.intrinsic_dim = int(intrinsic_dim)
        self.ambient_dim = int(ambient_dim)
        self.radius = float(radius)
        self.angle_range = tuple(float(a) for a in angle_range)
        g = torch.Generator().manual_seed(seed)
        self.basis = random_basis(self.ambient_dim, self.intrinsic_dim + 1, g)
        self.centre = centre_offset * random_direction(self.ambient_dim, g)

    # coordinates z on the unit sphere of R^{d+1}  <->  points x = c + r Q z
    def _embed(self, z: torch.Tensor) -> torch.Tensor:
        return self.centre + self.radius * z @ self.basis.T

    def _coords(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.centre) @ self.basis
        return z / z.norm(dim=-1, keepdim=True)

    def exact_score(self, sigma: float, chunk_size: int | None = None) -> SphereScore:
        return SphereScore(self.basis, self.centre, self.radius, sigma, chunk_size)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.intrinsic_dim + 1, generator=generator, dtype=torch.float64)
        return self._embed(z / z.norm(dim=-1, keepdim=True))

    def pairs(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        za = self._coords(self.sample(n, generator))
        w = torch.randn(n, self.intrinsic_dim + 1, generator=generator, dtype=torch.float64)
        w = w - (w * za).sum(-1, keepdim=True) * za
        w = w / w.norm(dim=-1, keepdim=True)
        lo, hi = self.angle_range
        theta = torch.deg2rad(lo + (hi - lo) * torch.rand(n, 1, generator=generator, dtype=torch.float64))
        zb = torch.cos(theta) * za + torch.sin(theta) * w
        return self._embed(za), self._embed(zb)

    def _arc(self, a: torch.Tensor, b: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
        """Points of the great circle through a, b at angles fractions * angle(a, b) from a."""
        za, zb = self._coords(a[None])[0], self._coords(b[None])[0]
        omega = torch.arccos((za @ zb).clamp(-1, 1))
        tangent = zb - (za @ zb) * za
        tangent = tangent / tangent.norm()
        angles = fractions[:, None] * omega
        return self._embed(torch.cos(angles) * za + torch.sin(angles) * tangent)

    def geodesic(self, a: torch.Tensor, b: torch.Tensor, m: int = 2049) -> torch.Tensor:
        return self._arc(a, b, torch.linspace(0, 1, m, dtype=torch.float64))

    def continuation(self, a: torch.Tensor, b: torch.Tensor, extra: float, m: int = 2049) -> torch.Tensor:
        """The great circle beyond b, for ``extra`` times the angle from a to b."""
        return self._arc(a, b, torch.linspace(1, 1 + extra, m, dtype=torch.float64))

    def geodesic_length(self, a: torch.Tensor, b: torch.Tensor) -> float:
        za, zb = self._coords(a[None])[0], self._coords(b[None])[0]
        return float(self.radius * torch.arccos((za @ zb).clamp(-1, 1)))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest point of the sphere to each x (..., D)."""
        return self._embed(self._coords(x))

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.project(x)).norm(dim=-1)

    def draw_coords(self, x: torch.Tensor) -> torch.Tensor:
        """Coordinates (..., d+1) of points in the sphere's own subspace, for figures."""
        return (x - self.centre) @ self.basis


class PlaneCurve:
    """An ellipse x = c + Q (a cos phi, b sin phi) in a random plane of R^D.

    ``density`` on the angle phi: ``uniform`` or ``von_mises`` (mean ``mu``, concentration
    ``concentration``). A circle is the ellipse with a = b. The true geodesic between two
    points is the shorter of the two arcs between them (by arc length).
    """

    def __init__(self, semi_axes: tuple[float, float] = (1.0, 1.0), ambient_dim: int = 2,
                 centre_offset: float = 0.0, density: str = "uniform", mu: float = 0.0,
                 concentration: float = 2.0, angle_range: tuple[float, float] = (60.0, 150.0),
                 seed: int = 0, resolution: int = 8192):
        self.intrinsic_dim = 1
        self.ambient_dim = int(ambient_dim)
        self.semi_axes = tuple(float(s) for s in semi_axes)
        self.density = density
        self.mu = float(mu)
        self.concentration = float(concentration)
        self.angle_range = tuple(float(a) for a in angle_range)
        g = torch.Generator().manual_seed(seed)
        self.basis = random_basis(self.ambient_dim, 2, g) if self.ambient_dim > 2 else torch.eye(2, dtype=torch.float64)
        self.centre = centre_offset * random_direction(self.ambient_dim, g)
        phi = torch.linspace(0, 2 * math.pi, resolution + 1, dtype=torch.float64)
        self._dense = self.embed(phi)  # closed polyline, for distances and arc lengths

    def embed(self, phi: torch.Tensor) -> torch.Tensor:
        a, b = self.semi_axes
        plane = torch.stack([a * torch.cos(phi), b * torch.sin(phi)], dim=-1)
        return self.centre + plane @ self.basis.T

    def exact_score(self, sigma: float, chunk_size: int | None = None) -> SphereScore | None:
        """Closed form for the uniform circle (a = b, uniform density); None otherwise."""
        a, b = self.semi_axes
        if a != b or self.density != "uniform":
            return None
        return SphereScore(self.basis, self.centre, a, sigma, chunk_size)

    def quadrature(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n points evenly spaced in phi with log weights of the angle density, (n, D), (n,)."""
        phi = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
        log_w = torch.zeros_like(phi) if self.density == "uniform" else self.concentration * torch.cos(phi - self.mu)
        return self.embed(phi), log_w

    def _angle(self, x: torch.Tensor) -> torch.Tensor:
        """The parameter phi of the point of the curve nearest to x: a dense search, then
        Newton steps on d/dphi |embed(phi) - x|^2 = 0 in the curve's plane."""
        flat = x.reshape(-1, self.ambient_dim)
        idx = torch.cdist(flat, self._dense[:-1]).argmin(dim=-1)
        phi = 2 * math.pi * idx.double() / (self._dense.shape[0] - 1)
        p = (flat - self.centre) @ self.basis  # (M, 2) plane coordinates
        a, b = self.semi_axes
        for _ in range(6):
            e = torch.stack([a * phi.cos(), b * phi.sin()], -1)
            de = torch.stack([-a * phi.sin(), b * phi.cos()], -1)
            dde = -e
            grad = ((e - p) * de).sum(-1)
            hess = (de * de).sum(-1) + ((e - p) * dde).sum(-1)
            phi = phi - torch.where(hess > 0, grad / hess.clamp_min(1e-12), torch.zeros_like(grad))
        return (phi % (2 * math.pi)).reshape(x.shape[:-1])

    def _sample_angles(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.density == "uniform":
            return 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        # von Mises by inverse CDF on a fine grid (exact up to the grid spacing)
        grid = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)
        pdf = torch.exp(self.concentration * torch.cos(grid - self.mu))
        cdf = torch.cumsum(pdf, 0)
        cdf = cdf / cdf[-1]
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return grid[torch.searchsorted(cdf, u).clamp(max=grid.numel() - 1)]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.embed(self._sample_angles(n, generator))

    def pairs(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        phi_a = self._sample_angles(n, generator)
        lo, hi = self.angle_range
        delta = torch.deg2rad(lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64))
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
        return self.embed(phi_a), self.embed(phi_a + sign * delta)

    def _arc_angles(self, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        """Start angle and signed angular extent of the shorter arc from a to b."""
        pa, pb = float(self._angle(a)), float(self._angle(b))
        forward = (pb - pa) % (2 * math.pi)
        backward = forward - 2 * math.pi
        len_f = self._arc_length(pa, forward)
        len_b = self._arc_length(pa, backward)
        return pa, (forward if len_f <= len_b else backward)

    def _arc_length(self, start: float, extent: float, m: int = 4097) -> float:
        pts = self.embed(start + extent * torch.linspace(0, 1, m, dtype=torch.float64))
        return float((pts[1:] - pts[:-1]).norm(dim=-1).sum())

    def geodesic(self, a: torch.Tensor, b: torch.Tensor, m: int = 2049) -> torch.Tensor:
        start, extent = self._arc_angles(a, b)
        return self.embed(start + extent * torch.linspace(0, 1, m, dtype=torch.float64))

    def continuation(self, a: torch.Tensor, b: torch.Tensor, extra: float, m: int = 2049) -> torch.Tensor:
        """The curve beyond b, for ``extra`` times the angular extent from a to b."""
        start, extent = self._arc_angles(a, b)
        return self.embed(start + extent * torch.linspace(1, 1 + extra, m, dtype=torch.float64))

    def geodesic_length(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return self._arc_length(*self._arc_angles(a, b))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest point of the curve to each x (..., D) (dense search + Newton, see _angle)."""
        return self.embed(self._angle(x))

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.project(x)).norm(dim=-1)

    def draw_coords(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.centre) @ self.basis
