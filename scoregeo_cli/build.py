"""Build the pluggable objects of a run from its config (all through ``instantiate``)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from scoregeo_cli.metric import SteinMetric
from scoregeo_cli.scores.base import ScoreField


def build_score(cfg: DictConfig, **context) -> ScoreField:
    """Instantiate ``cfg.score`` (a partial) and complete it with ``context``.

    The ``train`` section of a score config holds training hyperparameters for
    ``scoregeo train`` and is not passed to the constructor.
    """
    keys = [k for k in cfg.score if k != "train"]
    factory = instantiate(OmegaConf.masked_copy(cfg.score, keys))
    return factory(**context)


def build_metric(cfg: DictConfig, score: ScoreField) -> SteinMetric:
    return instantiate(cfg.metric)(score=score)
