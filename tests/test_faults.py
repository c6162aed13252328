"""Faults: nothing finished is lost, nothing unfinished looks finished.

* kill -9 (of the whole process group) at random moments of a sweep, then the same sweep
  again: exactly its runs end DONE, each summary equal to an uninterrupted sweep's, and no
  run that was DONE is computed again;
* two processes on one run folder: the second refuses in one sentence (the folder's lock),
  the first finishes as if alone;
* a write that fails: no DONE, no summary, no temporary file left, and the earlier results
  of a run being recomputed are gone rather than left looking complete;
* the same seed twice gives the same summary.json;
* Ctrl-C (SIGINT) ends a run in one line with exit code 130, leaves nothing that looks
  finished and no lock, and the same command then resumes;
* result files honour the umask (0644 and 0755 for command.sh under 022) and a finished
  run keeps no ``.lock``.

Summaries are compared byte for byte except the wall-clock entries (metrics named
``*seconds``), the only values that may differ between two runs of the same configuration.
The random moments come from SCOREGEO_FAULT_SEED (default: the clock), shown on failure.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import invoke_cli

from scoregeo_cli.io import files

SEED = int(os.environ.get("SCOREGEO_FAULT_SEED", time.time_ns() % 100_000))
SWEEP = ["run", "-m", "experiment=sphere", "seed=0,1,2", "metric.lam=10,1000", "n_pairs=2", "eval.figure=false"]
SMALL_SWEEP = ["run", "-m", "experiment=sphere", "seed=0,1", "metric.lam=1000", "n_pairs=2", "eval.figure=false"]


# ------------------------------------------------------------------------------ helpers

def comparable(summary: Path) -> str:
    """summary.json without its wall-clock entries, as canonical text."""
    data = json.loads(summary.read_text())
    kept = {m: {k: v for k, v in metrics.items() if not k.endswith("seconds")} for m, metrics in data.items()}
    return json.dumps(kept, indent=2, sort_keys=True)


def finished(root: Path) -> dict[str, Path]:
    """{run folder relative to root: folder} of runs with DONE."""
    return {str(p.parent.relative_to(root)): p.parent for p in root.rglob(files.DONE)}


def stamps(runs: dict[str, Path]) -> dict[str, tuple[int, int, int]]:
    return {k: ((r / files.DONE).stat().st_mtime_ns, (r / "summary.json").stat().st_mtime_ns,
                (r / "summary.json").stat().st_ino) for k, r in runs.items()}


def cli(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``scoregeo <argv>`` in this process: (exit code, stdout, stderr)."""
    return invoke_cli(argv, monkeypatch, capsys)


