"""Progress of long steps (scoregeo_cli/io/progress.py): tqdm bars on a terminal,
plain lines at least every interval in a log, nothing for short steps, and a run whose
captured output shows where it is."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import pytest
from helpers import invoke_cli

from scoregeo_cli.io import progress


class Log(io.StringIO):
    """A log file: not a terminal."""

    def isatty(self) -> bool:
        return False


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setenv("SCOREGEO_PROGRESS_INTERVAL", "0.2")
    monkeypatch.delenv("SCOREGEO_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)


def test_a_log_gets_whole_lines_at_the_interval_and_a_last_one(fast):
    log = Log()
    with progress.label("geodesic"):
        with progress.bar(10, "Gauss-Newton solve", "eval", file=log) as bar:
            for i in range(10):
                time.sleep(0.12)
                bar.update(1)
                bar.set_postfix(energy=f"{1 / (i + 1):.3g}", refresh=False)
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert len(lines) >= 4, text  # 1.2 s at 0.2 s, and the final state
    assert all(line.startswith("geodesic: Gauss-Newton solve: ") for line in lines), text
    assert lines[-1].startswith("geodesic: Gauss-Newton solve: 10/10 eval [") and "energy=0.1" in lines[-1]


def test_a_short_step_writes_nothing_to_a_log(fast):
    log = Log()
    with progress.bar(3, "quick", "image", file=log) as bar:
        bar.update(3)
    assert log.getvalue() == ""


def test_between_steps_a_log_hears_that_the_command_runs(fast, monkeypatch):
    log = Log()
    monkeypatch.setattr(sys, "stderr", log)
    with progress.activity("run outputs/x"):
        time.sleep(0.7)
    lines = log.getvalue().splitlines()
    assert lines and all(re.fullmatch(r"run outputs/x: running \[00:0\d\]", line) for line in lines), lines


def test_a_terminal_gets_a_bar_redrawn_in_place(fast):
    screen = Terminal()
    with progress.bar(5, "DDIM from level 400 to 0", "call", file=screen) as bar:
        for _ in range(5):
            time.sleep(0.15)
            bar.update(1)
    assert "\r" in screen.getvalue() and "DDIM from level 400 to 0:" in screen.getvalue()


def test_progress_can_be_turned_off(fast, monkeypatch):
    monkeypatch.setenv("SCOREGEO_PROGRESS", "0")
    log = Log()
    with progress.bar(4, "solve", "eval", file=log) as bar:
        for _ in range(4):
            time.sleep(0.1)
            bar.update(1)
    assert log.getvalue() == ""


def test_current_names_the_innermost_step():
    with progress.label("slerp"):
        with progress.bar(2, "outer", file=Log()):
            with progress.bar(2, "inner", file=Log()):
                assert progress.current() == "slerp: inner"
            assert progress.current() == "slerp: outer"
    assert progress.current() == ""


def test_a_run_captured_to_a_log_shows_its_steps(fast, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCOREGEO_PROGRESS_INTERVAL", "0.05")
    code, out, err = invoke_cli(["run", "experiment=sphere", "n_pairs=4", "eval.figure=false",
                                 f"output_root={tmp_path}"], monkeypatch, capsys)
    assert code == 0, err
    assert "\r" not in err
    steps = [line for line in err.splitlines() if re.match(r"(run |methods: |geodesic: Gauss-Newton solve: )", line)]
    assert steps, err


@pytest.mark.slow
def test_a_rotated_digits_run_in_a_log_has_a_line_at_least_every_15_seconds(tmp_path):
    """The real default interval, a real rotated-digits run, output to a pipe: no silence
    longer than 15 s from the start of the command to its end."""
    args = [sys.executable, "-m", "scoregeo_cli.cli", "run", "experiment=rotated_mnist", "n_pairs=2",
            f"output_root={tmp_path}"]
    start = time.monotonic()
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stamps, lines = [start], []
    for line in proc.stdout:
        stamps.append(time.monotonic())
        lines.append(line.rstrip("\n"))
    assert proc.wait() == 0, "\n".join(lines[-20:])
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) <= 15.0, (max(gaps), lines)
    assert any("Gauss-Newton solve:" in line for line in lines)
    assert not any("\r" in line for line in lines)
