"""Files of a run folder written safely: atomic writes, the completion marker and the lock.

A run folder is complete when ``DONE`` exists; it is written last, after the results, each
of which is written to a temporary file and renamed into place, so an interrupted run never
leaves a file that looks complete. A run that starts removes the results and marker an
earlier, unfinished attempt left, and holds ``.lock`` (an advisory ``flock``) for as long as
it writes into its folder; the lock file goes when the run ends. Files get the permissions
the umask gives a new file (0644 under umask 022; executables such as ``command.sh`` 0755),
as ``open`` would.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from scoregeo_cli.errors import ScoregeoError

DONE = "DONE"
LOCK = ".lock"
RESULT_FILES = ("metrics.jsonl", "summary.json")
# what a run records besides its results: an attempt that fails removes these even when an
# earlier, unfinished attempt left them (so no run folder holds them without DONE)
RECORD_FILES = (".hydra", "command.sh", "provenance.json", "pairs.json", "cache.json")


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


def entries(run_dir: str | os.PathLike) -> set[str]:
    """The names in a run folder (its lock aside); empty if the folder does not exist."""
    try:
        return set(os.listdir(run_dir)) - {LOCK}
    except FileNotFoundError:
        return set()


def remove_attempt(run_dir: str | os.PathLike, before: set[str]) -> None:
    """After a failed or interrupted attempt: remove what it wrote, every entry of the run
    folder that was not there when it began (``before``, from ``entries``), and the run's
    record (RECORD_FILES) and results whenever made; anything else that was there stays.
    Call it holding the folder's lock."""
    import shutil

    run_dir = Path(run_dir)
    made = entries(run_dir) - set(before)
    for name in sorted(made | {DONE, *RESULT_FILES, *RECORD_FILES}):
        path = run_dir / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
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