def start(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """``scoregeo <argv>`` as its own process group (kill -9 reaches launcher workers too)."""
    return subprocess.Popen([sys.executable, "-m", "scoregeo_cli.cli", *argv], cwd=cwd, start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def kill9(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def wait_for(condition, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(0.02)
    return False


def check_resumed(root: Path, reference: Path, before: dict, out: str, note: str) -> None:
    """After the sweep ran to its end: exactly the reference's runs are DONE, equal to them,
    and the runs DONE before were skipped, not computed again."""
    done, ref = finished(root), finished(reference)
    assert sorted(done) == sorted(ref), note
    for name in ref:
        assert comparable(done[name] / "summary.json") == comparable(ref[name] / "summary.json"), (note, name)
    after = stamps({k: done[k] for k in before})
    assert after == before, note
    assert not list(root.rglob(".*.tmp")), note  # no half-written file of a killed run is left
    if out is not None:
        assert out.count("skipping finished run") == len(before), (note, out)


# ------------------------------------------------------------------------- kill and resume

def test_kill_during_a_sweep_then_resume(tmp_path, monkeypatch, capsys):
    """Small form: kill -9 at a random moment after the first run of a two-run sweep ended."""
    rng = random.Random(SEED)
    note = f"SCOREGEO_FAULT_SEED={SEED}"
    root, reference = tmp_path / "out", tmp_path / "reference"
    code, _, err = cli([*SMALL_SWEEP, f"output_root={reference}"], monkeypatch, capsys)
    assert code == 0 and len(finished(reference)) == 2, err

    proc = start([*SMALL_SWEEP, f"output_root={root}"], tmp_path, tmp_path / "killed.log")
    assert wait_for(lambda: finished(root), proc=proc), (tmp_path / "killed.log").read_text()
    time.sleep(rng.uniform(0.0, 0.8))
    kill9(proc)
    before = stamps(finished(root))
    for name, run in finished(root).items():  # whatever is DONE is complete and right
        assert comparable(run / "summary.json") == comparable(finished(reference)[name] / "summary.json"), note

    code, out, err = cli([*SMALL_SWEEP, f"output_root={root}"], monkeypatch, capsys)
    assert code == 0, err
    check_resumed(root, reference, before, out, note)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_kill_repeatedly_during_a_six_run_sweep(launcher, tmp_path):
    """kill -9 at uniformly random moments of the six-run sweep, up to three times, then let
    it finish; each time check what is DONE."""
    rng = random.Random(SEED + (launcher == "joblib"))
    note = f"SCOREGEO_FAULT_SEED={SEED} launcher={launcher}"
    extra = ["hydra/launcher=joblib"] if launcher == "joblib" else []
    root, reference = tmp_path / "out", tmp_path / "reference"
    began = time.monotonic()
    ref = start([*SWEEP, *extra, f"output_root={reference}"], tmp_path, tmp_path / "reference.log")
    assert ref.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()
    duration = time.monotonic() - began
    assert len(finished(reference)) == 6

    before: dict = {}
    for attempt in range(3):
        proc = start([*SWEEP, *extra, f"output_root={root}"], tmp_path, tmp_path / f"killed{attempt}.log")
        time.sleep(rng.uniform(0.0, duration))
        kill9(proc)
        done = finished(root)
        assert stamps({k: done[k] for k in before}) == before, note  # DONE stays DONE, untouched
        for name, run in done.items():
            assert comparable(run / "summary.json") == comparable(finished(reference)[name] / "summary.json"), note
        before = stamps(done)
        if len(done) == 6:
            break
    log = tmp_path / "final.log"
    final = start([*SWEEP, *extra, f"output_root={root}"], tmp_path, log)
    assert final.wait(timeout=600) == 0, log.read_text()
    check_resumed(root, reference, before, log.read_text() if launcher == "basic" else None, note)


# ----------------------------------------------------------------- two processes, one folder

def test_second_process_on_a_run_folder_refuses(tmp_path, monkeypatch, capsys):
    args = ["run", "experiment=sphere", "n_pairs=48", "eval.figure=false"]  # long enough to overlap: ~3 s of solving
    root = tmp_path / "out"
    first = start([*args, f"output_root={root}"], tmp_path, tmp_path / "first.log")
    lock = lambda: next(root.rglob(files.LOCK), None)  # noqa: E731
    held = wait_for(lambda: lock() is not None and lock().read_text().strip() == str(first.pid), proc=first)
    assert held, (tmp_path / "first.log").read_text()
    code, _, err = cli([*args, f"output_root={root}"], monkeypatch, capsys)
    still_running = first.poll() is None
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()
    assert still_running, "the first process ended before the second one tried; make its run longer"
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"is in use by another scoregeo process (pid {first.pid})" in lines[0]
    # the first run is as if it had been alone
    code, _, err = cli([*args, f"output_root={tmp_path}/alone"], monkeypatch, capsys)
    assert code == 0, err
    (run,), (alone,) = finished(root).values(), finished(tmp_path / "alone").values()
    assert comparable(run / "summary.json") == comparable(alone / "summary.json")
    assert (run / "metrics.jsonl").read_text().count("\n") == (alone / "metrics.jsonl").read_text().count("\n")


# ------------------------------------------------------------------------- failed writes

@pytest.mark.parametrize("fails", ["metrics.jsonl", "summary.json", "DONE"])
def test_failed_write_leaves_nothing_that_looks_complete(fails, tmp_path, monkeypatch, capsys):
    args = ["run", "experiment=sphere", "n_pairs=2", "eval.figure=false", f"output_root={tmp_path}/out"]
    code, out, err = cli(args, monkeypatch, capsys)
    assert code == 0, err
    (run,) = finished(tmp_path / "out").values()
    first = comparable(run / "summary.json")

    real = os.fsync

    def fsync(fd):  # the disk fills up while `fails` is written
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(f".{fails}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    code, out, err = cli([*args, "rerun=true"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"{fails}: No space left on device" in lines[0], err
    assert "Traceback" not in err
    for name in (files.DONE, "summary.json", "metrics.jsonl"):  # the earlier run's and this one's
        assert not (run / name).exists(), name
    assert not list(run.glob(".*.tmp"))

    monkeypatch.setattr(files.os, "fsync", real)
    code, out, err = cli(args, monkeypatch, capsys)  # the same run again, without the fault
    assert code == 0 and "skipping" not in out, err
    assert (run / files.DONE).exists() and comparable(run / "summary.json") == first


# ---------------------------------------------------------------------------- same seed twice

def run_twice(args: list[str], tmp_path, monkeypatch, capsys) -> list:
    """The summary.json of the same run made twice, in two output roots."""
    summaries = []
    for k in range(2):
        code, _, err = cli([*args, f"output_root={tmp_path}/{k}"], monkeypatch, capsys)
        assert code == 0, err
        (run,) = finished(tmp_path / str(k)).values()
        summaries.append(run / "summary.json")
    return summaries


def test_same_seed_twice_same_summary_synthetic(tmp_path, monkeypatch, capsys):
    args = ["run", "experiment=sphere", "n_pairs=2", "eval.figure=false", "seed=3"]
    summaries = run_twice(args, tmp_path, monkeypatch, capsys)
    assert comparable(summaries[0]) == comparable(summaries[1])
    # and the metric rows are byte-identical once their wall-clock values are set aside
    rows = [[r for r in (s.parent / "metrics.jsonl").read_text().splitlines() if '"seconds"' not in r]
            for s in summaries]
    assert rows[0] == rows[1] and rows[0]


@pytest.mark.slow
def test_same_seed_twice_same_summary_rotated_digits(tmp_path, monkeypatch, capsys):
    args = ["run", "experiment=rotated_mnist", "n_pairs=2", "solver.nodes=5", "eval.fid=false",
            "space.ddim_steps=2"]
    summaries = run_twice(args, tmp_path, monkeypatch, capsys)
    assert comparable(summaries[0]) == comparable(summaries[1])


# ------------------------------------------------------------------------------ Ctrl-C

def test_ctrl_c_prints_one_line_exit_130_then_resumes(tmp_path, monkeypatch, capsys):
    """SIGINT in the middle of a run: one line naming what was interrupted and that the same
    command resumes, exit code 130, no traceback; nothing marked done, no result and no lock
    left; the same command then finishes the run."""
    args = ["run", "experiment=sphere", "solver=adam_reference", "n_pairs=4", "eval.figure=false",
            f"output_root={tmp_path}/out"]
    proc = subprocess.Popen([sys.executable, "-m", "scoregeo_cli.cli", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = tmp_path / "out"
    lock = lambda: next(root.rglob(files.LOCK), None)  # noqa: E731
    assert wait_for(lambda: lock() is not None and lock().read_text().strip() == str(proc.pid), proc=proc)
    time.sleep(0.5)  # inside the solve
    assert proc.poll() is None, "the run ended before it could be interrupted; make it longer"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len([line for line in lines if "interrupted" in line]) == 1, err
    assert lines[-1].startswith("scoregeo: interrupted during ") and "Adam solve" in lines[-1], err
    assert "of the run in " in lines[-1] and "run the same command again to resume" in lines[-1], err
    assert not list(root.rglob(files.DONE)) and not list(root.rglob("summary.json"))
    assert not list(root.rglob(files.LOCK)) and not list(root.rglob(".*.tmp"))

    code, out, err = cli(args, monkeypatch, capsys)
    assert code == 0 and "skipping" not in out, err
    assert len(finished(root)) == 1


def interrupt_inside(monkeypatch, module, name: str) -> None:
    """Replace ``module.name`` by a function that sends this process SIGINT (Ctrl-C) and waits
    for it: the run's handler notes what runs and raises KeyboardInterrupt there."""
    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("SIGINT did not interrupt")

    monkeypatch.setattr(module, name, interrupted)


def test_ctrl_c_on_the_sphere_names_the_step_and_leaves_a_clean_folder(tmp_path, monkeypatch, capsys):
    """Ctrl-C in a step without a progress bar (scoring the paths against the truth): the line
    names that step, and the failure's cleanup leaves no run folder (no command.sh, no
    .hydra/ without DONE)."""
    from scoregeo_cli.tasks import synthetic

    interrupt_inside(monkeypatch, synthetic, "geometry_rows")
    code, _, err = cli(["run", "experiment=sphere", "n_pairs=2", f"output_root={tmp_path}/out"], monkeypatch, capsys)
    assert code == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("scoregeo: interrupted during scoring the paths against the true geodesics "
                                "of the run in "), err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name != ".cache"], sorted((tmp_path / "out").rglob("*"))


def test_ctrl_c_on_rotated_digits_leaves_no_pairs_json_without_done(tmp_path, monkeypatch, capsys):
    """An image run writes pairs.json first: after Ctrl-C during its methods, nothing of it stays."""
    from scoregeo_cli.tasks import images

    interrupt_inside(monkeypatch, images, "run_methods_shown")
    args = ["run", "experiment=rotated_mnist", "n_pairs=2", "solver.nodes=5", "space.ddim_steps=2", "eval.fid=false",
            f"output_root={tmp_path}/out"]
    code, _, err = cli(args, monkeypatch, capsys)
    assert code == 130, err
    assert "scoregeo: interrupted during " in err.splitlines()[-1], err
    left = [p for p in (tmp_path / "out").rglob("*") if ".cache" not in p.parts]
    assert not left, sorted(left)


# ------------------------------------------------------------------------------ closed stdout

@pytest.mark.parametrize("reader", ["true", "head -1"])
def test_a_closed_stdout_stops_quietly_and_leaves_no_partial_run(reader, tmp_path):
    """`scoregeo run ... | true` and `| head -1`: no error line, exit code 141 (a command a
    closed pipe stops), and the run is either finished (DONE and its results) or gone, never
    left partial; the same command then finishes or skips it."""
    args = ["run", "experiment=sphere", "n_pairs=2", "eval.figure=false", f"output_root={tmp_path}/out"]
    proc = subprocess.Popen([sys.executable, "-m", "scoregeo_cli.cli", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if reader == "head -1":
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == 141, err
    assert "rror" not in err and "Traceback" not in err and "Broken pipe" not in err, err
    for run in (tmp_path / "out").rglob("seed=*"):
        assert (run / files.DONE).exists() and (run / "summary.json").exists(), sorted(run.rglob("*"))
    for path in (tmp_path / "out").rglob("*"):  # every file lies in a finished run (the cache aside)
        if path.is_file() and ".cache" not in path.parts:
            assert any((folder / files.DONE).exists() for folder in path.parents), path
    again = subprocess.run([sys.executable, "-m", "scoregeo_cli.cli", *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(finished(tmp_path / "out")) == 1


def test_a_caught_interrupt_inside_a_string_exec_still_exits_130_under_python_m(tmp_path):
    """CPython marks a KeyboardInterrupt that ends a string exec (as when Ctrl-C lands while a
    dataclass is being built) as unhandled even after it is caught, and ``python -m`` then dies
    by SIGINT (-2) instead of returning 130; scoregeo's interrupt path clears the mark. The
    control module shows the same script without it, on this interpreter."""
    body = """import sys
try:
    exec("raise KeyboardInterrupt")
except KeyboardInterrupt:
    {clear}
    sys.exit(130)
"""
    (tmp_path / "fixed.py").write_text(body.format(
        clear="from scoregeo_cli.cli import _forget_caught_interrupt; _forget_caught_interrupt()"))
    (tmp_path / "control.py").write_text(body.format(clear="pass"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])}
    run = lambda name: subprocess.run([sys.executable, "-m", name], cwd=tmp_path, env=env,  # noqa: E731
                                      capture_output=True, text=True, timeout=120)
    fixed = run("fixed")
    assert fixed.returncode == 130, fixed.stderr
    control = run("control")
    assert control.returncode in (130, -signal.SIGINT), control.stderr  # -2 where CPython has the bug


# ------------------------------------------------------------------ files other users read

def _modes(run: Path) -> dict[str, int]:
    return {p.relative_to(run).as_posix(): p.stat().st_mode & 0o777 for p in run.rglob("*") if p.is_file()}


def test_result_files_honour_the_umask_and_no_lock_stays(tmp_path, monkeypatch, capsys):
    """Results get the mode a new file gets (0644 under umask 022, command.sh 0755), not
    mkstemp's 0600; a finished run keeps no .lock."""
    mask = os.umask(0o022)
    os.umask(mask)
    code, _, err = cli(["run", "experiment=sphere", "n_pairs=2", f"output_root={tmp_path}/out"], monkeypatch, capsys)
    assert code == 0, err
    (run,) = finished(tmp_path / "out").values()
    modes = _modes(run)
    assert {"metrics.jsonl", "summary.json", "DONE", "command.sh", ".hydra/config.yaml", ".hydra/hydra.yaml",
            ".hydra/overrides.yaml", "paths.png"} <= set(modes)
    for name, mode in modes.items():
        assert mode == (0o777 if name == "command.sh" else 0o666) & ~mask, (name, oct(mode))
    assert not list((tmp_path / "out").rglob(files.LOCK))


def test_result_files_under_umask_027(tmp_path):
    """Another umask, in a process of its own (the umask is read once per process)."""
    args = ["run", "experiment=sphere", "n_pairs=2", "eval.figure=false", f"output_root={tmp_path}/out"]
    done = subprocess.run([sys.executable, "-m", "scoregeo_cli.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, preexec_fn=lambda: os.umask(0o027))
    assert done.returncode == 0, done.stderr
    (run,) = finished(tmp_path / "out").values()
    modes = _modes(run)
    assert modes.pop("command.sh") == 0o750
    assert set(modes.values()) == {0o640}, modes
    assert not list((tmp_path / "out").rglob(files.LOCK))
