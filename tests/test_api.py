"""The public Python API (``import scoregeo_cli as sg``), used the way a researcher would:
plain torch callables as scores, diffusers UNets, nothing internal on the computing side.
The references are independent (SciPy's solve_bvp geodesic of the metric, diffusers' own
noising) or the CLI itself (the rotated-digits path of ``scoregeo run``)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import scoregeo_cli as sg
from scoregeo_cli.geometry.truth import sphere_metric_geodesic

REPO = Path(__file__).resolve().parents[1]
SIGMA = 0.15
CENTRE = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)


def sphere_score(x: torch.Tensor) -> torch.Tensor:
    """Exact score of the uniform measure on the unit sphere S^2 about CENTRE in R^3,
    smoothed by N(0, SIGMA^2 I): -u/s^2 + L(k) u / (|u| s^2), u = x - c, k = |u| / s^2,
    L(k) = coth k - 1/k (the Bessel ratio I_{3/2}/I_{1/2})."""
    u = x - CENTRE.to(x)
    r = u.norm(dim=-1, keepdim=True)
    k = r / SIGMA**2
    return -u / SIGMA**2 + (1 / torch.tanh(k) - 1 / k) * u / (r * SIGMA**2)


def sphere_pairs(dtype=torch.float64):
    """Three pairs on the sphere, 70-140 degrees apart, in three different planes."""
    gen = torch.Generator().manual_seed(0)
    angles = torch.tensor([70.0, 110.0, 140.0], dtype=torch.float64) * math.pi / 180
    e1 = torch.nn.functional.normalize(torch.randn(3, 3, generator=gen, dtype=torch.float64), dim=-1)
    w = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    e2 = torch.nn.functional.normalize(w - (w * e1).sum(-1, keepdim=True) * e1, dim=-1)
    a = CENTRE + e1
    b = CENTRE + angles.cos()[:, None] * e1 + angles.sin()[:, None] * e2
    return a.to(dtype), b.to(dtype)


def truth_of(a, b, normalize="none"):
    return [sphere_metric_geodesic(np.eye(3), CENTRE.numpy(), 1.0, SIGMA, 1000.0, normalize,
                                   a[p].double().numpy(), b[p].double().numpy()) for p in range(len(a))]


def pointwise(truth, points, t):
    """|x(t_j) - gamma(t_j)| in the geodesic's symmetry-invariant coordinates (M,)."""
    x = points.detach().double().cpu().numpy()
    return np.linalg.norm(truth.invariant(x) - truth.invariant(truth.at(t)), axis=1)


# ----------------------------------------------------------------------------- import

