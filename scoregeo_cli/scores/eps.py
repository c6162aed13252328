"""The score of a noise-prediction network at a fixed level t: s(x_t) = -eps_theta(x_t, t) / sqrt(1 - abar_t)."""

from __future__ import annotations

import torch

from scoregeo_cli.scores.base import ScoreField
from scoregeo_cli.schedule import EpsModel, check_level


class EpsScoreField(ScoreField):
    """s(x) = -eps_theta(x, t) / sqrt(1 - abar_t) on flat vectors of ``prod(shape)``.

    Args:
        eps_model: noise predictor, (B, *shape) at integer level t -> (B, *shape).
        shape: shape of one sample, e.g. (1, 28, 28) or (4, 64, 64).
        t: the diffusion level at which the score is taken.
        alphas_cumprod: the model's schedule (T,).
        chunk_size: points per network call (memory).
    """

    def __init__(self, eps_model: EpsModel, shape: tuple[int, ...], t: int,
                 alphas_cumprod: torch.Tensor, chunk_size: int | None = 64):
        dim = 1
        for s in shape:
            dim *= int(s)
        super().__init__(dim, chunk_size)
        self.eps_model = eps_model
        self.shape = tuple(int(s) for s in shape)
        self.t = check_level(t, alphas_cumprod)
        self.alphas_cumprod = alphas_cumprod
        self.sigma_t = float((1 - alphas_cumprod[self.t]).sqrt())

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps_model(x.reshape(-1, *self.shape), self.t)
        return -eps.reshape(x.shape[0], -1) / self.sigma_t
