"""`scoregeo report`: one static, self-contained HTML page per recipe and an index, from what
is on disk (the recipes and the finished runs under an output root).

A page holds the recipe's table (cells with their intervals and n, best values bold), its
figures, a few image strips of each configuration (one row per method, the angle or the
fraction of the path over each column, as the runs drew them), the provenance of every run
(command, commit, seed, start and wall time, machine; each configuration's overrides and its
config's difference from the experiment's defaults) and, for a recipe whose runs are not all
finished, what is missing and the command that makes it. Images are embedded as data URIs:
a page is one file that needs nothing else, no network and no script. Pages are rendered
from Jinja2 templates (``reporting/templates``) with autoescaping on.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io.files import atomic_write_text
from scoregeo_cli.reporting import recipes as rc
from scoregeo_cli.reporting import run_folders as rf
from scoregeo_cli.reporting.aggregate import MissingRuns, PooledCell, recipe_runs
from scoregeo_cli.reporting.provenance import describe_machine, now, read_provenance
from scoregeo_cli.reporting.recipe_figures import render_figure
from scoregeo_cli.reporting.tables import build_table

TEMPLATES = Path(__file__).resolve().parent / "templates"
# keys whose difference from the experiment's defaults says where or how a run executed,
# not what it computed (and seed, shown on its own)
NOT_CONFIGURATION = ("seed", "output_root", "rerun", "threads", "cache")


# --------------------------------------------------------------------------- what a page shows

@dataclass
class Picture:
    title: str
    uri: str          # data:image/png;base64,...
    caption: str = ""


@dataclass
class RunView:
    seed: int
    folder: str       # relative to the output root
    finished: bool
    command: str = ""
    commit: str = ""
    started: str = ""
    ended: str = ""
    wall: str = ""
    machine: str = ""


@dataclass
class GroupView:
    label: str
    command: str                      # the sweep that makes its runs
    overrides: list[str]
    diff: list[tuple[str, str, str]] | None  # (key, the experiment's default, this configuration's value)
    runs: list[RunView]
    strips: list[Picture] = field(default_factory=list)
    more_strips: int = 0              # strips in its run folder not shown

    @property
    def missing(self) -> list[int]:
        return [r.seed for r in self.runs if not r.finished]


@dataclass
class TableView:
    sections: list[dict]   # {title, head: [...], rows: [{group, method, cells: [{text, best}]}]}
    notes: list[str]       # the table's footer sentences (its run list is the provenance section)
    with_group: bool


@dataclass
class Page:
    name: str
    title: str
    description: str
    file: str                  # the page's file name
    runs_total: int
    runs_finished: int
    table: TableView | None
    figures: list[Picture]
    problems: list[str]        # figures or cells that could not be drawn, and why
    groups: list[GroupView]
    missing: list[str]         # one line per unfinished run or missing file
    reproduce: str             # the command that makes what is missing
    commit: str                # of the checkout that rendered the page
    generated: str
    wall_total: str = ""
    machines: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and self.runs_finished == self.runs_total


# --------------------------------------------------------------------------- building a page

def data_uri(path: Path) -> str:
    kind = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
            "svg": "image/svg+xml"}.get(path.suffix.lower().lstrip("."), "application/octet-stream")
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def duration(seconds: float | None) -> str:
    """'1 h 02 min', '3 min 05 s', '4.2 s', or '' when unknown."""
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _cell_text(cell) -> str:
    """A cell as the Markdown table writes it; a pooled cell also says its n (pairs), which
    the Markdown table gives once in its footer."""
    if cell is None:
        return "–"
    return cell.text() + (f" (n={cell.n})" if isinstance(cell, PooledCell) else "")


def _table_view(rendered) -> TableView:
    t = rendered.recipe.table
    with_group = len(t.groups) > 1
    sections = []
    for section, lines in rendered.sections:
        head = [f"{c.label} {c.arrow}".strip() for c in section.columns]
        rows, previous = [], None
        for group, method, cells in lines:
            rows.append({"group": group if group != previous else "", "method": method,
                         "cells": [{"text": _cell_text(c), "best": bool(c is not None and c.best)} for c in cells]})
            previous = group
        sections.append({"title": section.title, "head": [t.group_header] * with_group + [t.row_header] + head,
                         "rows": rows})
    notes = [line for line in rendered.footer_lines() if not line.startswith(("- ", "Runs (", "Commit:"))]
    return TableView(sections, notes, with_group)


class Defaults:
    """The experiments' default configs (composed with Hydra's compose API, once each) and
    the difference of a run's recorded config from them."""

    def __init__(self, conf_dir: Path = rc.CONF_DIR):
        self.conf_dir = Path(conf_dir)
        self._flat: dict[str, dict | None] = {}

    def flat(self, experiment: str) -> dict | None:
        if experiment not in self._flat:
            self._flat[experiment] = self._compose(experiment)
        return self._flat[experiment]

    def _compose(self, experiment: str) -> dict | None:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        GlobalHydra.instance().clear()
        try:  # scoregeo's own sweeper and launcher are not needed (nor registered) to compose
            with initialize_config_dir(version_base="1.3", config_dir=str(self.conf_dir)):
                cfg = compose("config", overrides=[f"experiment={experiment}", "hydra/sweeper=basic",
                                                   "hydra/launcher=basic"])
            return flatten(OmegaConf.to_container(cfg, resolve=False))
        except Exception:  # noqa: BLE001  (an experiment of another checkout: no diff, not a failure)
            return None
        finally:
            GlobalHydra.instance().clear()

    def diff(self, run_dir: Path, experiment: str) -> list[tuple[str, str, str]] | None:
        """(key, default, the run's value) of every key where the run's recorded config
        (``.hydra/config.yaml``) differs from the experiment's defaults, where it says what
        the run computes; None when there is nothing to compare (no recorded config, an
        experiment this checkout does not have)."""
        import yaml

        base = self.flat(experiment)
        try:
            recorded = yaml.safe_load((Path(run_dir) / ".hydra" / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return None
        if base is None or not isinstance(recorded, dict):
            return None
        mine = flatten(recorded)
        keys = sorted(set(base) | set(mine))
        out = []
        for key in keys:
            if key.split(".")[0] in NOT_CONFIGURATION or base.get(key, _ABSENT) == mine.get(key, _ABSENT):
                continue
            out.append((key, _shown(base.get(key, _ABSENT)), _shown(mine.get(key, _ABSENT))))
        return out


_ABSENT = object()


def _shown(value) -> str:
    if value is _ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value)


def flatten(data, key: str = "") -> dict:
    """{dotted key: leaf value} of a nested mapping (lists are leaves)."""
    if not isinstance(data, dict):
        return {key: data}
    out = {}
    for name, value in data.items():
        full = f"{key}.{name}" if key else str(name)
        if isinstance(value, dict) and value:
            out.update(flatten(value, full))
        else:
            out[full] = value
    return out


def _strips(run_dir: Path | None, limit: int, label: str, seed: int) -> tuple[list[Picture], int]:
    if run_dir is None or limit <= 0:
        return [], 0
    found = sorted(run_dir.glob("strips/*.png"))
    return ([Picture(f"{label}: {p.stem} (seed {seed})", data_uri(p)) for p in found[:limit]],
            max(0, len(found) - limit))


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def build_page(recipe: rc.Recipe, output_root: Path, commit: str, strips: int = 2, strip_groups: int = 8,
               defaults: Defaults | None = None, conf_dir: Path = rc.CONF_DIR) -> Page:
    """Everything the page of one recipe shows, read from the finished runs under
    ``output_root`` (figures are drawn into a temporary folder and embedded)."""
    root = Path(output_root)
    defaults = defaults or Defaults(conf_dir)
    locator = rf.RunLocator(root, [], recipe.requires, conf_dir)
    seeds = recipe.seeds
    problems: list[str] = []
    missing: list[str] = []

    table = None
    if recipe.table is not None:
        try:
            table = _table_view(build_table(recipe, locator, seeds, commit, partial=True))
        except ScoregeoError as err:  # e.g. a finished run's summary.json cannot be read
            problems.append(f"table: {err}")

    figures: list[Picture] = []
    with tempfile.TemporaryDirectory(prefix="scoregeo-report-") as tmp:
        for fig in recipe.figures:
            try:
                written = render_figure(recipe, fig, locator, seeds, Path(tmp), commit, partial=True)
            except MissingRuns as err:
                missing += [f"{_relative(f, root)}: a file figure {fig.name} shows is missing" for f in err.files]
                problems.append(f"figure {fig.name}: none of its runs is finished")
                continue
            except ScoregeoError as err:
                problems.append(f"figure {fig.name}: {err}")
                continue
            image = next((p for p in written if p.suffix == ".png"), None)
            if image is not None:
                figures.append(Picture(fig.name, data_uri(image), fig.caption))

    groups: list[GroupView] = []
    finished_runs: set[Path] = set()
    walls, machines, commits = [], [], []
    for k, group in enumerate(recipe.groups()):
        loc = locator.locate(group, seeds)
        runs = []
        for seed in seeds:
            run_dir, expected = loc.runs[seed], loc.folders[seed]
            if run_dir is None:
                runs.append(RunView(seed, _relative(expected, root), False))
                continue
            record = read_provenance(run_dir)
            finished_runs.add(Path(run_dir))
            if record.get("wall_seconds") is not None and Path(run_dir) not in {w[0] for w in walls}:
                walls.append((Path(run_dir), float(record["wall_seconds"])))
            machine = describe_machine(record.get("machine"))
            if record.get("machine") and machine not in machines:
                machines.append(machine)
            shown_commit = (record.get("commit") or "") + (" (modified)" if record.get("commit_modified") else "")
            if shown_commit and shown_commit not in commits:
                commits.append(shown_commit)
            runs.append(RunView(seed, _relative(run_dir, root), True, command=record.get("command") or "",
                                commit=shown_commit or "not recorded", started=record.get("started") or "",
                                ended=record.get("finished") or "", wall=duration(record.get("wall_seconds")),
                                machine=machine))
        first = next((loc.runs[s] for s in seeds if loc.runs[s] is not None), None)
        first_seed = next((s for s in seeds if loc.runs[s] is not None), seeds[0])
        shown, more = _strips(first, strips if k < strip_groups else 0, group.label, first_seed)
        diff = defaults.diff(first, rf.values(group.run)["experiment"]) if first is not None else None
        groups.append(GroupView(group.label, loc.command(), list(group.run), diff, runs, shown, more))
    total = recipe_runs(recipe, seeds)
    for view in groups:
        missing += [f"{r.folder}: not finished ({view.label}, seed {r.seed})" for r in view.runs if not r.finished]
    missing = list(dict.fromkeys(missing))
    reproduce = f"scoregeo reproduce {recipe.name}" + "".join(f" {k}=..." for k in recipe.requires)
    return Page(name=recipe.name, title=recipe.title, description=recipe.description, file=f"{recipe.name}.html",
                runs_total=total, runs_finished=min(len(finished_runs), total), table=table, figures=figures,
                problems=problems, groups=groups, missing=missing, reproduce=reproduce, commit=commit,
                generated=now(), wall_total=duration(sum(w for _, w in walls)) if walls else "",
                machines=machines, commits=commits)


# --------------------------------------------------------------------------- writing pages

CODE = re.compile(r"`([^`]+)`")


def _code_spans(text: str):
    """Text with `code` spans as <code> elements (the text itself escaped)."""
    from markupsafe import Markup, escape

    parts = CODE.split(str(text))
    return Markup("").join(escape(p) if i % 2 == 0 else Markup("<code>%s</code>") % p for i, p in enumerate(parts))


def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["code"] = _code_spans
    return env


def write_report(recipes: list[rc.Recipe], output_root: Path, out_dir: Path, commit: str, strips: int = 2,
                 strip_groups: int = 8, only_with_runs: bool = False, conf_dir: Path = rc.CONF_DIR) -> list[Path]:
    """Write ``<out_dir>/<recipe>.html`` for each recipe (with ``only_with_runs``, only those
    with a finished run) and ``<out_dir>/index.html`` listing every recipe. Returns the
    pages written, the index last."""
    env = environment()
    out_dir = Path(out_dir)
    defaults = Defaults(conf_dir)
    pages = [build_page(r, output_root, commit, strips, strip_groups, defaults, conf_dir) for r in recipes]
    written = []
    for page in pages:
        if only_with_runs and page.runs_finished == 0:
            continue
        html = env.get_template("recipe.html.j2").render(page=page, version=_version())
        atomic_write_text(out_dir / page.file, html)
        written.append(out_dir / page.file)
    listed = [{"page": p, "written": (out_dir / p.file) in written} for p in pages]
    index = env.get_template("index.html.j2").render(pages=listed, commit=commit, generated=now(),
                                                     output_root=str(output_root), version=_version())
    atomic_write_text(out_dir / "index.html", index)
    return [*written, out_dir / "index.html"]


def _version() -> str:
    from scoregeo_cli import __version__

    return __version__