def test_import_is_light_and_does_not_import_hydra():
    """`import scoregeo_cli as sg; print(sg.geodesic)` in a fresh interpreter: under 2 s, and
    neither Hydra nor even torch loaded (calling the API without Hydra is checked by the
    README example's test, tests/test_api_models.py)."""
    code = ("import sys, time\nstart = time.perf_counter()\nimport scoregeo_cli as sg\nprint(sg.geodesic)\n"
            "print(time.perf_counter() - start)\n"
            "print(sorted(m for m in ('hydra', 'omegaconf', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("<function geodesic")
    assert float(lines[1]) < 2.0
    assert lines[2] == "[]"  # not even torch: it loads on the first call


def test_public_names():
    assert set(sg.__all__) == {"geodesic", "extrapolate", "Geodesic", "Extrapolation", "score_from_unet",
                               "score_from_conditional_unet", "noise", "denoise", "families", "__version__"}
    assert {"Stein", "Pullback", "Conformal", "Euclidean"} <= set(dir(sg.families))
    for name in sg.__all__[:-2]:
        assert getattr(sg, name).__doc__, name
    with pytest.raises(AttributeError):
        sg.no_such_name  # noqa: B018


# ----------------------------------------------------------------------------- geodesics against the truth

def test_sphere_geodesic_is_the_metrics_own_geodesic():
    """S^2 in R^3, sigma 0.15, lam 1000, the defaults: every node within 1e-3 of the metric's
    own geodesic (SciPy solve_bvp), the same g-length to 1e-5, and the shot past b within
    1% of the geodesic's length of its continuation."""
    a, b = sphere_pairs()
    geo = sg.geodesic(sphere_score, a, b)
    assert isinstance(geo, sg.Geodesic)
    assert geo.path.shape == (3, 16, 3) and geo.path.dtype == torch.float64
    assert bool(geo.converged.all()) and float(geo.grad_rel.max()) < 1e-8
    ext = sg.extrapolate(geo, duration=0.5, steps=4)
    assert ext.ok and ext.path.shape == (3, 5, 3)
    assert torch.allclose(ext.t, torch.tensor([1.0, 1.125, 1.25, 1.375, 1.5], dtype=torch.float64))
    for p, truth in enumerate(truth_of(a, b)):
        nodes = np.linspace(0, 1, 16)
        assert pointwise(truth, geo.path[p], nodes).max() < 1e-3
        assert abs(float(geo.length[p]) / truth.length - 1) < 1e-5
        # between the nodes the solver's spline follows the geodesic too
        between = np.linspace(0, 1, 61)
        assert pointwise(truth, geo.at(between)[p], between).max() < 1e-3
        assert pointwise(truth, ext.path[p], ext.t.numpy()).max() < 1e-2 * truth.length
    # the great circle is longer in g, LERP much longer
    lerp = torch.lerp(a[:, None], b[:, None], torch.linspace(0, 1, 16, dtype=a.dtype)[:, None])
    assert bool((geo.metric.length(lerp) > 1.5 * geo.length).all())


def test_unit_score_and_other_solvers_agree_with_the_truth():
    a, b = sphere_pairs()
    a, b = a[:1], b[:1]
    truth = truth_of(a, b, "unit")[0]
    for solver, options in (("gauss_newton", {}), ("lbfgs", {"max_evals": 400})):
        geo = sg.geodesic(sphere_score, a, b, normalize="unit", solver=solver, **options)
        assert pointwise(truth, geo.path[0], np.linspace(0, 1, 16)).max() < 2e-3, solver


def test_cost_is_counted_in_single_sample_passes():
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return sphere_score(x)

    a, b = sphere_pairs()
    geo = sg.geodesic(counted, a, b, nodes=8, max_evals=6, solver="gauss_newton_plain")
    # every batched call the budget counts, in points; the final gradient-norm measurement
    # (one more call) is not part of the solve
    assert geo.score_evals == 6 == len(calls) - 1
    assert geo.network_passes == sum(calls[:-1])
    assert geo.network_passes >= 3 * 7 * 4 * 3  # at least 3 full batches of P pairs x 7 segments x 4 points
    assert geo.backward_passes > 0 and geo.iterations > 0 and geo.seconds > 0


def test_image_shaped_points_give_the_flat_solution():
    """Endpoints (P, C, H, W) and a score on images: the same path as the flat problem."""
    gen = torch.Generator().manual_seed(1)
    mat = torch.randn(8, 8, generator=gen, dtype=torch.float64) / 3

    def flat_score(x):  # (B, 8)
        return -x + torch.tanh(x @ mat)

    def image_score(x):  # (B, 2, 2, 2)
        assert x.shape[1:] == (2, 2, 2)
        return flat_score(x.reshape(len(x), 8)).reshape(x.shape)

    a, b = torch.randn(2, 8, generator=gen, dtype=torch.float64), torch.randn(2, 8, generator=gen, dtype=torch.float64)
    flat = sg.geodesic(flat_score, a, b, nodes=6, max_evals=10, lam=10.0)
    image = sg.geodesic(image_score, a.reshape(2, 2, 2, 2), b.reshape(2, 2, 2, 2), nodes=6, max_evals=10, lam=10.0)
    assert image.path.shape == (2, 6, 2, 2, 2)
    assert torch.allclose(image.path.reshape(2, 6, 8), flat.path, rtol=0, atol=1e-12)
    assert torch.allclose(image.energy, flat.energy, rtol=1e-12)
    assert image.at([0.3]).shape == (2, 1, 2, 2, 2)
    ext = sg.extrapolate(image, 0.2, 2, method="rk4", substeps=1)
    assert ext.path.shape == (2, 3, 2, 2, 2)


def test_the_curve_between_the_nodes():
    """``at`` evaluates the solved curve: at the frames' parameters it gives the frames (also
    when the default solver solved on other nodes), and between two nodes of a polygon solved
    at the frames' own nodes it is the chord's midpoint."""
    a, b = sphere_pairs()
    for interpolation in ("cubic", "linear"):
        for solver in ("gauss_newton", "gauss_newton_plain"):
            geo = sg.geodesic(sphere_score, a, b, nodes=7, max_evals=5, interpolation=interpolation,
                              quadrature="gauss4", solver=solver)
            nodes = geo.at(torch.linspace(0, 1, 7, dtype=torch.float64))
            assert torch.allclose(nodes, geo.path, atol=1e-12), (interpolation, solver)
    assert geo.solve_nodes == 7
    mid = geo.at(1 / 12)  # linear: halfway along the first segment
    assert torch.allclose(mid[:, 0], (geo.path[:, 0] + geo.path[:, 1]) / 2, atol=1e-12)


def test_float32_and_the_tensors_device():
    a, b = sphere_pairs(torch.float32)
    geo = sg.geodesic(sphere_score, a, b)
    assert geo.path.dtype == torch.float32 and geo.energy.dtype == torch.float32
    ref = sg.geodesic(sphere_score, a.double(), b.double())
    assert float((geo.path.double() - ref.path).abs().max()) < 1e-4
    # one criterion for every score: a gradient of 1e-8 is below float32's rounding, the
    # energy criterion (etol 1e-4) is not
    assert bool(geo.converged.all()) and float(geo.grad_rel.max()) < 1e-5
    ext = sg.extrapolate(geo, 0.25, 2)
    assert ext.path.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stay_on_the_device():
    a, b = sphere_pairs()
    cpu = sg.geodesic(sphere_score, a, b, nodes=8, max_evals=20)
    geo = sg.geodesic(sphere_score, a.cuda(), b.cuda(), nodes=8, max_evals=20)
    assert geo.path.is_cuda and geo.energy.is_cuda and geo.length.is_cuda and geo.at([0.5]).is_cuda
    assert torch.allclose(geo.path.cpu(), cpu.path, atol=1e-6)
    assert sg.extrapolate(geo, 0.25, 2).path.is_cuda


# ----------------------------------------------------------------------------- the metric objects

def test_metric_objects_by_hand():
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    v = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    mat = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
    # Stein: |v|^2 + lam (s.v)^2 with s = (1, 1) everywhere; its unit variant divides by |s|^2
    const = sg.families.Stein(lambda y: torch.ones_like(y), lam=2.0)
    assert float(const.norm_sq(x, v)) == pytest.approx(5 + 2 * 9)
    unit = sg.families.Stein(lambda y: torch.ones_like(y), lam=2.0, normalize="unit")
    assert float(unit.norm_sq(x, v)) == pytest.approx(5 + 2 * 9 / 2)
    # the polygon energy of the module docstring: nodes (0,0), (1,0), (1,2) -> 15
    path = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]], dtype=torch.float64)
    polygon = sg.families.Stein(lambda y: torch.ones_like(y), lam=2.0, interpolation="linear", quadrature="midpoint")
    assert float(polygon.energy(path)) == pytest.approx(15.0)
    # on a straight line the cubic curve is the line: length |v| sqrt(1 + lam (u.v/|v|)^2)
    line = torch.stack([torch.zeros(2), torch.tensor([3.0, 4.0])]).double()
    line = torch.lerp(line[0], line[1], torch.linspace(0, 1, 5, dtype=torch.float64)[:, None])[None]
    assert float(const.length(line)) == pytest.approx(math.sqrt(25 + 2 * 49))
    # pullback with s(x) = A x: J = A
    pull = sg.families.Pullback(lambda y: y @ mat.T, alpha=0.5, lam=3.0)
    assert float(pull.norm_sq(x, v)) == pytest.approx(0.5 * 5 + 3.0 * float(((mat @ v[0]) ** 2).sum()))
    # conformal with the standard normal's score s = -x: (p(x)/p(r))^(-beta) = exp(beta (|x|^2 - |r|^2) / 2)
    conf = sg.families.Conformal(lambda y: -y, beta=0.7)
    ref = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    expected = math.exp(0.7 * (1.25 - 0.05) / 2) * 5
    assert float(conf.norm_sq(x, v, reference=ref)) == pytest.approx(expected, rel=1e-12)
    # Euclidean
    flat = sg.families.Euclidean()
    assert float(flat.norm_sq(x, v)) == pytest.approx(5.0)
    assert float(flat.energy(line)) == pytest.approx(25 / 2)
    assert float(flat.length(line)) == pytest.approx(5.0)


