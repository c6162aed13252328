"""A run's results: metrics.jsonl and summary.json, and the summary as a printed table.

Every row of ``metrics.jsonl`` is one number (``evaluation.rows.row``); ``summary.json``
holds, per method and metric, the mean, sample standard deviation and count over pairs,
and for every method but LERP its paired differences to LERP. Both files are written
atomically (``io.files``); the run writes ``DONE`` after them.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from scoregeo_cli.io.files import atomic_write_json, atomic_write_text


def summarize(rows: Iterable[dict]) -> dict:
    """{method: {metric: {"mean", "std", "n"}}} over pairs; std is the sample std (n-1).

    Non-finite values are kept out of mean and std and counted under ``n_nonfinite``.
    """
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[r["method"]][r["metric"]].append(float(r["value"]))
    summary: dict = {}
    for method, metrics in groups.items():
        summary[method] = {}
        for metric, values in metrics.items():
            finite = [v for v in values if math.isfinite(v)]
            n = len(finite)
            mean = sum(finite) / n if n else float("nan")
            std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
            entry = {"mean": mean, "std": std, "n": n}
            if n < len(values):
                entry["n_nonfinite"] = len(values) - n
            summary[method][metric] = entry
    _add_paired(summary, rows)
    return summary


BASELINE = "lerp"
# per-pair metrics compared with the baseline on the same pairs and noise (science.md s. 8)
PAIRED_METRICS = ("psnr", "ssim", "lpips", "angle_error", "orbit_excess_max", "orbit_excess_mean")


def _add_paired(summary: dict, rows: Iterable[dict], baseline: str = BASELINE) -> None:
    """For every method other than ``baseline``: ``<metric>_minus_<baseline>``, the mean of the
    per-pair differences with a 95% percentile bootstrap interval and n (``stats.paired_bootstrap``),
    for each metric of PAIRED_METRICS that both have on the same pairs."""
    from scoregeo_cli.reporting.stats import paired_bootstrap

    values: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["metric"] in PAIRED_METRICS and int(r["pair"]) >= 0:
            values[r["method"], r["metric"]][int(r["pair"])] = float(r["value"])
    for method in summary:
        if method == baseline:
            continue
        for metric in PAIRED_METRICS:
            mine, base = values.get((method, metric)), values.get((baseline, metric))
            if not mine or not base:
                continue
            pairs = sorted(set(mine) & set(base))
            summary[method][f"{metric}_minus_{baseline}"] = paired_bootstrap([mine[p] - base[p] for p in pairs])


def write_results(run_dir: str | os.PathLike, rows: list[dict]) -> dict:
    """Write metrics.jsonl and summary.json atomically; return the summary."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize(rows)
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _cell(entry: dict) -> str:
    """'mean ± std', or for a paired difference 'mean [ci_low, ci_high]' (95% bootstrap)."""
    if "ci_low" not in entry:
        return f"{entry['mean']:.4g} ± {entry['std']:.2g}"
    from scoregeo_cli.reporting.stats import format_interval

    return format_interval(entry, spec="+.3g")


def format_summary(summary: dict, metrics: list[str] | None = None, row_header: str = "method",
                   width: int | None = None) -> str:
    """A plain-text table: methods as rows (headed ``row_header``; names like
    ``sigma=0.05`` under a ``sigma`` header lose the ``sigma=``), metrics as columns,
    mean ± std (a paired difference: mean [95% interval]). With ``width``, columns that do not fit continue in further blocks below,
    each repeating the row names, so no line is longer than ``width``."""
    methods = list(summary)
    if metrics is None:
        metrics = []
        for m in methods:
            metrics += [k for k in summary[m] if k not in metrics]
    prefix = f"{row_header}="
    names = [m[len(prefix):] if all(n.startswith(prefix) for n in methods) else m for m in methods]
    columns = []
    for metric in metrics:
        cells = []
        for method in methods:
            e = summary[method].get(metric)
            cells.append("-" if e is None else _cell(e))
        columns.append([metric, *cells])
    first = [row_header, *names]
    lead = max(map(len, first))
    blocks, block, used = [], [], lead
    for column in columns:
        w = max(map(len, column))
        if block and width is not None and used + 2 + w > width:
            blocks.append(block)
            block, used = [], lead
        block.append(column)
        used += 2 + w
    blocks.append(block)
    out = []
    for block in blocks:
        table = [first, *block]
        widths = [max(map(len, c)) for c in table]
        rows = ["  ".join(c[i].ljust(w) for c, w in zip(table, widths)).rstrip() for i in range(len(first))]
        rows.insert(1, "  ".join("-" * w for w in widths))
        out.append("\n".join(rows))
    return "\n\n".join(out)
