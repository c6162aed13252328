"""Cost accounting of the solvers in network passes, the coarse-to-fine Gauss-Newton solve,
and the default solver on a small learned score against a fine reference."""

import pytest
import torch

from scoregeo_cli.data.synthetic import Sphere
from scoregeo_cli.geometry.stein import SteinMetric
from scoregeo_cli.geometry.solvers import (AdaptiveSolver, GaussNewtonSolver, gradient_norm, network_passes,
                                           resample, straight_path)
from scoregeo_cli.scores.base import ScoreField

from helpers import RingField


class ConstantField(ScoreField):
    """s(x) = c everywhere: the metric is constant, its energy quadratic in the nodes, and
    Gauss-Newton solves it in one step (J = 0: the linearised residuals are exact)."""

    def __init__(self, c: torch.Tensor):
        super().__init__(c.shape[0])
        self.c = c

    def _score(self, x):
        return self.c + 0 * x


class MLPField(ScoreField):
    """A small float32 network trained to a score; evaluated on float64 points like the UNet."""

    def __init__(self, net: torch.nn.Module, dim: int):
        super().__init__(dim)
        self.net = net

    def _score(self, x):
        return self.net(x.float()).to(x.dtype)


def test_gauss_newton_counts_its_passes_on_a_problem_solved_in_one_step():
    g = torch.Generator().manual_seed(0)
    d, p, nodes = 5, 3, 9
    c = torch.randn(d, generator=g, dtype=torch.float64)
    metric = SteinMetric(ConstantField(c), 10.0, interpolation="cubic", quadrature="gauss4")
    a, b = torch.randn(p, d, generator=g, dtype=torch.float64), torch.randn(p, d, generator=g, dtype=torch.float64)
    init = straight_path(a, b, nodes)
    init[:, 1:-1] += 0.1 * torch.randn(p, nodes - 2, d, generator=g, dtype=torch.float64)
    result = GaussNewtonSolver(nodes, max_evals=20, gtol=1e-8)(metric, a, b, init)
    k = 4 * (nodes - 1)  # quadrature points of one path
    # evaluate the start, linearise it, one trial (accepted: rho = 1), linearise it (the
    # trial's own evaluation: no second forward pass), converged
    assert result.score_evals == 2 and result.vjp_evals == 2 and result.iterations == 1
    assert result.score_points == 2 * k * p and result.vjp_points == 2 * k * p
    assert bool(result.converged.all())
    assert network_passes(result, 1.5) == pytest.approx(2 * k + 1.5 * 2 * k)
    # the straight line in a constant metric
    assert torch.allclose(result.path, straight_path(a, b, nodes), atol=1e-9)


def test_the_default_counts_every_phase_and_returns_the_requested_nodes():
    """A constant score: the metric is constant, every stage of the continuation, every level
    and the last solve land on the straight line in one step, and every refinement keeps its
    g-length: the refinement stops at the first level with at least the requested nodes."""
    g = torch.Generator().manual_seed(1)
    d, p, nodes = 5, 2, 9
    metric = SteinMetric(ConstantField(torch.randn(d, generator=g, dtype=torch.float64)), 10.0,
                         interpolation="cubic", quadrature="gauss4")
    a, b = torch.randn(p, d, generator=g, dtype=torch.float64), torch.randn(p, d, generator=g, dtype=torch.float64)
    metric.score.reset_counters()
    result = AdaptiveSolver(nodes, max_evals=60, start_nodes=5)(metric, a, b)
    assert result.path.shape == (p, nodes, d)
    assert result.score_points == metric.score.points  # every pass of every phase counted
    assert result.score_evals == metric.score.calls
    assert result.solve_nodes == 9 and result.solved_path.shape == (p, 9, d)  # 5 -> 9 nodes
    assert bool(result.resolved.all()) and float(result.length_change.max()) < 1e-12
    assert bool(result.converged.all())
    assert torch.allclose(result.path, straight_path(a, b, nodes), atol=1e-8)


def test_refinement_stops_when_the_length_is_resolved_and_says_when_it_is_not():
    """On the smoothed sphere the g-length of the solved curve changes by less than
    refine_tol between two levels at some resolution: the solver stops there and records the
    change; capped below that resolution it reports the pairs as not resolved."""
    sphere = Sphere(2, 3, 1.0, centre_offset=0.5, angle_range=(60, 150), seed=0)
    a, b = sphere.pairs(2, torch.Generator().manual_seed(0))
    metric = SteinMetric(sphere.exact_score(0.15), 1000.0, interpolation="cubic", quadrature="gauss4")
    result = AdaptiveSolver(9, max_evals=300, refine_tol=1e-3, start_nodes=5)(metric, a, b)
    assert bool(result.resolved.all()) and bool(result.converged.all())
    assert float(result.length_change.max()) < 1e-3
    # measured outside the solver: the curve one level coarser differs by the recorded change
    coarser = AdaptiveSolver((result.solve_nodes + 1) // 2, max_evals=300, refine_tol=None, continuation=[])(
        metric, a, b)
    change = (metric.length(result.solved_path) - metric.length(coarser.path)).abs() / metric.length(result.solved_path)
    assert torch.allclose(change, result.length_change, rtol=0.2, atol=2e-5)
    capped = AdaptiveSolver(5, max_evals=300, refine_tol=1e-9, start_nodes=3, max_nodes=5)(metric, a, b)
    assert capped.solve_nodes == 5 and not bool(capped.resolved.any())
    assert bool((capped.length_change >= 1e-9).all())