def test_metric_objects_take_image_shaped_paths():
    gen = torch.Generator().manual_seed(2)
    paths = torch.randn(3, 5, 1, 2, 3, generator=gen, dtype=torch.float64)

    def score(x):
        return torch.sin(x) - x

    for make in (lambda s: sg.families.Stein(s, shape=(1, 2, 3)), lambda s: sg.families.Pullback(s, shape=(1, 2, 3)),
                 lambda s: sg.families.Conformal(s, shape=(1, 2, 3)), lambda s: sg.families.Euclidean(s, shape=(1, 2, 3))):
        metric = make(score)
        flat = paths.reshape(3, 5, 6)
        assert torch.allclose(metric.energy(paths), metric.energy(flat), rtol=1e-12)
        assert torch.allclose(metric.length(paths), metric.length(flat), rtol=1e-12)
        assert metric.energy(paths).shape == (3,)


def test_a_metric_object_solves_as_the_same_names():
    a, b = sphere_pairs()
    metric = sg.families.Stein(sphere_score, lam=1000.0, normalize="unit")
    by_object = sg.geodesic(None, a, b, metric=metric, nodes=8, max_evals=10)
    by_name = sg.geodesic(sphere_score, a, b, normalize="unit", nodes=8, max_evals=10)
    assert torch.equal(by_object.path, by_name.path)
    assert by_object.metric is metric
    for name, kwargs in (("pullback", {"lam": 1e-3}), ("conformal", {"beta": 0.5}), ("euclidean", {})):
        geo = sg.geodesic(sphere_score, a, b, metric=name, nodes=6, max_evals=20, **kwargs)
        assert geo.path.shape == (3, 6, 3) and bool(torch.isfinite(geo.energy).all()), name
    straight = sg.geodesic(None, a, b, metric="euclidean", nodes=6)
    assert torch.allclose(straight.path[:, 3], a + 0.6 * (b - a), atol=1e-10)


