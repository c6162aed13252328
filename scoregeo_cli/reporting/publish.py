"""Published results: every complete recipe's rendered table (Markdown and CSV), figures,
provenance and report page, committed under ``docs/results/`` so that a reader sees them
without running anything; and the README's result tables, generated from those files.

``publish`` renders each recipe whose runs are all finished (into a temporary folder first,
so a recipe is published whole or not at all) and writes, in the results folder:

* ``NAME.md`` (the table as ``scoregeo tables`` renders it, then a provenance paragraph),
  ``NAME.csv``, ``NAME.json`` (the provenance: the commit and date of publishing, and per run
  its folder, command, commit, start, end, wall time and machine);
* ``figures/FIGURE.png`` (and ``.pdf``, ``.md`` captions);
* the report pages ``NAME.html`` and ``index.html`` (``reporting.report``), and ``README.md``
  listing what is published.

A README region ``<!-- results:NAME -->`` ... ``<!-- /results -->`` holds the table(s) of
``NAME.md`` and one line saying where they come from; ``fill_readme`` rewrites every region
from the results folder and ``readme_differences`` lists the regions that disagree with it.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io.files import atomic_write_json, atomic_write_text
from scoregeo_cli.reporting import recipes as rc
from scoregeo_cli.reporting import run_folders as rf
from scoregeo_cli.reporting.aggregate import MissingRuns, recipe_runs
from scoregeo_cli.reporting.provenance import describe_machine, now, read_provenance
from scoregeo_cli.reporting.report import duration, write_report
from scoregeo_cli.reporting.tables import render

RESULTS_DIR = Path("docs") / "results"
REGION = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


# --------------------------------------------------------------------------- provenance of a recipe

def recipe_provenance(recipe: rc.Recipe, output_root: Path, commit: str, conf_dir: Path = rc.CONF_DIR) -> dict:
    """What a published recipe was made from: per finished run its group, seed, folder and
    record (``provenance.read_provenance``), and the totals (commits, machines, the first
    start and last end, the wall time summed over runs)."""
    root = Path(output_root)
    locator = rf.RunLocator(root, [], recipe.requires, conf_dir)
    runs, seen = [], set()
    for group in recipe.groups():
        loc = locator.locate(group, recipe.seeds)
        for seed, run_dir in loc.runs.items():
            if run_dir is None or Path(run_dir) in seen:
                continue
            seen.add(Path(run_dir))
            record = read_provenance(run_dir)
            try:
                folder = Path(run_dir).relative_to(root).as_posix()
            except ValueError:
                folder = Path(run_dir).as_posix()
            runs.append({"group": group.label, "seed": seed, "folder": folder,
                         **{k: record.get(k) for k in ("command", "commit", "commit_modified", "started", "finished",
                                                       "wall_seconds", "machine")}})
    walls = [r["wall_seconds"] for r in runs if r.get("wall_seconds") is not None]
    commits = sorted({r["commit"] + (" (modified)" if r.get("commit_modified") else "") for r in runs if r.get("commit")})
    machines = list(dict.fromkeys(describe_machine(r["machine"]) for r in runs if r.get("machine")))
    starts = sorted(r["started"] for r in runs if r.get("started"))
    ends = sorted(r["finished"] for r in runs if r.get("finished"))
    return {"recipe": recipe.name, "title": recipe.title, "published": now(), "published_at_commit": commit,
            "runs_total": recipe_runs(recipe, recipe.seeds), "runs": runs,
            "run_commits": commits, "machines": machines,
            "first_start": starts[0] if starts else None, "last_end": ends[-1] if ends else None,
            "wall_seconds_total": round(sum(walls), 3) if walls else None,
            "wall_seconds_recorded": len(walls)}


def provenance_paragraph(record: dict) -> str:
    """One paragraph (Markdown) of a recipe's provenance."""
    runs = record["runs"]
    day = (record.get("published") or "")[:10]
    parts = [f"Published {day} at commit {record['published_at_commit']} from {len(runs)} run(s)"]
    parts.append(f"made at commit {', '.join(record['run_commits'])}" if record["run_commits"]
                 else "whose commit was not recorded")
    if record.get("first_start") or record.get("last_end"):
        parts.append(f"between {record.get('first_start') or '?'} and {record.get('last_end') or '?'} (UTC)")
    if record.get("wall_seconds_total") is not None:
        counted = record["wall_seconds_recorded"]
        parts.append(f"wall time {duration(record['wall_seconds_total'])} summed over "
                     + ("the runs" if counted == len(runs) else f"the {counted} runs that recorded it"))
    parts.append(f"on {'; '.join(record['machines'])}" if record["machines"] else "machine not recorded")
    return ", ".join(parts[:2]) + "; " + "; ".join(parts[2:]) + (
        f". Each run's record is in `{record['recipe']}.json`.")


