"""`scoregeo run` and `scoregeo train`: Hydra applications over the config tree in conf/.

One run: compose the config, refuse bad values (types and ranges) in one sentence, take the
run folder's lock, skip the run if its folder already holds a DONE marker of the same
overrides (refuse if of others), record the config in ``.hydra/``, build the task from
``cfg.task`` and let it compute rows of metrics, then write metrics.jsonl, summary.json and
DONE (in that order). Every failure a user can cause ends in one sentence on stderr and
exit code 2, nothing marked DONE.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import os
import shlex
import sys
import time
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from scoregeo_cli import paths
from scoregeo_cli.reporting import results
from scoregeo_cli.build import check_config, check_value, instantiate
from scoregeo_cli.errors import ScoregeoError

CONF_DIR = str(paths.CONF_DIR)
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
_TORCH_THREADS: int | None = None


def run_dirname(overrides: str) -> str:
    """The folder name of a run from Hydra's override_dirname.

    Empty (no overrides) becomes "default". A value with a path separator cannot name a
    folder as it is: slashes become underscores and a hash of the exact overrides is
    appended, so ``a=/x/col/a_b`` and ``a=/x/col_a/b`` get different folders. A name over
    180 characters keeps its first 160 and a hash of the whole, so it stays unique and
    within file-system limits.
    """
    name = overrides or "default"
    digest = hashlib.sha1(overrides.encode()).hexdigest()
    if "/" in name:
        name = f"{name.replace('/', '_')}-{digest[:8]}"
    if len(name) > 180:
        name = f"{name[:160]}-{digest[:12]}"
    return name


if not OmegaConf.has_resolver("dirname"):
    OmegaConf.register_new_resolver("dirname", run_dirname)


_VALIDATED: dict = {}  # (master config id, job overrides) -> the job's config the sweeper composed
_KEEP_VALIDATED = 64    # at most this many (about 0.3 MB each)


def _compose_each_job_once() -> None:
    """Hydra's sweeper composes every job of a batch to check it (``validate_batch_is_legal``)
    and an in-process launcher (basic) then composes it again; here the launcher gets the
    config the check composed (the first _KEEP_VALIDATED of a batch). Launchers that compose
    in other processes (joblib) compose there as before."""
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.plugins.sweeper import Sweeper
    except ImportError:  # another Hydra: keep its own behaviour
        return
    if getattr(ConfigLoaderImpl.load_sweep_config, "reuses_validated", False):
        return
    compose = ConfigLoaderImpl.load_sweep_config

    def validate_batch_is_legal(self, batch) -> None:
        _VALIDATED.clear()
        loader = getattr(self, "hydra_context", None)
        loader = loader.config_loader if loader is not None else self.config_loader
        with _reading_each_config_file_once():
            for overrides in batch:
                config = compose(loader, self.config, list(overrides))
                if len(_VALIDATED) < _KEEP_VALIDATED:
                    _VALIDATED[id(self.config), tuple(overrides)] = config

    def load_sweep_config(self, master_config, sweep_overrides):
        config = _VALIDATED.pop((id(master_config), tuple(sweep_overrides)), None)
        return config if config is not None else compose(self, master_config, sweep_overrides)

    load_sweep_config.reuses_validated = True
    Sweeper.validate_batch_is_legal = validate_batch_is_legal
    ConfigLoaderImpl.load_sweep_config = load_sweep_config


@contextlib.contextmanager
def _reading_each_config_file_once():
    """While one batch of jobs is composed, each config file is read and parsed once (Hydra
    parses every file again for every job); the jobs get copies, which Hydra may change."""
    try:
        from hydra._internal.config_repository import ConfigRepository
    except ImportError:  # another Hydra: keep its own behaviour
        yield
        return
    original, parsed = ConfigRepository.load_config, {}

    def load_config(self, config_path):
        key = (tuple((type(s).__name__, s.path) for s in self.sources), config_path)
        if key not in parsed:
            parsed[key] = original(self, config_path)
        return copy.deepcopy(parsed[key])

    ConfigRepository.load_config = load_config
    try:
        yield
    finally:
        ConfigRepository.load_config = original


_compose_each_job_once()


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


def error_sentence(err: BaseException) -> str:
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", "") or "a value"
        return f"{key} is required but not set; pass it as an override, e.g. {key}=..."
    if isinstance(err, ScoregeoError):
        return one_sentence(str(err))
    if isinstance(err, MemoryError):
        return "out of memory; lower n_pairs, solver.nodes or task.pair_batch"
    if isinstance(err, OSError) and not isinstance(err, HydraException):
        writing = err.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST)
        return results.os_error_sentence(err, "write to" if writing else "access")
    return one_sentence(str(err)) or type(err).__name__


def _fail(err: BaseException) -> None:
    print(f"scoregeo: error: {error_sentence(err)}", file=sys.stderr)
    sys.exit(2)


def _replay_command(subcommand: str) -> str:
    overrides = HydraConfig.get().overrides.task
    return "scoregeo " + " ".join([subcommand, *map(shlex.quote, overrides)]) + "\n"


def check_types(cfg: DictConfig) -> None:
    """Refuse mistyped top-level and eval values, then every node with a ``_target_``."""
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


def _configuration(overrides: list[str], experiment: str | None) -> set:
    """What of a run's overrides says what it computes (NOT_CONFIGURATION and hydra.* aside)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    key = {(o.key_or_group, repr(o.value())) for o in parsed
           if not o.is_hydra_override() and o.key_or_group not in NOT_CONFIGURATION}
    return key | {("experiment", repr(experiment))}


