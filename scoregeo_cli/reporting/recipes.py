"""Recipes: the sweeps behind one paper table or figure, and where their run folders are.

A recipe is a YAML file in ``experiments/`` (see ``experiments/README.md``). It lists

* ``sweeps``: each a list of ``scoregeo run -m`` overrides (without ``seed``);
* ``seeds``: the seeds every sweep runs with;
* ``table`` and/or ``figures``: the layout, whose groups name the run configuration that
  feeds them by its overrides (``run: [experiment=sphere, dataset.ambient_dim=10]``).

Run folders are located exactly as a run names them: the sweep is expanded with Hydra's own
override parser and basic sweeper, each job's ``override_dirname`` is computed by Hydra's
own function from the exclude keys of ``conf/config.yaml``, and the folder is the
resolution of that file's ``hydra.sweep.dir``/``hydra.sweep.subdir`` templates with the
resolvers ``scoregeo run`` registers (``<output_root>/<experiment_name>/<dirname>/seed=<k>``).
"""

from __future__ import annotations

import itertools

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from scoregeo_cli import resolvers  # noqa: F401  (registers the resolvers run folders are named with)
from scoregeo_cli import paths
from scoregeo_cli.io import files
from scoregeo_cli.errors import ScoregeoError

RECIPES_DIR = paths.RECIPES_DIR
CONF_DIR = paths.CONF_DIR
# keys a recipe fixes itself: extra overrides may not change them
RESERVED_KEYS = ("seed", "experiment")
BETTER_WORDS = ("lower", "higher", "none")


# --------------------------------------------------------------------------- Hydra naming

@dataclass(frozen=True)
class DirnameRule:
    """How a multirun job's overrides become its run folder (conf/config.yaml)."""

    exclude_keys: tuple[str, ...]
    kv_sep: str = "="
    item_sep: str = ","
    sweep_dir: str = "${output_root}/${experiment_name}"
    subdir: str = "${dirname:${hydra.job.override_dirname}}/seed=${seed}"

    @classmethod
    def from_conf(cls, conf_dir: Path = CONF_DIR) -> "DirnameRule":
        cfg = OmegaConf.load(conf_dir / "config.yaml")
        rule = OmegaConf.select(cfg, "hydra.job.config.override_dirname", default=None) or {}
        sweep = OmegaConf.to_container(OmegaConf.select(cfg, "hydra.sweep", default=None) or {}, resolve=False)
        return cls(exclude_keys=tuple(rule.get("exclude_keys", ())),
                   kv_sep=rule.get("kv_sep", "="), item_sep=rule.get("item_sep", ","),
                   sweep_dir=sweep.get("dir", cls.sweep_dir), subdir=sweep.get("subdir", cls.subdir))

    def override_dirname(self, overrides: list[str]) -> str:
        """Hydra's ``hydra.job.override_dirname`` of one job (empty without overrides)."""
        lines = sorted(o.input_line for o in parse(overrides)
                       if not o.is_hydra_override() and o.key_or_group not in self.exclude_keys)
        return self.item_sep.join(lines).replace("=", self.kv_sep)

    def _resolve(self, template: str, root: Path, experiment: str, overrides: list[str], seed: int) -> str:
        node = OmegaConf.create({"output_root": str(root), "experiment_name": experiment, "seed": seed,
                                 "hydra": {"job": {"override_dirname": self.override_dirname(overrides)}}})
        node["_folder"] = template
        try:
            return str(node._folder)
        except Exception as err:  # a template this module cannot evaluate outside a run
            raise ScoregeoError(f"cannot name run folders from conf/config.yaml ({template}): {err}") from None

    def experiment_dir(self, root: Path, experiment: str) -> Path:
        """``hydra.sweep.dir``: where all runs of one experiment live."""
        return Path(self._resolve(self.sweep_dir, root, experiment, [], 0))

    def folder(self, root: Path, experiment: str, overrides: list[str], seed: int) -> Path:
        """The run folder of one job: ``hydra.sweep.dir / hydra.sweep.subdir``."""
        return (self.experiment_dir(root, experiment)
                / self._resolve(self.subdir, root, experiment, overrides, seed))


