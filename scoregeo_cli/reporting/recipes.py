"""Recipes: the sweeps behind one paper table or figure.

A recipe is a YAML file in ``experiments/`` (see ``experiments/README.md``). It lists

* ``sweeps``: each a list of ``scoregeo run -m`` overrides (without ``seed``);
* ``seeds``: the seeds every sweep runs with;
* ``table`` and/or ``figures``: the layout, whose groups name the run configuration that
  feeds them by its overrides (``run: [experiment=sphere, dataset.ambient_dim=10]``).

``load`` reads and checks one recipe; every group of its layout must be made by one of its
sweeps. Where the groups' runs are is ``run_folders``' business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scoregeo_cli import paths
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.reporting.run_folders import DirnameRule, expand, experiment_name, parse, values

RECIPES_DIR = paths.RECIPES_DIR
CONF_DIR = paths.CONF_DIR
# keys a recipe fixes itself: extra overrides may not change them
RESERVED_KEYS = ("seed", "experiment")
BETTER_WORDS = ("lower", "higher", "none")


# --------------------------------------------------------------------------- recipe model

@dataclass
class Column:
    metric: str
    label: str
    better: str | float  # "lower" | "higher" | "none" | a target value (closest is best)
    # pooled: over the pairs of all seeds (metrics.jsonl): a paired difference ("<m>_minus_lerp")
    # as mean [95% bootstrap interval], any other metric as its mean; else mean ± std over seeds
    pooled: bool = False

    @property
    def arrow(self) -> str:
        if self.better == "lower":
            return "↓"
        if self.better == "higher":
            return "↑"
        if self.better == "none":
            return ""
        return f"→{self.better:g}"


@dataclass
class Section:
    title: str | None
    columns: list[Column]


@dataclass
class Group:
    """One run configuration (all seeds of it): a block of rows, a panel or a curve."""

    label: str
    run: list[str]       # overrides naming the configuration, experiment=... first
    experiment: str      # the experiment_name (the folder under output_root)
    file: str | None = None  # panels only: this panel's image glob, instead of the figure's
    series: str | None = None  # paired figures: the line this group is a point of
    style: str | None = None   # paired figures: how its line is drawn (ladder | mismatch | exact | blend | plain)
    x: float | None = None     # paired figures with x from: level: this point's x


@dataclass
class Table:
    groups: list[Group]
    rows: list[str] | str   # method names, or "all"
    sections: list[Section]
    reference_rows: list[str] = field(default_factory=list)  # shown after the rows, never ranked
    group_header: str = "setting"
    row_header: str = "method"


@dataclass
class Figure:
    name: str
    kind: str                  # "panels" (images from run folders) | "plot" (metric vs level)
    groups: list[Group]
    file: str = ""             # panels: a glob inside the run folder
    seed: int | None = None    # panels: which seed's image (default: the first seed)
    ncols: int = 0
    metrics: list[dict] = field(default_factory=list)  # plot: [{metric, label, log}]
    caption: str = ""
    method: str = "geodesic"   # paired: the method whose difference to LERP is drawn
    y: dict = field(default_factory=dict)  # paired: {metric: <m>_minus_lerp, label}
    x: dict = field(default_factory=dict)  # paired: {from: level, label, log} or {metric, method, label, log}


@dataclass
class Recipe:
    name: str
    title: str
    description: str
    seeds: list[int]
    sweeps: list[list[str]]
    requires: list[str]
    table: Table | None
    figures: list[Figure]
    path: Path

    # ----------------------------------------------------------------- commands and folders

    def commands(self, extras: list[str] = (), seeds: list[int] | None = None) -> list[list[str]]:
        """``scoregeo run -m`` argument lists (after ``run -m``), one per sweep."""
        seeds = self.seeds if seeds is None else seeds
        seed_arg = "seed=" + ",".join(str(s) for s in seeds)
        return [[*sweep, seed_arg, *extras] for sweep in self.sweeps]

    def groups(self) -> list[Group]:
        out = list(self.table.groups) if self.table else []
        for fig in self.figures:
            out += [g for g in fig.groups if all(g.run != h.run for h in out)]
        return out


def _fail(path: Path, message: str) -> None:
    raise ScoregeoError(f"recipe {path.name}: {message}")


def _string_list(path: Path, value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        _fail(path, f"{what} must be a list of overrides like [experiment=sphere, dataset.ambient_dim=10]")
    return [str(v) for v in value]


def _group(path: Path, raw: Any, conf_dir: Path) -> Group:
    if not isinstance(raw, dict) or "run" not in raw:
        _fail(path, f"each group needs 'label' and 'run' (its overrides), got {raw!r}")
    run = _string_list(path, raw["run"], "a group's 'run'")
    plain = values(run)
    if any(o.is_sweep_override() for o in parse(run)):
        _fail(path, f"a group's 'run' names one configuration, not a sweep: {run}")
    if "experiment" not in plain:
        _fail(path, f"a group's 'run' must name its experiment (experiment=...): {run}")
    if set(plain) & {"seed"}:
        _fail(path, f"a group's 'run' may not set seed (the recipe's 'seeds' do): {run}")
    run = expand(run)[0]  # values as a sweep's job records them (1e-5 -> 1e-05)
    style = raw.get("style")
    if style is not None and style not in STYLES:
        _fail(path, f"a group's 'style' must be one of {', '.join(STYLES)}, got {style!r}")
    x = raw.get("x")
    if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))):
        _fail(path, f"a group's 'x' must be a number, got {x!r}")
    return Group(label=str(raw.get("label", " ".join(run))), run=run,
                 experiment=experiment_name(plain["experiment"], conf_dir),
                 file=str(raw["file"]) if raw.get("file") else None,
                 series=str(raw["series"]) if raw.get("series") is not None else None,
                 style=style, x=None if x is None else float(x))


def _better(path: Path, value: Any) -> str | float:
    if isinstance(value, bool):
        _fail(path, f"'better' must be lower, higher, none or a target number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if value not in BETTER_WORDS:
        _fail(path, f"'better' must be lower, higher, none or a target number, got {value!r}")
    return value


def _table(path: Path, raw: dict, conf_dir: Path) -> Table:
    groups = [_group(path, g, conf_dir) for g in raw.get("groups") or []]
    if not groups:
        _fail(path, "table.groups must list at least one run configuration")
    rows = raw.get("rows", "all")
    if rows != "all" and not (isinstance(rows, list) and rows):
        _fail(path, "table.rows must be a list of method names or 'all'")
    raw_sections = raw.get("sections") or [{"title": None, "columns": raw.get("columns")}]
    sections = []
    for sec in raw_sections:
        cols = []
        for c in sec.get("columns") or []:
            if isinstance(c, str):
                c = {"metric": c}
            if "metric" not in c:
                _fail(path, f"each column needs 'metric', got {c!r}")
            if not isinstance(c.get("pooled", False), bool):
                _fail(path, f"a column's 'pooled' must be true or false, got {c.get('pooled')!r}")
            cols.append(Column(metric=c["metric"], label=str(c.get("label", c["metric"])),
                               better=_better(path, c.get("better", "none")), pooled=bool(c.get("pooled", False))))
        if not cols:
            _fail(path, "each table section needs at least one column")
        sections.append(Section(title=sec.get("title"), columns=cols))
    reference = raw.get("reference_rows") or []
    if not isinstance(reference, list):
        _fail(path, "table.reference_rows must be a list of method names")
    return Table(groups=groups, rows=rows if rows == "all" else [str(r) for r in rows], sections=sections,
                 reference_rows=[str(r) for r in reference],
                 group_header=str(raw.get("group_header", "setting")),
                 row_header=str(raw.get("row_header", "method")))


def _figure(path: Path, raw: dict, table: Table | None, conf_dir: Path) -> Figure:
    name = raw.get("name")
    if not name:
        _fail(path, "each figure needs a 'name' (its file name in outputs/figures/)")
    kind = raw.get("kind") or ("plot" if "plot" in raw else "panels")
    if kind not in ("plot", "panels", "paired"):
        _fail(path, f"figure {name}: 'kind' must be panels, plot or paired, got {kind!r}")
    if kind == "paired":
        return _paired_figure(path, name, raw, conf_dir)
    if kind == "panels":
        groups = [_group(path, g, conf_dir) for g in raw.get("panels") or []]
        if not groups or not (raw.get("file") or all(g.file for g in groups)):
            _fail(path, f"figure {name} needs 'file' (a glob in each run folder) and 'panels'")
        return Figure(name=name, kind=kind, groups=groups, file=str(raw.get("file") or ""),
                      seed=raw.get("seed"), ncols=int(raw.get("ncols", 0)),
                      caption=str(raw.get("caption", "")))
    plot = raw["plot"] or {}
    groups = [_group(path, g, conf_dir) for g in plot.get("groups") or []] or (table.groups if table else [])
    metrics = [m if isinstance(m, dict) else {"metric": m} for m in plot.get("metrics") or []]
    if not groups or not metrics or not all("metric" in m for m in metrics):
        _fail(path, f"figure {name}: 'plot' needs 'metrics' and groups (its own or the table's)")
    return Figure(name=name, kind=kind, groups=groups, metrics=metrics, caption=str(raw.get("caption", "")))


def _paired_figure(path: Path, name: str, raw: dict, conf_dir: Path) -> Figure:
    """A paired-difference figure: y = a method's per-pair difference to LERP (mean, 95%
    interval over the pooled pairs), x = each group's ``x`` (``x: {from: level}``) or the
    pooled mean of a per-pair metric of a method (``x: {metric, method}``); one line per
    ``series``."""
    groups = [_group(path, g, conf_dir) for g in raw.get("groups") or []]
    y, x = raw.get("y") or {}, raw.get("x") or {}
    if not groups or not isinstance(y, dict) or not str(y.get("metric", "")).endswith("_minus_lerp"):
        _fail(path, f"figure {name}: a paired figure needs 'groups' and 'y: {{metric: <metric>_minus_lerp}}'")
    if not isinstance(x, dict) or not (x.get("from") == "level" or x.get("metric")):
        _fail(path, f"figure {name}: 'x' must be {{from: level}} or {{metric: ..., method: ...}}")
    if x.get("from") == "level" and any(g.x is None for g in groups):
        _fail(path, f"figure {name}: with x from level every group needs its 'x'")
    return Figure(name=name, kind="paired", groups=groups, caption=str(raw.get("caption", "")),
                  method=str(raw.get("method", "geodesic")), y=dict(y), x=dict(x))


STYLES = ("ladder", "mismatch", "exact", "blend", "plain")


def load(path: Path, conf_dir: Path = CONF_DIR) -> Recipe:
    """Read and check one recipe file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ScoregeoError(f"recipe {Path(path).name} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        _fail(path, "must be a YAML mapping")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        _fail(path, f"'seeds' must be a list of integers, got {seeds!r}")
    sweeps = [_string_list(path, s, "each sweep") for s in raw.get("sweeps") or []]
    if not sweeps:
        _fail(path, "'sweeps' must list at least one sweep")
    for sweep in sweeps:
        keys = values([o for o in sweep if "=" in o])
        if "seed" in keys:
            _fail(path, f"sweeps may not set seed (the recipe's 'seeds' do): {sweep}")
        if "experiment" not in keys:
            _fail(path, f"each sweep must name its experiment (experiment=...): {sweep}")
    table = _table(path, raw["table"], conf_dir) if raw.get("table") else None
    figures = [_figure(path, f, table, conf_dir) for f in raw.get("figures") or []]
    if table is None and not figures:
        _fail(path, "needs a 'table' or 'figures'")
    recipe = Recipe(name=Path(path).stem, title=str(raw.get("title", Path(path).stem)),
                    description=str(raw.get("description", "")).strip(), seeds=seeds, sweeps=sweeps,
                    requires=[str(k) for k in raw.get("requires") or []], table=table,
                    figures=figures, path=Path(path))
    _check_coverage(recipe, conf_dir)
    return recipe


def _check_coverage(recipe: Recipe, conf_dir: Path) -> None:
    """Every group of the layout must be produced by one of the recipe's sweeps."""
    rule = DirnameRule.from_conf(conf_dir)
    produced = set()
    for sweep in recipe.sweeps:
        for job in expand(sweep):
            exp = experiment_name(values(job)["experiment"], conf_dir)
            produced.add((exp, rule.override_dirname(job)))
    for group in recipe.groups():
        if (group.experiment, rule.override_dirname(group.run)) not in produced:
            _fail(recipe.path, f"group '{group.label}' ({' '.join(group.run)}) is made by none of its sweeps")


def available(recipes_dir: Path = RECIPES_DIR) -> list[Path]:
    return sorted(p for p in Path(recipes_dir).glob("*.yaml"))


def find(name: str, recipes_dir: Path = RECIPES_DIR) -> Path:
    path = Path(recipes_dir) / f"{name}.yaml"
    if not path.exists():
        names = ", ".join(p.stem for p in available(recipes_dir)) or "none"
        raise ScoregeoError(f"no recipe named '{name}' in {recipes_dir}; available: {names}")
    return path
