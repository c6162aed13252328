"""`scoregeo reproduce` and `scoregeo tables`: the paper's tables and figures from run folders.

``reproduce NAME`` runs the sweeps of ``experiments/NAME.yaml`` (finished runs are skipped)
and renders it; ``tables`` renders every recipe from what is already in the output root.

A table cell aggregates over seeds: each run's ``summary.json`` holds, per method and
metric, the mean over its pairs (or points); the cell is the mean and sample standard
deviation of those per-seed means, with n the number of seeds (non-finite ones left out and
flagged with a dagger). A ``pooled`` column pools the pairs of all seeds instead (each run's
``metrics.jsonl``): a difference to LERP (``<metric>_minus_lerp``) is the mean of the
per-pair differences with a 95% percentile bootstrap interval over the pooled pairs
(``stats.paired_bootstrap``), any other metric its mean over the pooled pairs; n counts pairs.
The best value of each column is marked within each group of rows (bold in Markdown and
LaTeX, ``best`` in the CSV).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scoregeo_cli import paths
from scoregeo_cli.io import progress
from scoregeo_cli.reporting import recipes as rc
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io.files import atomic_write_text, is_done
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
    """How many runs (configuration and seed) a recipe's table and figures read."""
    return len(recipe.groups()) * len(seeds)


