"""Paired bootstrap intervals: coverage on a case with a known answer, and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scoregeo_cli.reporting.stats import format_interval, paired_bootstrap


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    """Normal differences with known mean 0.7 and sd 2, n = 30 pairs: over 600 independent
    experiments the 95% percentile interval holds the true mean in about 95% of them (the
    percentile bootstrap runs slightly narrow at n = 30: about 93-94%)."""
    rng = np.random.default_rng(11)
    trials, n, mean, sd = 600, 30, 0.7, 2.0
    hits, widths = 0, []
    for k in range(trials):
        stat = paired_bootstrap(rng.normal(mean, sd, n), resamples=2000, seed=k)
        hits += stat["ci_low"] <= mean <= stat["ci_high"]
        widths.append(stat["ci_high"] - stat["ci_low"])
    coverage = hits / trials
    assert 0.90 <= coverage <= 0.98, coverage
    # the width matches the normal theory's 2 * 1.96 * sd / sqrt(n) to within 10%
    assert np.mean(widths) == pytest.approx(2 * 1.96 * sd / math.sqrt(n), rel=0.10)


def test_mean_and_n_are_exact_and_nan_pairs_are_dropped():
    stat = paired_bootstrap([1.0, 2.0, float("nan"), 3.0, float("inf")])
    assert stat["mean"] == 2.0 and stat["n"] == 3 and stat["dropped"] == 2
    assert 1.0 <= stat["ci_low"] <= 2.0 <= stat["ci_high"] <= 3.0
    again = paired_bootstrap([1.0, 2.0, float("nan"), 3.0, float("inf")])
    assert again == stat  # seeded: the same differences give the same interval


def test_constant_differences_give_a_point_interval_and_one_pair_no_interval():
    stat = paired_bootstrap([0.5] * 7)
    assert stat["ci_low"] == stat["ci_high"] == 0.5
    single = paired_bootstrap([0.5])
    assert single["mean"] == 0.5 and math.isnan(single["ci_low"]) and single["n"] == 1


def test_format_interval():
    assert format_interval({"mean": 4.1, "ci_low": 3.2, "ci_high": 5.0, "n": 30}, 1) == "+4.1 [+3.2, +5.0]"
    assert format_interval({"mean": -0.01234, "ci_low": -0.02, "ci_high": 0.0, "n": 9}, 3) == "-0.012 [-0.020, +0.000]"
    assert format_interval({"mean": 0.5, "ci_low": math.nan, "ci_high": math.nan, "n": 1}) == "+0.50"
    assert format_interval({"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}) == "–"


def test_bad_arguments():
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap([1, 2], level=1.5)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap([1, 2], resamples=0)


def test_summary_holds_paired_differences_to_lerp():
    """summarize: every method other than LERP gets <metric>_minus_lerp over the pairs both
    have (set metrics with pair -1 are not paired); LERP gets none; the printed table shows
    the interval."""
    from scoregeo_cli.evaluation.rows import row
    from scoregeo_cli.reporting.results import format_summary, summarize

    rows = [row(p, "lerp", "psnr", 20.0 + p) for p in range(4)]
    rows += [row(p, "geodesic", "psnr", 21.0 + p + 0.1 * (-1) ** p) for p in range(4)]
    rows += [row(p, "geodesic", "angle_error", 5.0) for p in range(3)] + [row(p, "lerp", "angle_error", 9.0) for p in range(4)]
    rows += [row(-1, "geodesic", "fid", 10.0), row(-1, "lerp", "fid", 12.0), row(0, "slerp", "ssim", 0.5)]
    summary = summarize(rows)
    d = summary["geodesic"]["psnr_minus_lerp"]
    assert d["mean"] == pytest.approx(1.0) and d["n"] == 4 and d["ci_low"] == pytest.approx(0.9) and d["ci_high"] == pytest.approx(1.1)
    assert summary["geodesic"]["angle_error_minus_lerp"] == {"mean": -4.0, "ci_low": -4.0, "ci_high": -4.0, "n": 3, "dropped": 0}
    assert "fid_minus_lerp" not in summary["geodesic"] and "ssim_minus_lerp" not in summary["slerp"]
    assert not any(k.endswith("_minus_lerp") for k in summary["lerp"])
    table = format_summary(summary, ["psnr", "psnr_minus_lerp"])
    assert "geodesic  22.5 ± 1.2  +1 [+0.9, +1.1]" in table
