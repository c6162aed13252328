"""The one exception type users see: its message is a complete sentence."""


class ScoregeoError(Exception):
    """Bad input or a failed run, reported as one clear sentence without a traceback."""


class NonFiniteError(ScoregeoError):
    """A model or solver produced NaN or Inf."""


def check_finite(tensor, what: str, where: str) -> None:
    """Raise NonFiniteError naming `what` (the quantity) and `where` (the step) if needed."""
    import torch

    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(f"{what} has {bad} NaN/Inf value(s) at {where}")