def check_same_run(run_dir: Path) -> None:
    """Refuse to skip a finished run whose recorded overrides differ from the requested ones."""
    hc = HydraConfig.get()
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


def record_config(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` of this run (what Hydra
    writes itself with ``hydra.output_subdir``, written here only once the run folder's
    lock is held and the run is not skipped)."""
    hydra_dir = run_dir / ".hydra"
    results.atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    results.atomic_write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.instance().cfg))
    results.atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(HydraConfig.get().overrides.task))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def run_experiment(cfg: DictConfig) -> dict | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        check_types(cfg)
        apply_threads(cfg)
        with results.run_lock(run_dir):
            if results.is_done(run_dir) and not cfg.rerun:
                check_same_run(run_dir)
                print(f"skipping finished run {run_dir} (rerun=true recomputes it)")
                return None
            results.clear_done(run_dir)
            try:
                record_config(run_dir, cfg)
                task = instantiate(cfg.task)
                OmegaConf.resolve(cfg)
                results.atomic_write_text(run_dir / "command.sh", _replay_command("run"))
                start = time.perf_counter()
                rows = task.run(cfg, run_dir)
                summary = results.write_results(run_dir, rows)
                results.mark_done(run_dir)
            except BaseException:  # a failed run leaves no results that could pass for complete
                with contextlib.suppress(Exception):
                    results.clear_done(run_dir)
                raise
    except (ScoregeoError, OmegaConfBaseException, HydraException, OSError, MemoryError) as err:
        _fail(err)
    print(f"\n{cfg.experiment_name}: {len(rows)} metric rows in {time.perf_counter() - start:.1f} s -> {run_dir}")
    print(results.format_summary(summary, getattr(task, "table_metrics", None)))
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def train_backbone(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if "train" not in cfg.score:
        _fail(ScoregeoError(f"score '{HydraConfig.get().runtime.choices.get('score')}' has nothing "
                            "to train; choose a trainable backbone, e.g. score=mlp"))
    try:
        check_types(cfg)
        apply_threads(cfg)
        with results.run_lock(out_dir):
            record_config(out_dir, cfg)
            results.atomic_write_text(out_dir / "command.sh", _replay_command("train"))
            params = OmegaConf.to_container(cfg.score.train, resolve=True)
            trainer = hydra.utils.get_method(params.pop("_target_"))
            checkpoint = trainer(cfg=cfg, out_dir=out_dir, **params)
    except (ScoregeoError, OmegaConfBaseException, HydraException, OSError, MemoryError) as err:
        _fail(err)
    print(f"checkpoint: {checkpoint}\nuse it with: scoregeo run ... score.checkpoint={checkpoint}")


def _hydra(app, argv: list[str], prog: str) -> int:
    """Run a Hydra application; Hydra's own errors (composition, override syntax, output
    folders it cannot create) end in one sentence and exit code 2 like ours.

    HYDRA_FULL_ERROR makes Hydra raise them instead of printing its multi-line report.
    """
    previous_argv, sys.argv = sys.argv, [prog, *argv]
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except (ScoregeoError, OmegaConfBaseException, HydraException, OSError, MemoryError) as err:
        _fail(err)
    finally:
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
