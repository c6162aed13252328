"""The metric, the solvers and shooting against exact geometry."""

import pytest
import torch
from helpers import TanhField

from scoregeo_cli.data.synthetic import Sphere, polyline_distance
from scoregeo_cli.errors import NonFiniteError, ScoregeoError
from scoregeo_cli.geometry.shooting import GeodesicShooter, end_tangent, linear_extrapolation
from scoregeo_cli.geometry.solvers import FixedPointSolver, OptimizerSolver, frozen_metric_step, straight_path
from scoregeo_cli.geometry.stein import SteinMetric
from scoregeo_cli.scores.base import ScoreField


class ConstantScore(ScoreField):
    def __init__(self, vector):
        super().__init__(vector.numel())
        self.vector = vector

    def _score(self, x):
        return self.vector.expand_as(x).clone()


class NaNScore(ScoreField):
    def _score(self, x):
        return torch.full_like(x, float("nan"))


def sphere_problem(ambient_dim=3, sigma=0.05, n=3, seed=0):
    sphere = Sphere(2, ambient_dim, 1.0, centre_offset=0.5, angle_range=(90, 140), seed=seed)
    a, b = sphere.pairs(n, torch.Generator().manual_seed(seed))
    return sphere, a, b, SteinMetric(sphere.exact_score(sigma), 1000.0)


def max_error(sphere, path, a, b):
    return max(float(polyline_distance(path[p], sphere.geodesic(a[p], b[p])).max()) for p in range(a.shape[0]))


