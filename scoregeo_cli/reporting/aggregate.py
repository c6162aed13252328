"""Reading finished runs into table cells: per seed from each run's ``summary.json``, or
pooled over the pairs of all seeds from each run's ``metrics.jsonl``.

A cell aggregates over seeds: each run's ``summary.json`` holds, per method and metric, the
mean over its pairs (or points); the cell is the mean and sample standard deviation of those
per-seed means, with n the number of seeds (non-finite ones left out and flagged with a
dagger). A ``pooled`` column pools the pairs of all seeds instead: a difference to LERP
(``<metric>_minus_lerp``) is the mean of the per-pair differences with a 95% percentile
bootstrap interval over the pooled pairs (``stats.paired_bootstrap``), any other metric its
mean over the pooled pairs; n counts pairs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.reporting import recipes as rc
from scoregeo_cli.reporting import run_folders as rf
from scoregeo_cli.reporting.results import BASELINE, summarize

LEVEL = re.compile(r"^([A-Za-z_][\w.]*)=([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")


class MissingRuns(ScoregeoError):
    """A recipe cannot be rendered: some of its run folders are not finished (``folders``)
    or lack a file a figure shows (``files``)."""

    def __init__(self, folders: list[Path] = (), files: list[Path] = ()):
        self.folders, self.files = list(dict.fromkeys(folders)), list(dict.fromkeys(files))
        super().__init__(f"{len(self.folders)} unfinished run(s), {len(self.files)} missing file(s)")

    def describe(self, recipe: rc.Recipe, total: int | None = None) -> str:
        """One line: how many of the recipe's ``total`` runs are missing (or which files its
        figures lack) and the command that makes them."""
        hint = f"scoregeo reproduce {recipe.name}" + "".join(f" {k}=..." for k in recipe.requires)
        parts = []
        if self.folders:
            of = f" of {total}" if total else ""
            parts.append(f"{len(self.folders)}{of} run(s) not finished (e.g. {self.folders[0]})")
        if self.files:
            parts.append(f"{len(self.files)} file(s) its figures show missing from finished runs "
                         f"(e.g. {self.files[0]}; `{hint} rerun=true` remakes them)")
        return f"{recipe.name}: incomplete, {'; '.join(parts)}; make them with `{hint}` (or render what exists with --partial)"


def recipe_runs(recipe: rc.Recipe, seeds: list[int]) -> int:
    """How many runs (configuration and seed) a recipe's table and figures read: each
    configuration once, whichever groups name it, and for a figure of panels only the seed
    it shows."""
    runs = set()
    layouts = [(recipe.table.groups, seeds)] if recipe.table else []
    for fig in recipe.figures:
        shown = [fig.seed if fig.seed is not None else seeds[0]] if fig.kind == "panels" else seeds
        layouts.append((fig.groups, shown))
    for groups, chosen in layouts:
        runs |= {(g.experiment, tuple(sorted(g.run)), s) for g in groups for s in chosen}
    return len(runs)


# --------------------------------------------------------------------------- aggregation

@dataclass
class Cell:
    mean: float
    std: float
    n: int
    best: bool = False
    dropped: bool = False  # some pair of some run was non-finite and left out of its mean

    def text(self) -> str:
        return f"{fmt(self.mean)} ± {fmt(self.std, 2)} (n={self.n})" + (" †" if self.dropped else "")


@dataclass
class PooledCell:
    """A pooled column's cell: the mean over the pairs of all seeds, and for a difference to
    LERP its 95% bootstrap interval (``ci_low``, ``ci_high``); n counts pairs."""

    mean: float
    n: int
    ci_low: float = math.nan
    ci_high: float = math.nan
    paired: bool = False
    best: bool = False
    dropped: bool = False  # some pairs were non-finite and left out

    @property
    def std(self) -> float:  # the CSV's column: a pooled cell has an interval instead
        return math.nan

    def text(self) -> str:
        from scoregeo_cli.reporting.stats import format_interval

        if self.paired:
            out = format_interval({"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n},
                                  spec="+.2f" if abs(self.mean) >= 0.1 or self.mean == 0 else "+.2g")
        else:
            out = fmt(self.mean)
        return out + (" †" if self.dropped else "")


BASELINE_SUFFIX = f"_minus_{BASELINE}"  # the paired columns summary.json has too


def read_pair_rows(run_dir: Path) -> list[dict]:
    """A finished run's metrics.jsonl rows (one sentence if it cannot be read)."""
    path = run_dir / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise unreadable(run_dir, path, err) from None


