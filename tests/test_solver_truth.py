"""Solvers against the metric's own geodesic, computed independently (SciPy solve_bvp on the
closed-form geodesic equation, ``geometry.truth``)."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from scoregeo_cli.app import CONF_DIR
from scoregeo_cli.build import instantiate
from scoregeo_cli.data.synthetic import Sphere
from scoregeo_cli.geometry.stein import SteinMetric
from scoregeo_cli.geometry.shooting import end_tangent
from scoregeo_cli.geometry.solvers import GaussNewtonSolver
from scoregeo_cli.geometry.truth import manifold_metric_geodesic


def defaults(overrides=()):
    """The default solver, metric (partial) and shooter of `scoregeo run`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return instantiate(cfg.solver), instantiate(cfg.metric), instantiate(cfg.extrapolate)


def sphere_pairs(ambient_dim, n, seed=0):
    """The sphere experiment's (and bench's) setting: S^2, centre offset 0.5, 60-150 degrees."""
    sphere = Sphere(2, ambient_dim, 1.0, centre_offset=0.5, angle_range=(60, 150), seed=seed)
    a, b = sphere.pairs(n, torch.Generator().manual_seed(seed))
    return sphere, a, b


def pointwise(truth, path, t):
    """|x(t_j) - gamma(t_j)| in the symmetry-invariant coordinates, (M,)."""
    x = path.detach().double().numpy()
    return np.linalg.norm(truth.invariant(x) - truth.invariant(truth.at(t)), axis=1)


def arc_length_pointwise(truth, metric, path):
    """Node j against the geodesic's point at the node's g-arc-length fraction along the
    path (the path reparametrised by arc length), (N+1,)."""
    segments = metric.length(path[None], per_segment=True)[0]
    frac = torch.cat([torch.zeros(1, dtype=segments.dtype), segments.cumsum(0)]) / segments.sum()
    return pointwise(truth, path, frac.numpy())


def test_the_metric_geodesic_is_a_geodesic_and_beats_the_great_circle():
    sphere, a, b = sphere_pairs(3, 2)
    metric = SteinMetric(sphere.exact_score(0.15), 1000.0, interpolation="cubic", quadrature="gauss4")
    for p in range(2):
        truth = manifold_metric_geodesic(sphere, metric, a[p], b[p])
        assert truth.branch == "in-plane"
        ends = truth.at([0.0, 1.0])
        assert np.allclose(ends, np.stack([a[p].numpy(), b[p].numpy()]), atol=1e-10)
        # shooting with SciPy from a along the geodesic's own velocity lands on b
        from scipy.integrate import solve_ivp
        y0 = truth.bvp.sol(0.0)
        shot = solve_ivp(truth.reduced.rhs, (0, 1), y0, method="DOP853", rtol=1e-12, atol=1e-13)
        assert np.allclose(shot.y[:, -1], truth.bvp.sol(1.0), atol=1e-6)
        # shorter than the great circle (whose g-length, measured on a fine spline, is its
        # arc length: s is radial on the sphere), and it dips below the sphere
        circle = sphere.geodesic(a[p], b[p], 129)[None]
        assert truth.length < float(metric.length(circle)) - 1e-5
        radii = np.linalg.norm(truth.at(np.linspace(0, 1, 201)) - sphere.centre.numpy(), axis=1)
        assert 1 - radii.min() > 1e-4


