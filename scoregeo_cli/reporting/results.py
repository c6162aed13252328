"""Run-folder results: metrics rows, summaries, atomic writes and the completion marker.

A run folder is complete when ``DONE`` exists; it is written last, after
``metrics.jsonl`` and ``summary.json``, each of which is written to a temporary file and
renamed into place, so an interrupted run never leaves a summary that looks complete.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Iterable

DONE = "DONE"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to path via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def is_done(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / DONE).exists()


def mark_done(run_dir: str | os.PathLike) -> None:
    atomic_write_text(Path(run_dir) / DONE, "complete\n")


def clear_done(run_dir: str | os.PathLike) -> None:
    (Path(run_dir) / DONE).unlink(missing_ok=True)


def row(pair: int, method: str, metric: str, value: float, **extra) -> dict:
    """One metrics.jsonl row."""
    return {"pair": int(pair), "method": method, "metric": metric, "value": float(value), **extra}


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
    return summary


def write_results(run_dir: str | os.PathLike, rows: list[dict]) -> dict:
    """Write metrics.jsonl and summary.json atomically; return the summary."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize(rows)
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def format_summary(summary: dict, metrics: list[str] | None = None) -> str:
    """A plain-text table: methods as rows, metrics as columns, mean +- std."""
    methods = list(summary)
    if metrics is None:
        metrics = []
        for m in methods:
            metrics += [k for k in summary[m] if k not in metrics]
    cells = [["method"] + metrics]
    for method in methods:
        line = [method]
        for metric in metrics:
            e = summary[method].get(metric)
            line.append("-" if e is None else f"{e['mean']:.4g} ± {e['std']:.2g}")
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
