"""The Euclidean metric g = I: every solver must return the straight line (a sanity check)."""

from __future__ import annotations

import torch

from scoregeo_cli.geometry.base import Metric
from scoregeo_cli.scores.base import ScoreField


class EuclideanMetric(Metric):
    """g(x) = I. The score is kept only so that cost counters work as for every metric."""

    def __init__(self, score: ScoreField | None = None):
        self.score = score

    def energy(self, path: torch.Tensor) -> torch.Tensor:
        v = path[:, 1:] - path[:, :-1]
        return 0.5 * v.shape[1] * (v * v).sum(-1).sum(-1)

    def length(self, path: torch.Tensor) -> torch.Tensor:
        return (path[:, 1:] - path[:, :-1]).norm(dim=-1).sum(-1)

    def norm_sq(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (v * v).sum(-1)

    def acceleration(self, x: torch.Tensor, xdot: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(xdot)
