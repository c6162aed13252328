"""The checks of one job of ``scoregeo run``, shared by the run itself (``scoregeo_cli.app``)
and scoregeo's sweeper (hydra_plugins/scoregeo_plugins), which checks every job of a sweep
before any runs; and what the sweeper reports after its jobs.

A job is refused, in one sentence, for mistyped or non-finite values and a method named
twice (``check_types``), a finished run of other overrides in its folder
(``check_same_run``) and everything its task refuses while it builds what it needs
(``check_job``: ``task.prepare``). What a sweep's check built for a job that runs in the
same process is kept for it (``PREPARED``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scoregeo_cli.build import check_config, check_finite, check_unique_methods, check_value, instantiate
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io import files

# overrides that say where or how a run executes, not what it computes: they may differ
# between a finished run and a request to skip it (seed and experiment are in the path)
NOT_CONFIGURATION = ("seed", "experiment", "output_root", "rerun", "threads", "cache", "hydra.launcher.n_jobs")
# the types of top-level and eval keys (nodes with a _target_ are checked by their signature)
TOP_LEVEL_TYPES = {"seed": ["int"], "n_pairs": ["int"], "rerun": ["bool"], "output_root": ["str"],
                   "threads": ["int", "None"], "cache": ["bool"], "experiment_name": ["str"]}
EVAL_TYPES = {"figure": ["bool"], "fid": ["bool"], "geodesic_points": ["int"], "points": ["int"],
              "perturbation": ["float"], "sigmas": ["list"], "lpips_net": ["str"], "kid_subset_size": ["int"],
              "inception_batch": ["int"], "fid_frames": ["int", "None"], "fid_real": ["int", "None"],
              "strips": ["int", "None"], "strip_scale": ["int"]}


def job_folder(cfg: DictConfig) -> Path | None:
    """The run folder of one job of a sweep (``hydra.sweep.dir/hydra.sweep.subdir``)."""
    try:
        return Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    except Exception:  # noqa: BLE001
        return None


def check_types(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Refuse mistyped top-level and eval values, then every node with a ``_target_``, NaN
    and infinite numbers anywhere, and a method named twice in ``overrides``."""
    image_task = str(OmegaConf.select(cfg, "task._target_", default="")).endswith("ImageTask")
    def plain(value):
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    for key, words in TOP_LEVEL_TYPES.items():
        if key in cfg and not OmegaConf.is_missing(cfg, key):
            check_value(key, plain(cfg[key]), [*words, "None"] if key == "n_pairs" and image_task else words)
    if isinstance(cfg.get("eval"), DictConfig):
        for key, words in EVAL_TYPES.items():
            if key in cfg.eval and not OmegaConf.is_missing(cfg.eval, key):
                check_value(f"eval.{key}", plain(cfg.eval[key]), words)
    check_config(cfg)
    check_finite(cfg)
    if overrides:
        check_unique_methods(overrides)


