"""Paired comparisons with their uncertainty (science.md section 8).

A method is compared with a baseline on the same pairs and the same noise: per pair i,
d_i = metric(method)_i - metric(baseline)_i. ``paired_bootstrap`` reports mean(d) with a
percentile bootstrap interval (resample the pairs with replacement, take the quantiles of the
resampled means) and n; seeds are pooled as pairs by the caller.
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95


def paired_bootstrap(differences, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """Mean of paired differences (n,) with a percentile bootstrap ``level`` interval.

    Non-finite differences (a failed solve recorded as NaN) are left out and counted in
    ``dropped``. Returns {"mean", "ci_low", "ci_high", "n", "dropped"}; with fewer than two
    finite differences the interval is NaN (one pair says nothing about its spread). The
    resampling is seeded, so the same differences give the same interval."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if int(resamples) < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    finite = d[np.isfinite(d)]
    out = {"mean": float(finite.mean()) if len(finite) else math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "n": int(len(finite)), "dropped": int(len(d) - len(finite))}
    if len(finite) >= 2:
        rng = np.random.default_rng(seed)
        means = finite[rng.integers(0, len(finite), (int(resamples), len(finite)))].mean(axis=1)
        tail = (1 - level) / 2
        out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(means, [tail, 1 - tail]))
    return out


def format_interval(stat: dict, digits: int = 2, signed: bool = True, spec: str | None = None) -> str:
    """'+4.10 [+3.20, +5.00]' (n is reported beside it by the caller); '–' without data.
    ``spec``, a format spec such as '+.3g', replaces ``digits`` and ``signed``."""
    if stat is None or stat.get("n", 0) == 0 or not math.isfinite(stat["mean"]):
        return "–"
    fmt = f"{{:{spec}}}" if spec else f"{{:{'+' if signed else ''}.{digits}f}}"
    if not (math.isfinite(stat["ci_low"]) and math.isfinite(stat["ci_high"])):
        return fmt.format(stat["mean"])
    return f"{fmt.format(stat['mean'])} [{fmt.format(stat['ci_low'])}, {fmt.format(stat['ci_high'])}]"