# ----------------------------------------------------------------------------- bad arguments

def _sphere_geo():
    a, b = sphere_pairs()
    return sg.geodesic(sphere_score, a, b, nodes=5, max_evals=2)


A, B = sphere_pairs()
BAD_CALLS = [
    ("a", lambda: sg.geodesic(sphere_score, [[0.0, 1.0]], B)),
    ("a", lambda: sg.geodesic(sphere_score, A[0], B[0])),
    ("a", lambda: sg.geodesic(sphere_score, A.long(), B)),
    ("b", lambda: sg.geodesic(sphere_score, A, B[:2])),
    ("b", lambda: sg.geodesic(sphere_score, A, B.float())),
    ("b", lambda: sg.geodesic(sphere_score, A, B * float("nan"))),
    ("score", lambda: sg.geodesic(None, A, B)),
    ("score", lambda: sg.geodesic("not callable", A, B)),
    ("score", lambda: sg.geodesic(lambda x: x[:, :2], A, B)),
    ("metric", lambda: sg.geodesic(sphere_score, A, B, metric="riemann")),
    ("lam", lambda: sg.geodesic(sphere_score, A, B, lam=-1.0)),
    ("lam", lambda: sg.geodesic(sphere_score, A, B, metric="conformal", lam=2.0)),
    ("normalize", lambda: sg.geodesic(sphere_score, A, B, normalize="l2")),
    ("normalize", lambda: sg.geodesic(sphere_score, A, B, metric="pullback", normalize="unit")),
    ("nodes", lambda: sg.geodesic(sphere_score, A, B, nodes=2)),
    ("nodes", lambda: sg.geodesic(sphere_score, A, B, nodes=8.0)),
    ("solver", lambda: sg.geodesic(sphere_score, A, B, solver="newton")),
    ("solver", lambda: sg.geodesic(sphere_score, A, B, metric="pullback", solver="fixed_point")),
    ("max_evals", lambda: sg.geodesic(sphere_score, A, B, max_evals=0)),
    ("gtol", lambda: sg.geodesic(sphere_score, A, B, gtol=-1.0)),
    ("quadrature", lambda: sg.geodesic(sphere_score, A, B, quadrature="gauss0")),
    ("interpolation", lambda: sg.geodesic(sphere_score, A, B, interpolation="quintic")),
    ("beta", lambda: sg.geodesic(sphere_score, A, B, beta=1.0)),
    ("init", lambda: sg.geodesic(sphere_score, A, B, init=torch.zeros(3, 4, 5, dtype=torch.float64))),
    ("init", lambda: sg.geodesic(sphere_score, A, B, solver="gauss_newton_plain",
                                 init=torch.zeros(3, 4, 3, dtype=torch.float64))),
    ("lam", lambda: sg.geodesic(None, A, B, metric=sg.families.Stein(sphere_score), lam=3.0)),
    ("duration", lambda: sg.extrapolate(_sphere_geo(), duration=0.0)),
    ("steps", lambda: sg.extrapolate(_sphere_geo(), steps=0)),
    ("method", lambda: sg.extrapolate(_sphere_geo(), method="leapfrog")),
    ("metric", lambda: sg.extrapolate((A, B))),
    ("geodesic_or_state", lambda: sg.extrapolate(A)),
    ("geodesic_or_state", lambda: sg.extrapolate(sg.geodesic(sphere_score, A, B, metric="pullback", nodes=4,
                                                              max_evals=2))),
    ("t", lambda: _sphere_geo().at([0.5, 1.5])),
    ("t", lambda: sg.noise(A, B, 1000, torch.linspace(0.99, 0.01, 1000))),
    ("t", lambda: sg.noise(A, B, 2.5, torch.linspace(0.99, 0.01, 1000))),
    ("eps", lambda: sg.noise(A, B[:, :2], 10, torch.linspace(0.99, 0.01, 1000))),
    ("scheduler", lambda: sg.noise(A, B, 10, "ddpm")),
    ("unet", lambda: sg.score_from_unet(lambda x, t: x, torch.linspace(0.99, 0.01, 1000), 10)),
    ("lam", lambda: sg.families.Stein(sphere_score, lam=float("inf"))),
    ("shape", lambda: sg.families.Stein(sphere_score, shape=(0, 3))),
    ("alpha", lambda: sg.families.Pullback(sphere_score, alpha=0.0)),
    ("reference", lambda: sg.families.Conformal(sphere_score).norm_sq(A, B)),
    ("path", lambda: sg.families.Stein(sphere_score, shape=(3,)).energy(torch.zeros(2, 4, 5))),
]


