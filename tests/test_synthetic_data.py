"""Ground truth of the synthetic manifolds: arcs, shorter arcs, continuations, densities."""

import math

import torch

import pytest

from scoregeo_cli.data.synthetic import PlaneCurve, Sphere, polyline_project


def _project_on_every_segment(points, polyline):
    """The nearest point of a polyline by projecting every point on every segment."""
    start, seg = polyline[:-1], polyline[1:] - polyline[:-1]
    t = (((points[:, None] - start) * seg).sum(-1) / (seg * seg).sum(-1)).clamp(0, 1)
    feet = start + t[..., None] * seg
    return feet[torch.arange(len(points)), (points[:, None] - feet).norm(dim=-1).argmin(1)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_polyline_projection_equals_a_search_over_every_segment(dtype):
    g = torch.Generator().manual_seed(0)
    arc = torch.linspace(0, 2.5, 2049, dtype=dtype)
    curves = [torch.stack([arc.cos(), arc.sin(), 0 * arc], 1),  # dense arc
              torch.randn(40, 3, generator=g, dtype=dtype),     # a tangled polyline
              torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=dtype)]  # ties
    for curve in curves:
        for scale in (1e-7, 1e-3, 0.3, 3.0):
            points = curve[torch.randint(0, len(curve), (30,), generator=g)]
            points = points + scale * torch.randn(points.shape, generator=g, dtype=dtype)
            assert torch.equal(polyline_project(points, curve), _project_on_every_segment(points, curve))
    on_vertex = torch.tensor([[1.0, 0.5, 0.0]], dtype=dtype)  # equally near both segments: the first
    assert torch.equal(polyline_project(on_vertex, curves[2]), torch.tensor([[1.0, 0, 0]], dtype=dtype))
    failed = torch.tensor([[float("nan")] * 3, [2.0, 1.0, 0.0]], dtype=dtype)  # a failed path's node: NaN
    nearest = polyline_project(failed, curves[2])
    assert nearest[0].isnan().all() and torch.equal(nearest[1], curves[2][2])


def test_sphere_pairs_lie_on_the_sphere_at_the_requested_angle():
    sphere = Sphere(3, 7, radius=2.0, centre_offset=0.5, angle_range=(70, 70), seed=1)
    a, b = sphere.pairs(5, torch.Generator().manual_seed(0))
    assert float(sphere.distance(torch.cat([a, b])).max()) < 1e-12
    ua, ub = a - sphere.centre, b - sphere.centre
    angle = torch.rad2deg(torch.arccos((ua * ub).sum(-1) / (ua.norm(dim=-1) * ub.norm(dim=-1))))
    assert torch.allclose(angle, torch.full_like(angle, 70.0))
    geo = sphere.geodesic(a[0], b[0], 101)
    assert torch.allclose(geo[0], a[0]) and torch.allclose(geo[-1], b[0])
    length = float((geo[1:] - geo[:-1]).norm(dim=-1).sum())
    assert abs(length - 2.0 * math.radians(70)) < 1e-4  # r * theta


def test_circle_geodesic_takes_the_shorter_arc_and_continues_along_it():
    circle = PlaneCurve((1.0, 1.0), ambient_dim=2, seed=0)
    a = circle.embed(torch.tensor(0.3, dtype=torch.float64))
    b = circle.embed(torch.tensor(0.3 + math.radians(200), dtype=torch.float64))  # shorter way: 160 deg back
    geo = circle.geodesic(a, b, 201)
    assert torch.allclose(geo[0], a, atol=1e-9) and torch.allclose(geo[-1], b, atol=1e-9)
    assert abs(circle.geodesic_length(a, b) - math.radians(160)) < 1e-6
    mid = geo[100]
    assert torch.allclose(mid, circle.embed(torch.tensor(0.3 - math.radians(80), dtype=torch.float64)), atol=1e-6)
    cont = circle.continuation(a, b, 0.5, 101)
    assert torch.allclose(cont[-1], circle.embed(torch.tensor(0.3 - math.radians(240), dtype=torch.float64)), atol=1e-6)


def test_ellipse_projection_is_exact_off_the_grid():
    ellipse = PlaneCurve((1.5, 0.75), ambient_dim=4, centre_offset=0.2, seed=3)
    phi = torch.tensor([0.123456, 2.5, 4.0], dtype=torch.float64)
    on = ellipse.embed(phi)
    assert torch.allclose(ellipse._angle(on), phi, atol=1e-10)
    assert float(ellipse.distance(on).max()) < 1e-9


def test_von_mises_sampler_has_the_right_mean_resultant():
    from scipy.special import i0, i1

    curve = PlaneCurve((1.0, 1.0), density="von_mises", mu=1.0, concentration=2.0, seed=0)
    phi = curve._sample_angles(200_000, torch.Generator().manual_seed(0))
    resultant = torch.stack([phi.cos().mean(), phi.sin().mean()])
    assert abs(float(resultant.norm()) - i1(2.0) / i0(2.0)) < 5e-3
    assert abs(float(torch.atan2(resultant[1], resultant[0])) - 1.0) < 1e-2


def test_curve_distance_of_points_off_its_plane():
    circle = PlaneCurve((1.0, 1.0), ambient_dim=3, seed=0)
    normal = torch.linalg.svd(circle.basis.T).Vh[-1]  # unit normal of the circle's plane
    x = circle.embed(torch.tensor([0.7], dtype=torch.float64)) * 1.2 + 0.5 * normal
    # in-plane offset 0.2 from the circle, 0.5 off the plane
    assert abs(float(circle.distance(x)) - math.hypot(0.2, 0.5)) < 1e-9


def test_ellipse_in_r10_geodesic_is_the_shorter_arc_with_its_exact_length():
    """Ground truth of the ellipse embedded isometrically in R^10 (codimension 9, curvature
    varying from b/a^2 to a/b^2): its geodesic between two points is the shorter arc, whose
    length is the elliptic integral of |phi'(t)| = sqrt(a^2 sin^2 t + b^2 cos^2 t)."""
    from scipy.integrate import quad

    a_ax, b_ax = 1.5, 0.75
    ellipse = PlaneCurve((a_ax, b_ax), ambient_dim=10, centre_offset=0.3, seed=2)
    speed = lambda t: math.sqrt((a_ax * math.sin(t)) ** 2 + (b_ax * math.cos(t)) ** 2)  # noqa: E731
    for t0, t1 in ((0.2, 1.9), (0.4, 0.4 + math.radians(250)), (2.8, 4.1)):
        p, q = (ellipse.embed(torch.tensor(t, dtype=torch.float64)) for t in (t0, t1))
        forward = quad(speed, t0, t1, limit=200)[0]
        backward = quad(speed, t1, t0 + 2 * math.pi, limit=200)[0]
        assert abs(ellipse.geodesic_length(p, q) - min(forward, backward)) < 1e-5
        geo = ellipse.geodesic(p, q, 801)
        assert torch.allclose(geo[0], p, atol=1e-9) and torch.allclose(geo[-1], q, atol=1e-9)
        assert float(ellipse.distance(geo).max()) < 1e-8  # every point on the curve
        length = float((geo[1:] - geo[:-1]).norm(dim=-1).sum())
        assert abs(length - min(forward, backward)) < 1e-4