def parse(overrides: list[str]):
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ScoregeoError(f"cannot parse overrides {overrides}: {str(err).splitlines()[0]}") from None


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of one ``-m`` sweep, each a list of override strings, in the order of Hydra's
    basic sweeper (the product of the overrides' values, the last varying fastest)."""
    choices: dict[str, list[str]] = {}
    for o in parse(overrides):
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise ScoregeoError(f"cannot expand sweep {overrides}: only lists of values (a,b,c) are supported")
            choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def values(overrides: list[str]) -> dict[str, str]:
    """{key: value as written} of plain (non-sweep) overrides."""
    out = {}
    for o in parse(overrides):
        out[o.key_or_group] = o.input_line.split("=", 1)[1] if "=" in o.input_line else ""
    return out


def experiment_name(experiment: str, conf_dir: Path = CONF_DIR) -> str:
    """The ``experiment_name`` an experiment file sets (its file name unless it says otherwise)."""
    path = conf_dir / "experiment" / f"{experiment}.yaml"
    if path.exists():
        cfg = yaml.safe_load(path.read_text()) or {}
        if isinstance(cfg.get("experiment_name"), str):
            return cfg["experiment_name"]
    return experiment


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


# --------------------------------------------------------------------------- run folders

@dataclass
class Located:
    """Where one group's seeds are: the expected run folder per seed, and the finished ones."""

    group: Group
    folders: dict[int, Path]           # expected run folder per seed
    runs: dict[int, Path | None]       # finished run folder per seed (None: not finished)
    overrides: list[str]               # the group's overrides plus the extras in effect
    root: Path

    @property
    def missing(self) -> list[int]:
        return [s for s, d in self.runs.items() if d is None]

    def pattern(self) -> str:
        """``<experiment>/<dirname>/seed={0,1,2}``, relative to the output root."""
        seeds = list(self.folders)
        first = self.folders[seeds[0]]
        try:
            first = first.relative_to(self.root)
        except ValueError:
            pass
        if len(seeds) > 1 and first.name == f"seed={seeds[0]}":
            return f"{first.parent.as_posix()}/seed={{{','.join(map(str, seeds))}}}"
        return first.as_posix()

    def command(self, hidden: tuple[str, ...] = ("output_root", "rerun")) -> str:
        """The sweep that makes these runs; where outputs go is not part of the config."""
        seeds = ",".join(str(s) for s in self.runs)
        shown = [o.input_line for o in parse(self.overrides)
                 if o.key_or_group not in hidden and not o.is_hydra_override()]
        return shlex.join(["scoregeo", "run", "-m", *shown, f"seed={seeds}"])


class RunLocator:
    """Finds the finished run folders of recipe groups under one output root.

    ``extras`` are the overrides the user passed to ``reproduce``; they are part of every
    job's folder name. Keys a recipe ``requires`` (user paths such as ``score.pretrained``)
    are unknown to ``scoregeo tables``: without them, finished runs are found by reading
    each run's ``.hydra/overrides.yaml`` and matching everything else.
    """

    def __init__(self, output_root: Path, extras: list[str] = (), requires: list[str] = (),
                 conf_dir: Path = CONF_DIR):
        self.root = Path(output_root)
        self.extras = list(extras)
        self.requires = list(requires)
        self.rule = DirnameRule.from_conf(conf_dir)
        self._jobs: dict[tuple[Path, bool], list] = {}  # finished runs per experiment folder (_recorded)

    def _located(self, group: Group, overrides: list[str], seeds: list[int],
                 runs: dict[int, Path] | None = None) -> Located:
        folders = {s: self.rule.folder(self.root, group.experiment, overrides, s) for s in seeds}
        if runs is None:
            runs = {s: f for s, f in folders.items() if files.is_done(f)}
        return Located(group, folders, {s: runs.get(s) for s in seeds}, overrides, self.root)

    def locate(self, group: Group, seeds: list[int]) -> Located:
        """The group's finished runs, found by what each run recorded (``.hydra/overrides.yaml``
        of folders holding DONE), never by re-deriving folder names."""
        given = values(self.extras)
        lacking = [k for k in self.requires if k not in given]
        found = self._scan(group, seeds, match_required=not lacking)
        if found is not None:
            return found
        # nothing finished: name the folders with "..." where the user's values go
        overrides = [*group.run, *self.extras, *(f"{k}=..." for k in lacking)]
        return self._located(group, overrides, seeds, runs={})

    def _scan(self, group: Group, seeds: list[int], match_required: bool = False) -> Located | None:
        """Finished runs of the group: their recorded overrides equal the group's (seed and
        the keys that only say where outputs go aside). Unless ``match_required``, runs may
        differ in the values of required keys (user paths); of several such configurations,
        the one with most seeds (then the newest) wins."""
        want = self._key(group.run + self.extras, match_required)
        candidates: dict[tuple, dict[int, Path]] = {}
        base = self.rule.experiment_dir(self.root, group.experiment)
        if not base.is_dir():
            return None
        for run_dir, seed, key, own in self._recorded(base, match_required):
            if seed not in seeds or key != want:
                continue
            required = tuple(f"{k}={own[k]}" for k in self.requires if k in own)
            candidates.setdefault(required, {})[seed] = run_dir
        if not candidates:
            return None
        required, runs = max(candidates.items(), key=lambda kv: (
            len(kv[1]), max((results_mtime(p) for p in kv[1].values()), default=0)))
        return self._located(group, [*group.run, *self.extras, *required], seeds, runs)

    def _recorded(self, base: Path, match_required: bool) -> list[tuple[Path, int, frozenset, dict]]:
        """(run folder, seed, key, recorded values) of every finished run under ``base``: its
        ``.hydra/overrides.yaml`` is read and parsed once per locator, not once per group."""
        if (base, match_required) not in self._jobs:
            jobs = []
            for file in base.rglob("overrides.yaml"):
                run_dir = file.parent.parent
                if file.parent.name != ".hydra" or not files.is_done(run_dir):
                    continue
                try:
                    job = [str(o) for o in yaml.safe_load(file.read_text()) or []]
                    own = values(job)
                    seed = int(own.get("seed", "0"))
                except (yaml.YAMLError, ValueError, ScoregeoError):
                    continue
                jobs.append((run_dir, seed, self._key(job, match_required), own))
            self._jobs[base, match_required] = jobs
        return self._jobs[base, match_required]

    def _key(self, overrides: list[str], match_required: bool = False) -> frozenset:
        skip = set(self.rule.exclude_keys) | (set() if match_required else set(self.requires))
        return frozenset((o.key_or_group, o.input_line) for o in parse(overrides)
                         if not o.is_hydra_override() and o.key_or_group not in skip)


def results_mtime(run_dir: Path) -> float:
    return (Path(run_dir) / files.DONE).stat().st_mtime