def pair_values(located: rf.Located) -> dict[tuple[str, str], dict[tuple[int, int], float]]:
    """{(method, metric): {(seed, pair): value}} over the finished seeds of one group."""
    out: dict = {}
    for seed, run_dir in located.runs.items():
        if run_dir is None:
            continue
        for r in read_pair_rows(run_dir):
            if int(r.get("pair", -1)) >= 0:
                out.setdefault((r["method"], r["metric"]), {})[(seed, int(r["pair"]))] = float(r["value"])
    return out


def pooled_cell(values: dict, method: str, metric: str) -> PooledCell | None:
    """The pooled cell of ``metric`` for ``method`` (see the module docstring), or None."""
    from scoregeo_cli.reporting.stats import paired_bootstrap

    if metric.endswith(BASELINE_SUFFIX):
        base = metric[:-len(BASELINE_SUFFIX)]
        mine, ref = values.get((method, base)), values.get((BASELINE, base))
        if not mine or not ref or method == BASELINE:
            return None
        keys = sorted(set(mine) & set(ref))
        stat = paired_bootstrap([mine[k] - ref[k] for k in keys])
        if stat["n"] == 0:
            return None
        return PooledCell(stat["mean"], stat["n"], stat["ci_low"], stat["ci_high"], paired=True,
                          dropped=stat["dropped"] > 0)
    data = values.get((method, metric))
    if not data:
        return None
    finite = [v for v in data.values() if math.isfinite(v)]
    if not finite:
        return None
    return PooledCell(sum(finite) / len(finite), len(finite), dropped=len(finite) < len(data))


def fmt(x: float, digits: int = 3) -> str:
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.{digits}g}"


def read_summary(run_dir: Path) -> dict:
    """A finished run's summary.json; a missing or corrupt one ends in a sentence that names
    it and the command (with rerun=true) that remakes the run."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict) or not all(
                isinstance(metrics, dict) and all(isinstance(e, dict) and "mean" in e for e in metrics.values())
                for metrics in summary.values()):
            raise ValueError("not a summary of {method: {metric: {mean, std, n}}}")
        return summary
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise unreadable(run_dir, path, err) from None


def unreadable(run_dir: Path, path: Path, err: Exception) -> ScoregeoError:
    """One sentence: a file of a finished run cannot be read, and the command that remakes it."""
    cause = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
    return ScoregeoError(f"{path} of a finished run cannot be read ({cause}); rerun=true remakes it: "
                         f"`{replay_command(run_dir)} rerun=true`")


def replay_command(run_dir: Path) -> str:
    """The command a run folder's command.sh replays (else: a placeholder)."""
    try:
        text = (Path(run_dir) / "command.sh").read_text().strip()
    except OSError:
        text = ""
    return text if text.startswith("scoregeo ") else "scoregeo run <its overrides>"


def aggregate(located: rf.Located) -> tuple[dict, list[str]]:
    """{(method, metric): Cell} over the finished seeds of one group, and the methods in
    the order the runs list them."""
    rows, methods, dropped = [], [], set()
    for seed, run_dir in located.runs.items():
        if run_dir is None:
            continue
        for method, metrics in read_summary(run_dir).items():
            if method not in methods:
                methods.append(method)
            for metric, entry in metrics.items():
                rows.append({"method": (method, metric), "metric": "value", "value": float(entry["mean"])})
                if entry.get("n_nonfinite", 0) or not math.isfinite(float(entry["mean"])):
                    dropped.add((method, metric))
    cells = {key: Cell(e["value"]["mean"], e["value"]["std"], e["value"]["n"], dropped=key in dropped)
             for key, e in summarize(rows).items()}
    return cells, methods


def level_sorted(methods: list[str]) -> list[str]:
    """Methods named like ``sigma=0.05`` in numeric order; others as they come."""
    if methods and all(LEVEL.match(m) for m in methods):
        return sorted(methods, key=lambda m: float(LEVEL.match(m).group(2)))
    return methods


def mark_best(cells: list[Cell | None], better) -> None:
    if better == "none":
        return
    finite = [c for c in cells if c is not None and math.isfinite(c.mean)]
    if not finite:
        return
    if better == "lower":
        score = lambda c: c.mean  # noqa: E731
    elif better == "higher":
        score = lambda c: -c.mean  # noqa: E731
    else:
        score = lambda c: abs(c.mean - better)  # noqa: E731
    best = min(score(c) for c in finite)
    for c in finite:
        c.best = score(c) == best


def expected_folders(locator: rf.RunLocator, missing) -> list[Path]:
    return [loc.folders[s] for loc, s in missing]
