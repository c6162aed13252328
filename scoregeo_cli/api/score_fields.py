"""Score fields of the public API: a user's callable as a score field (``as_score_field``),
and the Euclidean metric's stand-in for no score. Built on first use, as they need torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from scoregeo_cli.api.checks import ArgumentError, prod

if TYPE_CHECKING:
    from scoregeo_cli.scores.base import ScoreField


def score_types():
    """(FunctionScore, NoScore): the score fields that wrap a plain callable and stand in for
    no score (built on first use, as they need torch)."""
    global _SCORE_TYPES
    if _SCORE_TYPES is not None:
        return _SCORE_TYPES
    import torch

    from scoregeo_cli.scores.base import ScoreField

    class FunctionScore(ScoreField):
        """A user's callable s(x) on batches (B, *shape) as a score field on flat points
        (B, D), D = prod(shape), counting its calls and points. ``shape`` None: the callable
        takes flat points of whatever dimension it is first called with."""

        def __init__(self, fn: Callable, shape: tuple[int, ...] | None):
            self.fn, self.shape = fn, None if shape is None else tuple(int(s) for s in shape)
            super().__init__(prod(self.shape) if self.shape is not None else 0)

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            if self.shape is None:
                self.dim = x.shape[-1]
            return super().__call__(x)

        def _score(self, x: torch.Tensor) -> torch.Tensor:
            inp = x if self.shape is None else x.reshape(-1, *self.shape)
            out = self.fn(inp)
            if not isinstance(out, torch.Tensor) or out.shape != inp.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ArgumentError(f"score must return a tensor of its input's shape {tuple(inp.shape)}, got {got}")
            return out.reshape(x.shape).to(x.dtype)

    class NoScore(ScoreField):
        """The Euclidean metric's stand-in: counters only, never evaluated."""

        def __init__(self):
            super().__init__(0)
            self.shape = None

        def _score(self, x):  # pragma: no cover - the Euclidean metric never calls it
            return torch.zeros_like(x)

    _SCORE_TYPES = (FunctionScore, NoScore)
    return _SCORE_TYPES


_SCORE_TYPES = None


def as_score_field(score, shape: Sequence[int] | None = None) -> ScoreField:
    """The internal score field of ``score`` (a callable on batches (B, *shape), or already
    a score field of scoregeo), on flat points of dimension prod(shape)."""
    from scoregeo_cli.scores.base import ScoreField

    shape = None if shape is None else tuple(int(s) for s in shape)
    if isinstance(score, ScoreField):
        own = getattr(score, "shape", None)
        if shape is not None and score.dim and score.dim != prod(shape):
            raise ArgumentError(f"score works on points of dimension {score.dim}"
                                + (f" (shape {tuple(own)})" if own else "")
                                + f", but the points have shape {shape} ({prod(shape)} values)")
        return score
    if not callable(score):
        raise ArgumentError(f"score must be a callable x -> s(x) on a batch of points (B, *shape), "
                            f"got {type(score).__name__}")
    return score_types()[0](score, shape)
