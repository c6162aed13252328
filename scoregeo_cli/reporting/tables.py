"""A recipe's table, laid out from its groups' finished runs and written as Markdown, LaTeX
and CSV; ``render`` writes one recipe's table and figures (``recipe_figures``).

Cells are aggregated by ``aggregate`` (mean ± std over seeds, or pooled over pairs with a
95% bootstrap interval for a difference to LERP). The best value of each column is marked
within each group of rows (bold in Markdown and LaTeX, ``best`` in the CSV). ``scoregeo
reproduce`` and ``scoregeo tables`` (``scoregeo_cli.reproduce``) call ``render``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scoregeo_cli.io.files import atomic_write_text
from scoregeo_cli.reporting import recipes as rc
from scoregeo_cli.reporting import run_folders as rf
from scoregeo_cli.reporting.aggregate import (Cell, MissingRuns, aggregate, expected_folders, level_sorted, mark_best,
                                              pair_values, pooled_cell)
from scoregeo_cli.reporting.provenance import git_commit
from scoregeo_cli.reporting.recipe_figures import render_figure


# --------------------------------------------------------------------------- rendering

@dataclass
class Rendered:
    """One table, laid out: per section, rows of (group label, method, cells)."""

    recipe: rc.Recipe
    located: list[rf.Located]
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
            n_text = ("no finished pairs yet" if not counts else f"{counts[0]} pairs in every cell" if len(counts) == 1
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


def build_table(recipe: rc.Recipe, locator: rf.RunLocator, seeds: list[int], commit: str,
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


# --------------------------------------------------------------------------- one recipe

def render(recipe: rc.Recipe, output_root: Path, extras: list[str] = (), seeds: list[int] | None = None,
           partial: bool = False, commit: str | None = None, conf_dir: Path = rc.CONF_DIR,
           out_dir: Path | None = None) -> list[Path]:
    """Write ``<out_dir>/tables/NAME.{md,tex,csv}`` and the recipe's figures into
    ``<out_dir>/figures/`` (``out_dir``: the output root unless given), from the runs under
    ``output_root``.

    Raises MissingRuns (listing the expected run folders) when runs are not finished,
    unless ``partial``.
    """
    out_dir = Path(output_root) if out_dir is None else Path(out_dir)
    seeds = recipe.seeds if seeds is None else seeds
    commit = git_commit() if commit is None else commit
    locator = rf.RunLocator(output_root, extras, recipe.requires, conf_dir)
    written, folders, files = [], [], []
    if recipe.table is not None:
        try:
            table = build_table(recipe, locator, seeds, commit, partial)
        except MissingRuns as err:
            folders += err.folders
        else:
            out = out_dir / "tables"
            for suffix, text in (("md", to_markdown(table)), ("tex", to_latex(table)), ("csv", to_csv(table))):
                atomic_write_text(out / f"{recipe.name}.{suffix}", text)
                written.append(out / f"{recipe.name}.{suffix}")
    for fig in recipe.figures:
        try:
            written += render_figure(recipe, fig, locator, seeds, out_dir / "figures", commit, partial)
        except MissingRuns as err:
            folders += err.folders
            files += err.files
    if folders or files:
        raise MissingRuns(folders, files)
    return written
