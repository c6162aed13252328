"""Run-folder results: metrics rows, summaries, atomic writes and the completion marker.

A run folder is complete when ``DONE`` exists; it is written last, after
``metrics.jsonl`` and ``summary.json``, each of which is written to a temporary file and
renamed into place, so an interrupted run never leaves a summary that looks complete. A
run that starts removes the results and marker an earlier, unfinished attempt left, and
holds ``.lock`` (an advisory ``flock``) for as long as it writes into its folder; the lock
file goes when the run ends. Files get the permissions the umask gives a new file (0644
under umask 022; executables such as ``command.sh`` 0755), as ``open`` would.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

from scoregeo_cli.errors import ScoregeoError

DONE = "DONE"
LOCK = ".lock"
RESULT_FILES = ("metrics.jsonl", "summary.json")


def os_error_sentence(err: OSError, action: str = "write", path: str | os.PathLike | None = None) -> str:
    """'cannot <action> <file>: <cause>' for an OSError (the file named by the error if any)."""
    name = path or getattr(err, "filename", None)
    cause = err.strerror or (str(err).splitlines()[0] if str(err) else type(err).__name__)
    if name and err.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in [Path(name), *Path(name).parents] if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            cause = f"{blocker} is a file, not a folder"
    return f"cannot {action} {name}: {cause}" if name else f"cannot {action}: {cause}"


_UMASK: list[int] = []


def umask() -> int:
    """The process's umask (read once: setting it is the only way to read it)."""
    if not _UMASK:
        current = os.umask(0o022)
        os.umask(current)
        _UMASK.append(current)
    return _UMASK[0]


def new_file_mode(executable: bool = False) -> int:
    """The mode ``open`` gives a new file (0o666, or 0o777 for an executable, less the umask)."""
    return (0o777 if executable else 0o666) & ~umask()


def atomic_write_text(path: str | os.PathLike, text: str, executable: bool = False) -> None:
    """Write text to path via a temporary file in the same folder and a rename; the file
    gets the mode the umask gives a new (``executable``: runnable) file.

    A failed write (full disk, read-only or missing folder) leaves ``path`` as it was and
    raises ScoregeoError naming ``path`` and the cause.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, new_file_mode(executable))  # mkstemp makes it 0600
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            name = err.filename if err.filename not in (None, tmp) else path
            raise ScoregeoError(os_error_sentence(err, path=name)) from None
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def is_done(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / DONE).exists()


def mark_done(run_dir: str | os.PathLike) -> None:
    atomic_write_text(Path(run_dir) / DONE, "complete\n")


def clear_done(run_dir: str | os.PathLike) -> None:
    """Remove DONE and the results of an earlier attempt, so that a run that fails now
    leaves no summary that looks complete, and the temporary files of writes an earlier
    attempt did not finish (killed). Call it holding the folder's lock."""
    run_dir = Path(run_dir)
    stale = [*run_dir.glob(".*.tmp"), *run_dir.glob(".hydra/.*.tmp")]
    for path in (*(run_dir / name for name in (DONE, *RESULT_FILES)), *stale):
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise ScoregeoError(os_error_sentence(err, "remove", path)) from None


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``<run_dir>/.lock`` (``flock``, released by the kernel if the process dies);
    refuse in one sentence when another process holds it. The lock file is removed when
    the holder is done (while it still holds the lock); a process that locked a file that
    was removed meanwhile locks the new one instead, so two processes never both hold it."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ScoregeoError(os_error_sentence(err, "create", path)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ScoregeoError(f"run folder {run_dir} is in use by another scoregeo process (pid {holder}); "
                                "wait for it to finish or choose another output_root") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before removed the file after this process opened it: again
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


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
