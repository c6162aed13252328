"""Recipes, `scoregeo reproduce` and `scoregeo tables`, on run folders written by hand."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from scoregeo_cli import reproduce
from scoregeo_cli.reporting import recipe_figures, recipes, run_folders, tables
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io.files import atomic_write_json, mark_done

DEMO = """\
title: Demo table
seeds: [0, 1]
sweeps:
  - [experiment=sphere]
  - [experiment=sphere, dataset.ambient_dim=10]
table:
  group_header: manifold
  groups:
    - {label: codim 1, run: [experiment=sphere]}
    - {label: codim 8, run: [experiment=sphere, dataset.ambient_dim=10]}
  rows: [geodesic, lerp]
  columns:
    - {metric: geodesic_error_max, label: geodesic error (max), better: lower}
    - {metric: length_ratio, label: length ratio, better: 1}
    - {metric: score_evals, label: score evals}
"""

# per seed: {method: {metric: run mean}}
RUNS = {
    ("sphere/default", 0): {"geodesic": {"geodesic_error_max": 0.01, "length_ratio": 0.99, "score_evals": 5},
                            "lerp": {"geodesic_error_max": 0.3, "length_ratio": 0.9, "score_evals": 0}},
    ("sphere/default", 1): {"geodesic": {"geodesic_error_max": 0.03, "length_ratio": 1.03, "score_evals": 7},
                            "lerp": {"geodesic_error_max": 0.5, "length_ratio": 0.8, "score_evals": 0}},
    ("sphere/dataset.ambient_dim=10", 0): {
        "geodesic": {"geodesic_error_max": 0.2, "length_ratio": 1.2, "score_evals": 10},
        "lerp": {"geodesic_error_max": 0.1, "length_ratio": 0.95}},
    ("sphere/dataset.ambient_dim=10", 1): {
        "geodesic": {"geodesic_error_max": 0.4, "length_ratio": 1.4, "score_evals": 10},
        "lerp": {"geodesic_error_max": 0.1, "length_ratio": 0.97}},
}

# Cells computed by hand from RUNS: mean and sample std (n - 1) of the two seeds' means.
# codim 1, geodesic error: (0.01, 0.03) -> 0.02 ± 0.0141; lerp (0.3, 0.5) -> 0.4 ± 0.141.
# codim 1, length ratio: (0.99, 1.03) -> 1.01 ± 0.0283 (closest to 1); (0.9, 0.8) -> 0.85 ± 0.0707.
# codim 8: geodesic (0.2, 0.4) -> 0.3 ± 0.141, (1.2, 1.4) -> 1.3 ± 0.141;
#          lerp (0.1, 0.1) -> 0.1 ± 0 (best), (0.95, 0.97) -> 0.96 ± 0.0141 (best: |0.96 - 1| < 0.3).
EXPECTED_MD = """\
# demo: Demo table

| manifold | method | geodesic error (max) ↓ | length ratio →1 | score evals |
| --- | --- | --- | --- | --- |
| codim 1 | geodesic | **0.02 ± 0.014 (n=2)** | **1.01 ± 0.028 (n=2)** | 6 ± 1.4 (n=2) |
|  | lerp | 0.4 ± 0.14 (n=2) | 0.85 ± 0.071 (n=2) | 0 ± 0 (n=2) |
| codim 8 | geodesic | 0.3 ± 0.14 (n=2) | 1.3 ± 0.14 (n=2) | 10 ± 0 (n=2) |
|  | lerp | **0.1 ± 0 (n=2)** | **0.96 ± 0.014 (n=2)** | – |

Cells: mean ± std over seeds of each run's own mean (its summary.json, over its pairs or points); n = number of seeds.

Bold: best in its column within each manifold (→1 closest to 1 is best; ↓ lower is better; columns without an arrow are not ranked); –: metric not reported.

Commit: abc1234.

Runs (`<output_root>/<experiment>/<override_dirname>/seed=<k>`) and the command behind each manifold:

