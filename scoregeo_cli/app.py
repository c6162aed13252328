"""`scoregeo run` and `scoregeo train`: Hydra applications over the config tree in conf/.

One run: compose the config; refuse bad values (types, ranges, NaN/Inf, a method named
twice) and everything the task refuses while it builds what it needs (``task.prepare``), in
one sentence with exit code 2, before anything is written (the folder Hydra made for the
run is removed again); skip the run if its folder already holds a DONE marker of the same
overrides (refuse if of others); take the run folder's lock, record the config in
``.hydra/``, let the task compute rows of metrics, then write metrics.jsonl, summary.json
and DONE (in that order). A failure leaves nothing marked DONE; Ctrl-C ends in one line
and exit code 130. A sweep (``-m``) goes through scoregeo's sweeper
(hydra_plugins/scoregeo_plugins), which checks every job (``jobs.check_job``) before any
runs.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from scoregeo_cli import jobs, paths
from scoregeo_cli import resolvers  # noqa: F401  (registers the resolvers run folders are named with)
from scoregeo_cli.build import instantiate
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io import files, progress
from scoregeo_cli.jobs import check_same_run, check_types
from scoregeo_cli.reporting import provenance, results

CONF_DIR = str(paths.CONF_DIR)
_TORCH_THREADS: int | None = None


def _register_plugins() -> None:
    """scoregeo's sweeper and launcher (hydra_plugins/scoregeo_plugins), registered through
    Hydra's public ``Plugins.register`` as well, for installs whose ``hydra_plugins``
    namespace Hydra's scan does not reach (an editable install)."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.scoregeo_plugins.scoregeo_sweeper import ScoregeoLauncher, ScoregeoSweeper

    for plugin in (ScoregeoSweeper, ScoregeoLauncher):
        Plugins.instance().register(plugin)


_register_plugins()


# --------------------------------------------------------------------------- run folders

_EXISTING: list[Path] = []  # the deepest folders that existed before Hydra made a run's or sweep's
_ACTIVE: dict = {"run_dir": None}  # the run this process works on (named if it is interrupted)


class RunFolders(Callback):
    """Notes, before Hydra makes any folder, the deepest existing ancestor of the run folder
    (or of a sweep's folder), so that a refused run removes exactly the folders made for it
    and keeps every folder that was there before (conf/config.yaml: hydra.callbacks)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)  # as run_job does next: ${hydra:...} in the folder resolves
        _note_existing(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _note_existing(config, "hydra.sweep.dir")


def _note_existing(config: DictConfig, key: str) -> None:
    try:
        target = Path(str(OmegaConf.select(config, key))).absolute()
    except Exception:  # noqa: BLE001  (a folder template that needs the job: nothing to note)
        return
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is not None:
        _EXISTING.append(existing)


def remove_empty_folders(run_dir: Path, stop: Path | None = None) -> None:
    """Remove ``run_dir`` and its parents while they are empty, up to (not including) the
    deepest folder noted as existing before Hydra made them, or ``stop``; without either,
    ``run_dir`` alone. Only empty folders are removed (``os.rmdir``): never a file."""
    run_dir = Path(run_dir).absolute()
    bounds = [p for p in _EXISTING if run_dir == p or p in run_dir.parents]
    bound = max(bounds, key=lambda p: len(p.parts)) if bounds else None
    if stop is not None:
        stop = Path(stop).absolute()
        bound = stop if bound is None or bound in stop.parents else bound  # the deeper of the two
    folder = run_dir
    while folder != bound and (bound is None or bound in folder.parents):
        try:
            folder.rmdir()
        except OSError:
            return
        if bound is None:
            return
        folder = folder.parent


def one_sentence(text: str) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line: lists of options become
    comma-separated, the ``full_key``/``object_type`` trailers and hints go."""
    parts: list[str] = []
    items: list[str] = []
    for raw in str(text).splitlines():
        line = raw.strip()
        if line.startswith("Config search path"):
            break
        if not line or line.startswith(("full_key:", "object_type=", "reference_type=",
                                         "Set the environment variable HYDRA_FULL_ERROR")):
            continue
        if raw.startswith(("\t", "    ")) and parts and parts[-1].endswith(":"):
            items.append(line)
            continue
        if items:
            parts[-1] += " " + ", ".join(items)
            items = []
        parts.append(line)
    if items:
        parts[-1] += " " + ", ".join(items)
    return "; ".join(p.rstrip(".") if i < len(parts) - 1 else p for i, p in enumerate(parts))