def test_a_level_cut_short_by_its_budget_does_not_count_as_resolved():
    """The g-length of two levels can agree because the finer level never moved the resampled
    curve (its solve stopped at its share of the budget): on a blurred ring (sigma 0.05,
    lam 1000) 20 evaluations end converged at 17 nodes with a length change of 0.15%, but the
    levels' solves were cut short, so the pairs are not resolved; 400 evaluations resolve them."""
    angles_a, angles_b = torch.tensor([0.0, 0.5], dtype=torch.float64), torch.tensor([2.5, 3.0], dtype=torch.float64)
    a = torch.stack([angles_a.cos(), angles_a.sin()], 1)
    b = torch.stack([angles_b.cos(), angles_b.sin()], 1)
    metric = SteinMetric(RingField(0.05), 1000.0, interpolation="cubic", quadrature="gauss4")
    short = AdaptiveSolver(16, max_evals=20)(metric, a, b)
    assert short.solve_nodes == 17 and bool(short.converged.all())
    assert bool((short.length_change < 0.01).all()) and not bool(short.resolved.any())
    full = AdaptiveSolver(16, max_evals=400)(metric, a, b)
    assert bool(full.resolved.all()) and bool(full.converged.all())


def test_each_pair_is_refined_on_its_own():
    """On the blurred ring with refine_tol 1e-5 a short arc is resolved at 9 nodes, a half
    circle needs 65: solved in one batch each pair ends where it ends alone (same nodes, same
    energy) and the batch costs the sum of the single solves' passes, not every pair at the
    finest pair's nodes. The batch's solved curves are each pair's own curve."""
    angles_a, angles_b = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64), torch.tensor([0.2, 3.0, 2.5],
                                                                                          dtype=torch.float64)
    a = torch.stack([angles_a.cos(), angles_a.sin()], 1)
    b = torch.stack([angles_b.cos(), angles_b.sin()], 1)
    metric = SteinMetric(RingField(0.05), 1000.0, interpolation="cubic", quadrature="gauss4")
    solver = AdaptiveSolver(5, max_evals=400, refine_tol=1e-5)
    alone = []
    for p in range(3):
        metric.score.reset_counters()
        alone.append(solver(metric, a[p:p + 1], b[p:p + 1]))
    metric.score.reset_counters()
    batch = solver(metric, a, b)
    nodes = [int(r.solve_nodes) for r in alone]
    assert nodes[0] == 9 and nodes[1] == 65 and batch.nodes_per_pair.tolist() == nodes
    assert batch.solve_nodes == 65 and batch.solved_path.shape == (3, 65, 2)
    assert bool(batch.converged.all())
    for p, r in enumerate(alone):
        assert float(batch.energy[p]) == pytest.approx(float(r.energy[0]), rel=1e-8)
        assert torch.allclose(batch.solved_path[p], resample(r.solved_path, 65)[0], atol=1e-8)
        assert torch.allclose(batch.path[p], r.path[0], atol=1e-8)
    assert batch.score_points == sum(r.score_points for r in alone)


def test_resample_keeps_a_cubic_and_the_ends():
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    curve = torch.stack([t, t**3 - t, 2 * t**2], dim=-1)[None]  # (1, 5, 3): a cubic in t
    fine = resample(curve, 17)
    tf = torch.linspace(0, 1, 17, dtype=torch.float64)
    assert torch.allclose(fine[0], torch.stack([tf, tf**3 - tf, 2 * tf**2], dim=-1), atol=1e-12)
    assert torch.equal(fine[:, 0], curve[:, 0]) and torch.equal(fine[:, -1], curve[:, -1])


def learned_sphere_score(sigma=0.3, steps=300, seed=0):
    """An MLP (float32) regressed on the exact score of a smoothed circle in R^3 for a few
    hundred Adam steps: a small learned score, smooth but not exact."""
    torch.manual_seed(seed)
    sphere = Sphere(1, 3, 1.0, seed=seed)
    exact = sphere.exact_score(sigma)
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                              torch.nn.Linear(64, 3))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = sphere.sample(256, g) + 0.4 * torch.randn(256, 3, generator=g, dtype=torch.float64)
        target = exact(x).float()
        loss = ((net(x.float()) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.requires_grad_(False)
    return sphere, MLPField(net, 3)


def test_default_solver_matches_a_fine_reference_on_a_learned_score():
    """In float32 the plain solver to a relative gradient of 1e-8 spends its budget; the
    default converges, and its path has the g-length and the nodes of a fine reference."""
    from test_solver_truth import defaults

    sphere, field = learned_sphere_score()
    a, b = sphere.pairs(3, torch.Generator().manual_seed(2))
    solver, metric_factory, _ = defaults(["metric.lam=10"])
    metric = metric_factory(score=field)
    result = solver(metric, a, b)
    assert bool(result.converged.all())
    reference = GaussNewtonSolver(2 * solver.nodes - 1, max_evals=300, gtol=1e-7, etol=1e-8)(metric, a, b)
    ref_length = metric.length(reference.path)
    assert torch.allclose(metric.length(result.path), ref_length, rtol=1e-2)
    dense = resample(reference.path, 257)
    from scoregeo_cli.data.synthetic import polyline_distance

    for p in range(3):
        assert float(polyline_distance(result.path[p], dense[p]).max()) <= 0.01 * float((b[p] - a[p]).norm())
    # the path bends along the learned circle rather than cutting the chord
    assert float(gradient_norm(metric, result.path).max()) < float(gradient_norm(metric, straight_path(
        a, b, solver.nodes)).min())
