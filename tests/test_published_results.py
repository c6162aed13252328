"""Published results: `scoregeo tables --publish` writes every complete recipe's table
(Markdown and CSV), figures, provenance and report page into a results folder, and
`scoregeo tables --readme` generates the README's result regions from those files.

The publishing tests run on run folders written here in a temporary folder; the last test
checks the repository's own README against its docs/results (skipped, saying why, while
nothing is published).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from scoregeo_cli import reproduce
from scoregeo_cli.io.files import atomic_write_json, mark_done
from scoregeo_cli.reporting import tables
from scoregeo_cli.reporting.publish import published_tables, readme_differences, regions

REPO = Path(__file__).resolve().parents[1]
MACHINE = {"cpu": "Test CPU 9000", "cores": 8, "system": "Linux x86_64", "python": "3.11.7", "torch": "2.13.0",
           "threads": 1}

BOOK = {
    "done": """\
        title: A finished table
        seeds: [0, 1]
        sweeps: [[experiment=sphere]]
        table:
          groups: [{label: sphere, run: [experiment=sphere]}]
          rows: [geodesic, lerp]
          columns: [{metric: geodesic_error_max, label: geodesic error (max), better: lower}]
        figures:
          - {name: done_panels, file: paths.png, panels: [{label: sphere, run: [experiment=sphere]}]}
        """,
    "half": """\
        title: A table with a run missing
        seeds: [0, 1]
        sweeps: [[experiment=circle]]
        table:
          groups: [{label: circle, run: [experiment=circle]}]
          columns: [geodesic_error_max]
        """,
}


def finished_run(run_dir: Path, seed: int, error: float, wall: float) -> None:
    """A finished run folder with its summary, recorded overrides, provenance and a figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    atomic_write_json(run_dir / "summary.json", {
        "geodesic": {"geodesic_error_max": {"mean": error, "std": 0.0, "n": 8}},
        "lerp": {"geodesic_error_max": {"mean": 0.4, "std": 0.0, "n": 8}}})
    experiment = run_dir.parts[-3]
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"experiment={experiment}", f"seed={seed}"]))
    atomic_write_json(run_dir / "provenance.json", {
        "command": f"scoregeo run experiment={experiment} seed={seed}", "commit": "1234567", "commit_modified": False,
        "started": f"2026-01-0{seed + 1}T10:00:00+00:00", "finished": f"2026-01-0{seed + 1}T10:01:00+00:00",
        "wall_seconds": wall, "machine": MACHINE})
    plt.imsave(run_dir / "paths.png", np.linspace(0, 1, 64).reshape(8, 8))
    mark_done(run_dir)


@pytest.fixture
def published(tmp_path, monkeypatch, capsys):
    """The two recipes above, `done` with both runs finished and `half` with one, published
    into tmp_path/results: (results folder, stdout of the command, its exit code)."""
    monkeypatch.setattr(tables, "git_commit", lambda: "abc1234")
    book = tmp_path / "recipes"
    book.mkdir()
    for name, text in BOOK.items():
        (book / f"{name}.yaml").write_text(textwrap.dedent(text))
    out = tmp_path / "out"
    finished_run(out / "sphere" / "default" / "seed=0", 0, 0.01, 2.0)
    finished_run(out / "sphere" / "default" / "seed=1", 1, 0.03, 3.5)
    finished_run(out / "circle" / "default" / "seed=0", 0, 0.02, 1.0)
    results = tmp_path / "results"
    code = reproduce.tables_main(["--recipes", str(book), "--output-root", str(out), "--publish", str(results)])
    return results, capsys.readouterr().out, code


