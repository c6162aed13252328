"""The exact-Hessian iteration (trust-region Newton-CG) and the Gauss-Newton matrix it is
preconditioned with, against finite differences, dense algebra and Gauss-Newton's answer."""

import torch

from scoregeo_cli.data.synthetic import Sphere
from scoregeo_cli.geometry.solvers import AdaptiveSolver, GaussNewtonSolver, gradient_norm, straight_path
from scoregeo_cli.geometry.solvers.newton import _Graph
from scoregeo_cli.geometry.solvers.normal_equations import gauss_newton_apply, gauss_newton_solve
from scoregeo_cli.geometry.stein import SteinMetric


def sphere_problem(ambient_dim=10, sigma=0.15, n=3, lam=1000.0):
    sph = Sphere(2, ambient_dim, 1.0, centre_offset=0.5, angle_range=(60, 150), seed=0)
    a, b = sph.pairs(n, torch.Generator().manual_seed(0))
    return sph, SteinMetric(sph.exact_score(sigma), lam, interpolation="cubic", quadrature="gauss4"), a, b


def bent_path(a, b, nodes, seed=1):
    path = straight_path(a, b, nodes)
    path[:, 1:-1] += 0.05 * torch.randn(path[:, 1:-1].shape, generator=torch.Generator().manual_seed(seed),
                                        dtype=path.dtype)
    return path


def test_hessian_vector_products_are_the_derivative_of_the_gradient():
    _, metric, a, b = sphere_problem(sigma=0.3, lam=10.0)
    path = bent_path(a, b, 6)
    graph = _Graph(metric, path)
    v = torch.randn(graph.grad.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = 1e-5
    plus, minus = path.clone(), path.clone()
    plus[:, 1:-1] += h * v
    minus[:, 1:-1] -= h * v
    central = (metric.energy_gradient(plus)[1] - metric.energy_gradient(minus)[1]) / (2 * h)
    torch.testing.assert_close(graph.hvp(v), central, rtol=1e-6, atol=1e-6 * float(central.abs().max()))
    # the gradient and energy of the graph are the metric's own
    energy, grad = metric.energy_gradient(path)
    torch.testing.assert_close(graph.energy, energy, rtol=1e-12, atol=0)
    torch.testing.assert_close(graph.grad, grad, rtol=1e-10, atol=1e-12 * float(grad.abs().max()))


def test_the_gauss_newton_matrix_is_j_transpose_j_plus_the_stiffness_and_its_solve_inverts_it():
    """G v against the dense Jacobian of the residuals (autograd), and G^-1 G v = v."""
    _, metric, a, b = sphere_problem(ambient_dim=4, sigma=0.3, n=1, lam=10.0)
    path = bent_path(a, b, 5)
    graph = _Graph(metric, path)
    model = metric.curve(5)
    interior = path[:, 1:-1].clone()

    def residuals_with_grad(inner):
        full = torch.cat([path[:, :1], inner, path[:, -1:]], dim=1)
        phi, dphi, w = model.tensors(full)
        y, yd = torch.einsum("kj,pjd->pkd", phi, full), torch.einsum("kj,pjd->pkd", dphi, full)
        return ((metric.lam * w) ** 0.5 * (metric.direction(y) * yd).sum(-1)).flatten()

    jac = torch.autograd.functional.jacobian(residuals_with_grad, interior).reshape(-1, interior.numel())
    stiff = torch.as_tensor(model.stiffness[1:-1, 1:-1])
    dense = jac.T @ jac + torch.kron(stiff, torch.eye(a.shape[1], dtype=torch.float64))
    v = torch.randn(interior.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    applied = gauss_newton_apply(model, metric.lam, graph.u, graph.g, v)
    torch.testing.assert_close(applied.flatten(), dense @ v.flatten(), rtol=1e-9, atol=1e-9 * float(applied.abs().max()))
    torch.testing.assert_close(gauss_newton_solve(model, metric.lam, graph.u, graph.g, applied), v, rtol=1e-8, atol=1e-10)


def test_newton_finds_a_minimum_where_gauss_newton_stops_at_a_higher_stationary_point():
    """The smoothed sphere in R^3 at sigma 0.05 (lam |s|^2 ~ 4e5): Gauss-Newton's positive
    definite model converges to stationary points it cannot tell from minima; Newton-CG, which
    sees negative curvature, ends at least as low on every pair and strictly lower on one."""
    _, metric, a, b = sphere_problem(ambient_dim=3, sigma=0.05)
    gn = GaussNewtonSolver(16, max_evals=400, etol=0.0, gtol=1e-8)(metric, a, b)
    newton = AdaptiveSolver(16, max_evals=400, etol=1e-12, gtol=1e-8, refine_tol=None, continuation=[],
                            hessian="exact")(metric, a, b)
    assert bool(gn.converged.all()) and bool(newton.converged.all())
    assert bool((newton.grad_norm <= 1e-8 * newton.grad_norm0).all())
    assert torch.allclose(newton.grad_norm, gradient_norm(metric, newton.path))  # measured outside the solver
    assert bool((newton.energy <= gn.energy * (1 + 1e-9)).all())
    assert bool((newton.energy < gn.energy * (1 - 1e-4)).any())
    assert newton.hvp_points > 0 and newton.vjp_points > 0
