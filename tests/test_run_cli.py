"""The command line end to end: runs, sweeps and resume (bad input: tests/test_bad_inputs.py)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import invoke_cli

from scoregeo_cli.tasks.noise import NoiseDiagnosticsTask
from scoregeo_cli.tasks.synthetic import SyntheticTask


def test_multirun_then_resume_skips_finished_runs(tmp_path, monkeypatch, capsys):
    args = ["run", "-m", "experiment=sphere", "metric.lam=10,1000", "n_pairs=2",
            "eval.figure=false", f"output_root={tmp_path}"]
    _cli(args, monkeypatch, capsys)
    runs = sorted(tmp_path.glob("sphere/*/seed=0"))
    assert [r.parent.name for r in runs] == ["eval.figure=False,metric.lam=10,n_pairs=2",
                                             "eval.figure=False,metric.lam=1000,n_pairs=2"]
    for run in runs:
        assert (run / "DONE").exists() and (run / "command.sh").exists()
        summary = json.loads((run / "summary.json").read_text())
        assert set(summary) == {"geodesic", "lerp", "slerp"}
        assert summary["geodesic"]["geodesic_error_max"]["n"] == 2
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert {r["method"] for r in rows} == {"geodesic", "lerp", "slerp"}
    # lam = 1000 bends the path onto the sphere; lam = 10 barely does
    err = {r.parent.name: json.loads((r / "summary.json").read_text())["geodesic"]["geodesic_error_max"]["mean"]
           for r in runs}
    assert err["eval.figure=False,metric.lam=1000,n_pairs=2"] < 0.1 * err["eval.figure=False,metric.lam=10,n_pairs=2"]
    stamp = runs[0].joinpath("summary.json").stat().st_mtime_ns
    assert _cli(args, monkeypatch, capsys).count("skipping finished run") == 2
    assert runs[0].joinpath("summary.json").stat().st_mtime_ns == stamp


def test_default_run_beats_lerp_tenfold(compose_cfg, tmp_path):
    cfg = compose_cfg(["n_pairs=4", "eval.figure=false"])
    rows = SyntheticTask().run(cfg, tmp_path)
    err = {m: max(r["value"] for r in rows if r["method"] == m and r["metric"] == "geodesic_error_max")
           for m in ("geodesic", "lerp")}
    assert err["geodesic"] < 0.1 * err["lerp"]


def test_noise_diagnostics_residual_shrinks_like_sigma_squared(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=sphere_noise", "eval.sigmas=[0.01,0.02]", "eval.points=64"])
    rows = NoiseDiagnosticsTask().run(cfg, tmp_path)
    res = {m: sum(r["value"] for r in rows if r["method"] == m and r["metric"] == "residual") / 64
           for m in ("sigma=0.01", "sigma=0.02")}
    assert res["sigma=0.02"] / res["sigma=0.01"] == pytest.approx(4.0, rel=0.05)
    angles = [r["value"] for r in rows if r["metric"] == "angle_deg" and r["method"] == "sigma=0.01"]
    assert max(angles) < 1.0  # at small noise the score points straight back to the sphere
    assert (tmp_path / "noise_diagnostics.png").exists()


def test_codimension_above_one_runs(compose_cfg, tmp_path):
    cfg = compose_cfg(["dataset.ambient_dim=10", "n_pairs=2", "eval.figure=false"])
    rows = SyntheticTask().run(cfg, tmp_path)
    value = {(r["pair"], r["metric"]): r["value"] for r in rows if r["method"] == "geodesic"}
    for p in range(2):
        # the solver finds the metric's own shortest geodesic (within 1% in continuous g-length)...
        assert value[p, "g_length_ratio"] < 1.01
        # ...which leaves the sphere's 3-space and the great circle: with codimension > 1 even the
        # exact score's rank-one metric prefers a path off the data manifold
        assert value[p, "geodesic_error_max"] > 0.01


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "scoregeo_cli.cli", "--help"], capture_output=True, text=True)
    for name in ("run", "train", "bench", "reproduce", "tables", "weights", "lpips", "fid"):
        assert f"  {name}" in out.stdout


def test_run_folder_names_stay_flat_short_and_unique():
    from scoregeo_cli.resolvers import run_dirname

    assert run_dirname("") == "default"
    assert run_dirname("metric.lam=10,n_pairs=2") == "metric.lam=10,n_pairs=2"
    name = run_dirname("score.checkpoint=/a/b.pt,seed=1")
    assert "/" not in name and name.startswith("score.checkpoint=_a_b.pt,seed=1-")
    # values whose only difference is where the slashes are get different folders
    assert run_dirname("score.checkpoint=/x/col/a_b/m.pt") != run_dirname("score.checkpoint=/x/col_a/b/m.pt")
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    assert len(run_dirname(long_a)) <= 180 and run_dirname(long_a) != run_dirname(long_b)


def _cli(argv, monkeypatch, capsys):
    code, out, err = invoke_cli(argv, monkeypatch, capsys)
    assert code == 0, err
    return out


def test_paths_that_differ_only_in_slashes_get_their_own_runs(tmp_path, monkeypatch, capsys):
    """score.checkpoint=/x/col/a_b/m.pt and /x/col_a/b/m.pt once shared a folder, and the
    second was skipped as finished with the first checkpoint's numbers."""
    import shutil

    import yaml

    checkpoints = []
    for seed, where in ((0, "col/a_b"), (1, "col_a/b")):
        _cli(["train", "experiment=sphere", "score=mlp", "score.train.steps=2", f"seed={seed}",
              f"output_root={tmp_path}/train"], monkeypatch, capsys)
        target = tmp_path / "x" / where / "m.pt"
        target.parent.mkdir(parents=True)
        shutil.copy(tmp_path / f"train/train/sphere/mlp/seed-{seed}/mlp.pt", target)
        checkpoints.append(target)
    runs = []
    for checkpoint in checkpoints:
        argv = ["run", "score=mlp", f"score.checkpoint={checkpoint}", "method=[lerp]", "n_pairs=2",
                "eval.figure=false", f"output_root={tmp_path}/out"]
        out = _cli(argv, monkeypatch, capsys)
        assert "skipping finished run" not in out
        runs.append(Path(out.split(" -> ")[1].splitlines()[0]))
    assert runs[0] != runs[1] and runs[0].parent.parent == runs[1].parent.parent
    for run, checkpoint in zip(runs, checkpoints):
        assert (run / "DONE").exists()
        assert f"score.checkpoint={checkpoint}" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    energy = [json.loads((r / "summary.json").read_text())["lerp"]["energy"]["mean"] for r in runs]
    assert energy[0] != energy[1]  # each run scored with its own checkpoint
    # the same request again is skipped: its recorded overrides equal the requested ones
    again = _cli(["run", "score=mlp", f"score.checkpoint={checkpoints[1]}", "method=[lerp]", "n_pairs=2",
                  "eval.figure=false", f"output_root={tmp_path}/out"], monkeypatch, capsys)
    assert f"skipping finished run {runs[1]}" in again


