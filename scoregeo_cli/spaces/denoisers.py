"""Which model brings paths back from level t to data: the ``denoiser`` config group.

In the image pipeline one model plays two parts: the score s(x) at level t that shapes the
metric, and the noise predictor that DDIM uses to bring every node back to t = 0. A weak
denoiser lowers every method's frame scores alike and can hide a good geometry, so the two
are chosen independently (science.md section 8):

* ``same`` (the default): the score model's own noise predictor, as in the paper;
* ``orbit``: the exact ideal denoiser of the rotation orbits (``scores/orbit.py``: the orbit
  set's orbits when pairs are drawn from it, else the pairs' digits);
* ``unet``: a packaged or trained UNet checkpoint (``checkpoint``).

Each factory returns a noise-predicting field on the score's schedule (``eps_model``,
``alphas_cumprod``; ``describe`` says which), completed with the run's score and dataset.
"""

from __future__ import annotations

import torch

from scoregeo_cli.errors import ScoregeoError


def same_denoiser(score, dataset=None):
    """The score model itself denoises (``denoiser=same``)."""
    return score


def orbit_denoiser(score, dataset=None, angle_step: float = 0.5):
    """The exact ideal denoiser of the rotation orbits on the score's schedule (``denoiser=orbit``)."""
    from scoregeo_cli.scores.orbit import orbit_score

    if dataset is None or not hasattr(dataset, "oracle_digits"):
        raise ScoregeoError("denoiser=orbit needs rotated digits (dataset=rotated_mnist)")
    return orbit_score(dataset, t=score.t, angle_step=angle_step, alphas_cumprod=score.alphas_cumprod)


def unet_denoiser(score, dataset=None, checkpoint: str | None = "unet_mnist"):
    """A UNet checkpoint's noise predictor (``denoiser=unet denoiser.checkpoint=NAME|PATH``)."""
    from scoregeo_cli.scores.unet import load_unet_score

    return load_unet_score(checkpoint, t=score.t, key="denoiser.checkpoint")


def check_schedule(score, denoiser) -> None:
    """A denoiser must use the score's levels: the same alphas_cumprod, value for value."""
    a, b = score.alphas_cumprod, denoiser.alphas_cumprod
    if a.shape != b.shape or not torch.allclose(a.double(), b.double(), rtol=0, atol=1e-12):
        raise ScoregeoError("the denoiser's noise schedule differs from the score's: level t would mean two "
                            "different noise levels; choose a denoiser trained on the same schedule")


def describe(score, denoiser) -> str:
    """'its own' for the score model, else what the denoiser is."""
    if denoiser is score:
        return "the score model's own noise predictor"
    return f"denoiser {getattr(denoiser, 'checkpoint', type(denoiser).__name__)}"
