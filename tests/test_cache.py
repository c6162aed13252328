"""The content-addressed cache: exact keys, no stale hits, identical results with and without it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import assert_close_to_scale, invoke_cli
import torch

from scoregeo_cli.io.cache import Cache, digest


def test_digest_sees_every_bit_dtype_and_shape():
    x = torch.linspace(0, 1, 10, dtype=torch.float64)
    y = x.clone()
    y[3] = torch.nextafter(y[3], torch.tensor(2.0, dtype=torch.float64))  # one ulp
    assert digest(x) == digest(x.clone())
    assert digest(x) != digest(y)
    assert digest(x) != digest(x.float())
    assert digest(x) != digest(x.reshape(2, 5))
    assert digest("a", x) != digest("b", x)
    net = torch.nn.Linear(3, 2)
    before = digest(net)
    with torch.no_grad():
        net.weight[0, 0] += 1e-6
    assert digest(net) != before


def test_cache_computes_once_and_never_serves_a_changed_input(tmp_path):
    cache = Cache(tmp_path)
    calls = []

    def compute(v):
        calls.append(v)
        return torch.full((2,), float(v))

    first = cache.get("k", digest("x", 1), lambda: compute(1))
    again = cache.get("k", digest("x", 1), lambda: compute(99))
    other = cache.get("k", digest("x", 2), lambda: compute(2))
    assert calls == [1, 2] and torch.equal(first, again) and float(other[0]) == 2
    assert cache.report() == {"k": {"reused": 1, "computed": 2}}
    off = Cache(tmp_path, enabled=False)
    off.get("k", digest("x", 1), lambda: compute(3))
    assert calls[-1] == 3  # cache=false recomputes


def test_a_damaged_entry_is_recomputed(tmp_path):
    cache = Cache(tmp_path)
    key = digest("x")
    cache.get("k", key, lambda: torch.ones(3))
    entry = next(tmp_path.rglob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:10])
    assert torch.equal(cache.get("k", key, lambda: torch.zeros(3)), torch.zeros(3))


def test_denoised_groups_come_back_bit_identical_and_follow_the_weights(tmp_path):
    from scoregeo_cli.scores.unet import load_unet_score
    from scoregeo_cli.spaces import PixelDiffusionSpace

    score = load_unet_score(None, t=200)
    space = PixelDiffusionSpace(score, ddim_steps=2)
    g = torch.Generator().manual_seed(0)
    groups = [torch.randn(1, 2, 784, generator=g, dtype=torch.float64),
              torch.randn(1, 3, 784, generator=g, dtype=torch.float64)]
    cache = Cache(tmp_path)
    fresh = space.denoise_groups(groups, cache)
    reused = space.denoise_groups(groups, cache)
    assert cache.report()["denoised"] == {"reused": 2, "computed": 2}
    assert all(torch.equal(a, b) for a, b in zip(fresh, reused))
    # the same points denoised together or apart, with or without the cache, agree
    apart = space.denoise(groups[1].reshape(-1, 784)).reshape(groups[1].shape)
    assert_close_to_scale(apart, fresh[1])
    # new weights: a new fingerprint, so nothing is reused
    with torch.no_grad():
        next(score.model.parameters()).add_(1e-3)
    changed = PixelDiffusionSpace(score, ddim_steps=2)
    changed.denoise_groups(groups, cache)
    assert cache.report()["denoised"] == {"reused": 2, "computed": 4}


def _run(argv, monkeypatch):
    assert invoke_cli(argv, monkeypatch)[0] == 0


@pytest.mark.slow
def test_a_sweep_reuses_baselines_and_reference_features_with_identical_results(tmp_path, monkeypatch):
    small = ["experiment=rotated_mnist", "n_pairs=1", "solver=gauss_newton_plain", "solver.nodes=4", "solver.max_evals=3",
             "space.ddim_steps=1",
             "eval.fid_frames=2", "eval.fid_real=2", "eval.strips=0", "extrapolate.method=rk4",
             "extrapolate.steps=2", "extrapolate.substeps=1", "extrapolate.max_evals=8",
             "method=[geodesic,lerp,pixel_lerp]"]
    runs = {}
    for name, extra in (("a", ["metric.lam=10"]), ("b", ["metric.lam=1000"]),
                        ("off", ["metric.lam=1000", "cache=false"])):
        _run(["run", *small, *extra, f"output_root={tmp_path}", f"hydra.run.dir={tmp_path / name}"], monkeypatch)
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    reused = json.loads((tmp_path / "b" / "cache.json").read_text())
    # lerp's interior and extrapolation, both endpoints: reused; the geodesic's two groups: new
    assert reused["denoised"] == {"reused": 3, "computed": 2}
    assert reused["inception"]["reused"] >= 4  # two reference sets, lerp and pixel_lerp frames
    assert reused["energy_terms"] == {"reused": 1, "computed": 0}  # lerp's energy parts hold for any lam
    # the cached run equals the uncached one in every number but wall times, to float32 rounding:
    # the UNet's float32 result for an image depends slightly on the size of the batch it is
    # denoised in, and the cached run denoises only the geodesic's groups together
    def numbers(summary):
        return {(m, k, stat): v for m, entry in summary.items() for k, stats in entry.items()
                if not k.endswith("seconds") for stat, v in stats.items()}

    cached, uncached = numbers(runs["b"]), numbers(runs["off"])
    assert cached.keys() == uncached.keys()
    for key, value in cached.items():
        other = uncached[key]
        assert (math.isnan(value) and math.isnan(other)) or value == pytest.approx(other, rel=1e-5, abs=1e-6), key
    assert json.loads((tmp_path / "off" / "cache.json").read_text()) == {}


@pytest.mark.parametrize("interpolation,quadrature", [("linear", "midpoint"), ("linear", "trapezoid"),
                                                      ("cubic", "gauss4")])
def test_stein_energy_parts_are_free_of_lam_and_serve_a_lam_sweep(tmp_path, interpolation, quadrature):
    from scoregeo_cli.data.synthetic import Sphere
    from scoregeo_cli.geometry.stein import SteinMetric
    from scoregeo_cli.evaluation.image_runs import FrameMemo

    sphere = Sphere(2, 3, centre_offset=0.5, seed=0)
    score = sphere.exact_score(0.15)
    a, b = sphere.pairs(2, torch.Generator().manual_seed(0))
    path = a[:, None] + torch.linspace(0, 1, 9, dtype=a.dtype)[None, :, None] * (b - a)[:, None]

    def metric(lam):
        return SteinMetric(score, lam=lam, interpolation=interpolation, quadrature=quadrature)

    kinetic, score_part = metric(1000.0).energy_terms(path)
    # by hand: 1/2 int |x'|^2 dt and 1/2 int (u.x')^2 dt under each rule
    v, n = path[:, 1:] - path[:, :-1], 8
    if quadrature == "midpoint":  # N v_i is the velocity on segment i, which lasts 1/N
        u = score(0.5 * (path[:, 1:] + path[:, :-1]))
        hand = (0.5 * n * (v * v).sum((-1, -2)), 0.5 * n * ((u * v).sum(-1) ** 2).sum(-1))
    elif quadrature == "trapezoid":  # u at both ends of each segment, half weight each
        u = score(path)
        ends = ((u[:, :-1] * v).sum(-1) ** 2 + (u[:, 1:] * v).sum(-1) ** 2) / 2
        hand = (0.5 * n * (v * v).sum((-1, -2)), 0.5 * n * ends.sum(-1))
    else:  # SciPy's not-a-knot spline through the nodes, 4 Gauss-Legendre points per segment
        from scipy.interpolate import CubicSpline

        x, w = np.polynomial.legendre.leggauss(4)
        t = ((np.arange(n)[:, None] + (x + 1) / 2) / n).ravel()
        weight = torch.from_numpy(np.tile(w / 2, n) / n)
        spline = CubicSpline(np.linspace(0, 1, n + 1), path.numpy(), axis=1, bc_type="not-a-knot")
        y, yd = torch.from_numpy(spline(t)), torch.from_numpy(spline(t, 1))
        hand = (0.5 * (weight * (yd * yd).sum(-1)).sum(-1), 0.5 * (weight * (score(y) * yd).sum(-1) ** 2).sum(-1))
    torch.testing.assert_close(kinetic, hand[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(score_part, hand[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(metric(0.0).energy(path), kinetic, rtol=1e-13, atol=0)
    # the cache keeps the parts: lam 999 after lam 1000 costs no score evaluation
    cache = Cache(tmp_path)
    first = FrameMemo(cache, "space", metric(1000.0), "alex").energy(path)
    sweep = metric(999.0)
    calls = score.calls
    second = FrameMemo(cache, "space", sweep, "alex").energy(path)
    assert score.calls == calls and cache.report()["energy_terms"] == {"reused": 1, "computed": 1}
    torch.testing.assert_close(first, kinetic + 1000.0 * score_part, rtol=1e-13, atol=0)
    torch.testing.assert_close(second, sweep.energy(path), rtol=1e-13, atol=0)


def test_file_digest_is_the_sha256_of_the_bytes_and_follows_a_rewrite(tmp_path):
    import hashlib
    import os

    from scoregeo_cli.io.cache import file_digest

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"a" * 3000)
    assert file_digest(weights) == hashlib.sha256(b"a" * 3000).hexdigest()
    stat = os.stat(weights)
    weights.write_bytes(b"b" * 3000)  # same size: the modification time tells
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert file_digest(weights) == hashlib.sha256(b"b" * 3000).hexdigest()


def test_cache_entries_honour_the_umask(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    Cache(tmp_path).store("k", "a" * 64, torch.zeros(3))
    (entry,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert stat.S_IMODE(entry.stat().st_mode) == 0o666 & ~mask != 0o600


def test_a_geodesic_solve_is_reused_exactly_and_only_for_the_same_score_metric_solver_and_ends(tmp_path):
    """A run that differs only after the solve (its denoiser, its evaluation) reuses the
    solve: the same path, convergence and cost; another lam, another score (weights), other
    ends or another budget solve anew."""
    from scoregeo_cli.geometry.stein import SteinMetric
    from scoregeo_cli.geometry.solvers import GaussNewtonSolver
    from scoregeo_cli.methods.base import Plan
    from scoregeo_cli.methods.geodesic import Geodesic
    from scoregeo_cli.scores.analytic import EmpiricalScore
    from scoregeo_cli.spaces.base import Endpoints

    class KeyedScore(EmpiricalScore):
        def fingerprint(self):
            return digest("test", self.samples, self.sigma)

    angles = torch.linspace(0, 2 * math.pi, 65, dtype=torch.float64)[:-1]
    circle = torch.stack([angles.cos(), angles.sin()], 1)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    ends = Endpoints(a, b, a, b)
    cache = Cache(tmp_path)

    def solve(score, lam=100.0, max_evals=20, the_ends=ends):
        plan = Plan(nodes=6, metric=SteinMetric(score, lam=lam), solver=GaussNewtonSolver(nodes=6, max_evals=max_evals),
                    shooter=None, extrapolate=False, cache=cache)
        return Geodesic()(the_ends, plan, torch.Generator())

    score = KeyedScore(circle, 0.3)
    first, again = solve(score), solve(score)
    assert cache.report()["geodesic"] == {"reused": 1, "computed": 1}
    assert torch.equal(first.path, again.path) and torch.equal(first.energy, again.energy)
    assert first.score_evals == again.score_evals > 0 and first.seconds == again.seconds
    assert all(torch.equal(first.extra[k], again.extra[k]) for k in first.extra)
    assert not torch.allclose(first.path[:, 1:-1], (ends.a[:, None] + ends.b[:, None]) / 2)  # it moved
    solve(score, lam=10.0)
    solve(KeyedScore(circle * 1.01, 0.3))
    solve(score, the_ends=Endpoints(b, a, b, a))
    solve(score, max_evals=19)
    assert cache.report()["geodesic"] == {"reused": 1, "computed": 5}
    # a new revision of the solver's algorithm solves anew
    revised = type("Revised", (GaussNewtonSolver,), {"revision": GaussNewtonSolver.revision + 1})
    plan = Plan(nodes=6, metric=SteinMetric(score, lam=100.0), solver=revised(nodes=6, max_evals=20),
                shooter=None, extrapolate=False, cache=cache)
    Geodesic()(ends, plan, torch.Generator())
    assert cache.report()["geodesic"] == {"reused": 1, "computed": 6}
    GaussNewtonSolver.revision, saved = GaussNewtonSolver.revision + 1, GaussNewtonSolver.revision
    try:
        solve(score)
    finally:
        GaussNewtonSolver.revision = saved
    assert cache.report()["geodesic"] == {"reused": 1, "computed": 7}
    # a score that cannot be keyed is never cached
    solve(EmpiricalScore(circle, 0.3))
    assert cache.report()["geodesic"] == {"reused": 1, "computed": 7}