# --------------------------------------------------------------------------- publishing

@dataclass
class Published:
    names: list[str] = field(default_factory=list)           # recipes published
    incomplete: list[tuple[str, str]] = field(default_factory=list)  # (name, one line saying what is missing)
    failed: list[tuple[str, str]] = field(default_factory=list)      # (name, the error)
    written: list[Path] = field(default_factory=list)


def publish(recipes: list[rc.Recipe], output_root: Path, results_dir: Path, commit: str, strips: int = 2,
            strip_groups: int = 8, conf_dir: Path = rc.CONF_DIR) -> Published:
    """Publish every complete recipe of ``recipes`` from the runs under ``output_root`` into
    ``results_dir`` (see the module docstring); incomplete recipes are listed, not published,
    and what an earlier publication left of them stays."""
    results_dir = Path(results_dir)
    done = Published()
    for recipe in recipes:
        with tempfile.TemporaryDirectory(prefix="scoregeo-publish-") as tmp:
            try:
                render(recipe, output_root, commit=commit, conf_dir=conf_dir, out_dir=Path(tmp))
            except MissingRuns as err:
                done.incomplete.append((recipe.name, err.describe(recipe, recipe_runs(recipe, recipe.seeds))))
                continue
            except ScoregeoError as err:
                done.failed.append((recipe.name, str(err)))
                continue
            record = recipe_provenance(recipe, output_root, commit, conf_dir)
            table = Path(tmp) / "tables" / f"{recipe.name}.md"
            if table.exists():
                text = table.read_text().rstrip("\n") + "\n\n## Provenance\n\n" + provenance_paragraph(record) + "\n"
                atomic_write_text(results_dir / table.name, text)
                done.written.append(results_dir / table.name)
                csv = table.with_suffix(".csv")
                shutil.copyfile(csv, results_dir / csv.name)
                done.written.append(results_dir / csv.name)
            for figure in sorted((Path(tmp) / "figures").glob("*")):
                (results_dir / "figures").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(figure, results_dir / "figures" / figure.name)
                done.written.append(results_dir / "figures" / figure.name)
            atomic_write_json(results_dir / f"{recipe.name}.json", record)
            done.written.append(results_dir / f"{recipe.name}.json")
            done.names.append(recipe.name)
    published = [r for r in recipes if r.name in done.names]
    if published:
        done.written += write_report(published, output_root, results_dir, commit, strips=strips,
                                     strip_groups=strip_groups, conf_dir=conf_dir)
        done.written.append(write_index(results_dir))
    return done


