"""eval.score_error: the run's score against the exact orbit-set score on each path's nodes."""

from __future__ import annotations

import pytest
import torch

from scoregeo_cli.data.rotated_mnist import RotatedDigits
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.methods.base import MethodPath
from scoregeo_cli.scores.orbit import orbit_score
from scoregeo_cli.evaluation.image_runs import exact_score, score_error_rows


class Scaled:
    """A score that is exactly (1 + c) times another: relative squared error c^2 everywhere."""

    def __init__(self, score, c):
        self.score, self.c = score, c

    def __call__(self, x):
        return (1 + self.c) * self.score(x)


def test_score_error_is_zero_for_the_oracle_and_c_squared_for_a_scaled_score():
    data = RotatedDigits(pair_split="orbit_set")
    exact = orbit_score(data, t=200, angle_step=5.0)
    g = torch.Generator().manual_seed(0)
    path = torch.randn(2, 5, exact.dim, generator=g, dtype=torch.float64) * 0.5
    results = {"geodesic": MethodPath(path), "pixel_lerp": MethodPath(path, at_level=False),
               "failed": MethodPath(path, error="diverged")}
    rows = {(r["pair"], r["method"]): r["value"] for r in score_error_rows([3, 4], exact, exact, results)}
    assert rows[3, "geodesic"] == 0.0 and rows[4, "geodesic"] == 0.0
    assert (3, "pixel_lerp") not in rows  # clean-data paths have no level-t score
    assert rows[3, "failed"] != rows[3, "failed"]  # NaN
    rows = {(r["pair"], r["method"]): r["value"] for r in score_error_rows([0, 1], Scaled(exact, 0.3), exact, results)}
    assert rows[0, "geodesic"] == pytest.approx(0.09, rel=1e-12) and rows[1, "geodesic"] == pytest.approx(0.09, rel=1e-12)


def test_score_error_needs_the_orbit_set():
    data = RotatedDigits(pair_split="test")
    with pytest.raises(ScoregeoError, match="dataset.pair_split=orbit_set"):
        exact_score(object(), data)


def test_blend_scales_the_model_error_by_alpha_squared_and_refuses_bad_settings():
    """score=blend: s* + a (s_theta - s*) has a^2 times the model's relative squared error on
    any points, is the exact score at a = 0 and the model at a = 1."""
    from scoregeo_cli.scores.blend import blend_score
    from scoregeo_cli.studies.fidelity import relative_score_error
    from scoregeo_cli.schedule import noise_to

    data = RotatedDigits(pair_split="orbit_set")
    x0 = (data.rotated_batch("orbit_set", 8, torch.Generator().manual_seed(1)) * 2 - 1).flatten(1).double()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    blend = blend_score(data, "unet_orbit", alpha=0.5, t=200, angle_step=2.0)
    x = noise_to(x0, eps, 200, blend.alphas_cumprod)
    model = relative_score_error(blend.learned, blend.exact, x)
    assert model > 0.001
    assert relative_score_error(blend, blend.exact, x) == pytest.approx(0.25 * model, rel=1e-9)
    for alpha, expected in ((0.0, 0.0), (1.0, model)):
        other = blend_score(data, "unet_orbit", alpha=alpha, t=200, angle_step=2.0)
        assert relative_score_error(other, other.exact, x) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    with pytest.raises(ScoregeoError, match=r"score.alpha must lie in \[0, 1\]"):
        blend_score(data, alpha=1.5)
    with pytest.raises(ScoregeoError, match="dataset.pair_split=orbit_set"):
        blend_score(RotatedDigits(pair_split="test"), alpha=0.5)
