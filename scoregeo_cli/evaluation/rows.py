"""One row of a run's metrics.jsonl: what every evaluation returns."""

from __future__ import annotations


def row(pair: int, method: str, metric: str, value: float, **extra) -> dict:
    """One metrics.jsonl row."""
    return {"pair": int(pair), "method": method, "metric": metric, "value": float(value), **extra}
