"""The score-field interface shared by analytic scores and trained networks."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import torch

from scoregeo_cli.errors import check_finite


class ScoreField(ABC):
    """A vector field s: R^D -> R^D, the score of a noised data distribution.

    Points are flat vectors of dimension ``dim``; image models reshape internally. Calling
    the field evaluates it on a batch ``(..., D)`` in chunks of ``chunk_size`` points and
    counts the work: ``calls`` is the number of batched evaluations (what solvers are
    compared by), ``points`` the number of points scored, ``seconds`` the wall time spent
    inside the field (forward passes only; backward passes run later, outside it). The result is differentiable
    with respect to ``x`` when the field is.
    """

    def __init__(self, dim: int, chunk_size: int | None = None):
        self.dim = int(dim)
        self.chunk_size = chunk_size
        self.reset_counters()

    @abstractmethod
    def _score(self, x: torch.Tensor) -> torch.Tensor:
        """Score of a batch ``(B, D)`` -> ``(B, D)``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"score field expects points of dimension {self.dim}, got {x.shape[-1]}")
        start = time.perf_counter()
        flat = x.reshape(-1, self.dim)
        self.calls += 1
        self.points += flat.shape[0]
        if self.chunk_size and flat.shape[0] > self.chunk_size:
            out = torch.cat([self._score(c) for c in flat.split(self.chunk_size)])
        else:
            out = self._score(flat)
        check_finite(out.detach(), "the score", f"score evaluation {self.calls}")
        self.seconds += time.perf_counter() - start
        return out.reshape(x.shape)

    def reset_counters(self) -> None:
        self.calls = 0
        self.points = 0
        self.seconds = 0.0
