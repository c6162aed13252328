"""The Gauss-Newton solver against dense linear algebra and exact geometry."""

import pytest
import torch
from helpers import TanhField

from scoregeo_cli.data.synthetic import Sphere
from scoregeo_cli.geometry.stein import SteinMetric
from scoregeo_cli.geometry.solvers import (FixedPointSolver, GaussNewtonSolver, OptimizerSolver,
                                           gauss_newton_step, gradient_norm, straight_path)


def residuals(metric, path, frozen_u=None):
    """All residuals of E = 1/2 |R|^2 for one path (N+1, D), written out independently:
    sqrt(w_k) y'_k (D each) and sqrt(lam w_k) u(y_k).y'_k, y = phi x, y' = dphi x."""
    phi, dphi, w = metric.curve(path.shape[0]).tensors(path)
    y, yd = phi @ path, dphi @ path
    u = metric.direction(y) if frozen_u is None else frozen_u
    return torch.cat([(w.sqrt()[:, None] * yd).reshape(-1), (metric.lam * w).sqrt() * (u * yd).sum(-1)])


def dense_gauss_newton(metric, path, frozen_u=None, damping=0.0):
    """-(J^T J + mu I)^{-1} J^T R over the interior nodes with a dense Jacobian from autograd."""
    d = path.shape[1]

    def res(interior):
        full = torch.cat([path[:1], interior.reshape(-1, d), path[-1:]])
        return residuals(metric, full, frozen_u)

    x = path[1:-1].reshape(-1)
    jac = torch.autograd.functional.jacobian(res, x)
    r = res(x)
    grad = jac.T @ r
    normal = jac.T @ jac + damping * torch.eye(jac.shape[1], dtype=jac.dtype)
    return -torch.linalg.solve(normal, grad).reshape(-1, d), grad.reshape(-1, d)


@pytest.mark.parametrize("interpolation, quadrature, normalize", [
    ("linear", "midpoint", "none"), ("linear", "gauss2", "unit"), ("cubic", "gauss3", "none"),
    ("cubic", "simpson", "unit")])
def test_gauss_newton_step_is_the_dense_step_on_the_linearised_residuals(interpolation, quadrature, normalize):
    g = torch.Generator().manual_seed(3)
    d, nodes = 4, 6
    field = TanhField(torch.randn(d, d, generator=g, dtype=torch.float64),
                      torch.randn(d, generator=g, dtype=torch.float64))
    metric = SteinMetric(field, 7.0, normalize=normalize, interpolation=interpolation, quadrature=quadrature)
    path = torch.randn(2, nodes, d, generator=g, dtype=torch.float64)
    ev = metric.evaluate(path)
    r, u, jt = ev.linearize()
    step, grad = gauss_newton_step(ev.model, metric.lam, path, r, u, jt)
    frozen_step, _ = gauss_newton_step(ev.model, metric.lam, path, r, u, None)
    mu = torch.tensor([0.3, 2.0], dtype=torch.float64)
    damped, _ = gauss_newton_step(ev.model, metric.lam, path, r, u, jt, mu)
    for p in range(2):
        expected, expected_grad = dense_gauss_newton(metric, path[p])
        assert torch.allclose(step[p], expected, rtol=1e-8, atol=1e-10)
        assert torch.allclose(grad[p], expected_grad, rtol=1e-9, atol=1e-11)
        # Levenberg-Marquardt: the same structure with mu I added
        expected_damped, _ = dense_gauss_newton(metric, path[p], damping=float(mu[p]))
        assert torch.allclose(damped[p], expected_damped, rtol=1e-8, atol=1e-10)
        # the gradient is the true one: autograd through the metric's energy
        _, auto = metric.energy_gradient(path[p:p + 1])
        assert torch.allclose(grad[p], auto[0], rtol=1e-9, atol=1e-11)
        # with the scores frozen the residuals are linear: the step is the exact minimiser
        frozen, _ = dense_gauss_newton(metric, path[p], frozen_u=u[p])
        assert torch.allclose(frozen_step[p], frozen, rtol=1e-8, atol=1e-10)
    assert float(ev.energy.sub(metric.energy(path)).abs().max()) < 1e-12


def sphere(ambient_dim=3, sigma=0.15, n=3, seed=0):
    sph = Sphere(2, ambient_dim, 1.0, centre_offset=0.5, angle_range=(60, 150), seed=seed)
    a, b = sph.pairs(n, torch.Generator().manual_seed(seed))
    return sph, a, b


