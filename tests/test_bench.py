"""`scoregeo bench`: what its JSON holds per solver and problem."""

import json

import pytest

from scoregeo_cli.studies import bench

from helpers import RingField


def test_bench_records_passes_convergence_and_the_reference_error(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--problems", "sphere", "--pairs", "1", "--solvers", "fixed_point", "gauss_newton",
                       "--reference", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["solver"] for r in records] == ["lerp (no solve)", "fixed_point", "gauss_newton"]
    for r in records[1:]:
        assert r["network_passes_per_pair"] > 0 and r["converged"] in (0, 1) and r["pairs"] == 1
        # forward points + backward points x the measured cost of a backward pass
        assert r["network_passes_per_pair"] >= r["fwd_eq"] * 1 * 15 * 4 * 0.999  # one pair, 15 segments x 4 points
        assert r["network_passes_per_pair"] == pytest.approx(
            r["forward_passes_per_pair"] + r["vjp_cost"] * r["backward_passes_per_pair"], rel=1e-12)
        assert r["forward_passes_per_pair"] >= r["score_evals"] * 6  # at least the coarsest level's 3 x 2 points
    gn = records[-1]
    assert gn["g_length_error"] < 1e-2 and gn["ref_node_error"] < 1e-2
    assert gn["energy"] <= records[1]["energy"]  # Gauss-Newton minimises; the fixed point does not
    assert records[0]["g_length_error"] > 1  # the chord is far longer in this metric
    assert "passes/pair" in capsys.readouterr().out


def test_optimisers_run_on_the_unet_only_when_asked():
    assert "adam_reference" not in bench.DEFAULT_SOLVERS["mnist"]
    assert set(bench.SLOW_ON_UNET) == {"adam", "adam_reference"}


def test_the_oracle_compares_curves_not_their_resolutions():
    """A curve solved at 9 nodes and the same curve at 17 (a refinement of the not-a-knot
    spline, exactly the same curve) have different quadrature energies but one common length;
    a curve that is truly longer is measured longer. The true-rotation start sits on the
    refinement's ladder."""
    import torch

    from scoregeo_cli.geometry.solvers import AdaptiveSolver, GaussNewtonSolver, resample
    from scoregeo_cli.geometry.stein import SteinMetric
    from scoregeo_cli.studies.oracle_bench import common_length, start_nodes

    metric = SteinMetric(RingField(0.1), 100.0, interpolation="cubic", quadrature="gauss4")
    angles = torch.linspace(0, 2.5, 9, dtype=torch.float64)
    coarse = (1 + 0.05 * torch.sin(7 * angles))[:, None] * torch.stack([angles.cos(), angles.sin()], 1)
    coarse = coarse[None]
    fine = resample(coarse, 17)
    quadrature = metric.energy(coarse), metric.energy(fine)
    assert float((quadrature[0] - quadrature[1]).abs() / quadrature[1]) > 1e-3
    lengths = common_length(metric, coarse), common_length(metric, fine)
    assert torch.allclose(lengths[0], lengths[1], rtol=1e-10)
    detour = coarse.clone()
    detour[:, 4] *= 1.3
    assert float(common_length(metric, detour)) > 1.05 * float(lengths[0])
    assert start_nodes(AdaptiveSolver(16)) == 17 and start_nodes(AdaptiveSolver(8)) == 9
    assert start_nodes(AdaptiveSolver(16, refine_tol=None)) == 16 and start_nodes(GaussNewtonSolver(12)) == 12
    # the solver's own ladder: capped at max_nodes, from its own start_nodes (4, 7, 13, 25)
    assert start_nodes(AdaptiveSolver(16, max_nodes=12)) == 12 and start_nodes(AdaptiveSolver(16, start_nodes=4)) == 25