def _unknown_key(err: BaseException) -> str | None:
    """Hydra's "Could not override 'KEY'" (a key the config does not have) as the sentence
    ``+KEY=...`` gets too: the options of the object the key would configure, or the
    nearest known key (Hydra's hint to append it would have the run ignore it)."""
    cause = err.__cause__
    found = re.match(r"Could not override '([^']+)'", str(err))
    parent = getattr(cause, "parent_node", None)
    if not found or not isinstance(cause, (ConfigKeyError, ConfigAttributeError)) or parent is None:
        return None
    try:
        return jobs.unknown_key_sentence(found.group(1), parent._get_root())
    except Exception:  # noqa: BLE001  (Hydra's own sentence then)
        return None


def _unloadable_option(err: BaseException) -> str | None:
    """Hydra's "Could not load 'method/NAME'" (an option of a list group, which Hydra
    reports without the options) with the group's options, as for the other groups."""
    found = re.search(r"Could not load '([\w/]+)/([^']+)'", str(err))
    if not found:
        return None
    group = found.group(1)
    names = sorted(p.stem for p in (paths.CONF_DIR / group).glob("*.yaml"))
    if not names:
        return None
    return f"{one_sentence(str(err)).rstrip('.')}; Available options in '{group}': {', '.join(names)}"


def error_sentence(err: BaseException) -> str:
    if isinstance(err, HydraException):
        sentence = _unknown_key(err) or _unloadable_option(err)
        if sentence:
            return sentence
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", "") or "a value"
        return f"{key} is required but not set; pass it as an override, e.g. {key}=..."
    if isinstance(err, ScoregeoError):
        return one_sentence(str(err))
    if isinstance(err, MemoryError):
        return "out of memory; lower n_pairs, solver.nodes or task.pair_batch"
    if isinstance(err, OSError) and not isinstance(err, HydraException):
        writing = err.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST)
        return files.os_error_sentence(err, "write to" if writing else "access")
    return one_sentence(str(err)) or type(err).__name__


def _fail(err: BaseException) -> None:
    print(f"scoregeo: error: {error_sentence(err)}", file=sys.stderr)
    sys.exit(2)


def _replay_command(subcommand: str) -> str:
    overrides = HydraConfig.get().overrides.task
    return "scoregeo " + " ".join([subcommand, *map(shlex.quote, overrides)]) + "\n"


def apply_threads(cfg: DictConfig) -> None:
    """torch.set_num_threads(cfg.threads) (null: torch's own default) before any work."""
    global _TORCH_THREADS
    import torch

    if _TORCH_THREADS is None:
        _TORCH_THREADS = torch.get_num_threads()
    threads = cfg.get("threads")
    if threads is not None and int(threads) < 1:
        raise ScoregeoError(f"threads must be at least 1 or null, got {threads}")
    torch.set_num_threads(_TORCH_THREADS if threads is None else int(threads))


