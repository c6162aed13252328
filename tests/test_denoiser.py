"""The denoiser config group: the model that brings paths back by DDIM, apart from the score
that shapes the geometry."""

from __future__ import annotations

import pytest
import torch
from helpers import invoke_cli

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.scores.eps import EpsScoreField
from scoregeo_cli.spaces import PixelDiffusionSpace
from scoregeo_cli.schedule import alphas_cumprod_from

SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}


class ConstantEps:
    """eps(x, t) = c everywhere: DDIM's result is then known in closed form."""

    def __init__(self, c: float):
        self.c = c

    def __call__(self, x, t):
        return torch.full_like(x, self.c)


def _field(c: float, abar=None):
    field = EpsScoreField(ConstantEps(c), (1, 2, 2), 100, alphas_cumprod_from(SCHEDULE) if abar is None else abar, None)
    field.fingerprint = lambda: f"constant {c}"
    return field


def test_the_denoiser_not_the_score_brings_points_back():
    """DDIM with a constant eps prediction c from level t ends at x0 = (x_t - sqrt(1 - abar_t) c) /
    sqrt(abar_t) (every intermediate step keeps the same x0 estimate)."""
    score, denoiser = _field(0.0), _field(0.5)
    space = PixelDiffusionSpace(score, ddim_steps=4)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    abar = float(space.alphas_cumprod[100])
    own = space.denoise(x)
    torch.testing.assert_close(own, x / abar ** 0.5)
    before = space.fingerprint()
    space.set_denoiser(denoiser)
    torch.testing.assert_close(space.denoise(x), (x - (1 - abar) ** 0.5 * 0.5) / abar ** 0.5)
    assert space.fingerprint() != before  # the cache keeps the two apart
    assert "denoiser" in space.describe()


def test_a_denoiser_on_another_schedule_is_refused():
    score = _field(0.0)
    other = _field(0.0, alphas_cumprod_from({**SCHEDULE, "beta_end": 0.012}))
    with pytest.raises(ScoregeoError, match="noise schedule differs"):
        PixelDiffusionSpace(score).set_denoiser(other)


def test_denoiser_on_a_synthetic_manifold_is_one_sentence(tmp_path, monkeypatch, capsys):
    code, _, err = invoke_cli(["run", "experiment=sphere", "denoiser=orbit", f"output_root={tmp_path}"],
                              monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "denoiser applies to image experiments" in lines[0]
    assert not any(tmp_path.iterdir())


def test_orbit_denoiser_with_a_learned_score_runs_and_is_recorded(tmp_path, monkeypatch, capsys):
    """score=unet (the packaged unet_orbit) for the geometry, the exact orbit denoiser for the
    frames: the run says which denoiser it used, its folder is its own, and its round trip
    is the exact one's (far sharper than the UNet's own)."""
    import json

    common = ["run", "experiment=rotation_metrics", "score.checkpoint=unet_orbit", "dataset.pair_split=orbit_set",
              "n_pairs=2", "solver.nodes=4", "solver.max_evals=3", "space.ddim_steps=2", "method=[geodesic,lerp]",
              "score.t=100", "eval.strips=0", f"output_root={tmp_path}"]
    psnr = {}
    for denoiser in ("same", "orbit"):
        code, out, err = invoke_cli([*common, f"denoiser={denoiser}"], monkeypatch, capsys)
        assert code == 0, err[-2000:]
        (run,) = [p.parent for p in tmp_path.rglob("DONE") if f"denoiser={denoiser}" in str(p)]
        summary = json.loads((run / "summary.json").read_text())
        psnr[denoiser] = summary["roundtrip"]["psnr"]["mean"]
        assert set(summary["geodesic"]["psnr_minus_lerp"]) >= {"mean", "ci_low", "ci_high", "n"}
        assert ("own noise predictor" in out) == (denoiser == "same") and ("with denoiser" in out) == (denoiser == "orbit")
    assert psnr["orbit"] > psnr["same"] + 10


def test_a_missing_denoiser_checkpoint_names_its_own_key(tmp_path):
    from scoregeo_cli.spaces.denoisers import unet_denoiser

    with pytest.raises(ScoregeoError) as err:
        unet_denoiser(_field(0.0), checkpoint=str(tmp_path / "absent.safetensors"))
    assert str(err.value).startswith(f"denoiser.checkpoint={tmp_path}") and "score.checkpoint" not in str(err.value)
