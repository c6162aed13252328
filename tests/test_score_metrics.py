"""The metric families (pullback, conformal, euclidean) and the orbit oracle, against hand
computations, explicit Jacobians, exact log-densities and straight lines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ive

from scoregeo_cli.data.synthetic import Sphere
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.geometry.conformal import ConformalMetric, log_density_along
from scoregeo_cli.geometry.euclidean import EuclideanMetric
from scoregeo_cli.geometry.pullback import PullbackMetric, score_jvp
from scoregeo_cli.geometry.solvers import OptimizerSolver, straight_path
from scoregeo_cli.scores.base import ScoreField
from scoregeo_cli.scores.orbit import mixture_score


class Nonlinear(ScoreField):
    """s(x) = -x + 0.5 tanh(B x): a smooth field with a non-symmetric Jacobian."""

    def __init__(self, dim: int, seed: int = 0):
        super().__init__(dim)
        self.B = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def _score(self, x):
        return -x + 0.5 * torch.tanh(x @ self.B.T)


class Linear(ScoreField):
    """s(x) = A x (J = A everywhere)."""

    def __init__(self, A):
        super().__init__(A.shape[0])
        self.A = A

    def _score(self, x):
        return x @ self.A.T


def test_pullback_energy_by_hand_for_a_linear_score():
    # J = A = diag(2, -1): one segment from (0, 0) to (1, 1), N = 1
    metric = PullbackMetric(Linear(torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))), alpha=0.5, lam=3.0)
    path = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    # E = 1/2 (alpha |v|^2 + lam |A v|^2) = 1/2 (0.5 * 2 + 3 * (4 + 1)) = 8
    assert float(metric.energy(path)[0]) == pytest.approx(8.0, rel=1e-12)


def test_pullback_jvp_energy_equals_the_explicit_jacobian():
    score = Nonlinear(6)
    g = torch.Generator().manual_seed(1)
    path = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    metric = PullbackMetric(score, alpha=0.7, lam=2.5)
    expected = torch.zeros(2, dtype=torch.float64)
    for p in range(2):
        for i in range(4):
            v = path[p, i + 1] - path[p, i]
            J = torch.autograd.functional.jacobian(lambda y: score._score(y[None])[0], 0.5 * (path[p, i + 1] + path[p, i]))
            expected[p] += 0.5 * 4 * (0.7 * v @ v + 2.5 * (J @ v) @ (J @ v))
    torch.testing.assert_close(metric.energy(path), expected, rtol=1e-12, atol=1e-12)
    x, v = path[0], path[1]
    J0 = torch.autograd.functional.jacobian(lambda y: score._score(y[None])[0], x[0])
    torch.testing.assert_close(score_jvp(score, x, v, create_graph=False)[0], J0 @ v[0])


def test_conformal_energy_by_hand_for_a_linear_score():
    # s = -x (log p = -|x|^2/2 + c); nodes 0, 1, 2 on a line: l = 0, -1/2, -2
    metric = ConformalMetric(Linear(-torch.eye(1, dtype=torch.float64)), beta=1.0)
    path = torch.tensor([[[0.0], [1.0], [2.0]]], dtype=torch.float64)
    torch.testing.assert_close(log_density_along(metric.score, path), torch.tensor([[0.0, -0.5, -2.0]], dtype=torch.float64))
    w = np.exp([0.0, 0.5, 2.0])  # exp(-beta l)
    expected = 0.5 * 2 * (0.5 * (w[0] + w[1]) + 0.5 * (w[1] + w[2]))
    assert float(metric.energy(path)[0]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ScoregeoError, match="beta must be >= 0"):
        ConformalMetric(metric.score, beta=-1)


def test_conformal_log_density_matches_the_exact_sphere_density():
    sphere = Sphere(2, 5, radius=1.5, centre_offset=0.5, seed=0)
    sigma = 0.3
    score = sphere.exact_score(sigma)
    nu = (sphere.intrinsic_dim - 1) / 2

    def exact_log_p(x):  # -|u|^2 / 2 sigma^2 + log I_nu(kappa) - nu log kappa, kappa = r |u_V| / sigma^2
        u = x - sphere.centre
        kappa = sphere.radius * (u @ sphere.basis).norm(dim=-1) / sigma**2
        k = kappa.numpy()
        return torch.as_tensor(-(u * u).sum(-1).numpy() / (2 * sigma**2) + np.log(ive(nu, k)) + k - nu * np.log(k))

    g = torch.Generator().manual_seed(3)
    a, b = sphere.pairs(1, g)
    # a wiggly path off the sphere, finely discretised
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)[:, None]
    bump = 0.2 * torch.sin(3 * math.pi * t) * torch.randn(1, 5, generator=g, dtype=torch.float64)
    path = ((1 - t) * a + t * b + bump)[None]
    integral = log_density_along(score, path)[0]
    exact = exact_log_p(path[0])
    torch.testing.assert_close(integral, exact - exact[0], rtol=0, atol=2e-4)


@pytest.mark.parametrize("solver", [OptimizerSolver(nodes=9, optimizer="lbfgs", lr=1.0, max_evals=100, tol=1e-12),
                                    OptimizerSolver(nodes=9, optimizer="adam", lr=0.05, max_evals=600, tol=0)])
def test_euclidean_metric_gives_the_straight_line_for_every_solver(solver):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    start = straight_path(a, b, 9)
    start[:, 1:-1] += 0.3 * torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    result = solver(EuclideanMetric(Nonlinear(4)), a, b, init=start)
    torch.testing.assert_close(result.path, straight_path(a, b, 9), rtol=0, atol=1e-3)


def test_orbit_mixture_score_is_the_gradient_of_the_exact_log_density():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(300, 7, generator=g, dtype=torch.float64)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64).requires_grad_(True)
    var = 0.4
    log_p = torch.logsumexp(-((x[:, None] - means[None]) ** 2).sum(-1) / (2 * var), dim=1)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    torch.testing.assert_close(mixture_score(x.detach(), means, var, chunk=64), grad, rtol=1e-10, atol=1e-10)


def test_oracle_geodesic_stays_closer_to_the_orbit_than_lerp():
    """With the exact orbit score at t = 200, the Stein geodesic's nodes stay nearer the noised
    rotation orbit than LERP's, and its frames' angles are nearer the ideal ones."""
    from scoregeo_cli.data.rotated_mnist import RotatedDigits
    from scoregeo_cli.geometry.stein import SteinMetric
    from scoregeo_cli.geometry.shooting import GeodesicShooter
    from scoregeo_cli.geometry.solvers import GaussNewtonSolver
    from scoregeo_cli.methods import Plan, run_methods
    from scoregeo_cli.methods.baselines import Lerp
    from scoregeo_cli.methods.geodesic import Geodesic
    from scoregeo_cli.scores.orbit import orbit_score
    from scoregeo_cli.spaces import PixelDiffusionSpace
    from scoregeo_cli.evaluation.image_runs import orbit_rows
    from scoregeo_cli.tasks.images import ImageTask

    data = RotatedDigits(source="digits")  # the case this test was set on: a scikit-learn digit
    gen = torch.Generator().manual_seed(0)
    data.select(1, gen)
    score = orbit_score(data, t=200, angle_step=0.5)
    space = PixelDiffusionSpace(score, ddim_steps=5)
    a, b = data.load([0])
    ends = space.endpoints(space.encode(a), space.encode(b), torch.randn(1, 784, generator=gen, dtype=torch.float64))
    metric = SteinMetric(score, lam=1000.0, normalize="unit", interpolation="cubic", quadrature="gauss4")
    plan = Plan(6, metric, GaussNewtonSolver(nodes=6), GeodesicShooter(), extrapolate=False)
    results = run_methods({"geodesic": Geodesic(), "lerp": Lerp()}, ends, plan, gen, verbose=False)
    frames, _, _ = ImageTask._to_images(space, results, ends)
    rows = {(r["method"], r["metric"]): r["value"] for r in
            orbit_rows([0], data, space, results, frames, torch.linspace(0, 1, 6, dtype=torch.float64), 0.5)}
    assert rows["geodesic", "orbit_excess_max"] < 0.7 * rows["lerp", "orbit_excess_max"]
    assert rows["geodesic", "angle_error"] < rows["lerp", "angle_error"] - 2.0  # degrees


@pytest.mark.parametrize("metric", ["pullback", "conformal", "euclidean"])
def test_fixed_point_refuses_a_metric_it_cannot_minimise_before_any_work(metric, tmp_path, monkeypatch, capsys):
    from helpers import invoke_cli

    code, _, err = invoke_cli(["run", "experiment=sphere", f"metric={metric}", "solver=fixed_point",
                               f"output_root={tmp_path}", "eval.figure=false"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "solver FixedPointSolver needs a metric with evaluate" in lines[0]
    assert not list(tmp_path.rglob("DONE"))


def test_euclidean_energy_by_hand():
    # nodes (0,0), (1,0), (1,2): N = 2 segments, E = N/2 (|v1|^2 + |v2|^2) = 1 * (1 + 4) = 5
    path = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]], dtype=torch.float64)
    metric = EuclideanMetric(Nonlinear(2))
    assert float(metric.energy(path)[0]) == pytest.approx(5.0, rel=1e-12)
    assert float(metric.length(path)[0]) == pytest.approx(3.0, rel=1e-12)
    assert torch.equal(metric.acceleration(path[0], path[0]), torch.zeros(3, 2, dtype=torch.float64))


def test_conformal_acceleration_matches_euler_lagrange():
    """For s = -A x (log p = -x^T A x / 2, A symmetric) the conformal metric is e^phi I with
    phi = beta x^T A x / 2; x'' from the Euler-Lagrange equations of L = e^phi |v|^2 / 2, by
    autograd: e^phi (x'' + (grad phi . v) v) = 1/2 e^phi |v|^2 grad phi."""
    g = torch.Generator().manual_seed(5)
    m = torch.randn(4, 4, generator=g, dtype=torch.float64)
    A = m @ m.T / 4 + torch.eye(4, dtype=torch.float64)
    beta = 0.7
    metric = ConformalMetric(Linear(-A), beta=beta)
    x, v = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    phi = beta * 0.5 * torch.einsum("bi,ij,bj->b", xr, A, xr)
    (grad_phi,) = torch.autograd.grad(phi.sum(), xr)
    expected = -(grad_phi * v).sum(-1, keepdim=True) * v + 0.5 * (v * v).sum(-1, keepdim=True) * grad_phi
    torch.testing.assert_close(metric.acceleration(x, v), expected, rtol=1e-12, atol=1e-12)
