"""`scoregeo bench`: what its JSON holds per solver and problem."""

import json

import pytest

from scoregeo_cli.studies import bench


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
