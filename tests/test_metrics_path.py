"""Path metrics against values worked out by hand; consecutive LPIPS on real images."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.evaluation.images import lpips_distance
from scoregeo_cli.io.image_files import load_image
from scoregeo_cli.evaluation.path import consecutive_lpips, gini, path_metrics

from helpers import LPIPS_IMAGES as REFERENCE  # noqa: E402


def test_path_metrics_by_hand():
    # d = (0.1, 0.2, 0.3, 0.4), n = 4
    # ppl = 0.1 + 0.2 + 0.3 + 0.4 = 1.0;  consistency = mean = 0.25
    # pdv: deviations -0.15, -0.05, 0.05, 0.15; squares sum 0.0225 + 0.0025 + 0.0025 + 0.0225
    #      = 0.05; population variance 0.05 / 4 = 0.0125; pdv = sqrt(0.0125) = 0.111803...
    # Gini: unordered |d_i - d_j| = 0.1, 0.2, 0.3, 0.1, 0.2, 0.1 (sum 1.0), ordered sum 2.0;
    #      2.0 / (2 * 4^2 * 0.25) = 2.0 / 8 = 0.25;  smoothness = 1 - 0.25 = 0.75
    metrics = path_metrics(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert metrics == pytest.approx({"ppl": 1.0, "pdv": math.sqrt(0.0125),
                                     "smoothness": 0.75, "consistency": 0.25})
    assert all(type(value) is float for value in metrics.values())


def test_path_metrics_one_jump():
    # d = (0, 0, 0, 1): ppl 1, mean 0.25
    # pdv: deviations -0.25 (x3), 0.75; squares 3 * 0.0625 + 0.5625 = 0.75; / 4 = 0.1875
    # Gini: the three pairs with the 1 differ by 1 (unordered sum 3, ordered 6);
    #      6 / (2 * 16 * 0.25) = 0.75;  smoothness 0.25
    metrics = path_metrics(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert metrics == pytest.approx({"ppl": 1.0, "pdv": math.sqrt(0.1875),
                                     "smoothness": 0.25, "consistency": 0.25})


def test_path_metrics_even_steps_are_perfectly_smooth():
    # five equal steps of 0.2: ppl 1.0, no spread, Gini 0
    metrics = path_metrics(torch.full((5,), 0.2, dtype=torch.float64))
    assert metrics == pytest.approx({"ppl": 1.0, "pdv": 0.0, "smoothness": 1.0,
                                     "consistency": 0.2}, abs=1e-12)
    assert gini(torch.zeros(3)) == 0.0


def test_path_metrics_reject_bad_distances():
    for bad in (torch.tensor([]), torch.ones(2, 2), torch.tensor([0.1, -0.1]),
                torch.tensor([float("nan")])):
        with pytest.raises(ScoregeoError):
            path_metrics(bad)


def test_consecutive_lpips_on_reference_frames():
    ref, p0, p1 = (load_image(REFERENCE / f"{name}.png") for name in ("ex_ref", "ex_p0", "ex_p1"))
    frames = torch.stack([ref, ref, p0, p1])
    d = consecutive_lpips(frames)
    assert d.shape == (3,)
    assert d[0].item() == pytest.approx(0.0, abs=1e-6)
    assert d[1].item() == pytest.approx(0.722, abs=1e-3)  # science.md section 5
    assert d[2].item() == pytest.approx(float(lpips_distance(p0[None], p1[None])[0]), abs=1e-6)
    metrics = path_metrics(d)
    assert metrics["ppl"] == pytest.approx(float(d.sum()))
    with pytest.raises(ScoregeoError, match="T >= 2"):
        consecutive_lpips(frames[:1])
