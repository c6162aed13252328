"""Progress of long steps: one implementation for every step that can take more than a few seconds.

``bar(total, desc, unit)`` is a tqdm progress bar on stderr:

* on a terminal it is drawn in place and cleared when the step ends (a step shorter than
  half a second never shows);
* anywhere else (a log file, a pipe, a batch job's output) nothing is redrawn with carriage
  returns: while a step runs, a plain line with its state is written at least every
  ``interval()`` seconds (8 by default, ``SCOREGEO_PROGRESS_INTERVAL``) and one more when
  it ends; a whole command shorter than that writes no progress line at all.

A background thread refreshes open bars, so a step whose single iteration takes minutes
still reports its elapsed time; inside ``activity(name)`` (a whole run) it also writes
``<name>: running [elapsed]`` when no bar is open, so a log of a run has a line at least
every ``interval()`` seconds from its start to its end. ``label(name)`` prefixes the bars opened inside it (which
method a solver works for); ``step(name)`` names a stretch of work that has no bar of its
own; ``current()`` names what runs now (for the line an interrupt prints). ``SCOREGEO_PROGRESS=0`` (or tqdm's own ``TQDM_DISABLE=1``) turns progress off.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

# a log line: no bar (its width would mean nothing in a file), counts, times, rate, postfix
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"
TERMINAL_DELAY = 0.5  # seconds before a bar appears on a terminal
DEFAULT_INTERVAL = 8.0

_lock = threading.RLock()
_open: list[tqdm] = []          # open bars, oldest first
_labels: list[str] = []         # label() stack
_steps: list[str] = []          # step() and label() stack, innermost last (what runs without a bar)
_activities: list[dict] = []    # activity() stack: {"name", "start", "stream", "lines"}
_last_line = [0.0]              # when the last log line was written (monotonic)
_thread: list[threading.Thread] = []


def interval() -> float:
    """Seconds between two log lines of a running step (SCOREGEO_PROGRESS_INTERVAL, default 8:
    with the heartbeat's own delay on a busy machine, a log gets a line well within 15 s)."""
    try:
        value = float(os.environ.get("SCOREGEO_PROGRESS_INTERVAL", str(DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value > 0 else DEFAULT_INTERVAL


def enabled() -> bool:
    off = ("0", "false", "no", "off")
    return (os.environ.get("SCOREGEO_PROGRESS", "1").strip().lower() not in off
            and os.environ.get("TQDM_DISABLE", "").strip().lower() in ("", *off))


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _LogBar(tqdm):
    """A tqdm bar that writes whole lines and nothing else (no carriage returns, no clearing):
    the heartbeat thread asks for a line every ``interval()`` seconds; ``close`` writes the
    final state if the bar wrote anything before."""

    monitor_interval = 0  # no tqdm monitor thread: the heartbeat decides when a line is due

    def __init__(self, *args, **kwargs):
        self._printed = False
        kwargs.update(mininterval=math.inf, maxinterval=0, delay=math.inf, leave=False, ncols=None,
                      dynamic_ncols=False, ascii=True)
        kwargs.setdefault("bar_format", LOG_FORMAT if kwargs.get("total") else LOG_FORMAT_NO_TOTAL)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if msg is not None:  # tqdm clears a bar with msg=''; a log keeps what it wrote
            return True
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        self._printed = True
        _last_line[0] = time.monotonic()
        return True

    def close(self):
        if not getattr(self, "disable", True) and self._printed:
            with self._lock:
                self.display()
        _forget(self)
        super().close()


class _TerminalBar(tqdm):
    def close(self):
        _forget(self)
        super().close()


def _forget(bar) -> None:
    with _lock:  # by identity: tqdm compares bars by their screen position
        _open[:] = [b for b in _open if b is not bar]


def _heartbeat() -> None:
    """Refresh open bars: on a terminal about once a second (elapsed time moves even when
    an iteration is slow); in a log, the innermost bar once nothing was written for
    ``interval()`` seconds while some bar was open."""
    while True:
        time.sleep(min(0.25, interval() / 4))
        now = time.monotonic()
        with _lock:
            bars = list(_open)
        for bar in bars:
            if isinstance(bar, _TerminalBar) and not bar.disable and now - bar._scoregeo_start >= TERMINAL_DELAY:
                _poll(bar)
                with contextlib.suppress(Exception):
                    bar.refresh()
        logs = [b for b in bars if isinstance(b, _LogBar) and not b.disable]
        with _lock:
            active = [a for a in _activities if a["lines"]]
        starts = [b._scoregeo_start for b in logs] + [a["start"] for a in active]
        if not starts or now - max(_last_line[0], min(starts)) < interval():
            continue
        if logs:
            _poll(logs[-1])
            with contextlib.suppress(Exception):
                logs[-1].refresh()
        else:  # between steps: say that the command still runs
            with contextlib.suppress(Exception):
                entry = active[-1]
                entry["stream"].write(f"{entry['name']}: running [{tqdm.format_interval(now - entry['start'])}]\n")
                entry["stream"].flush()
                _last_line[0] = now


def _poll(bar) -> None:
    poll = getattr(bar, "_scoregeo_poll", None)
    if poll is not None:
        with contextlib.suppress(Exception):
            bar.n = int(poll())


def _start_heartbeat() -> None:
    with _lock:
        if not _thread or not _thread[0].is_alive():
            thread = threading.Thread(target=_heartbeat, name="scoregeo-progress", daemon=True)
            _thread[:] = [thread]
            thread.start()


def bar(total: float | None = None, desc: str = "", unit: str = "it", *, lines: bool | None = None,
        poll: Callable[[], int] | None = None, file=None, disable: bool = False, **kwargs) -> tqdm:
    """A progress bar for one step (use it as a context manager, or ``close()`` it).

    Args:
        total: iterations the step will take (None: unknown).
        desc: what the step does; prefixed with the innermost ``label``.
        unit: what one iteration is ("eval", "image", "run", ...).
        lines: True writes log lines even on a terminal (a command whose terminal other
            processes write to); None: decide by whether stderr is a terminal.
        poll: called by the refresh thread to read the count (work done elsewhere).
        disable: no bar at all (as with SCOREGEO_PROGRESS=0).
    """
    stream = sys.stderr if file is None else file
    with _lock:
        prefix = _labels[-1] if _labels else ""
    desc = f"{prefix}: {desc}" if prefix and desc else (prefix or desc)
    as_lines = not _is_terminal(stream) if lines is None else lines
    common = dict(total=total, desc=desc, unit=unit, file=stream, disable=disable or not enabled(), **kwargs)
    if as_lines:
        progress = _LogBar(**common)
    else:
        progress = _TerminalBar(leave=False, dynamic_ncols=True, mininterval=0.2, delay=TERMINAL_DELAY,
                                **common)
    progress._scoregeo_start = time.monotonic()
    progress._scoregeo_poll = poll
    if not progress.disable:
        with _lock:
            _open.append(progress)
        _start_heartbeat()
    return progress


def steps(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator:
    """Iterate over ``iterable`` with a bar (closed when the loop ends or breaks)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with bar(total, desc, unit) as progress:
        for item in iterable:
            yield item
            progress.update(1)


@contextlib.contextmanager
def activity(name: str) -> Iterator[None]:
    """A command's whole work (a run, ``scoregeo fid``): in a log, a line at least every
    ``interval()`` seconds while it lasts, the innermost bar's state or, between steps,
    ``<name>: running [elapsed]``. Nothing on a terminal but the bars themselves."""
    stream = sys.stderr
    entry = {"name": str(name), "start": time.monotonic(), "stream": stream,
             "lines": enabled() and not _is_terminal(stream)}
    with _lock:
        _activities.append(entry)
    if entry["lines"]:
        _start_heartbeat()
    try:
        yield
    finally:
        with _lock:
            _activities[:] = [a for a in _activities if a is not entry]


@contextlib.contextmanager
def label(name: str) -> Iterator[None]:
    """Bars opened inside say ``name: <their description>``."""
    with _lock:
        _labels.append(str(name))
        _steps.append(str(name))
    try:
        yield
    finally:
        with _lock:
            _labels.pop()
            _steps.pop()


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """A stretch of work without a bar of its own (``current()`` names it while no bar is
    open inside it), e.g. ``step("scoring the paths against the truth")``."""
    with _lock:
        _steps.append(str(name))
    try:
        yield
    finally:
        with _lock:
            _steps.pop()


def current() -> str:
    """What runs now: the innermost open bar's description, else the innermost step or
    label, or ""."""
    with _lock:
        for progress in reversed(_open):
            if not progress.disable and progress.desc:
                return str(progress.desc)
        return _steps[-1] if _steps else ""


def close_all() -> None:
    """Close every open bar (after an interrupt, before the last line is printed)."""
    with _lock:
        bars = list(_open)
    for progress in reversed(bars):
        with contextlib.suppress(Exception):
            progress.close()
