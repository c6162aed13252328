"""A recipe's figures, from its groups' finished runs: ``panels`` (an image of each run side
by side), ``plot`` (a metric against the level in methods named like ``sigma=0.1``) and
``paired`` (a method's paired difference to LERP with its 95% interval, one line per
series), each with a Markdown caption naming its sources and commit.
"""

from __future__ import annotations

import math
from pathlib import Path

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io.files import atomic_write_text
from scoregeo_cli.reporting import recipes as rc
from scoregeo_cli.reporting import run_folders as rf
from scoregeo_cli.reporting.aggregate import (LEVEL, MissingRuns, aggregate, expected_folders, level_sorted,
                                              pair_values, pooled_cell)


# --------------------------------------------------------------------------- figures

def render_figure(recipe: rc.Recipe, fig: rc.Figure, locator: rf.RunLocator, seeds: list[int],
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


def paired_points(fig: rc.Figure, located: list[rf.Located]) -> list[dict]:
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
