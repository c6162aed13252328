"""Build the pluggable objects of a run from its config (all through ``instantiate``)."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.geometry.metrics import Metric
from scoregeo_cli.scores.base import ScoreField


def instantiate(node, **kwargs):
    """hydra.utils.instantiate, letting a constructor's ScoregeoError through unwrapped."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ScoregeoError):
            raise cause from None
        raise


def require_set(cfg: DictConfig, group: str) -> None:
    """Refuse a config group with required values (``???``) left unset."""
    missing = sorted(OmegaConf.missing_keys(cfg[group]))
    if missing:
        key = f"{group}.{missing[0]}"
        raise ScoregeoError(f"{key} is required but not set; pass it as an override, e.g. {key}=...")


def build_score(cfg: DictConfig, **context) -> ScoreField:
    """Instantiate ``cfg.score`` (a partial) and complete it with ``context``.

    The ``train`` section of a score config holds training hyperparameters for
    ``scoregeo train`` and is not passed to the constructor.
    """
    require_set(cfg, "score")
    node = OmegaConf.to_container(cfg.score, resolve=True)
    node.pop("train", None)
    return instantiate(node)(**context)


def build_metric(cfg: DictConfig, score: ScoreField) -> Metric:
    return instantiate(cfg.metric)(score=score)
