"""score=blend: a learned score moved toward the exact one, to measure how close a score
must be for the geometry to follow the manifold.

    s_a(x) = s*(x) + a (s_theta(x) - s*(x)),   0 <= a <= 1,

where s* is the exact orbit-set score (``scores/orbit.py``) and s_theta a UNet checkpoint at
the same level and schedule. Its error is the learned model's own error scaled by a at every
point, so the relative squared error (``eval.score_error``) is exactly a^2 times the model's:
a = 1 is the model, a = 0 the exact score, and the values between trace the gain against
the error along the direction in which the model is wrong. Blending is linear in the noise
prediction too, eps_a = eps* + a (eps_theta - eps*), which is how it is evaluated.
"""

from __future__ import annotations

import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.scores.eps import EpsScoreField


class BlendEps:
    """eps* + a (eps_theta - eps*) at any level, in the caller's dtype."""

    def __init__(self, exact, learned, alpha: float):
        self.exact, self.learned, self.alpha = exact, learned, float(alpha)

    def __call__(self, x: torch.Tensor, level: int) -> torch.Tensor:
        exact = self.exact(x, level)
        return exact + self.alpha * (self.learned(x, level) - exact)


class BlendScore(EpsScoreField):
    """score=blend (module docstring). Extra attributes: ``exact`` (the OrbitScore),
    ``learned`` (the UNetScore), ``alpha``."""

    def __init__(self, exact, learned, alpha: float, chunk_size: int | None = 128):
        super().__init__(BlendEps(exact.eps_model, learned.eps_model, alpha), exact.shape, learned.t,
                         learned.alphas_cumprod, chunk_size)
        self.exact, self.learned, self.alpha = exact, learned, float(alpha)
        self.checkpoint = f"blend: exact + {alpha:g} x ({learned.checkpoint.stem} - exact)"

    def fingerprint(self) -> str:
        from scoregeo_cli.io.cache import digest

        return digest("blend", self.alpha, self.exact.fingerprint(), self.learned.fingerprint())


def blend_score(dataset, checkpoint: str = "unet_orbit", alpha: float = 0.5, t: int = 400,
                angle_step: float = 0.5, chunk_size: int | None = 128) -> BlendScore:
    """The exact orbit-set score of ``dataset`` moved a fraction ``alpha`` toward the UNet
    ``checkpoint`` (a packaged name or a file), at level ``t`` on the UNet's schedule."""
    from scoregeo_cli.scores.orbit import orbit_score
    from scoregeo_cli.scores.unet import load_unet_score

    if not 0 <= float(alpha) <= 1:
        raise ScoregeoError(f"score.alpha must lie in [0, 1] (0: the exact score, 1: the model), got {alpha}")
    if getattr(dataset, "pair_split", None) != "orbit_set":
        raise ScoregeoError("score=blend moves a model toward the exact score of the orbit set; "
                            "it needs rotated digits with dataset.pair_split=orbit_set")
    learned = load_unet_score(checkpoint, t=t, chunk_size=chunk_size)
    exact = orbit_score(dataset, t=t, angle_step=angle_step, chunk_size=chunk_size,
                        alphas_cumprod=learned.alphas_cumprod)
    return BlendScore(exact, learned, alpha, chunk_size)
