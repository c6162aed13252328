"""Where a result comes from: the commit of the checkout, the machine, and each run's own
record (``provenance.json``: command, commit, start, end, wall time, machine), which
``scoregeo run`` writes into every finished run folder and the report and published results
read back. Runs made before the record existed are described from what they left (their
``command.sh`` and the times of their files).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path

from scoregeo_cli import paths
from scoregeo_cli.io.files import DONE, atomic_write_json

PROVENANCE = "provenance.json"


def git_commit() -> str:
    """Short hash of the checkout scoregeo runs from, or "unknown"."""
    out = _git("rev-parse", "--short", "HEAD")
    return out or "unknown"


def git_modified() -> bool | None:
    """Whether tracked files of the checkout differ from its commit (None: not a checkout)."""
    if not _git("rev-parse", "--short", "HEAD"):
        return None
    try:
        out = subprocess.run(["git", "-C", str(paths.PACKAGE.parent), "status", "--porcelain",
                              "--untracked-files=no"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(paths.PACKAGE.parent), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict:
    """The machine a run computes on: CPU model and cores, the accelerator torch sees (if
    any), the system, Python and torch versions. No host or user names."""
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "system": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001  (torch missing or broken: the rest still describes the machine)
        pass
    return info


def describe_machine(info: dict | None) -> str:
    """One line: 'AMD EPYC 7B13 (2 cores), 1 torch thread, Linux x86_64, Python 3.11.7, torch 2.13.0'."""
    if not info:
        return "not recorded"
    parts = [f"{info.get('cpu', 'unknown CPU')} ({info.get('cores', '?')} cores)"]
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']}")
    if info.get("threads"):
        parts.append(f"{info['threads']} torch thread{'s' if info['threads'] != 1 else ''}")
    parts += [str(info[k]) for k in ("system",) if info.get(k)]
    parts += [f"{name} {info[k]}" for k, name in (("python", "Python"), ("torch", "torch")) if info.get(k)]
    return ", ".join(parts)


def now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def write_provenance(run_dir: Path, command: str, started: str, wall_seconds: float) -> None:
    """``<run_dir>/provenance.json`` of a run that just computed its results."""
    atomic_write_json(Path(run_dir) / PROVENANCE, {
        "command": command.strip(), "commit": git_commit(), "commit_modified": git_modified(),
        "started": started, "finished": now(), "wall_seconds": round(float(wall_seconds), 3), "machine": machine()})


def _mtime_iso(path: Path) -> str | None:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    return dt.datetime.fromtimestamp(stamp, dt.timezone.utc).replace(microsecond=0).isoformat()


def read_provenance(run_dir: Path) -> dict:
    """A finished run's record, completed from what it left where it has none (older runs):
    the command from ``command.sh``, the end from ``DONE``'s time, the wall time from the
    ``seconds`` its summary records; ``recorded`` says which it is."""
    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / PROVENANCE).read_text())
        if isinstance(record, dict):
            return {**record, "recorded": True}
    except (OSError, ValueError):
        pass
    try:
        command = (run_dir / "command.sh").read_text().strip()
    except OSError:
        command = ""
    return {"command": command, "commit": None, "started": None, "finished": _mtime_iso(run_dir / DONE),
            "wall_seconds": None, "machine": None, "recorded": False}
