"""`scoregeo run` and `scoregeo train`: Hydra applications over the config tree in conf/.

One run: compose the config, refuse bad values in one sentence, skip the run if its
folder already holds a DONE marker, build the task from ``cfg.task`` and let it compute
rows of metrics, then write metrics.jsonl, summary.json and DONE (in that order).
"""

from __future__ import annotations

import hashlib
import shlex
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from scoregeo_cli import paths
from scoregeo_cli.reporting import results
from scoregeo_cli.build import instantiate
from scoregeo_cli.errors import ScoregeoError

CONF_DIR = str(paths.CONF_DIR)

def run_dirname(overrides: str) -> str:
    """The folder name of a run from Hydra's override_dirname.

    Empty (no overrides) becomes "default"; slashes of paths in overrides become
    underscores (no nested folders); a name over 180 characters keeps its first 160 and a
    hash of the whole, so it stays unique and within file-system limits.
    """
    name = overrides.replace("/", "_") or "default"
    if len(name) > 180:
        name = f"{name[:160]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


if not OmegaConf.has_resolver("dirname"):
    OmegaConf.register_new_resolver("dirname", run_dirname)


def _fail(err: Exception) -> None:
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", "") or "a value"
        err = ScoregeoError(f"{key} is required but not set; pass it as an override, e.g. {key}=...")
    elif isinstance(err, OmegaConfBaseException):
        err = ScoregeoError(str(err).splitlines()[0])
    print(f"scoregeo: error: {err}", file=sys.stderr)
    sys.exit(2)


def _replay_command(subcommand: str) -> str:
    overrides = HydraConfig.get().overrides.task
    return "scoregeo " + " ".join([subcommand, *map(shlex.quote, overrides)]) + "\n"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def run_experiment(cfg: DictConfig) -> dict | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if results.is_done(run_dir) and not cfg.rerun:
        print(f"skipping finished run {run_dir} (rerun=true recomputes it)")
        return None
    results.clear_done(run_dir)
    try:
        task = instantiate(cfg.task)
        OmegaConf.resolve(cfg)
        results.atomic_write_text(run_dir / "command.sh", _replay_command("run"))
        start = time.perf_counter()
        rows = task.run(cfg, run_dir)
    except (ScoregeoError, OmegaConfBaseException) as err:
        _fail(err)
    summary = results.write_results(run_dir, rows)
    results.mark_done(run_dir)
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
        results.atomic_write_text(out_dir / "command.sh", _replay_command("train"))
        params = OmegaConf.to_container(cfg.score.train, resolve=True)
        trainer = hydra.utils.get_method(params.pop("_target_"))
        checkpoint = trainer(cfg=cfg, out_dir=out_dir, **params)
    except (ScoregeoError, OmegaConfBaseException) as err:
        _fail(err)
    print(f"checkpoint: {checkpoint}\nuse it with: scoregeo run ... score.checkpoint={checkpoint}")


def _hydra(app, argv: list[str], prog: str) -> int:
    sys.argv = [prog, *argv]
    app()
    return 0


def main(argv: list[str], prog: str = "scoregeo run") -> int:
    return _hydra(run_experiment, argv, prog)


def train_main(argv: list[str], prog: str = "scoregeo train") -> int:
    has_dir = any(a.startswith("hydra.run.dir=") for a in argv)
    extra = [] if has_dir else [
        "hydra.run.dir='${output_root}/train/${experiment_name}/${hydra:runtime.choices.score}/seed-${seed}'"]
    return _hydra(train_backbone, [*argv, *extra], prog)