def write_index(results_dir: Path) -> Path:
    """``<results_dir>/README.md``: every recipe published there, with its provenance line."""
    results_dir = Path(results_dir)
    lines = ["# Published results", "",
             "Written by `scoregeo tables --publish` from finished runs; the README's result tables are "
             "generated from these files by `scoregeo tables --readme`. Open `index.html` for the report pages.", "",
             "| recipe | what | runs | made at commit | published | wall time | files |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for path in sorted(results_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or "recipe" not in record:
            continue
        name = record["recipe"]
        files = [f"[{s}]({name}.{s})" for s in ("md", "csv", "html") if (results_dir / f"{name}.{s}").exists()]
        wall = duration(record.get("wall_seconds_total")) if record.get("wall_seconds_total") is not None else "–"
        lines.append(f"| `{name}` | {record.get('title', '')} | {len(record.get('runs', []))} | "
                     f"{', '.join(record.get('run_commits') or []) or '–'} | {(record.get('published') or '')[:10]} | "
                     f"{wall} | {' '.join(files)} |")
    atomic_write_text(results_dir / "README.md", "\n".join(lines) + "\n")
    return results_dir / "README.md"


# --------------------------------------------------------------------------- the README's regions

def region_body(name: str, results_dir: Path, link_base: str = "docs/results") -> str:
    """What the README shows of a published recipe: the table(s) of ``NAME.md`` (each section's
    title and rows) and a line saying where they come from."""
    path = Path(results_dir) / f"{name}.md"
    try:
        text = path.read_text()
    except OSError as err:
        raise ScoregeoError(f"the README shows results:{name} but {path} cannot be read ({err.strerror}); "
                            f"publish it with `scoregeo tables {name} --publish`") from None
    blocks, current, title = [], [], None
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
            continue
        if current:
            blocks.append(([title] if title else []) + current)
            current, title = [], None
        if re.fullmatch(r"\*\*.+\*\*", line.strip()):
            title = line.strip()
    if current:
        blocks.append(([title] if title else []) + current)
    if not blocks:
        raise ScoregeoError(f"{path} holds no table to show in the README")
    record = _record(Path(results_dir) / f"{name}.json")
    source = f"[{link_base}/{name}.md]({link_base}/{name}.md)"
    if record:
        commits = ", ".join(record.get("run_commits") or []) or "not recorded"
        wall = (f", wall time {duration(record['wall_seconds_total'])}" if record.get("wall_seconds_total") is not None
                else "")
        machines = "; ".join(record.get("machines") or []) or "machine not recorded"
        source += (f" (published {(record.get('published') or '')[:10]}; {len(record.get('runs', []))} runs at commit "
                   f"{commits}{wall}; {machines})")
    out = []
    for block in blocks:
        out += block[:1] + [""] + block[1:] if block[0].startswith("**") else block
        out.append("")
    out.append(f"*Generated from {source} by `scoregeo tables --readme`.*")
    return "\n".join(out) + "\n"


def _record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def regions(text: str) -> list[str]:
    """The recipe names of the README's result regions, in order."""
    return [m.group("name") for m in REGION.finditer(text)]


def fill_readme(text: str, results_dir: Path, link_base: str = "docs/results") -> str:
    """The README with every result region rewritten from the results folder (``link_base``:
    that folder as the README links it, relative to the README's own folder)."""
    return REGION.sub(lambda m: m.group(1) + region_body(m.group("name"), results_dir, link_base) + m.group(4), text)


def readme_differences(text: str, results_dir: Path, link_base: str = "docs/results") -> list[str]:
    """One line per README region that is not what ``fill_readme`` would write (or names a
    recipe not published)."""
    out = []
    for m in REGION.finditer(text):
        try:
            expected = region_body(m.group("name"), results_dir, link_base)
        except ScoregeoError as err:
            out.append(str(err))
            continue
        if m.group("body") != expected:
            out.append(f"the README's results:{m.group('name')} differs from {Path(results_dir) / m.group('name')}.md; "
                       "`scoregeo tables --readme` rewrites it")
    return out


def published_tables(results_dir: Path) -> list[str]:
    """Recipes with a published table in the results folder."""
    return sorted(p.stem for p in Path(results_dir).glob("*.md") if p.name != "README.md"
                  and (p.with_suffix(".json")).exists())