def test_energy_by_hand():
    # nodes (0,0), (1,0), (1,2); u = (1, 1) everywhere, lam = 2, N = 2 segments:
    # v0 = (1,0): |v|^2 = 1, (u.v)^2 = 1; v1 = (0,2): |v|^2 = 4, (u.v)^2 = 4
    # E = N/2 * [(1 + 2*1) + (4 + 2*4)] = 1 * 15 = 15
    path = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]], dtype=torch.float64)
    score = ConstantScore(torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert float(SteinMetric(score, 2.0).energy(path)) == pytest.approx(15.0)
    assert float(SteinMetric(score, 2.0, evaluate_at="nodes").energy(path)) == pytest.approx(15.0)
    # unit normalisation: u = (1,1)/sqrt 2 -> (u.v)^2 = 1/2 and 2 -> E = (1 + 1) + (4 + 4) = 10
    assert float(SteinMetric(score, 2.0, normalize="unit").energy(path)) == pytest.approx(10.0)


def test_frozen_step_solves_the_frozen_quadratic_problem():
    """Compare the Woodbury closed form with a dense solve of the same quadratic problem."""
    g = torch.Generator().manual_seed(0)
    p, n, k, d = 2, 5, 2, 4
    factors = torch.randn(p, n, k, d, generator=g, dtype=torch.float64)
    path = torch.randn(p, n + 1, d, generator=g, dtype=torch.float64)
    new = frozen_metric_step(path, factors)
    for q in range(p):
        # minimise sum_i v_i^T (I + U_i^T U_i) v_i over interior nodes: normal equations
        h = torch.zeros((n - 1) * d, (n - 1) * d, dtype=torch.float64)
        rhs = torch.zeros((n - 1) * d, dtype=torch.float64)
        gs = [torch.eye(d, dtype=torch.float64) + factors[q, i].T @ factors[q, i] for i in range(n)]
        for i in range(n):  # segment i joins node i and i+1; interior nodes are 1..n-1
            for (r, sr), (c, sc) in [((i, -1), (i, -1)), ((i, -1), (i + 1, 1)), ((i + 1, 1), (i, -1)), ((i + 1, 1), (i + 1, 1))]:
                if 1 <= r <= n - 1 and 1 <= c <= n - 1:
                    h[(r - 1) * d:r * d, (c - 1) * d:c * d] += sr * sc * gs[i]
            if i == 0:
                rhs[0:d] += gs[0] @ path[q, 0]
            if i == n - 1:
                rhs[(n - 2) * d:(n - 1) * d] += gs[n - 1] @ path[q, n]
        interior = torch.linalg.solve(h, rhs).reshape(n - 1, d)
        assert torch.allclose(new[q, 1:-1], interior, atol=1e-10)
        assert torch.allclose(new[q, [0, -1]], path[q, [0, -1]])


def test_fixed_point_recovers_great_circles_and_lerp_does_not():
    sphere, a, b, metric = sphere_problem(sigma=0.15)
    result = FixedPointSolver(nodes=16, max_evals=50, tol=1e-4)(metric, a, b)
    assert bool(result.converged.all()) and result.score_evals <= 10
    assert max_error(sphere, result.path, a, b) < 3e-3
    # at a smaller noise level the safeguard ends the iteration (the frozen step stops
    # lowering the true energy) still within 5e-3 of the great circles
    sphere, a, b, metric = sphere_problem(sigma=0.05)
    result = FixedPointSolver(nodes=16, max_evals=50, tol=1e-4)(metric, a, b)
    assert max_error(sphere, result.path, a, b) < 5e-3
    assert max_error(sphere, straight_path(a, b, 16), a, b) > 0.15
    assert torch.equal(result.path[:, 0], a) and torch.equal(result.path[:, -1], b)


def test_fixed_point_energy_never_rises_across_accepted_steps():
    sphere, a, b, metric = sphere_problem(ambient_dim=10, sigma=0.15)
    result = FixedPointSolver(nodes=16, max_evals=30, tol=1e-9)(metric, a, b)
    trace = torch.tensor(result.energy_trace)
    assert bool((trace[1:] <= trace[:-1] * (1 + 1e-12)).all())
    assert bool((trace[-1] < trace[0] / 100).all())  # lerp cuts through the sphere: huge energy


def test_fixed_point_and_lbfgs_agree_on_the_great_circle():
    # at sigma = 0.05 the energy minimiser hugs the sphere; at 0.15 it sits on the inner
    # ridge of the smoothed density, about 0.04 inside (measured by `scoregeo bench`)
    sphere, a, b, metric = sphere_problem(n=1, sigma=0.05)
    fp = FixedPointSolver(nodes=12, max_evals=50, tol=1e-6)(metric, a, b)
    lbfgs = OptimizerSolver(nodes=12, optimizer="lbfgs", lr=1.0, max_evals=400, tol=1e-12)(metric, a, b)
    assert max_error(sphere, fp.path, a, b) < 5e-3
    assert max_error(sphere, lbfgs.path, a, b) < 1e-2
    # the two curves trace the same arc: every node of one is close to the other
    assert float(polyline_distance(fp.path[0], lbfgs.path[0]).max()) < 1e-2
    assert fp.score_evals * 10 < lbfgs.score_evals


def test_batching_pairs_gives_the_same_paths():
    sphere, a, b, metric = sphere_problem(n=3)
    solver = FixedPointSolver(nodes=10, max_evals=40, tol=1e-8)
    together = solver(metric, a, b).path
    alone = torch.cat([solver(metric, a[i:i + 1], b[i:i + 1]).path for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-9)


def test_nan_score_stops_the_solver_with_the_step():
    metric = SteinMetric(NaNScore(3), 10.0)
    a, b = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="score evaluation 1"):
        FixedPointSolver()(metric, a, b)
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        OptimizerSolver(optimizer="adam")(metric, a, b)


def test_geodesic_acceleration_matches_sherman_morrison_for_exact_scores():
    sphere, a, b, metric = sphere_problem(ambient_dim=5, sigma=0.3)
    g = torch.Generator().manual_seed(2)
    x = a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)
    v = torch.randn(a.shape, generator=g, dtype=torch.float64)
    got = metric.acceleration(x, v)
    for p in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda y: metric.score(y[None])[0], x[p])
        s = metric.score(x[p:p + 1])[0]
        expected = -metric.lam * (v[p] @ jac @ v[p]) / (1 + metric.lam * s @ s) * s
        assert torch.allclose(jac, jac.T, atol=1e-8)
        assert torch.allclose(got[p], expected, rtol=1e-8, atol=1e-10)


