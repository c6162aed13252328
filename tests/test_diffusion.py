"""DDIM plumbing against diffusers' own scheduler."""

import torch
from diffusers import DDIMScheduler

from scoregeo_cli.scores.eps import EpsScoreField
from scoregeo_cli.schedule import noise_to
from scoregeo_cli.spaces.ddim import ddim_denoise, ddim_grid

CONFIG = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
          "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "leading"}


def eps_model(x, t):
    """A fixed nonlinear noise predictor that depends on the level."""
    return torch.tanh(0.7 * x.flip(-1) + 0.001 * t)


def test_ddim_denoise_matches_diffusers_scheduler():
    scheduler = DDIMScheduler(**CONFIG)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == list(range(900, -1, -100))
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = x.clone()
    for t in scheduler.timesteps:
        ref = scheduler.step(eps_model(ref, int(t)), t, ref, eta=0.0).prev_sample
    ours = ddim_denoise(eps_model, x, 900, scheduler.alphas_cumprod, steps=9)
    assert ddim_grid(900, 9) == list(range(900, -1, -100))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_score_of_a_noise_predictor_and_shared_noise():
    abar = DDIMScheduler(**CONFIG).alphas_cumprod.double()
    field = EpsScoreField(lambda x, t: 2 * x, (1, 2, 2), 400, abar)
    x = torch.randn(5, 4, dtype=torch.float64)
    # s = -eps / sqrt(1 - abar_400); sqrt(1 - abar_400) = 0.8980 for this schedule (noisediffusion.md)
    assert abs(field.sigma_t - 0.8980) < 1e-3
    assert torch.allclose(field(x), -2 * x / field.sigma_t)
    x0 = torch.randn(2, 4, dtype=torch.float64)
    eps = torch.randn(1, 4, dtype=torch.float64)
    xt = noise_to(x0, eps, 400, abar)
    # the same noise on both ends: their difference is the scaled difference of the data
    assert torch.allclose(xt[0] - xt[1], abar[400].sqrt() * (x0[0] - x0[1]))