- codim 1: `sphere/default/seed={0,1}`, `scoregeo run -m experiment=sphere seed=0,1`
- codim 8: `sphere/dataset.ambient_dim=10/seed={0,1}`, `scoregeo run -m experiment=sphere dataset.ambient_dim=10 seed=0,1`
"""


def write_run(run_dir: Path, means: dict, overrides: list[str] | None = None, done: bool = True) -> None:
    """A finished run folder as `scoregeo run` leaves it (summary, overrides, DONE). Without
    ``overrides``, they are those a job of ``<experiment>/<override_dirname>/seed=<k>`` recorded."""
    summary = {m: {k: {"mean": v, "std": 0.0, "n": 8} for k, v in metrics.items()} for m, metrics in means.items()}
    atomic_write_json(run_dir / "summary.json", summary)
    if overrides is None:
        experiment, dirname, seed = run_dir.parts[-3:]
        overrides = [f"experiment={experiment}", *([] if dirname == "default" else dirname.split(",")),
                     seed]
    if overrides is not None:
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if done:
        mark_done(run_dir)


def recipe_book(tmp_path, monkeypatch, name: str, text: str) -> Path:
    """A recipe folder holding ``<name>.yaml`` (dedented ``text``), rendered at a fixed commit."""
    monkeypatch.setattr(tables, "git_commit", lambda: "abc1234")
    book = tmp_path / "recipes"
    book.mkdir()
    (book / f"{name}.yaml").write_text(textwrap.dedent(text))
    return book


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """A recipe folder holding demo.yaml and an output root with all four runs finished."""
    monkeypatch.setattr(tables, "git_commit", lambda: "abc1234")
    book = tmp_path / "recipes"
    book.mkdir()
    (book / "demo.yaml").write_text(DEMO)
    out = tmp_path / "out"
    for (folder, seed), means in RUNS.items():
        write_run(out / folder / f"seed={seed}", means)
    return book, out


def test_tables_renders_the_expected_markdown(demo, capsys):
    book, out = demo
    assert reproduce.tables_main(["--recipes", str(book), "--output-root", str(out)]) == 0
    assert (out / "tables" / "demo.md").read_text() == EXPECTED_MD
    assert "rendered: demo; incomplete: none" in capsys.readouterr().out


def test_latex_and_csv_carry_the_same_cells(demo):
    book, out = demo
    reproduce.tables_main(["--recipes", str(book), "--output-root", str(out)])
    tex = (out / "tables" / "demo.tex").read_text()
    assert r"\textbf{0.02 $\pm$ 0.014 (n=2)}" in tex
    assert r"geodesic error (max) $\downarrow$" in tex and "Commit: abc1234." in tex
    import pandas as pd

    frame = pd.read_csv(out / "tables" / "demo.csv")
    assert len(frame) == 2 * 2 * 3
    cell = frame[(frame.group == "codim 8") & (frame.method == "lerp") & (frame.metric == "length_ratio")].iloc[0]
    assert cell["mean"] == pytest.approx(0.96) and cell["std"] == pytest.approx(0.02 / 2 ** 0.5)
    assert cell["n"] == 2 and bool(cell["best"]) and cell["runs"] == "sphere/dataset.ambient_dim=10/seed={0,1}"
    assert frame[(frame.group == "codim 8") & (frame.method == "lerp") & (frame.metric == "score_evals")]["mean"].isna().all()


def test_missing_runs_are_named_not_rendered(demo, capsys):
    book, out = demo
    (out / "sphere" / "dataset.ambient_dim=10" / "seed=1" / "DONE").unlink()  # interrupted run
    assert reproduce.tables_main(["demo", "--recipes", str(book), "--output-root", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines == [f"demo: incomplete, 1 of 4 run(s) not finished (e.g. {out}/sphere/dataset.ambient_dim=10/seed=1); "
                     "make them with `scoregeo reproduce demo` (or render what exists with --partial)",
                     "rendered: none; incomplete: demo"]
    assert captured.err == ""
    assert not (out / "tables" / "demo.md").exists()
    assert reproduce.tables_main(["demo", "--strict", "--recipes", str(book), "--output-root", str(out)]) == 1

    # --partial renders what is there and says what is not
    assert reproduce.tables_main(["demo", "--partial", "--recipes", str(book), "--output-root", str(out)]) == 0
    md = (out / "tables" / "demo.md").read_text()
    assert "| codim 8 | geodesic | 0.2 ± 0 (n=1) |" in md
    assert "`sphere/dataset.ambient_dim=10/seed={0,1}`" in md and "(missing: seed 1)" in md


def test_complete_recipes_render_beside_incomplete_ones(demo, tmp_path, capsys):
    """`scoregeo tables` over several recipes: the complete one is rendered, the incomplete
    one listed in one line (how many runs it lacks, the command that makes them), exit 0."""
    book, out = demo
    (book / "more.yaml").write_text(DEMO.replace("dataset.ambient_dim=10", "dataset.ambient_dim=20"))
    assert reproduce.tables_main(["--recipes", str(book), "--output-root", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (out / "tables" / "demo.md").read_text() == EXPECTED_MD
    assert not (out / "tables" / "more.md").exists()
    incomplete = [line for line in lines if line.startswith("more: ")]
    assert len(incomplete) == 1 and "2 of 4 run(s) not finished" in incomplete[0]
    assert "make them with `scoregeo reproduce more`" in incomplete[0]
    assert lines[-1] == "rendered: demo; incomplete: more"
    assert reproduce.tables_main(["--strict", "--recipes", str(book), "--output-root", str(out)]) == 1


def test_a_corrupt_summary_is_named_with_the_command_that_remakes_it(demo, capsys):
    book, out = demo
    run = out / "sphere" / "default" / "seed=1"
    (run / "command.sh").write_text("scoregeo run experiment=sphere seed=1\n")
    (run / "summary.json").write_text('{"geodesic": {"geodesic_error_max": {"me')  # cut short
    assert reproduce.tables_main(["--recipes", str(book), "--output-root", str(out)]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"scoregeo tables: error: demo: {run / 'summary.json'} of a finished run cannot be read (")
    assert line.endswith("rerun=true remakes it: `scoregeo run experiment=sphere seed=1 rerun=true`")
    assert captured.out.splitlines()[-1] == "rendered: none; incomplete: none; failed: demo"


def test_dry_run_prints_the_sweeps_of_table_synthetic(capsys):
    assert reproduce.reproduce_main(["table_synthetic", "--dry-run"]) == 0
    assert capsys.readouterr().out == textwrap.dedent("""\
        scoregeo run -m 'method=[geodesic,geodesic_unit,geodesic_pullback,geodesic_conformal,lerp,slerp]' experiment=sphere dataset.ambient_dim=3,10,100 seed=0,1,2
        scoregeo run -m 'method=[geodesic,geodesic_unit,geodesic_pullback,geodesic_conformal,lerp,slerp]' experiment=circle seed=0,1,2
        scoregeo run -m 'method=[geodesic,geodesic_unit,geodesic_pullback,geodesic_conformal,lerp,slerp]' experiment=ellipse dataset.ambient_dim=2,10 seed=0,1,2
        """)
    assert reproduce.reproduce_main(["table_synthetic", "output_root=/tmp/x", "--seeds", "4", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "scoregeo run -m 'method=[geodesic,geodesic_unit,geodesic_pullback,geodesic_conformal,lerp,slerp]' "
        "experiment=circle seed=4 output_root=/tmp/x")


def test_reproduce_passes_overrides_through_and_requires_user_paths(capsys):
    assert reproduce.reproduce_main(["table2_morphbench", "score.pretrained=/w/sd21", "dataset.root=/d/mb",
                                  "--dry-run"]) == 0
    assert capsys.readouterr().out == ("scoregeo run -m experiment=sd_morphbench seed=0,1,2 "
                                       "score.pretrained=/w/sd21 dataset.root=/d/mb\n")
    with pytest.raises(ScoregeoError, match=r"needs score.pretrained=\.\.\. and dataset.root=\.\.\."):
        reproduce.reproduce_main(["table2_morphbench", "--dry-run"])
    with pytest.raises(ScoregeoError, match="use --seeds"):
        reproduce.reproduce_main(["table_synthetic", "seed=3", "--dry-run"])
    with pytest.raises(ScoregeoError, match="is a sweep"):
        reproduce.reproduce_main(["table_synthetic", "metric.lam=10,100", "--dry-run"])
    with pytest.raises(ScoregeoError, match="no recipe named 'nope'"):
        reproduce.reproduce_main(["nope"])


def test_reproduce_runs_unfinished_sweeps_then_renders(demo, monkeypatch, capsys):
    book, out = demo
    (out / "sphere" / "default" / "seed=1" / "DONE").unlink()
    calls = []

    def fake_run(cmd):  # stands in for the `scoregeo run -m` subprocess
        calls.append(cmd)
        write_run(out / "sphere" / "default" / "seed=1", RUNS[("sphere/default", 1)])
        return 0

    monkeypatch.setattr(reproduce.subprocess, "call", fake_run)
    argv = ["demo", f"output_root={out}", "--recipes", str(book)]
    assert reproduce.reproduce_main(argv) == 0
    assert len(calls) == 1  # the other sweep is finished: not launched
    assert calls[0][1:] == ["-m", "scoregeo_cli.cli", "run", "-m", "experiment=sphere", "seed=0,1",
                            f"output_root={out}"]
    assert (out / "tables" / "demo.md").read_text() == EXPECTED_MD
    assert "all 2 runs finished: scoregeo run -m experiment=sphere dataset.ambient_dim=10" in capsys.readouterr().out
    assert reproduce.reproduce_main(argv) == 0 and len(calls) == 1  # everything finished: nothing runs


def test_runs_with_user_paths_are_found_without_them(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "git_commit", lambda: "abc1234")
    book = tmp_path / "recipes"
    book.mkdir()
    (book / "sd.yaml").write_text(textwrap.dedent("""\
        title: SD
        seeds: [0]
        requires: [score.pretrained]
        sweeps: [[experiment=sd_morphbench]]
        table:
          groups: [{label: MorphBench, run: [experiment=sd_morphbench]}]
          rows: [geodesic, lerp]
          reference_rows: [roundtrip]
          columns: [{metric: fid, label: FID, better: lower}]
        """))
    out = tmp_path / "out"
    job = ["experiment=sd_morphbench", "seed=0", "score.pretrained=/w/sd21"]
    folder = run_folders.DirnameRule.from_conf().folder(out, "sd_morphbench", job, 0)
    from scoregeo_cli.resolvers import run_dirname

    # as `scoregeo run` names it (a path in a value: slashes become underscores, plus a hash)
    assert folder == out / "sd_morphbench" / run_dirname("score.pretrained=/w/sd21") / "seed=0"
    assert folder.parent.name.startswith("score.pretrained=_w_sd21-")
    write_run(folder, {"geodesic": {"fid": 80.0}, "lerp": {"fid": 90.0}, "roundtrip": {"fid": 10.0}}, job)
    summary = yaml.safe_load((folder / "summary.json").read_text())
    summary["lerp"]["fid"]["n_nonfinite"] = 2  # two pairs gave NaN: flagged, not hidden
    atomic_write_json(folder / "summary.json", summary)
    assert reproduce.tables_main(["--recipes", str(book), "--output-root", str(out)]) == 0
    md = (out / "tables" / "sd.md").read_text()
    assert "| geodesic | **80 ± 0 (n=1)** |" in md
    assert "| roundtrip | 10 ± 0 (n=1) |" in md and "roundtrip: reference, not ranked" in md
    assert "| lerp | 90 ± 0 (n=1) † |" in md and "†: some pairs (or whole seeds) gave NaN/Inf" in md
    assert "`scoregeo run -m experiment=sd_morphbench score.pretrained=/w/sd21 seed=0`" in md


def test_panels_and_level_plot(tmp_path, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    book = recipe_book(tmp_path, monkeypatch, "noise", """\
        title: Noise
        seeds: [0, 1]
        sweeps: [[experiment=sphere]]
        table:
          row_header: noise level
          groups: [{label: sphere, run: [experiment=sphere]}]
          rows: all
          columns: [{metric: angle_deg, label: angle, better: 180}]
        figures:
          - {name: curves, plot: {metrics: [angle_deg]}}
          - name: panels
            file: "*.png"
            panels: [{label: sphere 0, run: [experiment=sphere]}, {label: sphere 1, run: [experiment=sphere], file: sub/b.png}]
        """)
    out = tmp_path / "out"
    for seed in (0, 1):
        run = out / "sphere" / "default" / f"seed={seed}"
        # written in summary.json's sorted-key order; rows come out by increasing level
        write_run(run, {"sigma=0.05": {"angle_deg": 120.0 + seed}, "sigma=0.1": {"angle_deg": 170.0 + seed},
                        "sigma=0.5": {"angle_deg": 179.0}})
        plt.imsave(run / "noise_diagnostics.png", np.zeros((8, 16)))
        (run / "sub").mkdir()
        plt.imsave(run / "sub" / "b.png", np.ones((8, 16)))
    assert reproduce.tables_main(["--recipes", str(book), "--output-root", str(out)]) == 0
    md = (out / "tables" / "noise.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| sigma")]
    assert rows == ["| sigma=0.05 | 120 ± 0.71 (n=2) |", "| sigma=0.1 | 170 ± 0.71 (n=2) |",
                    "| sigma=0.5 | **179 ± 0 (n=2)** |"]
    for name in ("curves", "panels"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
        assert "Commit: abc1234." in (out / "figures" / f"{name}.md").read_text()
    assert "`sphere/default/seed=0/sub/b.png`" in (out / "figures" / "panels.md").read_text()

    (out / "sphere" / "default" / "seed=0" / "noise_diagnostics.png").unlink()
    capsys.readouterr()
    assert reproduce.tables_main(["noise", "--recipes", str(book), "--output-root", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("noise: incomplete, 1 file(s) its figures show missing from finished runs (e.g. "
                           f"{out / 'sphere' / 'default' / 'seed=0' / '*.png'}; ")


def test_shipped_recipes_load_and_cover_their_groups():
    names = {p.stem for p in recipes.available()}
    assert {"table_synthetic", "appendix_noise", "table_rotated_mnist", "table2_morphbench",
            "fig_sphere_paths", "fig_mnist_strips"} <= names
    for path in recipes.available():
        recipes.load(path)


def test_a_group_no_sweep_makes_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO.replace("  - [experiment=sphere, dataset.ambient_dim=10]\n", ""))
    with pytest.raises(ScoregeoError, match="group 'codim 8' .* is made by none of its sweeps"):
        recipes.load(bad)



def test_pooled_columns_pool_the_pairs_of_all_seeds_and_the_paired_figure_draws_them(tmp_path, monkeypatch):
    """A pooled column's paired cell is the mean of the per-pair differences to LERP over the
    pairs of every seed, with the 95% percentile bootstrap interval of those differences
    (checked against numpy directly); a plain pooled column is the mean over pairs; the paired
    figure draws one point per group at its level."""
    import json

    import numpy as np

    from scoregeo_cli.evaluation.rows import row
    from scoregeo_cli.io.files import atomic_write_text

    book = recipe_book(tmp_path, monkeypatch, "pooled", """\
        title: Pooled
        seeds: [0, 1]
        sweeps: [[experiment=sphere, "score.sigma=0.1,0.2"]]
        table:
          groups: [{label: s1, run: [experiment=sphere, score.sigma=0.1]}, {label: s2, run: [experiment=sphere, score.sigma=0.2]}]
          rows: [geodesic]
          columns:
            - {metric: psnr_minus_lerp, label: dPSNR, better: higher, pooled: true}
            - {metric: converged, label: converged, pooled: true}
        figures:
          - name: gain
            kind: paired
            method: geodesic
            y: {metric: psnr_minus_lerp}
            x: {from: level}
            groups: [{label: s1, series: a, x: 0.1, run: [experiment=sphere, score.sigma=0.1]},
                     {label: s2, series: a, x: 0.2, run: [experiment=sphere, score.sigma=0.2]}]
        """)
    out = tmp_path / "out"
    rng = np.random.default_rng(0)
    diffs = {}
    for sigma in (0.1, 0.2):
        diffs[sigma] = []
        for seed in (0, 1):
            run = out / "sphere" / f"score.sigma={sigma}" / f"seed={seed}"
            lerp = rng.normal(10, 1, 6)
            d = rng.normal(sigma * 10, 0.5, 6)
            diffs[sigma] += list(d)
            rows = [row(p, "lerp", "psnr", lerp[p]) for p in range(6)]
            rows += [row(p, "geodesic", "psnr", lerp[p] + d[p]) for p in range(6)]
            rows += [row(p, "geodesic", "converged", float(p % 3 != 0)) for p in range(6)]
            write_run(run, {"geodesic": {"psnr": 0.0}, "lerp": {"psnr": 0.0}})
            atomic_write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert reproduce.tables_main(["--recipes", str(book), "--output-root", str(out)]) == 0
    csv = (out / "tables" / "pooled.csv").read_text().splitlines()
    md = (out / "tables" / "pooled.md").read_text()
    for sigma, label in ((0.1, "s1"), (0.2, "s2")):
        d = np.asarray(diffs[sigma])
        means = d[np.random.default_rng(0).integers(0, 12, (10_000, 12))].mean(1)
        lo, hi = np.quantile(means, [0.025, 0.975])
        line = next(li for li in md.splitlines() if li.startswith(f"| {label} "))
        assert f"{d.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]" in line, (line, d.mean(), lo, hi)
        assert "| 0.667 |" in line  # 8 of 12 solves converged, pooled over both seeds
        rec = next(r for r in csv if r.startswith(f",{label},geodesic,psnr_minus_lerp"))
        assert rec.split(",")[6] == "12"  # n counts pairs
    assert "pooled over the pairs of all seeds (12 pairs in every cell)" in md
    for suffix in ("png", "pdf", "md"):
        assert (out / "figures" / f"gain.{suffix}").stat().st_size > 0
    points = recipe_figures.paired_points(recipes.load(book / "pooled.yaml").figures[0],
                                  [run_folders.RunLocator(out, [], []).locate(g, [0, 1])
                                   for g in recipes.load(book / "pooled.yaml").figures[0].groups])
    assert [p["x"] for p in points] == [0.1, 0.2]
    assert [round(p["y"].mean, 12) for p in points] == [round(float(np.mean(diffs[s])), 12) for s in (0.1, 0.2)]


def test_a_group_names_its_values_as_a_sweep_job_records_them(tmp_path):
    """Hydra records `solver.gtol=1e-5` as `solver.gtol=1e-05` (and `False` for false): a group
    written either way names the same runs as the sweep that makes them."""
    path = tmp_path / "fmt.yaml"
    path.write_text(textwrap.dedent("""\
        title: Formats
        sweeps: [[experiment=sphere, solver.gtol=1e-5, eval.figure=false]]
        table:
          groups: [{label: g, run: [experiment=sphere, solver.gtol=1e-5, eval.figure=false]}]
          columns: [psnr]
        """))
    recipe = recipes.load(path)
    assert recipe.table.groups[0].run == ["experiment=sphere", "solver.gtol=1e-05", "eval.figure=False"]


def test_tables_in_an_empty_folder_counts_each_recipes_runs_once(tmp_path, capsys):
    """A recipe's count of runs: each configuration and seed once, whichever groups name it,
    and for a figure of panels only the seed it shows (fig_mnist_strips reads one run, not 2)."""
    assert reproduce.tables_main(["--output-root", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for name, runs in (("fig_mnist_strips", 1), ("fig_sphere_paths", 4), ("table_synthetic", 18),
                       ("table_rotated_mnist", 3)):
        assert f"{name}: incomplete, {runs} of {runs} run(s) not finished" in out, out