def git_commit() -> str:
    """Short hash of the checkout scoregeo runs from, or "unknown"."""
    try:
        out = subprocess.run(["git", "-C", str(paths.PACKAGE.parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


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


def pair_values(located: rc.Located) -> dict[tuple[str, str], dict[tuple[int, int], float]]:
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


def aggregate(located: rc.Located) -> tuple[dict, list[str]]:
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


# --------------------------------------------------------------------------- rendering

@dataclass
class Rendered:
    """One table, laid out: per section, rows of (group label, method, cells)."""

    recipe: rc.Recipe
    located: list[rc.Located]
    sections: list[tuple[rc.Section, list[tuple[str, str, list[Cell | None]]]]]
    commit: str
    partial: bool

    def footer_lines(self) -> list[str]:
        t = self.recipe.table
        marks = sorted({c.arrow for s, _ in self.sections for c in s.columns if c.arrow})
        legend = {"↓": "↓ lower is better", "↑": "↑ higher is better"}
        parts = [legend.get(m, f"{m} closest to {m[1:]} is best") for m in marks]
        within = f" within each {t.group_header}" if len(t.groups) > 1 else ""
        columns = [c for s, _ in self.sections for c in s.columns]
        pooled = [c for c in columns if c.pooled]
        lines = []
        if len(pooled) < len(columns):
            lines.append("Cells: mean ± std over seeds of each run's own mean (its summary.json, over its pairs or "
                         "points); n = number of seeds" + (" (columns not listed below)." if pooled else "."))
        if pooled:
            counts = sorted({c.n for s, rows in self.sections for _, _, cells in rows
                             for c, col in zip(cells, s.columns) if col.pooled and c is not None})
            n_text = (f"{counts[0]} pairs in every cell" if len(counts) == 1
                      else f"{counts[0]} to {counts[-1]} pairs per cell (the CSV gives each n)")
            lines.append(
                f"{', '.join(c.label for c in pooled)}: pooled over the pairs of all seeds ({n_text}); a "
                "difference to LERP is the mean of per-pair differences (same pairs, same noise) with its 95% "
                "percentile bootstrap interval (10,000 resamples of the pairs), any other pooled column the "
                "mean over pairs.")
        lines += [
            f"Bold: best in its column{within} ({'; '.join(parts) or 'no column is ranked'}; "
            "columns without an arrow are not ranked"
            + (f"; {', '.join(t.reference_rows)}: reference, not ranked" if t.reference_rows else "")
            + "); –: metric not reported.",
        ]
        if any(c is not None and c.dropped for _, rows in self.sections for _, _, cells in rows for c in cells):
            lines.append("†: some pairs (or whole seeds) gave NaN/Inf and are left out of this mean; "
                         "n counts the seeds (pooled columns: the pairs) that remain.")
        lines += [
            f"Commit: {self.commit}.",
            "Runs (`<output_root>/<experiment>/<override_dirname>/seed=<k>`) and the command behind "
            f"{'each ' + t.group_header if len(t.groups) > 1 else 'the table'}:",
        ]
        for loc in self.located:
            label = f"{loc.group.label}: " if len(t.groups) > 1 else ""
            missing = f" (missing: seed {', '.join(map(str, loc.missing))})" if loc.missing else ""
            lines.append(f"- {label}`{loc.pattern()}`, `{loc.command()}`{missing}")
        return lines


def build_table(recipe: rc.Recipe, locator: rc.RunLocator, seeds: list[int], commit: str,
                partial: bool) -> Rendered:
    table = recipe.table
    located = [locator.locate(g, seeds) for g in table.groups]
    missing = [(loc, s) for loc in located for s in loc.missing]
    if missing and not partial:
        raise MissingRuns(expected_folders(locator, missing))
    per_group = [aggregate(loc) for loc in located]
    pooled = any(c.pooled for sec in table.sections for c in sec.columns)
    per_pair = [pair_values(loc) if pooled else {} for loc in located]
    sections = []
    for section in table.sections:
        lines = []
        for loc, (cells, methods), values in zip(located, per_group, per_pair):
            # a method the group's runs did not run is left out of its block
            methods = level_sorted(methods) if table.rows == "all" else [m for m in table.rows if m in methods]

            def cell(m, c):
                return pooled_cell(values, m, c.metric) if c.pooled else cells.get((m, c.metric))

            block = [(loc.group.label, m, [cell(m, c) for c in section.columns]) for m in methods]
            for j, col in enumerate(section.columns):
                mark_best([row[2][j] for row in block], col.better)
            reference = [(loc.group.label, m, [cell(m, c) for c in section.columns])
                         for m in table.reference_rows]
            lines += block + reference
        sections.append((section, lines))
    return Rendered(recipe, located, sections, commit, partial)


def expected_folders(locator: rc.RunLocator, missing) -> list[Path]:
    return [loc.folders[s] for loc, s in missing]


def to_markdown(r: Rendered) -> str:
    t = r.recipe.table
    with_group = len(t.groups) > 1
    out = [f"# {r.recipe.name}: {r.recipe.title}", ""]
    if r.recipe.description:
        out += [r.recipe.description, ""]
    for section, lines in r.sections:
        if section.title:
            out += [f"**{section.title}**", ""]
        head = ([t.group_header] if with_group else []) + [t.row_header] + [
            f"{c.label} {c.arrow}".strip() for c in section.columns]
        out += ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
        previous = None
        for group, method, cells in lines:
            first = [group if group != previous else ""] if with_group else []
            previous = group
            texts = ["–" if c is None else (f"**{c.text()}**" if c.best else c.text()) for c in cells]
            out.append("| " + " | ".join(first + [method] + texts) + " |")
        out.append("")
    for line in r.footer_lines():  # sentences as paragraphs, then the list of runs
        out += [line] if line.startswith("- ") else [line, ""]
    return "\n".join(out).rstrip("\n") + "\n"


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$",
               "↓": r"$\downarrow$", "↑": r"$\uparrow$", "→": r"$\to$", "–": "--", "`": "",
               "<": r"\textless{}", ">": r"\textgreater{}"}


def tex(text: str) -> str:
    return "".join(TEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(r: Rendered) -> str:
    t = r.recipe.table
    with_group = len(t.groups) > 1
    out = [f"% {r.recipe.name}: rendered by `scoregeo tables` at commit {r.commit}",
           r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
           rf"\caption{{{tex(r.recipe.title)}}}", rf"\label{{tab:{r.recipe.name}}}"]
    for section, lines in r.sections:
        n_lead = 2 if with_group else 1
        out += [rf"\begin{{tabular}}{{{'l' * n_lead}{'r' * len(section.columns)}}}", r"\toprule"]
        if section.title:
            out += [rf"\multicolumn{{{n_lead + len(section.columns)}}}{{l}}{{\textit{{{tex(section.title)}}}}} \\",
                    r"\midrule"]
        head = ([t.group_header] if with_group else []) + [t.row_header] + [
            f"{c.label} {c.arrow}".strip() for c in section.columns]
        out += [" & ".join(tex(h) for h in head) + r" \\", r"\midrule"]
        previous = None
        for group, method, cells in lines:
            if with_group and previous is not None and group != previous:
                out.append(r"\midrule")
            first = [tex(group) if group != previous else ""] if with_group else []
            previous = group
            texts = ["--" if c is None else (rf"\textbf{{{tex(c.text())}}}" if c.best else tex(c.text()))
                     for c in cells]
            out.append(" & ".join(first + [tex(method)] + texts) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip"]
    out.append(r"{\footnotesize")
    out += [tex(line) + r" \\" for line in r.footer_lines()]
    out += ["}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_csv(r: Rendered) -> str:
    import pandas as pd

    records = []
    for section, lines in r.sections:
        for group, method, cells in lines:
            for col, cell in zip(section.columns, cells):
                records.append({
                    "section": section.title or "", "group": group, "method": method, "metric": col.metric,
                    "mean": None if cell is None else cell.mean, "std": None if cell is None else cell.std,
                    "n": None if cell is None else cell.n, "best": bool(cell and cell.best),
                    "better": col.better, "runs": next(loc.pattern() for loc in r.located if loc.group.label == group),
                })
    frame = pd.DataFrame.from_records(records, columns=["section", "group", "method", "metric", "mean", "std",
                                                        "n", "best", "better", "runs"])
    frame["n"] = frame["n"].astype("Int64")
    return frame.to_csv(index=False, float_format="%.10g")


# --------------------------------------------------------------------------- figures

def render_figure(recipe: rc.Recipe, fig: rc.Figure, locator: rc.RunLocator, seeds: list[int],
                  out_dir: Path, commit: str, partial: bool) -> list[Path]:
    if fig.kind == "panels":
        return _panels(recipe, fig, locator, seeds, out_dir, commit, partial)
    if fig.kind == "paired":
        return _paired(recipe, fig, locator, seeds, out_dir, commit, partial)
    return _plot(recipe, fig, locator, seeds, out_dir, commit, partial)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _caption(recipe: rc.Recipe, fig: rc.Figure, image: Path, sources: list[str], commit: str) -> str:
    lines = [f"# {fig.name}: {recipe.title}", "", f"![{fig.name}]({image.name})", ""]
    if fig.caption:
        lines += [fig.caption, ""]
    lines += [f"Commit: {commit}.", "Sources:"] + [f"- {s}" for s in sources]
    return "\n".join(lines) + "\n"


def _panels(recipe, fig, locator, seeds, out_dir, commit, partial) -> list[Path]:
    seed = fig.seed if fig.seed is not None else seeds[0]
    found, missing, unfinished, absent = [], [], [], []
    for group in fig.groups:
        loc = locator.locate(group, [seed])
        run_dir, pattern = loc.runs[seed], group.file or fig.file
        images = sorted(run_dir.glob(pattern)) if run_dir is not None else []
        if images:
            found.append((group, loc, images[0]))
            continue
        missing.append((loc, seed, pattern))
        folder = expected_folders(locator, [(loc, seed)])[0]
        (unfinished if run_dir is None else absent).append(folder if run_dir is None else folder / pattern)
    if missing and (not partial or not found):
        raise MissingRuns(unfinished, absent)
    plt = _plt()
    ncols = fig.ncols or len(found)
    nrows = math.ceil(len(found) / ncols)
    images = [plt.imread(p) for _, _, p in found]
    aspect = max(im.shape[1] / im.shape[0] for im in images)
    width = 3.2 * ncols * min(aspect, 3.0) if ncols > 1 else min(12.0, 3.2 * aspect)
    height = width / ncols / aspect * nrows + 0.35 * nrows
    f, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (group, _, _), im in zip(axes.flat, found, images):
        ax.imshow(im)
        ax.set_title(group.label, fontsize=9)
    f.suptitle(f"{recipe.title}: {fig.name} (seed {seed})", fontsize=10)
    f.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{fig.name}.png"
    f.savefig(target, dpi=130)
    plt.close(f)
    sources = [f"{g.label}: `{p.relative_to(locator.root)}` (`{loc.command()}`)" for g, loc, p in found]
    sources += [f"MISSING: `{loc.pattern()}/{pat}`" for loc, _, pat in missing]
    caption = out_dir / f"{fig.name}.md"
    atomic_write_text(caption, _caption(recipe, fig, target, sources, commit))
    return [target, caption]


def _plot(recipe, fig, locator, seeds, out_dir, commit, partial) -> list[Path]:
    located = [locator.locate(g, seeds) for g in fig.groups]
    missing = [(loc, s) for loc in located for s in loc.missing]
    if missing and not partial:
        raise MissingRuns(expected_folders(locator, missing))
    plt = _plt()
    from matplotlib.ticker import NullFormatter

    f, axes = plt.subplots(1, len(fig.metrics), figsize=(4.2 * len(fig.metrics), 3.9), squeeze=False,
                           layout="constrained")
    xname = None
    for loc in located:
        cells, methods = aggregate(loc)
        levels = [(m, LEVEL.match(m)) for m in level_sorted(methods)]
        levels = [(m, k) for m, k in levels if k]
        if not levels:
            raise ScoregeoError(f"{recipe.name}: figure {fig.name} plots methods named like 'sigma=0.1', "
                                f"but {loc.pattern()} has {methods}")
        xname = levels[0][1].group(1)
        xs = [float(k.group(2)) for _, k in levels]
        for ax, spec in zip(axes[0], fig.metrics):
            pts = [(x, cells.get((m, spec["metric"]))) for x, (m, _) in zip(xs, levels)]
            pts = [(x, c) for x, c in pts if c is not None]
            ax.errorbar([x for x, _ in pts], [c.mean for _, c in pts], yerr=[c.std for _, c in pts],
                        marker="o", ms=3, capsize=2, label=loc.group.label)
    for ax, spec in zip(axes[0], fig.metrics):
        ax.set_xlabel(xname or "level")
        ax.set_ylabel(spec.get("label", spec["metric"]))
        if spec.get("logx", True):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks collide
        if spec.get("logy", False):
            ax.set_yscale("log")
        if "reference" in spec:
            ax.axhline(float(spec["reference"]), c="0.5", lw=0.8, ls="--", label=f"reference ({spec['reference']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)  # below the data
    f.suptitle(f"{recipe.title} (dots: mean over seeds, bars: ± std)", fontsize=9)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{fig.name}.png"
    f.savefig(target, dpi=130)
    plt.close(f)
    sources = [f"{loc.group.label}: `{loc.pattern()}` (`{loc.command()}`)"
               + (f" MISSING seed {', '.join(map(str, loc.missing))}" if loc.missing else "") for loc in located]
    caption = out_dir / f"{fig.name}.md"
    atomic_write_text(caption, _caption(recipe, fig, target, sources, commit))
    return [target, caption]


# line and marker of a series by its group's style
SERIES_STYLE = {"exact": {"color": "k", "marker": "*", "ms": 9, "lw": 2.0},
                "ladder": {"marker": "o", "ms": 4, "lw": 1.4},
                "mismatch": {"marker": "s", "ms": 5, "lw": 1.0, "ls": "--"},
                "blend": {"marker": "D", "ms": 4, "lw": 1.0, "ls": ":"},
                "plain": {"marker": "o", "ms": 4, "lw": 1.2}}


def paired_points(fig: rc.Figure, located: list[rc.Located]) -> list[dict]:
    """Per group of a paired figure: its series, style, x and the pooled paired y cell."""
    points = []
    for loc in located:
        values = pair_values(loc)
        y = pooled_cell(values, fig.method, fig.y["metric"])
        if fig.x.get("from") == "level":
            x = loc.group.x
        else:
            cell = pooled_cell(values, fig.x.get("method", fig.method), fig.x["metric"])
            x = None if cell is None else cell.mean
        if y is None or x is None:
            continue
        points.append({"series": loc.group.series or loc.group.label, "style": loc.group.style or "plain",
                       "label": loc.group.label, "x": float(x), "y": y})
    return points


def _paired(recipe, fig, locator, seeds, out_dir, commit, partial) -> list[Path]:
    """y: a method's paired difference to LERP, mean and 95% interval over the pooled pairs;
    x: each group's level, or the pooled mean of a per-pair metric; one line per series."""
    located = [locator.locate(g, seeds) for g in fig.groups]
    missing = [(loc, s) for loc in located for s in loc.missing]
    if missing and not partial:
        raise MissingRuns(expected_folders(locator, missing))
    points = paired_points(fig, located)
    if not points:
        raise ScoregeoError(f"{recipe.name}: figure {fig.name} has no finished point to draw")
    plt = _plt()
    f, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    by_x = fig.x.get("from") == "level"
    log = bool(fig.x.get("log", False))
    positive = [p["x"] for p in points if p["x"] > 0]
    floor = (min(positive) / 3 if positive else 1e-3) if log else None
    series = list(dict.fromkeys(p["series"] for p in points))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(series):
        pts = sorted((p for p in points if p["series"] == name), key=lambda p: p["x"])
        color = colors[k % len(colors)]
        for style in dict.fromkeys(p["style"] for p in pts):
            group = [p for p in pts if p["style"] == style]
            look = {"color": color, **SERIES_STYLE.get(style, SERIES_STYLE["plain"])}
            if not by_x:  # series are not scores here (e.g. levels): each keeps its own colour
                look["color"] = color
            xs = [p["x"] if not (log and p["x"] <= 0) else floor for p in group]
            ys = [p["y"].mean for p in group]
            lo = [p["y"].mean - p["y"].ci_low for p in group]
            hi = [p["y"].ci_high - p["y"].mean for p in group]
            joined = by_x or style in ("ladder", "blend")
            label = name if by_x else f"{name} ({style})"
            if by_x:
                ax.fill_between(xs, [p["y"].ci_low for p in group], [p["y"].ci_high for p in group],
                                color=look["color"], alpha=0.12, lw=0)
                ax.plot(xs, ys, label=label, **look)
            else:
                ax.errorbar(xs, ys, yerr=[lo, hi], capsize=2, elinewidth=0.8, label=label,
                            **{**look, "ls": look.get("ls", "-") if joined else "none"})
    ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
    if log:
        ax.set_xscale("log")
    if log and not by_x and any(p["x"] <= 0 for p in points):
        ax.axvline(floor, color="0.7", lw=0.6)
        ax.annotate(" exact score (error 0)", (floor, ax.get_ylim()[0]), fontsize=7, ha="right", va="bottom",
                    rotation=90, color="0.4")
    if by_x:
        ax.set_xticks(sorted({p["x"] for p in points}))
        ax.set_xticklabels([f"{x:g}" for x in sorted({p["x"] for p in points})])
        ax.minorticks_off()
    ax.set_xlabel(fig.x.get("label", fig.x.get("metric", "level")))
    ax.set_ylabel(fig.y.get("label", fig.y["metric"]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    n = sorted({p["y"].n for p in points})
    ax.set_title(f"{recipe.title}\n{fig.name}: mean, 95% paired bootstrap interval "
                 f"(n = {n[0] if len(n) == 1 else f'{n[0]}-{n[-1]}'} pairs)", fontsize=8)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in ("png", "pdf"):
        target = out_dir / f"{fig.name}.{suffix}"
        f.savefig(target, dpi=150)
        written.append(target)
    plt.close(f)
    sources = [f"{loc.group.label}: `{loc.pattern()}` (`{loc.command()}`)"
               + (f" MISSING seed {', '.join(map(str, loc.missing))}" if loc.missing else "") for loc in located]
    caption = out_dir / f"{fig.name}.md"
    atomic_write_text(caption, _caption(recipe, fig, written[0], sources, commit))
    return [*written, caption]


# --------------------------------------------------------------------------- one recipe

def render(recipe: rc.Recipe, output_root: Path, extras: list[str] = (), seeds: list[int] | None = None,
           partial: bool = False, commit: str | None = None, conf_dir: Path = rc.CONF_DIR) -> list[Path]:
    """Write ``<output_root>/tables/NAME.{md,tex,csv}`` and the recipe's figures.

    Raises MissingRuns (listing the expected run folders) when runs are not finished,
    unless ``partial``.
    """
    seeds = recipe.seeds if seeds is None else seeds
    commit = git_commit() if commit is None else commit
    locator = rc.RunLocator(output_root, extras, recipe.requires, conf_dir)
    written, folders, files = [], [], []
    if recipe.table is not None:
        try:
            table = build_table(recipe, locator, seeds, commit, partial)
        except MissingRuns as err:
            folders += err.folders
        else:
            out = Path(output_root) / "tables"
            for suffix, text in (("md", to_markdown(table)), ("tex", to_latex(table)), ("csv", to_csv(table))):
                atomic_write_text(out / f"{recipe.name}.{suffix}", text)
                written.append(out / f"{recipe.name}.{suffix}")
    for fig in recipe.figures:
        try:
            written += render_figure(recipe, fig, locator, seeds, Path(output_root) / "figures", commit, partial)
        except MissingRuns as err:
            folders += err.folders
            files += err.files
    if folders or files:
        raise MissingRuns(folders, files)
    return written


# --------------------------------------------------------------------------- commands

def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ScoregeoError(f"--seeds takes integers separated by commas, e.g. 0,1,2; got '{text}'") from None
    if not seeds:
        raise ScoregeoError("--seeds needs at least one seed")
    return seeds


def _check_extras(recipe: rc.Recipe, extras: list[str]) -> None:
    for o in rc.parse(extras):
        if o.is_sweep_override():
            raise ScoregeoError(f"extra override '{o.input_line}' is a sweep; pass single values "
                                "(a sweep belongs in a recipe)")
        if o.key_or_group in rc.RESERVED_KEYS:
            raise ScoregeoError(f"the recipe sets {o.key_or_group} itself; "
                                + ("use --seeds" if o.key_or_group == "seed" else "write another recipe"))
    given = rc.values(extras)
    lacking = [k for k in recipe.requires if k not in given]
    if lacking:
        raise ScoregeoError(f"{recipe.name} needs " + " and ".join(f"{k}=..." for k in lacking)
                            + f"; pass them as overrides: scoregeo reproduce {recipe.name} "
                            + " ".join(f"{k}=<path>" for k in lacking))


def _output_root(extras: list[str]) -> Path:
    return Path(rc.values(extras).get("output_root", "outputs")) if extras else Path("outputs")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partial", action="store_true",
                        help="render what is finished and list the missing runs in the footer")
    parser.add_argument("--recipes", type=Path, default=rc.RECIPES_DIR, metavar="DIR",
                        help="folder of recipe files (default: the repository's experiments/)")


def reproduce_main(argv: list[str], prog: str = "scoregeo reproduce") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run the sweeps behind one paper table or figure (finished runs are "
        "skipped), then render it into <output_root>/tables and <output_root>/figures.",
        epilog="Overrides after NAME go to every run, e.g. output_root=/scratch/out or "
        "score.pretrained=/models/sd21 (recipes that need user files say so).")
    parser.add_argument("name", nargs="?", help="recipe name (file name in experiments/ without .yaml)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides passed to every run")
    parser.add_argument("--dry-run", action="store_true", help="print the scoregeo run -m commands and stop")
    parser.add_argument("--seeds", help="comma-separated seeds instead of the recipe's (e.g. 0)")
    parser.add_argument("--list", action="store_true", help="list the recipes and stop")
    _common(parser)
    args = parser.parse_intermixed_args(argv)
    if args.list:
        for path in rc.available(args.recipes):
            recipe = rc.load(path)
            print(f"{recipe.name:<22} {recipe.title}")
        return 0
    if not args.name:
        parser.error("a recipe NAME is required (--list shows them)")
    recipe = rc.load(rc.find(args.name, args.recipes))
    extras, seeds = list(args.overrides), _seeds(args.seeds) or recipe.seeds
    _check_extras(recipe, extras)
    commands = recipe.commands(extras, seeds)
    if args.dry_run:
        for cmd in commands:
            print(shlex.join(["scoregeo", "run", "-m", *cmd]))
        return 0

    root = _output_root(extras)
    locator = rc.RunLocator(root, extras, recipe.requires)
    rerun = rc.values(extras).get("rerun", "false").lower() == "true"
    start = time.perf_counter()
    per_sweep = [[sweep_folder(locator, job) for job in rc.expand(cmd)] for cmd in commands]
    everything = [f for folders in per_sweep for f in folders]
    started = {f: results_mtime_or_none(f) for f in everything}  # with rerun=true, DONE must be new

    def finished() -> int:
        return sum(is_done(f) and (not rerun or results_mtime_or_none(f) != started[f]) for f in everything)

    # the sweeps print their own output: their progress goes to the same terminal, so lines
    with progress.bar(len(everything), f"{recipe.name}: runs finished", "run", lines=True, poll=finished) as bar:
        bar.update(finished())
        for i, (cmd, folders) in enumerate(zip(commands, per_sweep), 1):
            shown = shlex.join(["scoregeo", "run", "-m", *cmd])
            if not rerun and all(is_done(f) for f in folders):
                print(f"[{recipe.name} {i}/{len(commands)}] all {len(folders)} runs finished: {shown}", flush=True)
                continue
            print(f"[{recipe.name} {i}/{len(commands)}] {finished()}/{len(everything)} runs finished; {shown}",
                  flush=True)
            code = subprocess.call([sys.executable, "-m", "scoregeo_cli.cli", "run", "-m", *cmd])
            if code != 0:
                raise ScoregeoError(f"sweep {i} of {recipe.name} failed with exit code {code}: {shown}")
            bar.n = finished()
    elapsed = time.perf_counter() - start
    try:
        written = render(recipe, root, extras, seeds, partial=args.partial)
    except MissingRuns as err:
        raise ScoregeoError(err.describe(recipe)) from None
    _print_written(written)
    print(f"{recipe.name}: sweeps took {elapsed:.0f} s")
    return 0


def results_mtime_or_none(run_dir: Path) -> float | None:
    try:
        return rc.results_mtime(run_dir)
    except OSError:
        return None


def sweep_folder(locator: rc.RunLocator, job: list[str]) -> Path:
    """The run folder Hydra gives one job of a sweep."""
    given = rc.values(job)
    return locator.rule.folder(locator.root, rc.experiment_name(given["experiment"]), job, int(given["seed"]))


def _print_written(written: list[Path]) -> None:
    for path in written:
        if path.suffix == ".md" and path.parent.name == "tables":
            print(path.read_text())
    for path in written:
        print(f"wrote {path}")


def tables_main(argv: list[str], prog: str = "scoregeo tables") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Render every recipe in experiments/ (or the named ones) from the "
        "finished runs under the output root into <output_root>/tables/NAME.{md,tex,csv} and "
        "<output_root>/figures/. A recipe with unfinished runs is listed in one line (how many "
        "runs it lacks and the command that makes them) and the exit code stays 0 (--strict: 1).")
    parser.add_argument("names", nargs="*", help="recipes to render (default: all)")
    parser.add_argument("--output-root", type=Path, default=Path("outputs"),
                        help="where the runs are (default: outputs)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with code 1 when a recipe is incomplete (default: 0, listing it)")
    _common(parser)
    args = parser.parse_args(argv)
    paths = [rc.find(n, args.recipes) for n in args.names] if args.names else rc.available(args.recipes)
    if not paths:
        raise ScoregeoError(f"no recipes in {args.recipes}")
    done, incomplete, failed = [], [], []
    commit = git_commit()
    for path in paths:
        recipe = rc.load(path)
        try:
            written = render(recipe, args.output_root, partial=args.partial, commit=commit)
        except MissingRuns as err:
            incomplete.append(recipe.name)
            print(err.describe(recipe, recipe_runs(recipe, recipe.seeds)), flush=True)
            continue
        except ScoregeoError as err:  # e.g. a finished run's summary.json is corrupt
            failed.append(recipe.name)
            print(f"{prog}: error: {recipe.name}: {err}", file=sys.stderr, flush=True)
            continue
        done.append(recipe.name)
        for p in written:
            print(f"wrote {p}", flush=True)
    print(f"rendered: {', '.join(done) or 'none'}; incomplete: {', '.join(incomplete) or 'none'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed or (incomplete and args.strict) else 0