def test_the_oracle_problem_is_the_runs_pairs_noise_and_true_rotation(compose_cfg):
    """`scoregeo bench --problems oracle` solves what `scoregeo run experiment=learned_vs_exact
    score=orbit` solves: the same endpoints (pairs, then noise, from the run's generator), and
    its true-rotation start passes through them with the digit's rotations noised alike."""
    import torch

    from scoregeo_cli.studies.oracle_bench import oracle_problem
    from scoregeo_cli.tasks.images import ImageTask

    overrides = ["experiment=learned_vs_exact", "score=orbit", "score.t=300", "seed=1", "n_pairs=2",
                 "eval.fid=false"]
    prepared = ImageTask(extrapolate=False).prepare(compose_cfg(overrides))
    eps = torch.randn(prepared.n_pairs, prepared.score.dim, generator=prepared.generator, dtype=torch.float64)
    images_a, images_b = prepared.dataset.load([0, 1])
    ends = prepared.space.endpoints(prepared.space.encode(images_a), prepared.space.encode(images_b), eps)
    metric, solver, a, b, true_rotation = oracle_problem(300, 1, 2, compose_cfg)
    assert torch.equal(a, ends.a) and torch.equal(b, ends.b)
    path = true_rotation(5)
    assert torch.equal(path[:, 0], a) and torch.equal(path[:, -1], b)
    # the middle node is the digit rotated half-way, noised with the pair's noise
    truth = prepared.dataset.truth([0, 1], torch.tensor([0.5], dtype=torch.float64))[:, 0]
    abar = float(prepared.score.alphas_cumprod[300])
    expected = abar ** 0.5 * prepared.space.encode(truth) + (1 - abar) ** 0.5 * eps
    torch.testing.assert_close(path[:, 2], expected, rtol=1e-12, atol=1e-12)
    assert metric.lam == 1000.0 and solver.max_evals == 400


@pytest.mark.slow
def test_on_the_exact_orbit_score_the_solve_from_lerp_ends_no_higher_than_from_the_true_rotation(tmp_path):
    """Start independence on the oracle (t = 400, seed 0, 2 pairs): the default solver from
    LERP ends within 1% of the energy of the same solver started from the noised true rotation,
    or lower, on every pair (`scoregeo bench --problems oracle` measures it on 30 pairs per t)."""
    out = tmp_path / "oracle.json"
    assert bench.main(["--problems", "oracle", "--ts", "400", "--seeds", "0", "--oracle-pairs", "2",
                       "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    record = written["oracle"][0]
    assert record["t"] == 400 and record["pairs"] == 2
    assert "--oracle-pairs 2" in written["provenance"]["command"]  # the settings it was made with
    assert all(record["start_independent"]), record["lerp_over_true"]
    for start in ("lerp", "true"):
        assert len(record[start]["energy"]) == 2 and record[start]["score_evals"] <= 400


def test_readme_oracle_tables_are_the_records_in_docs_bench():
    """The README's oracle numbers come from the records in docs/bench: every record there is
    listed with its command in docs/bench/README.md, and each Newton-CG row of the README's
    table ("t | pairs (seed) | converged from LERP (Gauss-Newton) | ... | passes per pair
    (Gauss-Newton)") holds the counts and costs recomputed from its record, with the default's
    record on the same pairs in brackets where docs/bench has one."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    folder, readme = root / "docs" / "bench", (root / "README.md").read_text()
    listing = (folder / "README.md").read_text()
    files = sorted(folder.glob("*.json"))
    assert len(files) >= 11
    for path in files:
        assert f"`{path.name}`" in listing, path.name

    def record(name):
        (r,) = json.loads((folder / name).read_text())["oracle"]
        return r

    def cells(r, gn=None):
        n = r["pairs"]
        conv = [f"{sum(r[s]['converged'])}/{n}" for s in ("lerp", "true")]
        passes = f"{round(r['lerp']['network_passes_per_pair']):,}"
        if gn is not None:
            assert gn["pairs"] == n and gn["t"] == r["t"] and gn["seed"] == r["seed"]
            conv = [f"{c} ({sum(gn[s]['converged'])}/{n})" for c, s in zip(conv, ("lerp", "true"))]
            passes += f" ({round(gn['lerp']['network_passes_per_pair']):,})"
        return conv, passes

    checked = 0
    for path in (p for p in folder.glob("oracle_t*_seed*_newton.json") if not p.name.endswith("gauss_newton.json")):
        r = record(path.name)
        gn_name = path.name.replace("_newton.json", "_gauss_newton.json")
        gn = record(gn_name) if (folder / gn_name).exists() else None
        (conv_lerp, conv_true), passes = cells(r, gn)
        rows = [line for line in readme.splitlines()
                if line.strip().startswith(f"| {r['t']} | {r['pairs']} ({r['seed']}) |")]
        assert len(rows) == 1, (path.name, rows)
        columns = [c.strip() for c in rows[0].strip().strip("|").split("|")]
        assert columns[2].startswith(conv_lerp) and columns[3].startswith(conv_true), (path.name, columns)
        assert columns[6] == passes or columns[6].startswith(passes + " "), (path.name, columns, passes)
        checked += 1
    assert checked == 5