@pytest.mark.parametrize("name,call", BAD_CALLS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_CALLS)])
def test_bad_arguments_are_one_sentence_value_errors_naming_the_argument(name, call):
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert re.match(rf"{re.escape(name)}\b", message), message
    assert "\n" not in message and len(message) < 250, message


# ----------------------------------------------------------------------------- defaults shared with the CLI

def test_defaults_are_those_of_scoregeo_run(compose_cfg):
    from scoregeo_cli import api

    cfg = compose_cfg()
    metric = {k: v for k, v in cfg.metric.items() if not k.startswith("_")}
    assert metric["lam"] == api.DEFAULT_LAM["stein"] and metric["normalize"] == "none"
    assert {k: metric[k] for k in api.METRIC_OPTIONS["stein"]} == api.METRIC_OPTIONS["stein"]
    for name in api.SOLVERS:  # one default solver: the API's gauss_newton is scoregeo run's
        solver = compose_cfg([f"solver={name}"]).solver
        options = {k: (list(v) if k == "continuation" else v) for k, v in solver.items() if not k.startswith("_")}
        options.pop("nodes")
        if name.startswith("gauss_newton"):
            assert options == api.SOLVER_OPTIONS[name], name
        else:  # the optimizers' config also names the optimizer the API takes as the solver's name
            assert {k: options[k] for k in api.SOLVER_OPTIONS[name]} == api.SOLVER_OPTIONS[name], name
        assert solver.nodes == 16
    assert cfg.solver._target_.endswith("AdaptiveSolver")  # the run's default is the API's default
    for name in ("pullback", "conformal"):
        node = compose_cfg([f"metric={name}"]).metric
        assert {k: node[k] for k in api.METRIC_OPTIONS[name]} == api.METRIC_OPTIONS[name]
    assert compose_cfg(["metric=pullback"]).metric.lam == api.DEFAULT_LAM["pullback"]
    shooting = cfg.extrapolate
    assert {k: shooting[k] for k in api.SHOOTING_OPTIONS} == api.SHOOTING_OPTIONS
    assert (shooting.duration, shooting.steps) == (0.5, 8)