def _configuration(overrides: list[str], experiment: str | None) -> set:
    """What of a run's overrides says what it computes (NOT_CONFIGURATION and hydra.* aside)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    key = {(o.key_or_group, repr(o.value())) for o in parsed
           if not o.is_hydra_override() and o.key_or_group not in NOT_CONFIGURATION}
    return key | {("experiment", repr(experiment))}


def check_same_run(run_dir: Path, hydra_cfg=None) -> None:
    """Refuse to skip a finished run whose recorded overrides differ from the requested ones
    (``hydra_cfg``: the run's ``hydra`` node; default: the running job's)."""
    hc = HydraConfig.get() if hydra_cfg is None else hydra_cfg
    requested = [str(o) for o in hc.overrides.task]
    record = run_dir / ".hydra" / "overrides.yaml"
    try:
        recorded = [str(o) for o in (yaml.safe_load(record.read_text()) or [])]
        recorded_hydra = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml")
        recorded_experiment = OmegaConf.select(recorded_hydra, "hydra.runtime.choices.experiment", default=None)
        same = _configuration(recorded, recorded_experiment) == _configuration(
            requested, hc.runtime.choices.get("experiment"))
    except (OSError, yaml.YAMLError, OmegaConfBaseException, HydraException):
        recorded, same = ["(none recorded)"], False
    if not same:
        raise ScoregeoError(f"{run_dir} holds a finished run of overrides [{' '.join(recorded)}], not the "
                            f"requested [{' '.join(requested)}]; pass another output_root, or rerun=true to replace it")


PREPARED: dict = {}  # job overrides -> (task, prepared) checked by the sweeper for a job of this process
KEEPPREPARED = 16    # at most this many are kept (each holds what its run built)


def check_jobs(configs: list[DictConfig], keep: bool = False) -> None:
    """``check_job`` for every job of a sweep; with ``keep`` (the jobs run in this process)
    the first KEEPPREPARED jobs keep what they built for their run, which then neither
    checks nor builds it again."""
    PREPARED.clear()
    for cfg in configs:
        held = check_job(cfg)
        if keep and held is not None and len(PREPARED) < KEEPPREPARED:
            PREPARED[tuple(str(o) for o in cfg.hydra.overrides.task)] = held


def check_job(cfg: DictConfig):
    """Every refusal of one job of a sweep, from its composed config (``hydra`` node
    included), in the launching process before any job starts: types and values, a finished
    run of other overrides in its folder, and the task's own checks (``prepare``: everything
    a run builds before it computes) unless the job will be skipped as finished. Returns
    (task, what prepare built), or None for a job that will be skipped."""
    check_types(cfg, [str(o) for o in cfg.hydra.overrides.task])
    folder = job_folder(cfg)
    if folder is not None and not cfg.get("rerun") and files.is_done(folder):
        check_same_run(folder, cfg.hydra)
        return None
    task = instantiate(cfg.task)
    return task, (task.prepare(cfg) if hasattr(task, "prepare") else None)


# --------------------------------------------------------------------------- sweeps

def report_sweep(config: DictConfig, jobs: list, returns) -> None:
    """After a sweep: where its run folders are, and where a launcher that keeps per-job
    logs (submitit) put each job's output (its table)."""
    folders = []
    for ret in returns:
        try:
            folders.append(Path(str(ret.hydra_cfg.hydra.runtime.output_dir)))
        except Exception:  # noqa: BLE001
            continue
    sweep_dir = Path(str(config.hydra.sweep.dir))
    print(f"\n{len(jobs)} run(s) of the sweep: {sweep_dir}/<overrides>/seed=<k> (each with its summary.json)",
          flush=True)
    logs = submitit_logs(config)
    if logs is not None:
        print(f"each job's output, its table included, is in submitit's logs: {logs}", flush=True)
        for folder in folders:
            print(f"  {folder}", flush=True)


def tidy_launcher_folders(config: DictConfig) -> None:
    """submitit's local launcher makes its log folder pattern itself, a folder literally
    named ``%j`` beside the jobs' own; it stays empty and goes again here."""
    folder = OmegaConf.select(config, "hydra.launcher.submitit_folder", default=None)
    if folder is None or "%" not in str(folder):
        return
    parts = Path(str(folder)).parts
    cut = next(i for i, part in enumerate(parts) if "%" in part)
    with contextlib.suppress(OSError):
        Path(*parts[:cut + 1]).rmdir()  # only if empty


def submitit_logs(config: DictConfig) -> str | None:
    """Where a submitit launcher writes each job's log (None for other launchers)."""
    folder = OmegaConf.select(config, "hydra.launcher.submitit_folder", default=None)
    if folder is None:
        return None
    return str(Path(str(folder).replace("%j", "<job id>")) / "<job id>_0_log.out")


def report_failed_launch(config: DictConfig, err: BaseException) -> None:
    """A launcher that reports a failed job as an exception (submitit's UncompletedJobError):
    one sentence naming the logs, instead of the launcher's traceback."""
    if isinstance(err, (ScoregeoError, HydraException, OmegaConfBaseException)):
        return
    logs = submitit_logs(config)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    where = f"; its log: {logs}" if logs else ""
    raise ScoregeoError(f"a job of the sweep failed ({type(err).__name__}: {first}){where}") from None
