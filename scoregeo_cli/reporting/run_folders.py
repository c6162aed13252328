"""Where runs are: the folder Hydra gives each job of a sweep, and the finished run folders
of a recipe's groups under an output root.

Run folders are located exactly as a run names them: the sweep is expanded with Hydra's own
override parser and basic sweeper, each job's ``override_dirname`` is computed by Hydra's
own function from the exclude keys of ``conf/config.yaml``, and the folder is the
resolution of that file's ``hydra.sweep.dir``/``hydra.sweep.subdir`` templates with the
resolvers ``scoregeo run`` registers (``<output_root>/<experiment_name>/<dirname>/seed=<k>``).
Finished runs are found by what each run recorded (``.hydra/overrides.yaml`` beside a
``DONE`` marker), never by re-deriving folder names.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from scoregeo_cli import paths
from scoregeo_cli import resolvers  # noqa: F401  (registers the resolvers run folders are named with)
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io import files

CONF_DIR = paths.CONF_DIR


class RunGroup(Protocol):
    """What locating runs needs of a recipe's group (``recipes.Group``): one run configuration."""

    label: str
    run: list[str]      # its overrides, experiment=... first
    experiment: str     # the experiment_name (the folder under output_root)


# --------------------------------------------------------------------------- Hydra naming

@dataclass(frozen=True)
class DirnameRule:
    """How a multirun job's overrides become its run folder (conf/config.yaml)."""

    exclude_keys: tuple[str, ...]
    kv_sep: str = "="
    item_sep: str = ","
    sweep_dir: str = "${output_root}/${experiment_name}"
    subdir: str = "${dirname:${hydra.job.override_dirname}}/seed=${seed}"

    @classmethod
    def from_conf(cls, conf_dir: Path = CONF_DIR) -> "DirnameRule":
        cfg = OmegaConf.load(conf_dir / "config.yaml")
        rule = OmegaConf.select(cfg, "hydra.job.config.override_dirname", default=None) or {}
        sweep = OmegaConf.to_container(OmegaConf.select(cfg, "hydra.sweep", default=None) or {}, resolve=False)
        return cls(exclude_keys=tuple(rule.get("exclude_keys", ())),
                   kv_sep=rule.get("kv_sep", "="), item_sep=rule.get("item_sep", ","),
                   sweep_dir=sweep.get("dir", cls.sweep_dir), subdir=sweep.get("subdir", cls.subdir))

    def override_dirname(self, overrides: list[str]) -> str:
        """Hydra's ``hydra.job.override_dirname`` of one job (empty without overrides)."""
        lines = sorted(o.input_line for o in parse(overrides)
                       if not o.is_hydra_override() and o.key_or_group not in self.exclude_keys)
        return self.item_sep.join(lines).replace("=", self.kv_sep)

    def _resolve(self, template: str, root: Path, experiment: str, overrides: list[str], seed: int) -> str:
        node = OmegaConf.create({"output_root": str(root), "experiment_name": experiment, "seed": seed,
                                 "hydra": {"job": {"override_dirname": self.override_dirname(overrides)}}})
        node["_folder"] = template
        try:
            return str(node._folder)
        except Exception as err:  # a template this module cannot evaluate outside a run
            raise ScoregeoError(f"cannot name run folders from conf/config.yaml ({template}): {err}") from None

    def experiment_dir(self, root: Path, experiment: str) -> Path:
        """``hydra.sweep.dir``: where all runs of one experiment live."""
        return Path(self._resolve(self.sweep_dir, root, experiment, [], 0))

    def folder(self, root: Path, experiment: str, overrides: list[str], seed: int) -> Path:
        """The run folder of one job: ``hydra.sweep.dir / hydra.sweep.subdir``."""
        return (self.experiment_dir(root, experiment)
                / self._resolve(self.subdir, root, experiment, overrides, seed))


