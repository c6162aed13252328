"""Diffusion spaces: paths live at level t of a diffusion model and come back by DDIM.

The space owns the level t's schedule (from the score field at level t), how both ends of a
pair reach it (forward noising with one Gaussian eps shared by the pair, the paper's
protocol, or deterministic DDIM inversion), and the denoiser (DDIM, eta = 0, from t to 0).
Pixel and latent spaces differ only in how images are encoded and decoded.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.spaces.base import Endpoints, Space
from scoregeo_cli.schedule import noise_to
from scoregeo_cli.spaces.ddim import ddim_denoise, ddim_invert

if TYPE_CHECKING:
    from scoregeo_cli.scores.eps import EpsScoreField


class DiffusionSpace(Space):
    """Paths at level t = ``score.t`` of the score's diffusion model.

    Args:
        score: the eps-model score field at level t (its ``eps_model``, ``shape``, ``t`` and
            ``alphas_cumprod`` are the denoiser and schedule).
        ddim_steps: DDIM steps from t to 0 for every frame (>= 1; 20 from t = 400 is the
            spacing of a 50-step schedule over 1000 levels).
        inversion: reach level t by DDIM inversion of the clean ends instead of shared-noise
            forward noising.
        inversion_steps: DDIM steps from 0 to t when inverting (>= 1).
        batch_size: images per network call when denoising (null: the score's chunk size).
    """

    def __init__(self, score: "EpsScoreField", ddim_steps: int = 20, inversion: bool = False,
                 inversion_steps: int = 20, batch_size: int | None = None):
        for name, value in (("space.ddim_steps", ddim_steps), ("space.inversion_steps", inversion_steps)):
            if int(value) < 1:
                raise ScoregeoError(f"{name} must be at least 1, got {value}")
        if batch_size is not None and int(batch_size) < 1:
            raise ScoregeoError(f"space.batch_size must be at least 1 or null, got {batch_size}")
        self.score = self.denoiser = score
        self.t, self.alphas_cumprod, self.shape = score.t, score.alphas_cumprod, score.shape
        self.ddim_steps, self.inversion, self.inversion_steps = int(ddim_steps), bool(inversion), int(inversion_steps)
        self.batch_size = int(batch_size or score.chunk_size or 64)
        self.denoise_seconds = 0.0
        self._fingerprint: str | None = None

    def set_denoiser(self, denoiser) -> None:
        """Bring points back to data with ``denoiser``'s noise predictor instead of the score
        model's (``spaces/denoisers.py``); its schedule must be the score's."""
        from scoregeo_cli.spaces.denoisers import check_schedule

        if denoiser is not self.score:
            check_schedule(self.score, denoiser)
        self.denoiser, self._fingerprint = denoiser, None

    def fingerprint(self) -> str | None:
        """A digest of everything ``denoise`` depends on (the denoiser's network weights and
        conditioning, schedule, t, steps, sample shape, dtype and device), or None when the noise
        predictor carries no weights to digest (then denoised points are not cached)."""
        if self._fingerprint is None:
            from scoregeo_cli.io.cache import digest

            model = getattr(self.denoiser, "model", None)
            nets = [getattr(model, "unet", model)]
            if hasattr(self.denoiser, "fingerprint"):  # an analytic noise predictor names its own inputs
                nets = [self.denoiser.fingerprint()]
            elif not isinstance(nets[0], torch.nn.Module):
                return None
            extra = [getattr(model, k, None) for k in ("prompt_embeds", "prediction_type", "dtype", "device")]
            self._fingerprint = digest(type(self).__name__, self.t, self.ddim_steps, self.alphas_cumprod,
                                       self.shape, *nets, *[str(e) if not isinstance(e, torch.Tensor) else e
                                                            for e in extra])
        return self._fingerprint

    @property
    def abar_t(self) -> float:
        return float(self.alphas_cumprod[self.t])

    def describe(self) -> str:
        from scoregeo_cli.spaces.denoisers import describe

        how = f"DDIM inversion ({self.inversion_steps} steps)" if self.inversion else "shared-noise forward noising"
        return (f"level t={self.t} (abar {self.abar_t:.4f}) by {how}; DDIM back in {self.ddim_steps} steps "
                f"with {describe(self.score, self.denoiser)}")

    def endpoints(self, clean_a: torch.Tensor, clean_b: torch.Tensor, eps: torch.Tensor | None) -> Endpoints:
        if self.inversion:
            both = torch.cat([clean_a, clean_b]).reshape(-1, *self.shape)
            noisy = ddim_invert(self.score.eps_model, both, self.t, self.alphas_cumprod, self.inversion_steps,
                                batch_size=self.batch_size).reshape(2 * len(clean_a), -1)
            a, b = noisy[: len(clean_a)], noisy[len(clean_a):]
        else:
            eps = eps.to(clean_a)
            a, b = (noise_to(x, eps, self.t, self.alphas_cumprod) for x in (clean_a, clean_b))
        return Endpoints(a, b, clean_a, clean_b, self.abar_t)

    def denoise(self, points: torch.Tensor) -> torch.Tensor:
        """DDIM from level t to clean points, (B, D) -> (B, D); NaN rows stay NaN."""
        start = time.perf_counter()
        finite = torch.isfinite(points).all(-1)
        clean = torch.full_like(points, float("nan"))
        if bool(finite.any()):
            clean[finite] = ddim_denoise(self.denoiser.eps_model, points[finite].reshape(-1, *self.shape), self.t,
                                         self.alphas_cumprod, self.ddim_steps,
                                         batch_size=self.batch_size).reshape(-1, points.shape[-1]).to(points)
        self.denoise_seconds += time.perf_counter() - start
        return clean

    def to_data(self, points: torch.Tensor, at_level: bool = True) -> torch.Tensor:
        return self.decode(self.denoise(points) if at_level else points)

    def denoise_groups(self, groups: list[torch.Tensor], cache=None) -> list[torch.Tensor]:
        """Denoise several groups of points (each (..., D)) in one batched DDIM pass; with a
        ``cache`` (``scoregeo_cli.io.cache.Cache``) a group seen before, by its exact values and
        this space's fingerprint, is reused instead."""
        fp = self.fingerprint() if cache is not None and cache.root is not None else None
        out: list[torch.Tensor | None] = [None] * len(groups)
        keys: list[str | None] = [None] * len(groups)
        if fp is not None:
            from scoregeo_cli.io.cache import digest

            for i, g in enumerate(groups):
                keys[i] = digest("ddim", fp, g)
                out[i] = cache.load("denoised", keys[i])
                cache.count("denoised", out[i] is not None)
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            d = groups[0].shape[-1]
            flat = torch.cat([groups[i].reshape(-1, d) for i in todo])
            clean = self.denoise(flat).split([groups[i].reshape(-1, d).shape[0] for i in todo])
            for i, c in zip(todo, clean):
                out[i] = c.reshape(groups[i].shape)
                if keys[i] is not None:
                    cache.store("denoised", keys[i], out[i])
        return [o.to(g) for o, g in zip(out, groups)]

    def decode(self, clean: torch.Tensor) -> torch.Tensor:
        """Clean flat points (B, D) -> images (B, C, H, W) in [0, 1]."""
        raise NotImplementedError


class PixelDiffusionSpace(DiffusionSpace):
    """A pixel-space DDPM: images in [0, 1] <-> flat vectors in [-1, 1] (x = 2 image - 1)."""

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        return (data.double() * 2 - 1).flatten(1)

    def decode(self, clean: torch.Tensor) -> torch.Tensor:
        return ((clean.reshape(-1, *self.shape) + 1) / 2).clamp(0, 1).float()


class LatentDiffusionSpace(DiffusionSpace):
    """A latent diffusion model (Stable Diffusion): VAE-encode images (posterior mean, scaled)
    to flat latents, VAE-decode clean latents back to images in [0, 1] (on the CPU)."""

    def __init__(self, score, **kwargs):
        super().__init__(score, **kwargs)
        self.model = score.model
        self.resolution = int(score.model.resolution)  # image size the VAE decodes to

    def describe(self) -> str:
        return f"model {self.model.source}, latents {self.shape} at {self.resolution} px; " + super().describe()

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        return self.model.encode(data).double().flatten(1)

    def decode(self, clean: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(clean), self.model.channels, self.model.resolution, self.model.resolution),
                         float("nan"))
        finite = torch.isfinite(clean).all(-1)
        if bool(finite.any()):
            out[finite] = self.model.decode(clean[finite].reshape(-1, *self.shape)).float().cpu()
        return out
