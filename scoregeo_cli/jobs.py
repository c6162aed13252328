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
import difflib
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scoregeo_cli import paths
from scoregeo_cli.build import (check_config, check_finite, check_unique_methods, check_value, instantiate,
                                 options)
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
    if overrides:
        check_added_keys(cfg, overrides)
    check_config(cfg)
    check_finite(cfg)
    if overrides:
        check_unique_methods(overrides)


# --------------------------------------------------------------------------- unknown keys

def known_keys(cfg: DictConfig) -> list[str]:
    """Every key of a composed config as a dotted path (``hydra`` aside), nodes and leaves."""
    out: list[str] = []

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                if key or name != "hydra":
                    full = f"{key}.{name}" if key else str(name)
                    out.append(full)
                    walk(item, full)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def unknown_key_sentence(key: str, cfg: DictConfig) -> str | None:
    """The sentence that refuses an override of ``key``, which ``cfg`` (the config composed
    without it) does not have: the option list of the object it would configure, or the
    nearest known key. None when the object's constructor takes it (``+key=...`` sets it)."""
    parts = key.split(".")
    experiment = OmegaConf.select(cfg, "experiment_name", default=None, throw_on_missing=False)
    of = f" of experiment {experiment}" if isinstance(experiment, str) and experiment != "???" else ""
    for i in range(len(parts) - 1, 0, -1):
        owner = ".".join(parts[:i])
        node = OmegaConf.select(cfg, owner, default=None, throw_on_missing=False)
        if isinstance(node, DictConfig) and "_target_" in node:
            takes = options(node, owner)
            if takes is None or (i == len(parts) - 1 and parts[i] in takes):
                return None
            near = difflib.get_close_matches(parts[i], takes, n=1, cutoff=0.6)
            return (f"{key}: the {owner}{of} ({node._target_}) has no option {parts[i]}; it takes: "
                    f"{', '.join(takes) or 'nothing'}" + (f" (nearest: {owner}.{near[0]})" if near else ""))
    near = difflib.get_close_matches(key, known_keys(cfg), n=1, cutoff=0.6)
    hint = (f"the nearest known key is {near[0]}" if near
            else "`scoregeo run --cfg job` prints every key")
    return f"unknown key {key}: the config{of} has no such key; {hint}"


def _is_group(name: str) -> bool:
    """Whether ``name`` (``dataset`` or ``hydra/launcher``) is a config group of conf/."""
    return (paths.CONF_DIR / name.replace(".", "/")).is_dir()


def check_added_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuse ``+key=value`` and ``++key=value`` of a key the config does not have and no
    constructor takes: Hydra adds it and the run would ignore it. Named with the nearest key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    added = [o for o in parsed if (o.is_add() or o.is_force_add()) and not o.is_hydra_override()
             and not _is_group(o.key_or_group)]
    if not added:
        return
    base = _composed_without(cfg, [o.input_line for o in parsed if o not in added], [o.key_or_group for o in added])
    for o in added:
        if OmegaConf.select(base, o.key_or_group, default=None, throw_on_missing=False) is not None:
            continue  # ++ of a key the config has: a plain override
        sentence = unknown_key_sentence(o.key_or_group, base)
        if sentence is not None:
            raise ScoregeoError(sentence)


def _composed_without(cfg: DictConfig, others: list[str], added: list[str]) -> DictConfig:
    """The config composed without the added keys: Hydra's compose of the other overrides
    where Hydra is initialised (inside ``scoregeo run``), else ``cfg`` with those keys removed."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        with contextlib.suppress(HydraException, OmegaConfBaseException, ValueError):
            return compose(config_name="config", overrides=others)
    data = OmegaConf.to_container(cfg, resolve=False)
    for key in added:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return OmegaConf.create(data)


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