def parse(overrides: list[str]):
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ScoregeoError(f"cannot parse overrides {overrides}: {str(err).splitlines()[0]}") from None


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of one ``-m`` sweep, each a list of override strings, in the order of Hydra's
    basic sweeper (the product of the overrides' values, the last varying fastest)."""
    choices: dict[str, list[str]] = {}
    for o in parse(overrides):
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise ScoregeoError(f"cannot expand sweep {overrides}: only lists of values (a,b,c) are supported")
            choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def values(overrides: list[str]) -> dict[str, str]:
    """{key: value as written} of plain (non-sweep) overrides."""
    out = {}
    for o in parse(overrides):
        out[o.key_or_group] = o.input_line.split("=", 1)[1] if "=" in o.input_line else ""
    return out


def experiment_name(experiment: str, conf_dir: Path = CONF_DIR) -> str:
    """The ``experiment_name`` an experiment file sets (its file name unless it says otherwise)."""
    path = conf_dir / "experiment" / f"{experiment}.yaml"
    if path.exists():
        cfg = yaml.safe_load(path.read_text()) or {}
        if isinstance(cfg.get("experiment_name"), str):
            return cfg["experiment_name"]
    return experiment


# --------------------------------------------------------------------------- run folders

@dataclass
class Located:
    """Where one group's seeds are: the expected run folder per seed, and the finished ones."""

    group: RunGroup
    folders: dict[int, Path]           # expected run folder per seed
    runs: dict[int, Path | None]       # finished run folder per seed (None: not finished)
    overrides: list[str]               # the group's overrides plus the extras in effect
    root: Path

    @property
    def missing(self) -> list[int]:
        return [s for s, d in self.runs.items() if d is None]

    def pattern(self) -> str:
        """``<experiment>/<dirname>/seed={0,1,2}``, relative to the output root."""
        seeds = list(self.folders)
        first = self.folders[seeds[0]]
        try:
            first = first.relative_to(self.root)
        except ValueError:
            pass
        if len(seeds) > 1 and first.name == f"seed={seeds[0]}":
            return f"{first.parent.as_posix()}/seed={{{','.join(map(str, seeds))}}}"
        return first.as_posix()

    def command(self, hidden: tuple[str, ...] = ("output_root", "rerun")) -> str:
        """The sweep that makes these runs; where outputs go is not part of the config."""
        seeds = ",".join(str(s) for s in self.runs)
        shown = [o.input_line for o in parse(self.overrides)
                 if o.key_or_group not in hidden and not o.is_hydra_override()]
        return shlex.join(["scoregeo", "run", "-m", *shown, f"seed={seeds}"])


class RunLocator:
    """Finds the finished run folders of recipe groups under one output root.

    ``extras`` are the overrides the user passed to ``reproduce``; they are part of every
    job's folder name. Keys a recipe ``requires`` (user paths such as ``score.pretrained``)
    are unknown to ``scoregeo tables``: without them, finished runs are found by reading
    each run's ``.hydra/overrides.yaml`` and matching everything else.
    """

    def __init__(self, output_root: Path, extras: list[str] = (), requires: list[str] = (),
                 conf_dir: Path = CONF_DIR):
        self.root = Path(output_root)
        self.extras = list(extras)
        self.requires = list(requires)
        self.rule = DirnameRule.from_conf(conf_dir)
        self._jobs: dict[tuple[Path, bool], list] = {}  # finished runs per experiment folder (_recorded)

    def _located(self, group: RunGroup, overrides: list[str], seeds: list[int],
                 runs: dict[int, Path] | None = None) -> Located:
        folders = {s: self.rule.folder(self.root, group.experiment, overrides, s) for s in seeds}
        if runs is None:
            runs = {s: f for s, f in folders.items() if files.is_done(f)}
        return Located(group, folders, {s: runs.get(s) for s in seeds}, overrides, self.root)

    def locate(self, group: RunGroup, seeds: list[int]) -> Located:
        """The group's finished runs, found by what each run recorded (``.hydra/overrides.yaml``
        of folders holding DONE), never by re-deriving folder names."""
        given = values(self.extras)
        lacking = [k for k in self.requires if k not in given]
        found = self._scan(group, seeds, match_required=not lacking)
        if found is not None:
            return found
        # nothing finished: name the folders with "..." where the user's values go
        overrides = [*group.run, *self.extras, *(f"{k}=..." for k in lacking)]
        return self._located(group, overrides, seeds, runs={})

    def _scan(self, group: RunGroup, seeds: list[int], match_required: bool = False) -> Located | None:
        """Finished runs of the group: their recorded overrides equal the group's (seed and
        the keys that only say where outputs go aside). Unless ``match_required``, runs may
        differ in the values of required keys (user paths); of several such configurations,
        the one with most seeds (then the newest) wins."""
        want = self._key(group.run + self.extras, match_required)
        candidates: dict[tuple, dict[int, Path]] = {}
        base = self.rule.experiment_dir(self.root, group.experiment)
        if not base.is_dir():
            return None
        for run_dir, seed, key, own in self._recorded(base, match_required):
            if seed not in seeds or key != want:
                continue
            required = tuple(f"{k}={own[k]}" for k in self.requires if k in own)
            candidates.setdefault(required, {})[seed] = run_dir
        if not candidates:
            return None
        required, runs = max(candidates.items(), key=lambda kv: (
            len(kv[1]), max((results_mtime(p) for p in kv[1].values()), default=0)))
        return self._located(group, [*group.run, *self.extras, *required], seeds, runs)

    def _recorded(self, base: Path, match_required: bool) -> list[tuple[Path, int, frozenset, dict]]:
        """(run folder, seed, key, recorded values) of every finished run under ``base``: its
        ``.hydra/overrides.yaml`` is read and parsed once per locator, not once per group."""
        if (base, match_required) not in self._jobs:
            jobs = []
            for file in base.rglob("overrides.yaml"):
                run_dir = file.parent.parent
                if file.parent.name != ".hydra" or not files.is_done(run_dir):
                    continue
                try:
                    job = [str(o) for o in yaml.safe_load(file.read_text()) or []]
                    own = values(job)
                    seed = int(own.get("seed", "0"))
                except (yaml.YAMLError, ValueError, ScoregeoError):
                    continue
                jobs.append((run_dir, seed, self._key(job, match_required), own))
            self._jobs[base, match_required] = jobs
        return self._jobs[base, match_required]

    def _key(self, overrides: list[str], match_required: bool = False) -> frozenset:
        skip = set(self.rule.exclude_keys) | (set() if match_required else set(self.requires))
        return frozenset((o.key_or_group, o.input_line) for o in parse(overrides)
                         if not o.is_hydra_override() and o.key_or_group not in skip)


def results_mtime(run_dir: Path) -> float:
    return (Path(run_dir) / files.DONE).stat().st_mtime
