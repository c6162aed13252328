"""Score fields s(x) = grad log p(x) at a fixed noise level."""

from scoregeo_cli.scores.base import ScoreField

__all__ = ["ScoreField"]
