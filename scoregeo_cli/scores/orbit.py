"""An oracle score for rotated digits: the exact score of rotation orbits smoothed by the
forward process (science.md section 7).

Reference points y_k are digits rotated to a dense grid of angles over the training range,
as vectors in the model's range [-1, 1]: the whole orbit set when the pairs are drawn from it
(``dataset.pair_split=orbit_set``: one fixed distribution, the one ``unet_orbit`` learns),
else the run's pair digits. The forward process at level t
(variance preserving) smooths their empirical measure into a Gaussian mixture whose score is
exact:

    s_t(x) = sum_k w_k(x) (sqrt(abar_t) y_k - x) / (1 - abar_t),
    w = softmax_k( -|x - sqrt(abar_t) y_k|^2 / (2 (1 - abar_t)) ).

It is exact at every level, so the same field also gives the ideal noise prediction
eps(x, t') = -sqrt(1 - abar_t') s_t'(x) that DDIM needs to bring paths back to t' = 0: with
``score=orbit`` both the geometry and the denoiser are perfect, and what remains is the
method's own behaviour. The mixture is evaluated in chunks of references with a running
log-sum-exp, so no (points x references x D) tensor is formed.
"""

from __future__ import annotations

import math

import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.scores.eps import EpsScoreField
from scoregeo_cli.schedule import alphas_cumprod_from


def mixture_score(x: torch.Tensor, means: torch.Tensor, var: float, chunk: int = 2048) -> torch.Tensor:
    """Score at x (B, D) of the equal-weight mixture of N(mean_k, var I), means (K, D)."""
    m_run = torch.full((x.shape[0], 1), -math.inf, dtype=x.dtype, device=x.device)
    s_run = torch.zeros_like(m_run)
    w_run = torch.zeros_like(x)
    xx = (x * x).sum(-1, keepdim=True)
    for mu in means.split(chunk):
        mu = mu.to(x)
        logits = -(xx - 2 * x @ mu.T + (mu * mu).sum(-1)[None]) / (2 * var)  # (B, Kc)
        m_new = torch.maximum(m_run, logits.amax(-1, keepdim=True))
        scale = torch.exp(m_run - m_new)
        p = torch.exp(logits - m_new)
        s_run = s_run * scale + p.sum(-1, keepdim=True)
        w_run = w_run * scale + p @ mu
        m_run = m_new
    return (w_run / s_run - x) / var


class OrbitEps:
    """The ideal noise prediction of the smoothed orbits at any level: eps = -sqrt(1 - abar) s."""

    def __init__(self, references: torch.Tensor, alphas_cumprod: torch.Tensor, chunk: int = 2048):
        self.references, self.alphas_cumprod, self.chunk = references, alphas_cumprod, int(chunk)

    def score(self, x: torch.Tensor, level: int) -> torch.Tensor:
        abar = float(self.alphas_cumprod[level])
        return mixture_score(x, math.sqrt(abar) * self.references, 1 - abar, self.chunk)

    def __call__(self, x: torch.Tensor, level: int) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        abar = float(self.alphas_cumprod[level])
        return (-math.sqrt(1 - abar) * self.score(flat.double(), level)).to(x.dtype).reshape(x.shape)


class OrbitScore(EpsScoreField):
    """score=orbit: the exact score at level t of the pair digits' rotation orbits (module docstring).

    Extra attributes: ``references`` (K, D), ``angles`` (G,) degrees of the grid.
    """

    def __init__(self, references: torch.Tensor, angles: torch.Tensor, alphas_cumprod: torch.Tensor, t: int,
                 shape: tuple[int, ...], chunk_size: int | None = 128, reference_chunk: int = 2048):
        self.references, self.angles = references, angles
        super().__init__(OrbitEps(references, alphas_cumprod, reference_chunk), shape, t, alphas_cumprod, chunk_size)
        self.checkpoint = f"oracle: {len(angles)} angles x {len(references) // len(angles)} digit(s)"

    def fingerprint(self) -> str:
        from scoregeo_cli.io.cache import digest

        return digest("orbit", self.references, self.alphas_cumprod)


def orbit_score(dataset, t: int = 400, angle_step: float = 0.5, schedule: dict | None = None,
                chunk_size: int | None = 128, reference_chunk: int = 2048,
                alphas_cumprod: torch.Tensor | None = None) -> OrbitScore:
    """Build the oracle from the dataset's orbit set or selected pairs (rotated digits).

    Args:
        dataset: a ``RotatedDigits`` with its pairs selected (see ``oracle_digits``).
        t: the level of the score (1..T-1).
        angle_step: spacing of the rotation grid over ``dataset.train_angles``, degrees (> 0).
            Neighbouring rotations must differ by much less than the noise at t.
        schedule: the diffusers scheduler configuration of the levels (the packaged UNet's).
        chunk_size: points per evaluation chunk; reference_chunk: references per chunk.
        alphas_cumprod: the levels as a tensor (T,), instead of ``schedule``.
    """
    if not angle_step > 0:
        raise ScoregeoError(f"score.angle_step must be positive, got {angle_step}")
    if not hasattr(dataset, "orbit"):
        raise ScoregeoError("score=orbit needs rotated digits (dataset=rotated_mnist)")
    abar = alphas_cumprod if alphas_cumprod is not None else alphas_cumprod_from(
        schedule or {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02})
    lo, hi = dataset.train_angles
    angles = torch.arange(lo, hi + 1e-9, float(angle_step), dtype=torch.float64)
    digits = dataset.oracle_digits()
    frames = dataset.frames(digits.double(), angles[None].expand(len(digits), -1)).float()  # (P, G, 1, 28, 28)
    references = (2 * frames.double() - 1).reshape(-1, frames[0, 0].numel())
    return OrbitScore(references, angles, abar, int(t), tuple(frames.shape[2:]), chunk_size, reference_chunk)