def record_config(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` of this run (what Hydra
    writes itself with ``hydra.output_subdir``, written here only once the run folder's
    lock is held and the run is not skipped)."""
    hydra_dir = run_dir / ".hydra"
    files.atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    files.atomic_write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.instance().cfg))
    files.atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(HydraConfig.get().overrides.task))


REFUSALS = (ScoregeoError, OmegaConfBaseException, HydraException, OSError, MemoryError)


def _sweep_dir() -> Path | None:
    """The sweep's folder when this job is one of a sweep (a job never removes it)."""
    hc = HydraConfig.get()
    return Path(str(hc.sweep.dir)) if hc.mode == RunMode.MULTIRUN else None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def run_experiment(cfg: DictConfig) -> dict | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    _ACTIVE["run_dir"] = run_dir
    try:
        with progress.activity(f"run {run_dir}"):
            return _run(cfg, run_dir)
    except BrokenPipeError:  # not an Exception for Hydra, which would report a failed job
        raise StdoutClosed() from None
    finally:
        _ACTIVE["run_dir"] = None


class StdoutClosed(BaseException):
    """Stdout's reader went away during a run (``scoregeo run ... | head -1``); the run has
    done its cleanup, and the command stops quietly (``scoregeo_cli.cli``)."""


def _run(cfg: DictConfig, run_dir: Path) -> dict | None:
    # 1. refusals: nothing is written, and the folder Hydra made for the run goes again
    overrides = [str(o) for o in HydraConfig.get().overrides.task]
    held = jobs.PREPARED.pop(tuple(overrides), None)  # checked and built by this process's sweeper
    try:
        with progress.step("checking the config and building what the run needs"):
            if held is None:
                check_types(cfg, overrides)
            apply_threads(cfg)
            if not cfg.rerun and files.is_done(run_dir):
                with files.run_lock(run_dir):
                    if files.is_done(run_dir):
                        check_same_run(run_dir)
                        print(f"skipping finished run {run_dir} (rerun=true recomputes it)")
                        return None
            if held is not None:
                task, prepared = held
            else:
                task = instantiate(cfg.task)
                prepared = task.prepare(cfg) if hasattr(task, "prepare") else None
    except (*REFUSALS, KeyboardInterrupt) as err:
        remove_empty_folders(run_dir, _sweep_dir())
        if isinstance(err, (KeyboardInterrupt, BrokenPipeError)):
            raise
        _fail(err)
    # 2. the run: results written atomically, DONE last. A failure, an interrupt or a closed
    # stdout removes what the attempt wrote (and the record an earlier attempt left): no
    # folder holds a run's files without DONE, and a folder made for it goes again
    attempt: set[str] | None = None
    try:
        with files.run_lock(run_dir):
            attempt = files.entries(run_dir)
            files.clear_done(run_dir)
            try:
                with progress.step("recording the run's config"):
                    record_config(run_dir, cfg)
                    OmegaConf.resolve(cfg)
                    command = _replay_command("run")
                    files.atomic_write_text(run_dir / "command.sh", command, executable=True)
                started, start = provenance.now(), time.perf_counter()
                with progress.step(f"the {cfg.experiment_name} task"):
                    rows = task.run(cfg, run_dir, prepared) if prepared is not None else task.run(cfg, run_dir)
                with progress.step("writing the results"):
                    summary = results.write_results(run_dir, rows)
                    provenance.write_provenance(run_dir, command, started, time.perf_counter() - start)
                    files.mark_done(run_dir)
                attempt = None
            except BaseException:  # a failed run leaves no results that could pass for complete
                with contextlib.suppress(Exception):
                    files.remove_attempt(run_dir, attempt)
                raise
    except BaseException as err:
        if attempt is not None:  # after the lock (and its file) went: the folder, if nothing else is there
            remove_empty_folders(run_dir, _sweep_dir())
        if isinstance(err, REFUSALS) and not isinstance(err, BrokenPipeError):
            _fail(err)
        raise
    with progress.step("printing the summary (the run is finished)"):
        print(f"\n{cfg.experiment_name}: {len(rows)} metric rows in {time.perf_counter() - start:.1f} s -> {run_dir}")
        print(results.format_summary(summary, getattr(task, "table_metrics", None),
                                     row_header=getattr(task, "table_row_header", "method"), width=SUMMARY_WIDTH))
    return summary


SUMMARY_WIDTH = 120  # the printed table; summary.json holds every metric


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def train_backbone(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if "train" not in cfg.score:
        remove_empty_folders(out_dir)
        _fail(ScoregeoError(f"score '{HydraConfig.get().runtime.choices.get('score')}' has nothing "
                            "to train; choose a trainable backbone, e.g. score=mlp"))
    try:
        check_types(cfg, [str(o) for o in HydraConfig.get().overrides.task])
        apply_threads(cfg)
    except REFUSALS as err:
        remove_empty_folders(out_dir, _sweep_dir())
        _fail(err)
    _ACTIVE["run_dir"] = out_dir
    try:
        with files.run_lock(out_dir):
            record_config(out_dir, cfg)
            files.atomic_write_text(out_dir / "command.sh", _replay_command("train"), executable=True)
            params = OmegaConf.to_container(cfg.score.train, resolve=True)
            trainer = hydra.utils.get_method(params.pop("_target_"))
            checkpoint = trainer(cfg=cfg, out_dir=out_dir, **params)
    except REFUSALS as err:
        _fail(err)
    finally:
        _ACTIVE["run_dir"] = None
    key = "score.pretrained" if "pretrained" in cfg.score else "score.checkpoint"
    print(f"checkpoint: {checkpoint}\nuse it with: scoregeo run ... {key}={checkpoint}")


# --------------------------------------------------------------------------- entry points

_INTERRUPTED: dict = {"during": ""}


def _on_interrupt(signum, frame) -> None:
    """SIGINT: note what was running (the innermost progress bar) before unwinding."""
    _INTERRUPTED["during"] = progress.current()
    _INTERRUPTED["run_dir"] = _ACTIVE["run_dir"]
    raise KeyboardInterrupt


def interrupted_line(prog: str) -> str:
    """The one line an interrupted command prints."""
    during = _INTERRUPTED.get("during") or progress.current()
    run_dir = _INTERRUPTED.get("run_dir") or _ACTIVE["run_dir"]
    what = f" during {during}" if during else ""
    if run_dir:
        what += f" of the run in {run_dir}" if during else f" in the run in {run_dir}"
    return (f"{prog}: interrupted{what}; nothing unfinished is marked done, run the same command again "
            "to resume (finished runs are skipped)")


def _hydra(app, argv: list[str], prog: str) -> int:
    """Run a Hydra application; Hydra's own errors (composition, override syntax, output
    folders it cannot create) end in one sentence and exit code 2 like ours; Ctrl-C in one
    line and exit code 130.

    HYDRA_FULL_ERROR makes Hydra raise them instead of printing its multi-line report.
    """
    previous_argv, sys.argv = sys.argv, [prog, *argv]
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, _on_interrupt) if main_thread else None
    _EXISTING.clear()
    _INTERRUPTED.clear()
    try:
        with progress.activity(prog):
            app()
    except KeyboardInterrupt:
        progress.close_all()
        print(interrupted_line(prog.split()[0]), file=sys.stderr, flush=True)
        return 130
    except (BrokenPipeError, StdoutClosed):  # stdout closed (`| head`): the command stops quietly (cli)
        raise BrokenPipeError() from None
    except REFUSALS as err:
        _fail(err)
    finally:
        jobs.PREPARED.clear()  # what a sweep's check built serves its own jobs only
        if main_thread:
            signal.signal(signal.SIGINT, previous_handler)
        sys.argv = previous_argv
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
    return 0


def main(argv: list[str], prog: str = "scoregeo run") -> int:
    return _hydra(run_experiment, argv, prog)


def train_main(argv: list[str], prog: str = "scoregeo train") -> int:
    has_dir = any(a.startswith("hydra.run.dir=") for a in argv)
    extra = [] if has_dir else [
        "hydra.run.dir='${output_root}/train/${experiment_name}/${hydra:runtime.choices.score}/seed-${seed}'"]
    return _hydra(train_backbone, [*argv, *extra], prog)