def test_shooting_follows_the_great_circle_beyond_b():
    sphere, a, b, metric = sphere_problem(sigma=0.15)
    path = FixedPointSolver(nodes=16, max_evals=50, tol=1e-6)(metric, a, b).path
    shot = GeodesicShooter(duration=0.5, steps=8)(metric, path[:, -1], end_tangent(path))
    line = linear_extrapolation(a, b, 0.5, 8)
    for p in range(a.shape[0]):
        truth = sphere.continuation(a[p], b[p], 1.0)
        assert float(polyline_distance(shot.path[p], truth).max()) < 0.02
        assert float(polyline_distance(line[p], truth).max()) > 0.3
    # it travels: the last point is a fair way past b along the circle
    assert float((shot.path[:, -1] - b).norm(dim=-1).min()) > 0.2


@pytest.mark.parametrize("make, message", [
    (lambda: SteinMetric(ConstantScore(torch.ones(2)), lam=-1.0), "metric.lam must be >= 0"),
    (lambda: SteinMetric(ConstantScore(torch.ones(2)), normalize="l2"), "metric.normalize must be one of"),
    (lambda: FixedPointSolver(nodes=2), "solver.nodes must be at least 3"),
    (lambda: FixedPointSolver(max_evals=0), "solver.max_evals must be positive"),
    (lambda: OptimizerSolver(optimizer="sgd"), "solver.optimizer must be one of"),
    (lambda: GeodesicShooter(duration=0), "extrapolate.duration must be positive"),
])
def test_bad_values_are_rejected_with_one_sentence(make, message):
    with pytest.raises(ScoregeoError, match=message):
        make()


@pytest.mark.parametrize("normalize", ["none", "unit"])
def test_geodesic_acceleration_matches_euler_lagrange_for_any_field(normalize):
    """x'' from the Euler-Lagrange equations of L = 1/2 v^T (I + lam u u^T) v, by autograd."""
    g = torch.Generator().manual_seed(5)
    d = 4
    field = TanhField(torch.randn(d, d, generator=g, dtype=torch.float64),
                      torch.randn(d, generator=g, dtype=torch.float64))
    metric = SteinMetric(field, 3.0, normalize=normalize)
    x = torch.randn(2, d, generator=g, dtype=torch.float64)
    v = torch.randn(2, d, generator=g, dtype=torch.float64)
    got = metric.acceleration(x, v)

    def lagrangian(q, qd):
        return 0.5 * metric.norm_sq(q[None], qd[None])[0]

    for p in range(2):
        q, qd = x[p], v[p]
        mass = torch.autograd.functional.hessian(lambda w: lagrangian(q, w), qd)
        dl_dq = torch.autograd.functional.jacobian(lambda w: lagrangian(w, qd), q)
        mixed = torch.autograd.functional.jacobian(
            lambda w: torch.autograd.functional.jacobian(lambda z: lagrangian(w, z), qd, create_graph=True), q)
        # d/dt dL/dqd = mass qdd + mixed qd = dL/dq
        expected = torch.linalg.solve(mass, dl_dq - mixed @ qd)
        assert torch.allclose(got[p], expected, rtol=1e-9, atol=1e-11)


def test_shooting_that_spends_its_budget_returns_nan_and_says_why():
    sphere, a, b, metric = sphere_problem(sigma=0.15, n=2)
    path = straight_path(a, b, 8)
    shot = GeodesicShooter(duration=0.5, steps=4, max_evals=3)(metric, path[:, -1], end_tangent(path))
    assert shot.score_evals == 3 and "extrapolate.max_evals" in shot.error
    assert shot.path.shape == (2, 5, 3) and bool(torch.isnan(shot.path).all())
    nan_metric = SteinMetric(NaNScore(3), 10.0)
    shot = GeodesicShooter(duration=0.5, steps=4)(nan_metric, a, b - a)
    assert "NaN/Inf" in shot.error and bool(torch.isnan(shot.path).all())
