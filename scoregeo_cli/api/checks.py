"""The argument checks of the public API: each refuses a bad argument with an
``ArgumentError``, a ``ValueError`` whose one-sentence message starts with the argument's
name. Imports no torch until a tensor is checked."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Sequence

from scoregeo_cli.errors import NonFiniteError, ScoregeoError

if TYPE_CHECKING:
    import torch

CONFIG_PREFIXES = ("metric.", "solver.", "extrapolate.", "score.")


class ArgumentError(ScoregeoError, ValueError):
    """A bad argument to the API: a ``ValueError`` whose message names the argument."""


@contextmanager
def as_argument_errors():
    """Constructors of the internal objects validate their values with the CLI's key names
    (``solver.max_evals``); through the API the same sentence names the argument."""
    try:
        yield
    except ArgumentError:
        raise
    except NonFiniteError:
        raise
    except ScoregeoError as err:
        message = str(err)
        for prefix in CONFIG_PREFIXES:
            message = message.replace(prefix, "")
        raise ArgumentError(message) from None


def number(name: str, value, minimum: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ArgumentError(f"{name} must be positive, got {value!r}")
    if minimum is not None and value < minimum:
        raise ArgumentError(f"{name} must be >= {minimum:g}, got {value!r}")
    return float(value)


def integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ArgumentError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ArgumentError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def tensor(name: str, value, min_dim: int = 1, what: str = "") -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor):
        raise ArgumentError(f"{name} must be a torch tensor{what}, got {type(value).__name__}")
    if value.dim() < min_dim:
        raise ArgumentError(f"{name} must have at least {min_dim} dimensions{what}, got shape {tuple(value.shape)}")
    if value.dtype not in (torch.float32, torch.float64):
        raise ArgumentError(f"{name} must be float32 or float64, got {value.dtype}")
    if value.numel() == 0:
        raise ArgumentError(f"{name} is empty (shape {tuple(value.shape)})")
    if not bool(torch.isfinite(value).all()):
        raise ArgumentError(f"{name} holds NaN or Inf values")
    return value


def like(name: str, value: torch.Tensor, other: torch.Tensor, other_name: str) -> None:
    if value.shape != other.shape:
        raise ArgumentError(f"{name} has shape {tuple(value.shape)} but {other_name} has {tuple(other.shape)}")
    if value.dtype != other.dtype:
        raise ArgumentError(f"{name} is {value.dtype} but {other_name} is {other.dtype}")
    if value.device != other.device:
        raise ArgumentError(f"{name} is on {value.device} but {other_name} is on {other.device}")


def ends(a, b) -> tuple["torch.Tensor", "torch.Tensor"]:
    what = " of shape (P, D) or (P, *shape)"
    a = tensor("a", a, 2, what)
    b = tensor("b", b, 2, what)
    like("b", b, a, "a")
    return a, b


def prod(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out
