"""scoregeo's own Hydra sweeper and launcher, built on Hydra's public plugin interfaces.

``ScoregeoSweeper`` expands a sweep as Hydra's basic sweeper does (the cartesian product of
the swept values, the last varying fastest, so jobs, their ids and their folders are the
same), composes every job's config once and checks it with scoregeo's own checks in the
launching process, before any job starts and before any folder is made: one bad job
refuses the whole sweep in one sentence (exit code 2), whichever launcher runs the jobs
(``scoregeo``, ``joblib``, ``submitit_local``, ``submitit_slurm``). After the jobs it says
where their run folders are and, for launchers that write per-job logs (submitit), where
those are; a job that failed on a launcher that reports it as an exception (submitit's
``UncompletedJobError``) ends in one sentence naming its log.

``ScoregeoLauncher`` runs the jobs one after another in this process, as Hydra's basic
launcher does, but takes each job's config from the sweeper's composition instead of
composing it a second time.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class ScoregeoSweeperConf:
    _target_: str = "hydra_plugins.scoregeo_plugins.scoregeo_sweeper.ScoregeoSweeper"
    params: Optional[Dict[str, str]] = None  # extra overrides, as the basic sweeper's ``params``


@dataclass
class ScoregeoLauncherConf:
    _target_: str = "hydra_plugins.scoregeo_plugins.scoregeo_sweeper.ScoregeoLauncher"


ConfigStore.instance().store(group="hydra/sweeper", name="scoregeo", node=ScoregeoSweeperConf, provider="scoregeo")
ConfigStore.instance().store(group="hydra/launcher", name="scoregeo", node=ScoregeoLauncherConf, provider="scoregeo")


def compose(hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """One job's config (Hydra's public ``ConfigLoader.load_sweep_config``)."""
    return hydra_context.config_loader.load_sweep_config(config, list(overrides))


def expand(overrides) -> List[List[str]]:
    """The jobs of parsed overrides: the product of their values, in the basic sweeper's order."""
    final: "OrderedDict[str, List[str]]" = OrderedDict()
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise HydraException(f"scoregeo's sweeper does not support sweep type {override.value_type.name} "
                                     f"({override.input_line}); list the values: key=a,b,c or range(...)")
            final[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            final[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*final.values())]


class ScoregeoLauncher(Launcher):
    """Jobs one after another in this process (Hydra's basic launcher), each with the config
    the sweeper composed for it (``composed``, consumed as the jobs start)."""

    def __init__(self) -> None:
        super().__init__()
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        self.composed: Dict[tuple, DictConfig] = {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        runs: List[JobReturn] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.composed.pop(tuple(overrides), None)
            if sweep_config is None:
                sweep_config = compose(self.hydra_context, self.config, overrides)
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            runs.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                config=sweep_config, job_dir_key="hydra.sweep.dir",
                                job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs


class ScoregeoSweeper(Sweeper):
    """Expand, compose and check every job, then launch them all in one batch (module docstring)."""

    def __init__(self, params: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.params = dict(params or {})
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from scoregeo_cli import jobs

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        batch = expand(overrides)
        in_process = isinstance(self.launcher, ScoregeoLauncher)
        composed = {tuple(job): compose(self.hydra_context, self.config, job) for job in batch}
        # every job is checked before any starts: one bad job refuses the sweep; jobs that run
        # in this process keep what the check built
        jobs.check_jobs(list(composed.values()), keep=in_process)
        if in_process:
            self.launcher.composed = composed
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        try:
            results = self.launcher.launch(batch, initial_job_idx=0)
            for result in results:
                _ = result.return_value  # a failed job raises its error here
        except Exception as err:  # noqa: BLE001  (a launcher's report of a failed job)
            jobs.report_failed_launch(self.config, err)
            raise
        finally:
            jobs.tidy_launcher_folders(self.config)
        jobs.report_sweep(self.config, batch, results)
        return [results]