@pytest.mark.parametrize("ambient_dim,normalize", [(3, "none"), (10, "unit")])
def test_reduced_equation_matches_the_ambient_geodesic_equation(ambient_dim, normalize):
    """The truth's matrix-free reduced equation (closed-form score, numpy) against the
    ambient geodesic acceleration of SteinMetric (autograd through the sphere's exact score),
    and its vectorised Jacobian against central differences."""
    sphere, a, b = sphere_pairs(ambient_dim, 1)
    metric = SteinMetric(sphere.exact_score(0.15), 1000.0, normalize=normalize)
    truth = manifold_metric_geodesic(sphere, metric, a[0], b[0])
    reduced, frame = truth.reduced, truth.frame
    rng = np.random.default_rng(0)
    y = truth.bvp.sol(np.linspace(0, 1, 7)) + 0.05 * rng.standard_normal((2 * reduced.m, 7))
    acc = reduced.rhs(0.0, y)[reduced.m:]
    x = torch.from_numpy(truth.centre + y[:reduced.m].T @ frame)
    v = torch.from_numpy(y[reduced.m:].T @ frame)
    ambient = metric.acceleration(x, v).detach().numpy()
    np.testing.assert_allclose(acc.T @ frame, ambient, rtol=1e-8, atol=1e-8 * np.abs(ambient).max())
    jac = reduced.rhs_jacobian(0.0, y)  # forward differences, as solve_bvp's own: Newton's model only
    h = 1e-6
    for j in range(2 * reduced.m):
        step = np.zeros_like(y)
        step[j] = h
        central = (reduced.rhs(0.0, y + step) - reduced.rhs(0.0, y - step)) / (2 * h)
        np.testing.assert_allclose(jac[:, j], central, rtol=1e-2, atol=1e-3 * np.abs(central).max())


def test_default_solver_follows_the_metric_geodesic_and_shooting_continues_it():
    """S^2 in R^3 from LERP: the default solver's nodes within 1e-3 of the independent
    geodesic of g (at the same parameter, and after reparametrising by arc length);
    shooting from the end within 1e-2 of the geodesic's point at every parameter past b."""
    sphere, a, b = sphere_pairs(3, 3)
    solver, make_metric, shooter = defaults()
    metric = make_metric(score=sphere.exact_score(0.15))
    result = solver(metric, a, b)
    assert bool(result.converged.all())
    shot = shooter(metric, result.path[:, -1], end_tangent(result.path))
    taus = 1 + np.linspace(0, shooter.duration, shot.path.shape[1])
    for p in range(3):
        truth = manifold_metric_geodesic(sphere, metric, a[p], b[p])
        nodes = np.linspace(0, 1, solver.nodes)
        assert pointwise(truth, result.path[p], nodes).max() < 1e-3
        assert arc_length_pointwise(truth, metric, result.path[p]).max() < 1e-3
        assert abs(float(metric.length(result.path[p:p + 1])) / truth.length - 1) < 1e-5
        assert pointwise(truth, shot.path[p], taus).max() < 1e-2


def test_codimension_the_shortest_geodesics_leave_the_subspace_and_the_default_finds_them():
    """S^2 in R^10, the bench's pairs: the metric's shortest geodesics leave the sphere's
    3-space (2-4% shorter than the in-plane ones); the default discretisation's continuous
    g-length is within 1% of theirs (no ridge artifact), the polygon with midpoints is not."""
    sphere, a, b = sphere_pairs(10, 4)
    solver, make_metric, _ = defaults()
    metric = make_metric(score=sphere.exact_score(0.15))
    truths = [manifold_metric_geodesic(sphere, metric, a[p], b[p]) for p in range(4)]
    lengths = torch.tensor([t.length for t in truths], dtype=torch.float64)
    for t in truths:
        assert t.branch == "bent out of V"
        assert t.length < 0.98 * t.lengths["in-plane"]
    result = solver(metric, a, b)
    ratio = metric.length(result.path) / lengths
    assert bool((ratio < 1.01).all()) and bool((ratio > 1 - 1e-6).all())
    midpoint = SteinMetric(sphere.exact_score(0.15), 1000.0)  # the former default
    artifact = GaussNewtonSolver(nodes=16, max_evals=100)(midpoint, a, b)
    assert bool((metric.length(artifact.path) > 1.5 * lengths).all())


@pytest.mark.slow
def test_finer_discretisations_converge_to_the_out_of_subspace_geodesic():
    sphere, a, b = sphere_pairs(10, 2)
    solver, make_metric, _ = defaults(["solver.nodes=48", "solver.max_evals=300", "solver.refine_tol=null", "solver.etol=1e-6"])
    metric = make_metric(score=sphere.exact_score(0.15))
    result = solver(metric, a, b)
    for p in range(2):
        truth = manifold_metric_geodesic(sphere, metric, a[p], b[p])
        assert pointwise(truth, result.path[p], np.linspace(0, 1, 48)).max() < 1e-3
