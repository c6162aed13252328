"""Analytic scores against independent references: quadrature + autograd, and calculus."""

import math

import pytest
import torch

from scoregeo_cli.data.synthetic import PlaneCurve, Sphere
from scoregeo_cli.scores.analytic import EmpiricalScore, bessel_ratio


def quadrature_score(x, basis, centre, radius, sigma, d):
    """grad log p_sigma by autograd of log p computed with a dense quadrature on S^d (d=1,2)."""
    x = x.clone().requires_grad_(True)
    if d == 1:
        phi = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)[:-1]
        z = torch.stack([phi.cos(), phi.sin()], -1)
        logw = torch.zeros(phi.shape, dtype=torch.float64)
    else:
        theta = (torch.arange(600, dtype=torch.float64) + 0.5) * math.pi / 600
        phi = torch.arange(1200, dtype=torch.float64) * 2 * math.pi / 1200
        th, ph = torch.meshgrid(theta, phi, indexing="ij")
        z = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1).reshape(-1, 3)
        logw = th.sin().log().reshape(-1)
    y = centre + radius * z @ basis.T  # (K, D)
    logp = torch.logsumexp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * sigma**2) + logw, dim=1)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    return grad


@pytest.mark.parametrize("d,D", [(1, 2), (1, 5), (2, 3), (2, 6)])
def test_sphere_score_matches_quadrature(d, D):
    sphere = Sphere(d, D, radius=1.3, centre_offset=0.4, seed=3)
    sigma = 0.2
    score = sphere.exact_score(sigma)
    g = torch.Generator().manual_seed(0)
    x = sphere.sample(6, g) + 0.3 * torch.randn(6, D, generator=g, dtype=torch.float64)
    ref = quadrature_score(x, sphere.basis, sphere.centre, sphere.radius, sigma, d)
    got = score(x)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6 * ref.abs().max())


def test_bessel_ratio_values_and_derivatives():
    # nu = 1/2: I_{3/2}/I_{1/2} = coth(k) - 1/k (Langevin function), exactly
    k = torch.tensor([0.01, 0.5, 3.0, 40.0, 900.0], dtype=torch.float64, requires_grad=True)
    r = bessel_ratio(k, 0.5)
    langevin = 1 / torch.tanh(k) - 1 / k
    assert torch.allclose(r, langevin, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda t: bessel_ratio(t, 1.5), (k[:4],))
    assert torch.autograd.gradgradcheck(lambda t: bessel_ratio(t, 0.0), (k[:4],))


def test_empirical_score_is_gradient_of_log_mixture():
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(50, 4, generator=g, dtype=torch.float64)
    score = EmpiricalScore(samples, sigma=0.7)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    logp = torch.logsumexp(-((x[:, None] - samples[None]) ** 2).sum(-1) / (2 * 0.49), dim=1)
    (ref,) = torch.autograd.grad(logp.sum(), x)
    assert torch.allclose(score(x.detach()), ref, atol=1e-10)


def test_uniform_circle_empirical_score_approaches_exact():
    circle = PlaneCurve((1.0, 1.0), ambient_dim=2, seed=0)
    exact = Sphere(1, 2, 1.0, 0.0, seed=0).exact_score(0.3)
    g = torch.Generator().manual_seed(0)
    emp = EmpiricalScore(circle.sample(20000, g), 0.3)
    x = 1.2 * circle.sample(8, g)
    err = (emp(x) - exact(x)).norm(dim=-1) / exact(x).norm(dim=-1)
    assert float(err.max()) < 0.05  # Monte Carlo error of 20000 samples


def test_score_counts_batched_calls_and_rejects_nan():
    from scoregeo_cli.errors import NonFiniteError

    score = EmpiricalScore(torch.zeros(3, 2, dtype=torch.float64), 1.0, chunk_size=2)
    score(torch.ones(5, 2, dtype=torch.float64))
    assert (score.calls, score.points) == (1, 5)
    with pytest.raises(NonFiniteError, match="score evaluation 2"):
        score(torch.full((1, 2), float("nan"), dtype=torch.float64))


def test_bessel_ratio_at_large_order_matches_mpmath():
    mpmath = pytest.importorskip("mpmath")
    for nu, k in [(150.0, 0.5), (400.0, 50.0), (400.0, 5000.0), (1.5, 1e-3)]:
        got = float(bessel_ratio(torch.tensor([k], dtype=torch.float64), nu))
        ref = float(mpmath.besseli(nu + 1, k) / mpmath.besseli(nu, k))
        assert abs(got - ref) < 1e-10 * ref


def test_bessel_ratio_matches_mpmath_across_the_underflow_bands():
    """A grid over nu up to 1000 and kappa from 1e-7 to 1e4, dense where ive(nu + 1, kappa)
    underflows (e.g. nu = 100, kappa in [0.069, 0.074], where the quotient of scaled values
    was 0); values and the derivative identity R' = 1 - R^2 - (2 nu + 1) R / kappa."""
    mpmath = pytest.importorskip("mpmath")
    from scipy.special import ive

    mpmath.mp.dps = 40
    worst, underflowed = 0.0, 0
    for nu in [0.0, 0.5, 4.5, 49.5, 100.0, 100.5, 300.0, 499.5, 1000.0]:
        ks = torch.cat([torch.logspace(-7, 4, 34, dtype=torch.float64),
                        torch.linspace(0.069, 0.074, 4, dtype=torch.float64)])
        k = ks.clone().requires_grad_(True)
        got = bessel_ratio(k, nu)
        (deriv,) = torch.autograd.grad(got.sum(), k)
        for kv, g, dg in zip(ks.tolist(), got.tolist(), deriv.tolist()):
            mk = mpmath.mpf(kv)
            ref = mpmath.besseli(nu + 1, mk) / mpmath.besseli(nu, mk)
            ref_d = 1 - ref**2 - (2 * nu + 1) * ref / mk
            worst = max(worst, abs(g - float(ref)) / float(ref))
            assert abs(g - float(ref)) <= 1e-11 * float(ref), (nu, kv, g, float(ref))
            assert abs(dg - float(ref_d)) <= 1e-6 * abs(float(ref_d)) + 1e-12, (nu, kv, dg, float(ref_d))
        underflowed += int((ive(nu + 1, ks.numpy()) < 1e-290).sum())
    assert underflowed > 100  # the grid does cover the bands that route to the continued fraction


def test_high_dimensional_sphere_score_is_finite_and_radial():
    sphere = Sphere(300, 301, seed=0)
    score = sphere.exact_score(1.0)
    x = 1.1 * sphere.sample(4, torch.Generator().manual_seed(0))
    s = score(x)
    u = x - sphere.centre
    cos = (s * u).sum(-1) / (s.norm(dim=-1) * u.norm(dim=-1))
    assert torch.isfinite(s).all() and torch.allclose(cos.abs(), torch.ones(4, dtype=torch.float64))


def test_curve_quadrature_score_matches_the_exact_circle_score():
    circle = PlaneCurve((1.0, 1.0), ambient_dim=3, centre_offset=0.3, seed=0)
    points, log_w = circle.quadrature(2048)
    emp = EmpiricalScore(points, 0.2, log_weights=log_w)
    exact = circle.exact_score(0.2)
    x = circle.sample(6, torch.Generator().manual_seed(1)) * 1.1
    assert torch.allclose(emp(x), exact(x), rtol=1e-8, atol=1e-8)
