"""diffusers UNets in the public API: their scores at a level t (``score_from_unet``,
``score_from_conditional_unet``) and the diffusion steps around them (``noise``,
``denoise``, the same DDIM ``scoregeo run`` applies)."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, Sequence

from scoregeo_cli.api.checks import ArgumentError, choice, integer, like, tensor

if TYPE_CHECKING:
    import torch

    from scoregeo_cli.scores.base import ScoreField


def _unet_sample_shape(unet) -> tuple[int, ...] | None:
    config = getattr(unet, "config", None)
    size, channels = getattr(config, "sample_size", None), getattr(config, "in_channels", None)
    if size is None or channels is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(channels), int(h), int(w)


def _alphas_cumprod(scheduler) -> torch.Tensor:
    import torch

    abar = scheduler if isinstance(scheduler, torch.Tensor) else getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(abar, torch.Tensor) or abar.dim() != 1 or abar.numel() < 2:
        raise ArgumentError("scheduler must be a diffusers noise scheduler (with alphas_cumprod) or a 1-D tensor "
                            f"of alphas_cumprod, got {type(scheduler).__name__}")
    return abar.detach().double().cpu()


def _prediction_type(scheduler) -> str:
    config = getattr(scheduler, "config", None)
    kind = config.get("prediction_type", "epsilon") if hasattr(config, "get") else "epsilon"
    return choice("scheduler.config.prediction_type", kind or "epsilon", ("epsilon", "v_prediction", "sample"))


def _level(t, abar: torch.Tensor) -> int:
    n = abar.numel()
    if hasattr(t, "numel") and t.numel() == 1 and not t.is_floating_point():
        t = t.item()
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 < int(t) < n:
        raise ArgumentError(f"t must be an integer diffusion level in 1..{n - 1}, got {t!r}")
    return int(t)


def _conditioning(name: str, value, unet) -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor) or value.dim() not in (2, 3) or (value.dim() == 3 and value.shape[0] != 1):
        shown = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ArgumentError(f"{name} must be one conditioning of shape (L, C) or (1, L, C), got {shown}")
    cross = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
    if isinstance(cross, int) and value.shape[-1] != cross:
        raise ArgumentError(f"{name} has {value.shape[-1]} channels but the UNet's cross_attention_dim is {cross}")
    return value if value.dim() == 3 else value[None]


class _UNetEps:
    """eps_model(x (B, *shape), t) -> predicted noise of a diffusers UNet, in x's dtype and
    device; the network runs in its own dtype on its own device. v- and x0-predicting models
    are converted to the noise they imply."""

    def __init__(self, unet, abar: torch.Tensor, prediction_type: str, conditioning=None):
        self.unet, self.abar, self.prediction_type, self.conditioning = unet, abar, prediction_type, conditioning

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        import torch

        param = next(iter(self.unet.parameters()), None)
        device, dtype = (param.device, param.dtype) if param is not None else (x.device, x.dtype)
        timesteps = torch.full((x.shape[0],), int(t), dtype=torch.long, device=device)
        kwargs = {}
        if self.conditioning is not None:
            cond = self.conditioning.to(device=device, dtype=dtype)
            kwargs["encoder_hidden_states"] = cond.expand(x.shape[0], -1, -1)
        out = self.unet(x.to(device=device, dtype=dtype), timesteps, **kwargs)
        out = getattr(out, "sample", out)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.to(device=x.device, dtype=x.dtype)
        if self.prediction_type == "epsilon":
            return out
        abar = self.abar[int(t)].to(x.dtype)
        if self.prediction_type == "v_prediction":
            return abar.sqrt() * out + (1 - abar).sqrt() * x
        return (x - abar.sqrt() * out) / (1 - abar).sqrt()


def _unet_score(unet, scheduler, t, sample_shape, chunk_size, conditioning) -> ScoreField:
    import torch

    if not isinstance(unet, torch.nn.Module):
        raise ArgumentError(f"unet must be a torch module (a diffusers UNet), got {type(unet).__name__}")
    abar = _alphas_cumprod(scheduler)
    level = _level(t, abar)
    shape = sample_shape if sample_shape is not None else _unet_sample_shape(unet)
    if shape is None:
        raise ArgumentError("sample_shape is needed: the UNet's config gives no in_channels and sample_size")
    shape = tuple(shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ArgumentError(f"sample_shape must be a tuple of positive integers, got {shape!r}")
    if chunk_size is not None:
        integer("chunk_size", chunk_size, 1)
    eps = _UNetEps(unet, abar, _prediction_type(scheduler), conditioning)
    score = _unet_score_type()(eps, shape, level, abar, chunk_size)
    score.unet = unet
    return score


def _unet_score_type():
    """The score field of a diffusers UNet (built on first use, as it needs torch)."""
    global _UNET_SCORE
    if _UNET_SCORE is not None:
        return _UNET_SCORE
    import torch

    from scoregeo_cli.scores.eps import EpsScoreField

    class DiffusersUNetScore(EpsScoreField):
        """s(x) = -eps(x, t) / sqrt(1 - abar_t) of a diffusers UNet; called on flat points
        (B, D) or on samples (B, *shape)."""

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            n = len(self.shape)
            if n > 1 and x.dim() >= n and tuple(x.shape[x.dim() - n:]) == self.shape:
                lead = x.shape[:x.dim() - n]
                return super().__call__(x.reshape(*lead, self.dim)).reshape(x.shape)
            return super().__call__(x)

    _UNET_SCORE = DiffusersUNetScore
    return _UNET_SCORE


_UNET_SCORE = None


def score_from_unet(unet: torch.nn.Module, scheduler: Any, t: int, *, sample_shape: Sequence[int] | None = None,
                    chunk_size: int | None = 64) -> ScoreField:
    """The score of a diffusers noise-prediction UNet at diffusion level t.

    s(x_t) = -eps_theta(x_t, t) / sqrt(1 - abar_t), the score of the noisy marginal at level
    t (``v_prediction`` and ``sample`` models are converted to the noise they imply).

    Args:
        unet: a ``diffusers.UNet2DModel`` (or any module called as ``unet(x, timesteps)``
            returning the prediction or an object with ``.sample``), in eval mode;
            ``unet.requires_grad_(False)`` keeps the solvers from filling parameter gradients.
        scheduler: its diffusers noise scheduler (``DDPMScheduler``, ``DDIMScheduler``, ...:
            its ``alphas_cumprod`` and ``config.prediction_type``), or a 1-D tensor of
            alphas_cumprod (an epsilon model).
        t: integer level in 1..T-1 (T = len(alphas_cumprod); 400 of 1000 is the paper's).
        sample_shape: shape of one sample, e.g. (1, 28, 28); None: (in_channels,
            sample_size, sample_size) from the UNet's config.
        chunk_size: samples per network call (memory only); None: all at once.

    Returns:
        A score field for ``geodesic`` and the metric families: callable on flat points (B, D),
        D = prod(sample_shape), or on samples (B, *sample_shape), returning the same shape in
        the caller's dtype and device (the network runs in its own dtype on its own device).
        Attributes: ``t``, ``shape``, ``alphas_cumprod`` (T,) float64, ``sigma_t`` =
        sqrt(1 - abar_t), ``calls`` (batched calls) and ``points`` (single-sample passes).
    """
    cross = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
    if cross is not None:
        raise ArgumentError("unet is a conditional UNet (it has a cross_attention_dim); use "
                            "score_from_conditional_unet(unet, scheduler, t, encoder_hidden_states)")
    return _unet_score(unet, scheduler, t, sample_shape, chunk_size, None)


def score_from_conditional_unet(unet: torch.nn.Module, scheduler: Any, t: int, encoder_hidden_states: torch.Tensor,
                                *, sample_shape: Sequence[int] | None = None,
                                chunk_size: int | None = 8) -> ScoreField:
    """The score of a conditional diffusers UNet (``UNet2DConditionModel``, e.g. Stable
    Diffusion's, on its latents) at level t, under one fixed conditioning.

    s(x_t) = -eps_theta(x_t, t, c) / sqrt(1 - abar_t), without classifier-free guidance.

    Args:
        unet: a ``diffusers.UNet2DConditionModel`` (called as
            ``unet(x, timesteps, encoder_hidden_states=c)``), in eval mode.
        scheduler: its noise scheduler, or a 1-D tensor of alphas_cumprod.
        t: integer level in 1..T-1.
        encoder_hidden_states: the conditioning c, (L, C) or (1, L, C) with C the UNet's
            ``cross_attention_dim`` (e.g. the text encoder's embedding of a prompt, or of ""
            for the unconditional score); shared by every point.
        sample_shape: shape of one latent, e.g. (4, 64, 64); None: from the UNet's config.
        chunk_size: latents per network call; None: all at once.

    Returns:
        A score field, as ``score_from_unet``.
    """
    cond = _conditioning("encoder_hidden_states", encoder_hidden_states, unet)
    return _unet_score(unet, scheduler, t, sample_shape, chunk_size, cond)


# ----------------------------------------------------------------------------- diffusion steps

def noise(x0: torch.Tensor, eps: torch.Tensor, t: int, scheduler: Any) -> torch.Tensor:
    """Forward-noise clean samples to level t: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

    The same ``eps`` for both ends of a pair gives the shared-noise endpoints of the paper's
    protocol (what ``scoregeo run`` does in a pixel or latent diffusion space).

    Args:
        x0: clean samples (B, ...) in the model's data scale (e.g. images in [-1, 1]).
        eps: standard Gaussian noise of x0's shape, dtype and device.
        t: integer level in 1..T-1.
        scheduler: a diffusers noise scheduler, or a 1-D tensor of alphas_cumprod.

    Returns:
        x_t, of x0's shape, dtype and device.
    """
    from scoregeo_cli.schedule import noise_to

    x0 = tensor("x0", x0)
    eps = tensor("eps", eps)
    like("eps", eps, x0, "x0")
    abar = _alphas_cumprod(scheduler)
    return noise_to(x0, eps, _level(t, abar), abar)


def denoise(unet: torch.nn.Module, scheduler: Any, x_t: torch.Tensor, t: int, steps: int = 20, *,
            encoder_hidden_states: torch.Tensor | None = None, batch_size: int = 64) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from level t to clean samples, ``steps + 1`` network
    passes per sample (the levels t = t_0 > ... > 0 evenly spaced, then to abar = 1).

    The same denoiser ``scoregeo run`` applies to every node of every path.

    Args:
        unet: a diffusers UNet (``UNet2DModel``, or ``UNet2DConditionModel`` with
            ``encoder_hidden_states``).
        scheduler: its noise scheduler, or a 1-D tensor of alphas_cumprod.
        x_t: noisy samples (..., *sample_shape), e.g. a geodesic's path (P, N, C, H, W);
            any leading dimensions are batched together.
        t: integer level of x_t in 1..T-1.
        steps: DDIM steps from t to 0 (>= 1).
        encoder_hidden_states: conditioning (L, C) or (1, L, C) of a conditional UNet.
        batch_size: samples per network call (memory only).

    Returns:
        Clean samples of x_t's shape, dtype and device (no gradient).
    """
    import torch

    from scoregeo_cli.spaces.ddim import ddim_denoise

    if not isinstance(unet, torch.nn.Module):
        raise ArgumentError(f"unet must be a torch module (a diffusers UNet), got {type(unet).__name__}")
    x_t = tensor("x_t", x_t, 2)
    abar = _alphas_cumprod(scheduler)
    level = _level(t, abar)
    steps = integer("steps", steps, 1)
    batch_size = integer("batch_size", batch_size, 1)
    cross = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
    cond = None
    if encoder_hidden_states is not None:
        cond = _conditioning("encoder_hidden_states", encoder_hidden_states, unet)
    elif cross is not None:
        raise ArgumentError("encoder_hidden_states is required for a conditional UNet (it has a cross_attention_dim)")
    shape = _unet_sample_shape(unet) or tuple(x_t.shape[1:])
    if x_t.dim() <= len(shape) or tuple(x_t.shape[x_t.dim() - len(shape):]) != tuple(shape):
        raise ArgumentError(f"x_t must have shape (..., {', '.join(map(str, shape))}) for this UNet, "
                            f"got {tuple(x_t.shape)}")
    lead = x_t.shape[:x_t.dim() - len(shape)]
    eps_model = _UNetEps(unet, abar, _prediction_type(scheduler), cond)
    out = ddim_denoise(eps_model, x_t.reshape(-1, *shape), level, abar, steps, batch_size=batch_size)
    return out.reshape(*lead, *shape)