def test_a_sweep_composes_each_job_once(tmp_path, monkeypatch, capsys):
    """scoregeo's sweeper composes every job to check it; its launcher runs that config."""
    from hydra_plugins.scoregeo_plugins import scoregeo_sweeper

    composed = []
    original = scoregeo_sweeper.compose

    def compose(hydra_context, config, overrides):
        composed.append(tuple(sorted(o for o in overrides if o.startswith(("seed=", "metric.lam=")))))
        return original(hydra_context, config, overrides)

    monkeypatch.setattr(scoregeo_sweeper, "compose", compose)
    out = _cli(["run", "-m", "experiment=sphere", "seed=0,1", "metric.lam=1000", "n_pairs=2", "eval.figure=false",
                f"output_root={tmp_path}"], monkeypatch, capsys)
    assert sorted(composed) == [("metric.lam=1000", "seed=0"), ("metric.lam=1000", "seed=1")]
    assert len(list(tmp_path.rglob("DONE"))) == 2
    assert f"2 run(s) of the sweep: {tmp_path}/sphere/<overrides>/seed=<k>" in out


def test_a_bad_job_refuses_the_whole_sweep_before_any_runs(tmp_path, monkeypatch, capsys):
    code, out, err = invoke_cli(["run", "-m", "experiment=sphere", "metric.lam=1000,-1", "seed=0,1", "n_pairs=2",
                                 f"output_root={tmp_path}/out"], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines() == ["scoregeo: error: metric.lam must be >= 0, got -1"]
    assert not (tmp_path / "out").exists()  # no job ran, no folder was made


def test_no_patches_of_hydra_internals():
    """scoregeo extends Hydra through its public plugin, callback and config interfaces only."""
    repo = Path(__file__).resolve().parents[1]
    sources = [*repo.joinpath("scoregeo_cli").rglob("*.py"), *repo.joinpath("hydra_plugins").rglob("*.py")]
    assert sources
    assert [p for p in sources if "hydra._internal" in p.read_text()] == []


def test_printed_table_fits_120_columns_and_keeps_every_metric():
    from scoregeo_cli.reporting.results import format_summary

    metrics = [f"extrapolation_metric_{k:02d}" for k in range(12)]
    summary = {m: {k: {"mean": 123.456789, "std": 0.0123, "n": 2} for k in metrics}
               for m in ("geodesic", "geodesic_pullback", "lerp")}
    text = format_summary(summary, width=120)
    assert max(map(len, text.splitlines())) <= 120
    assert all(text.count(k) == 1 for k in metrics)  # every column once, in blocks
    assert text.count("geodesic_pullback") == text.count("\n\n") + 1  # row names repeat in each block


def test_noise_diagnostics_table_heads_its_rows_sigma(tmp_path, monkeypatch, capsys):
    out = _cli(["run", "experiment=sphere_noise", "eval.sigmas=[0.05,0.1]", "eval.points=8",
                f"output_root={tmp_path}"], monkeypatch, capsys)
    table = out[out.index("metric rows in"):].splitlines()[1:]
    assert table[0].split()[:2] == ["sigma", "angle_deg"]
    assert [line.split()[0] for line in table[2:4]] == ["0.05", "0.1"]


def test_a_launcher_reporting_a_failed_job_ends_in_one_sentence():
    """A launcher that raises for a failed job (submitit's UncompletedJobError): one
    sentence that names the job logs, not the launcher's traceback."""
    from omegaconf import OmegaConf

    from scoregeo_cli.jobs import report_failed_launch
    from scoregeo_cli.errors import ScoregeoError

    config = OmegaConf.create({"hydra": {"sweep": {"dir": "/o/sphere"},
                                         "launcher": {"submitit_folder": "/o/sphere/.submitit/%j"}}})

    class UncompletedJobError(RuntimeError):
        pass

    with pytest.raises(ScoregeoError) as caught:
        report_failed_launch(config, UncompletedJobError("Job 42 (task: 0) with path /o/x\nhas not produced any output"))
    assert str(caught.value) == ("a job of the sweep failed (UncompletedJobError: Job 42 (task: 0) with path /o/x); "
                                 "its log: /o/sphere/.submitit/<job id>/<job id>_0_log.out")


@pytest.mark.slow
def test_submitit_local_checks_every_job_first_and_says_where_results_are(tmp_path):
    """hydra/launcher=submitit_local (the [slurm] extra): a bad job refuses the sweep in the
    launching process at once (exit 2, one line, nothing made); a good sweep leaves no
    literal `%j` folder and prints where the run folders and the jobs' logs are."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    base = [sys.executable, "-m", "scoregeo_cli.cli", "run", "-m", "hydra/launcher=submitit_local", "n_pairs=2",
            "eval.figure=false"]
    began = time.monotonic()
    bad = subprocess.run([*base, "metric.lam=10,-1", f"output_root={tmp_path}/bad"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines() == ["scoregeo: error: metric.lam must be >= 0, got -1"]
    assert time.monotonic() - began < 20 and not (tmp_path / "bad").exists()

    good = subprocess.run([*base, "seed=0,1", f"output_root={tmp_path}/good"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stderr
    sweep = tmp_path / "good" / "sphere"
    assert len(list(sweep.rglob("DONE"))) == 2
    assert not list(sweep.rglob("%j"))
    assert f"2 run(s) of the sweep: {sweep}/<overrides>/seed=<k>" in good.stdout
    assert f"is in submitit's logs: {sweep}/.submitit/<job id>/<job id>_0_log.out" in good.stdout
    logs = list((sweep / ".submitit").rglob("*_0_log.out"))
    assert len(logs) == 2 and all("metric rows in" in log.read_text() for log in logs)