def test_publish_writes_each_complete_recipe_with_its_provenance(published):
    results, out, code = published
    assert code == 0
    assert "published to" in out and ": done; incomplete: half" in out
    assert "half: incomplete, 1 of 2 run(s) not finished" in out and "(not published)" in out
    assert not (results / "half.md").exists() and not (results / "half.html").exists()
    md = (results / "done.md").read_text()
    assert "| geodesic | **0.02 ± 0.014 (n=2)** |" in md
    assert "## Provenance" in md
    assert ("Published " in md and "at commit abc1234 from 2 run(s), made at commit 1234567; between "
            "2026-01-01T10:00:00+00:00 and 2026-01-02T10:01:00+00:00 (UTC); wall time 5.5 s summed over the runs; "
            "on Test CPU 9000 (8 cores), 1 torch thread, Linux x86_64, Python 3.11.7, torch 2.13.0.") in md
    csv = (results / "done.csv").read_text().splitlines()
    assert csv[0].startswith("section,group,method,metric,mean,std,n,best") and len(csv) == 3
    record = json.loads((results / "done.json").read_text())
    assert record["published_at_commit"] == "abc1234" and record["wall_seconds_total"] == 5.5
    assert [(r["seed"], r["folder"], r["commit"], r["machine"]["cpu"]) for r in record["runs"]] == [
        (0, "sphere/default/seed=0", "1234567", "Test CPU 9000"), (1, "sphere/default/seed=1", "1234567", "Test CPU 9000")]
    assert (results / "figures" / "done_panels.png").stat().st_size > 0
    assert "Commit: abc1234." in (results / "figures" / "done_panels.md").read_text()
    page = (results / "done.html").read_text()
    assert "Test CPU 9000 (8 cores)" in page and "data:image/png;base64," in page
    assert 'href="done.html"' in (results / "index.html").read_text()
    assert "| `done` | A finished table | 2 | 1234567 |" in (results / "README.md").read_text()
    assert published_tables(results) == ["done"]


def test_the_readme_regions_are_generated_from_the_published_files(published, tmp_path, capsys):
    results, _, _ = published
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n\nText.\n\n<!-- results:done -->\nstale\n<!-- /results -->\n\nMore text.\n")
    assert reproduce.tables_main(["--readme", str(readme), "--results", str(results)]) == 0
    text = readme.read_text()
    assert text.startswith("# Project\n\nText.\n\n<!-- results:done -->\n| method | geodesic error (max) ↓ |")
    assert "| geodesic | **0.02 ± 0.014 (n=2)** |" in text and "stale" not in text
    assert ("*Generated from [results/done.md](results/done.md) (published " in text
            and "2 runs at commit 1234567, wall time 5.5 s; Test CPU 9000 (8 cores)" in text)
    assert text.endswith("by `scoregeo tables --readme`.*\n<!-- /results -->\n\nMore text.\n")
    capsys.readouterr()
    assert reproduce.tables_main(["--readme", str(readme), "--results", str(results), "--check"]) == 0
    assert "1 results region(s), 0 differ" in capsys.readouterr().out

    # the published table changes (republished from other runs): the README disagrees until refilled
    done = results / "done.md"
    done.write_text(done.read_text().replace("0.02 ± 0.014", "0.025 ± 0.014"))
    assert reproduce.tables_main(["--readme", str(readme), "--results", str(results), "--check"]) == 1
    assert "the README's results:done differs from" in capsys.readouterr().out
    assert readme_differences(readme.read_text(), results, "results") != []
    assert reproduce.tables_main(["--readme", str(readme), "--results", str(results)]) == 0
    assert readme_differences(readme.read_text(), results, "results") == []

    # a region of a recipe that is not published
    readme.write_text(readme.read_text() + "<!-- results:half -->\n<!-- /results -->\n")
    capsys.readouterr()
    assert reproduce.tables_main(["--readme", str(readme), "--results", str(results), "--check"]) == 1
    assert "the README shows results:half but" in capsys.readouterr().out


def test_the_readme_agrees_with_docs_results():
    """Every results region of the README is what `scoregeo tables --readme` writes from
    docs/results; until results are published there is nothing to compare."""
    readme = (REPO / "README.md").read_text()
    results = REPO / "docs" / "results"
    if not regions(readme) and not published_tables(results):
        pytest.skip("no results published yet: docs/results holds no table and the README no results region "
                    "(`scoregeo tables --publish`, then `scoregeo tables --readme`)")
    assert readme_differences(readme, results, "docs/results") == []