@pytest.mark.parametrize("sigma", [0.15, 0.05])
def test_gauss_newton_reaches_a_stationary_point_of_the_true_energy(sigma):
    sph, a, b = sphere(sigma=sigma)
    metric = SteinMetric(sph.exact_score(sigma), 1000.0, interpolation="cubic", quadrature="gauss4")
    result = GaussNewtonSolver(nodes=16, max_evals=80, gtol=1e-8, etol=0.0)(metric, a, b)
    assert bool(result.converged.all())
    assert bool((result.grad_norm <= 1e-6 * result.grad_norm0).all())
    assert result.score_evals <= 60 and result.vjp_evals <= result.score_evals
    # measured independently of the solver
    assert torch.allclose(result.grad_norm, gradient_norm(metric, result.path))
    trace = torch.tensor(result.energy_trace)
    assert bool((trace[1:] <= trace[:-1] * (1 + 1e-12)).all())
    assert torch.equal(result.path[:, 0], a) and torch.equal(result.path[:, -1], b)
    # no solver does better on the same energy
    lbfgs = OptimizerSolver(nodes=16, optimizer="lbfgs", lr=1.0, max_evals=200, tol=1e-12)(metric, a, b)
    assert bool((result.energy <= lbfgs.energy * (1 + 1e-9)).all())


def test_fixed_point_is_not_a_minimiser_and_gauss_newton_is():
    """The frozen-metric fixed point stops where the true gradient is not zero."""
    sph, a, b = sphere(sigma=0.15)
    metric = SteinMetric(sph.exact_score(0.15), 1000.0, interpolation="cubic", quadrature="gauss4")
    fp = FixedPointSolver(nodes=16, max_evals=50, tol=1e-9)(metric, a, b)
    gn = GaussNewtonSolver(nodes=16, max_evals=80, gtol=1e-8, etol=0.0)(metric, a, b)
    assert bool((gn.grad_norm < fp.grad_norm / 100).all())
    assert bool((gn.energy <= fp.energy).all())
    # warm-started from the fixed point it converges too
    warm = GaussNewtonSolver(nodes=16, max_evals=80, gtol=1e-8, warm_start=5, etol=0.0)(metric, a, b)
    assert bool(warm.converged.all())
    assert float((warm.path - gn.path).norm(dim=-1).max()) < 1e-4


def test_the_continuous_length_is_quadrature_independent_and_resolves_the_sphere():
    sph, a, b = sphere(sigma=0.15)
    metric = SteinMetric(sph.exact_score(0.15), 1000.0, interpolation="cubic", quadrature="gauss4")
    circle = torch.stack([sph.geodesic(a[p], b[p], 16) for p in range(3)])
    lengths = torch.tensor([sph.geodesic_length(a[p], b[p]) for p in range(3)], dtype=torch.float64)
    # nodes on the great circle: on the sphere s is radial, so the spline costs its arc length
    assert torch.allclose(metric.length(circle), lengths, rtol=1e-4)
    assert torch.allclose(metric.length(circle, 256), metric.length(circle), rtol=1e-10)
    # the polygon through the same nodes cuts across the level sets: 20% and more longer
    polygon = SteinMetric(sph.exact_score(0.15), 1000.0, interpolation="linear", quadrature="gauss4")
    assert bool((polygon.length(circle) > 1.2 * lengths).all())
    # a straight line in the flat metric has its Euclidean length whatever the rule
    flat = SteinMetric(sph.exact_score(0.15), 0.0, interpolation="cubic", quadrature="gauss4")
    line = straight_path(a, b, 9)
    assert torch.allclose(flat.length(line), (b - a).norm(dim=-1), rtol=1e-12)


def test_energy_criterion_stops_only_where_the_undamped_model_promises_less_than_etol():
    """etol: a pair converges on a stable energy (its last step and a full undamped
    Gauss-Newton step both change it by < etol) even where gtol is out of reach. On the
    sphere in R^10 (paths leave the sphere's subspace: heavy damping) a rule on the last step
    alone stops where the undamped model still promises ~1e-5; this one does not."""
    sph, a, b = sphere(ambient_dim=10, sigma=0.15)
    metric = SteinMetric(sph.exact_score(0.15), 1000.0, interpolation="cubic", quadrature="gauss4")
    tight = GaussNewtonSolver(nodes=16, max_evals=200, gtol=1e-10, etol=0.0)(metric, a, b)
    loose = GaussNewtonSolver(nodes=16, max_evals=120, gtol=1e-30, etol=1e-6)(metric, a, b)
    assert bool(loose.converged.all()) and loose.score_evals < tight.score_evals
    assert bool((loose.energy >= tight.energy * (1 - 1e-9)).all())
    assert bool((loose.energy <= tight.energy * (1 + 1e-5)).all())
    # the undamped model at the returned path promises less than etol, measured outside the solver
    ev = metric.evaluate(loose.path)
    r, u, g = ev.linearize()
    step, grad = gauss_newton_step(ev.model, metric.lam, loose.path, r, u, g)
    promise = -0.5 * (step * grad).flatten(1).sum(-1)
    assert bool((promise <= 1e-6 * loose.energy).all())
    never = GaussNewtonSolver(nodes=16, max_evals=40, gtol=1e-30, etol=0.0)(metric, a, b)
    assert not bool(never.converged.any())
