"""scoregeo's Python API: geodesics of score-based metrics for a score model you bring.

    import scoregeo_cli as sg

    geo = sg.geodesic(score, a, b)             # a, b: (P, D) or (P, *shape) tensors
    geo.path, geo.energy, geo.length, geo.converged, geo.network_passes
    geo.at([0.25, 0.5])                        # the curve between the nodes
    ext = sg.extrapolate(geo, duration=0.5, steps=8)   # shooting past b

    score = sg.score_from_unet(unet, scheduler, t=400)   # a diffusers UNet at level t
    a = sg.noise(x0_a, eps, 400, scheduler)              # shared-noise endpoints
    frames = sg.denoise(unet, scheduler, geo.path, 400, steps=20)

The public names are ``geodesic``, ``extrapolate``, ``Geodesic``, ``Extrapolation``,
``score_from_unet``, ``score_from_conditional_unet``, ``noise``, ``denoise`` (all also at
``scoregeo_cli.<name>``) and the module ``scoregeo_cli.metrics`` (``Stein``, ``Pullback``,
``Conformal``, ``Euclidean``). Everything else in the package is internal and may change.
``scoregeo run`` computes its geodesics and extrapolations through ``geodesic`` and
``extrapolate``.

Conventions. A score is any callable ``s(x)`` on a batch of points (B, *shape) returning a
tensor of the same shape, differentiable in x for every solver but ``fixed_point``. A path
of N nodes is parametrised by t in [0, 1] from a (t = 0) to b (t = 1); node j sits at
t = j / (N - 1). Energies are the discrete curve energy 1/2 int_0^1 g(x', x') dt (squared
length units of the data: a straight line in the flat metric costs |b - a|^2 / 2) and
lengths the continuous g-length int_0^1 sqrt(g(x', x')) dt. Tensors stay on their device
and in their dtype (float32 or float64); nothing is copied to the CPU. A bad argument raises
a ``ValueError`` whose one-sentence message starts with the argument's name.

Importing this module imports neither torch nor Hydra; torch is imported on the first call.
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Sequence

from scoregeo_cli.errors import NonFiniteError, ScoregeoError

if TYPE_CHECKING:
    import torch

    from scoregeo_cli.geometry.base import Metric
    from scoregeo_cli.scores.base import ScoreField

__all__ = ["geodesic", "extrapolate", "Geodesic", "Extrapolation", "score_from_unet",
           "score_from_conditional_unet", "noise", "denoise"]

METRICS = ("stein", "pullback", "conformal", "euclidean")
SOLVERS = ("gauss_newton", "fixed_point", "lbfgs", "adam")
# The defaults of `scoregeo run` (conf/metric, conf/solver, conf/extrapolate; a test checks
# that they agree).
DEFAULT_LAM = {"stein": 1000.0, "pullback": 1.0}
METRIC_OPTIONS: dict[str, dict[str, Any]] = {
    "stein": {"interpolation": "cubic", "quadrature": "gauss4", "evaluate_at": "midpoints", "length_points": 64},
    "pullback": {"alpha": 1.0},
    "conformal": {"beta": 1.0},
    "euclidean": {},
}
SOLVER_OPTIONS: dict[str, dict[str, Any]] = {
    "gauss_newton": {"max_evals": 200, "gtol": 1e-8, "warm_start": 0, "max_damping": 1e12, "levels": [],
                     "coarse_quadrature": None, "coarse_gtol": 1e-3, "damping": "lm", "etol": 0.0,
                     "float32_gtol": None},
    "fixed_point": {"max_evals": 50, "tol": 1e-4, "min_step": 1e-3, "gtol": 1e-5},
    "lbfgs": {"lr": 1.0, "max_evals": 200, "tol": 1e-9, "freeze_score": False, "gtol": 1e-6},
    "adam": {"lr": 1e-2, "max_evals": 500, "tol": 1e-7, "freeze_score": False, "gtol": 1e-6},
}
SHOOTING_OPTIONS: dict[str, Any] = {"method": "dopri5", "substeps": 2, "rtol": 1e-4, "atol": 1e-6,
                                    "max_evals": 1000}
CONFIG_PREFIXES = ("metric.", "solver.", "extrapolate.", "score.")


class ArgumentError(ScoregeoError, ValueError):
    """A bad argument to the API: a ``ValueError`` whose message names the argument."""


# ----------------------------------------------------------------------------- checks

@contextmanager
def _as_argument_errors():
    """Constructors of the internal objects validate their values with the CLI's key names
    (``solver.max_evals``); through the API the same sentence names the argument."""
    try:
        yield
    except ArgumentError:
        raise
    except NonFiniteError:
        raise
    except ScoregeoError as err:
        message = str(err)
        for prefix in CONFIG_PREFIXES:
            message = message.replace(prefix, "")
        raise ArgumentError(message) from None


def _number(name: str, value, minimum: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ArgumentError(f"{name} must be positive, got {value!r}")
    if minimum is not None and value < minimum:
        raise ArgumentError(f"{name} must be >= {minimum:g}, got {value!r}")
    return float(value)


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ArgumentError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ArgumentError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def _tensor(name: str, value, min_dim: int = 1, what: str = "") -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor):
        raise ArgumentError(f"{name} must be a torch tensor{what}, got {type(value).__name__}")
    if value.dim() < min_dim:
        raise ArgumentError(f"{name} must have at least {min_dim} dimensions{what}, got shape {tuple(value.shape)}")
    if value.dtype not in (torch.float32, torch.float64):
        raise ArgumentError(f"{name} must be float32 or float64, got {value.dtype}")
    if value.numel() == 0:
        raise ArgumentError(f"{name} is empty (shape {tuple(value.shape)})")
    if not bool(torch.isfinite(value).all()):
        raise ArgumentError(f"{name} holds NaN or Inf values")
    return value


def _like(name: str, value: torch.Tensor, other: torch.Tensor, other_name: str) -> None:
    if value.shape != other.shape:
        raise ArgumentError(f"{name} has shape {tuple(value.shape)} but {other_name} has {tuple(other.shape)}")
    if value.dtype != other.dtype:
        raise ArgumentError(f"{name} is {value.dtype} but {other_name} is {other.dtype}")
    if value.device != other.device:
        raise ArgumentError(f"{name} is on {value.device} but {other_name} is on {other.device}")


def _ends(a, b) -> tuple["torch.Tensor", "torch.Tensor"]:
    what = " of shape (P, D) or (P, *shape)"
    a = _tensor("a", a, 2, what)
    b = _tensor("b", b, 2, what)
    _like("b", b, a, "a")
    return a, b


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


# ----------------------------------------------------------------------------- scores

def _score_types():
    """(FunctionScore, NoScore): the score fields that wrap a plain callable and stand in for
    no score (built on first use, as they need torch)."""
    global _SCORE_TYPES
    if _SCORE_TYPES is not None:
        return _SCORE_TYPES
    import torch

    from scoregeo_cli.scores.base import ScoreField

    class FunctionScore(ScoreField):
        """A user's callable s(x) on batches (B, *shape) as a score field on flat points
        (B, D), D = prod(shape), counting its calls and points. ``shape`` None: the callable
        takes flat points of whatever dimension it is first called with."""

        def __init__(self, fn: Callable, shape: tuple[int, ...] | None):
            self.fn, self.shape = fn, None if shape is None else tuple(int(s) for s in shape)
            super().__init__(_prod(self.shape) if self.shape is not None else 0)

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            if self.shape is None:
                self.dim = x.shape[-1]
            return super().__call__(x)

        def _score(self, x: torch.Tensor) -> torch.Tensor:
            inp = x if self.shape is None else x.reshape(-1, *self.shape)
            out = self.fn(inp)
            if not isinstance(out, torch.Tensor) or out.shape != inp.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ArgumentError(f"score must return a tensor of its input's shape {tuple(inp.shape)}, got {got}")
            return out.reshape(x.shape).to(x.dtype)

    class NoScore(ScoreField):
        """The Euclidean metric's stand-in: counters only, never evaluated."""

        def __init__(self):
            super().__init__(0)
            self.shape = None

        def _score(self, x):  # pragma: no cover - the Euclidean metric never calls it
            return torch.zeros_like(x)

    _SCORE_TYPES = (FunctionScore, NoScore)
    return _SCORE_TYPES


_SCORE_TYPES = None


def as_score_field(score, shape: Sequence[int] | None = None) -> ScoreField:
    """The internal score field of ``score`` (a callable on batches (B, *shape), or already
    a score field of scoregeo), on flat points of dimension prod(shape)."""
    from scoregeo_cli.scores.base import ScoreField

    shape = None if shape is None else tuple(int(s) for s in shape)
    if isinstance(score, ScoreField):
        own = getattr(score, "shape", None)
        if shape is not None and score.dim and score.dim != _prod(shape):
            raise ArgumentError(f"score works on points of dimension {score.dim}"
                                + (f" (shape {tuple(own)})" if own else "")
                                + f", but the points have shape {shape} ({_prod(shape)} values)")
        return score
    if not callable(score):
        raise ArgumentError(f"score must be a callable x -> s(x) on a batch of points (B, *shape), "
                            f"got {type(score).__name__}")
    return _score_types()[0](score, shape)


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
    return _choice("scheduler.config.prediction_type", kind or "epsilon", ("epsilon", "v_prediction", "sample"))


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
        _integer("chunk_size", chunk_size, 1)
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
        A score field for ``geodesic`` and the metrics: callable on flat points (B, D),
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

    x0 = _tensor("x0", x0)
    eps = _tensor("eps", eps)
    _like("eps", eps, x0, "x0")
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
    x_t = _tensor("x_t", x_t, 2)
    abar = _alphas_cumprod(scheduler)
    level = _level(t, abar)
    steps = _integer("steps", steps, 1)
    batch_size = _integer("batch_size", batch_size, 1)
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


# ----------------------------------------------------------------------------- geodesics

def _build_metric(score, metric, lam, normalize, shape, options: dict) -> Metric:
    """The metric object of ``geodesic``'s arguments (consuming its options from ``options``)."""
    from scoregeo_cli import metrics as public
    from scoregeo_cli.geometry.base import Metric

    if isinstance(metric, Metric):
        if lam is not None:
            raise ArgumentError("lam must be left unset when metric is a metric object (set it on the object)")
        if normalize != "none":
            raise ArgumentError("normalize must be left unset when metric is a metric object (set it on the object)")
        own = metric.score
        if score is not None and score is not own and score is not getattr(own, "fn", None):
            raise ArgumentError("score must be None or the metric object's own score when metric is a metric object")
        free = isinstance(own, _score_types()[0]) and own.shape is None  # takes any dimension
        if own is None or (not free and own.dim and own.dim != _prod(shape)):
            raise ArgumentError(f"a has points of shape {shape} but the metric's score works on "
                                f"{getattr(own, 'dim', None)} values per point")
        own_shape = getattr(own, "shape", None)
        if own_shape is not None and len(shape) > 1 and tuple(own_shape) != tuple(shape):
            raise ArgumentError(f"a has points of shape {shape} but the metric's score expects {tuple(own_shape)}")
        return metric
    if not isinstance(metric, str):
        raise ArgumentError(f"metric must be one of {', '.join(map(repr, METRICS))} or a metric object of "
                            f"scoregeo_cli.metrics, got {type(metric).__name__}")
    _choice("metric", metric, METRICS)
    if metric != "stein" and normalize != "none":
        raise ArgumentError(f"normalize applies to the stein metric only, got normalize={normalize!r} "
                            f"with metric={metric!r}")
    if metric in ("conformal", "euclidean") and lam is not None:
        raise ArgumentError(f"lam does not apply to the {metric} metric"
                            + (" (its exponent is the option beta)" if metric == "conformal" else ""))
    kwargs = {k: options.pop(k) for k in list(options) if k in METRIC_OPTIONS[metric]}
    if metric == "euclidean":
        return public.Euclidean(score, shape=shape)
    if score is None:
        raise ArgumentError(f"score is required for the {metric} metric (a callable x -> s(x))")
    if metric == "stein":
        return public.Stein(score, DEFAULT_LAM["stein"] if lam is None else lam, normalize, shape=shape, **kwargs)
    if metric == "pullback":
        return public.Pullback(score, lam=DEFAULT_LAM["pullback"] if lam is None else lam, shape=shape, **kwargs)
    return public.Conformal(score, shape=shape, **kwargs)


def _build_solver(solver, nodes, metric: Metric, options: dict):
    """The solver object of ``geodesic``'s arguments (consuming its options from ``options``)."""
    from scoregeo_cli.geometry.solvers import FixedPointSolver, GaussNewtonSolver, OptimizerSolver

    nodes = _integer("nodes", nodes, 3)
    if isinstance(solver, str):
        _choice("solver", solver, SOLVERS)
        kwargs = dict(SOLVER_OPTIONS[solver])
        kwargs.update({k: options.pop(k) for k in list(options) if k in kwargs})
        with _as_argument_errors():
            if solver == "gauss_newton":
                built = GaussNewtonSolver(nodes, **kwargs)
            elif solver == "fixed_point":
                built = FixedPointSolver(nodes, **kwargs)
            else:
                built = OptimizerSolver(nodes, solver, **kwargs)
        name = solver
    elif callable(solver) and isinstance(getattr(solver, "nodes", None), int):
        built, name = solver, type(solver).__name__
        if nodes != built.nodes:
            raise ArgumentError(f"nodes is {nodes} but the solver object has {built.nodes}; set both alike")
    else:
        raise ArgumentError(f"solver must be one of {', '.join(map(repr, SOLVERS))}, got {solver!r}")
    missing = [n for n in getattr(built, "needs", ()) if not hasattr(metric, n)]
    if missing:
        raise ArgumentError(f"solver {name!r} needs the stein metric; with {type(metric).__name__} use "
                            "'gauss_newton', 'lbfgs' or 'adam'")
    return built


def geodesic(score: Callable | None, a: torch.Tensor, b: torch.Tensor, *, metric: str | Metric = "stein",
             lam: float | None = None, normalize: str = "none", nodes: int = 16,
             solver: str | Callable = "gauss_newton", init: torch.Tensor | None = None, **options: Any) -> Geodesic:
    """Geodesics of a score-based metric between P pairs of points, solved together.

    Minimises the discrete curve energy of a path of ``nodes`` nodes with fixed ends (a
    boundary-value problem); every iteration evaluates the score on all pairs in one batch.

    Args:
        score: the score s(x): any callable on a batch of points (B, *shape) returning the
            same shape (a torch module, a function, ``score_from_unet(...)``); None with
            ``metric="euclidean"`` or a metric object.
        a, b: start and end points, (P, D) or (P, *shape) (e.g. (P, C, H, W) images or
            latents), same dtype (float32 or float64) and device.
        metric: "stein" (g = I + lam u u^T, u = s or s/|s|; the paper's), "pullback"
            (g = alpha I + lam J^T J, J = ds/dx), "conformal" (g = p(x)^(-beta) I),
            "euclidean" (g = I), or a metric object of ``scoregeo_cli.metrics``.
        lam: weight lam >= 0 of the score term; None: 1000 for stein (the paper's value),
            1 for pullback.
        normalize: stein only: "none" (u = s) or "unit" (u = s / |s|).
        nodes: nodes per path, both ends included (>= 3).
        solver: "gauss_newton" (the default: Gauss-Newton with Levenberg-Marquardt damping
            on the true energy; with a metric other than stein it runs L-BFGS),
            "fixed_point" (stein only), "lbfgs" or "adam".
        init: starting path (P, nodes, *shape); None: the straight line. Its first and last
            nodes are replaced by a and b.
        **options: of the metric: ``interpolation`` ("cubic" | "linear"), ``quadrature``
            ("gauss4", "midpoint", "trapezoid", "simpson", "gauss<k>"), ``evaluate_at``,
            ``length_points`` (stein), ``alpha`` (pullback), ``beta`` (conformal); of the
            solver: ``max_evals`` (budget of batched score evaluations), ``gtol`` (relative
            gradient tolerance of ``converged``), ``float32_gtol`` (gauss_newton: the same for
            a score that computes in float32), ``etol`` (gauss_newton: converged also when the
            energy is stable to this relative change), ``warm_start``, ``max_damping``,
            ``damping``, ``levels`` (node counts of coarse paths solved first; [] for none),
            ``coarse_quadrature``, ``coarse_gtol`` (gauss_newton), ``tol``, ``min_step``
            (fixed_point), ``lr``, ``tol``, ``freeze_score`` (lbfgs, adam). Defaults are those
            of ``scoregeo run``, except that gauss_newton runs without coarse levels and
            float32 tolerances unless asked (``scoregeo run``'s are ``levels=[4, 7, 11],
            coarse_quadrature="gauss2", float32_gtol=1e-5, etol=1e-5``): in float32 a
            ``gtol`` of about 1e-5 is reachable, the default 1e-8 is not.

    Returns:
        A ``Geodesic``: the path (P, nodes, *shape) and its energy, g-length, convergence
        and cost.

    Raises:
        ValueError: a bad argument, named in one sentence.
        scoregeo_cli.errors.NonFiniteError: the score returned NaN or Inf (the message names
            the evaluation).
    """
    a, b = _ends(a, b)
    shape = tuple(a.shape[1:])
    p, d = a.shape[0], _prod(shape)
    if normalize not in ("none", "unit"):
        _choice("normalize", normalize, ("none", "unit"))
    if lam is not None:
        _number("lam", lam, minimum=0)
    options = dict(options)
    metric_obj = _build_metric(score, metric, lam, normalize, shape, options)
    solver_obj = _build_solver(solver, nodes, metric_obj, options)
    if options:
        raise ArgumentError(f"{sorted(options)[0]} is not an option of metric "
                            f"{metric if isinstance(metric, str) else type(metric).__name__!r} or solver "
                            f"{solver if isinstance(solver, str) else type(solver).__name__!r}")
    flat_a, flat_b = a.detach().reshape(p, d), b.detach().reshape(p, d)  # no gradient through the solve
    start = None
    if init is not None:
        init = _tensor("init", init, 3, f" of shape (P, nodes, *shape) = ({p}, {solver_obj.nodes}, "
                                        f"{', '.join(map(str, shape))})")
        if tuple(init.shape) not in ((p, solver_obj.nodes, *shape), (p, solver_obj.nodes, d)):
            raise ArgumentError(f"init must have shape {(p, solver_obj.nodes, *shape)}, got {tuple(init.shape)}")
        _like("init", init[:, 0].reshape(p, *shape), a, "a")
        start = init.detach().reshape(p, solver_obj.nodes, d).clone()
        start[:, 0], start[:, -1] = flat_a, flat_b
    result = solver_obj(metric_obj, flat_a, flat_b, start)
    return Geodesic(result, metric_obj, shape)


def _grad_rel(result) -> torch.Tensor:
    import torch

    g, g0 = result.grad_norm, result.grad_norm0
    return torch.where(g0 > 0, g / g0.clamp_min(torch.finfo(g0.dtype).tiny), torch.zeros_like(g))


class Geodesic:
    """P solved geodesics (``geodesic``'s result).

    Attributes:
        path: (P, N, *shape) the nodes, a and b included (node j at t = j / (N - 1)).
        energy: (P,) the discrete curve energy of the path under the metric, about
            1/2 int_0^1 g(x', x') dt (squared data units; length^2 / 2 at constant speed).
        converged: (P,) bool: the true energy gradient fell below ``gtol`` times its value
            on the starting path.
        grad_rel: (P,) that gradient norm over its starting value.
        network_passes: single-sample forward passes of the score the solve took (a batch
            of B points counts B).
        backward_passes: single-sample vector-Jacobian products through the score.
        score_evals: batched score calls (what the budget ``max_evals`` counts).
        iterations: solver iterations. seconds: wall time of the solve.
        metric: the metric object (``scoregeo_cli.metrics``), for ``extrapolate`` and for
            measuring other paths.
        shape: the shape of one point.

    ``length`` (P,) is the continuous g-length of the curve through the nodes (data units),
    computed on first access (dense Gauss-Legendre quadrature: score evaluations of its own, not counted
    above). ``at(t)`` evaluates the curve between the nodes.
    """

    def __init__(self, result, metric: Metric, shape: tuple[int, ...]):
        p, n = result.path.shape[:2]
        self._result, self.metric, self.shape = result, metric, tuple(shape)
        self._flat = result.path.detach()
        self.path = self._flat.reshape(p, n, *self.shape)
        self.energy = result.energy.detach()
        self.converged = result.converged
        self.grad_rel = _grad_rel(result)
        self.network_passes = int(result.score_points)
        self.backward_passes = int(result.vjp_points)
        self.score_evals = int(result.score_evals)
        self.iterations = int(result.iterations)
        self.seconds = float(result.seconds)

    @property
    def nodes(self) -> int:
        """N, nodes per path."""
        return self.path.shape[1]

    @cached_property
    def length(self) -> torch.Tensor:
        """(P,) continuous g-length int_0^1 sqrt(g(x', x')) dt of the curve through the nodes."""
        return self.metric.length(self._flat).detach()

    def at(self, t: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Points of the curve the solver's energy is defined on (the metric's interpolation
        through the nodes: the not-a-knot cubic spline for the stein metric's default, else
        the polygon) at parameters t in [0, 1]: (P, len(t), *shape)."""
        import numpy as np
        import torch

        values = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)
        values = np.atleast_1d(values)
        if values.ndim != 1 or not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ArgumentError("t must be a number or a 1-D sequence of parameters in [0, 1]")
        basis = torch.as_tensor(_curve_basis(self.nodes, getattr(self.metric, "interpolation", "linear"), values),
                                dtype=self._flat.dtype, device=self._flat.device)
        out = torch.einsum("mj,pjd->pmd", basis, self._flat)
        return out.reshape(out.shape[0], len(values), *self.shape)

    def __repr__(self) -> str:
        return (f"Geodesic(path={tuple(self.path.shape)}, energy={[round(float(e), 6) for e in self.energy[:4]]}"
                f"{'...' if len(self.energy) > 4 else ''}, converged={int(self.converged.sum())}/{len(self.energy)}, "
                f"network_passes={self.network_passes})")


def _curve_basis(nodes: int, interpolation: str, t) -> Any:
    """(len(t), nodes) weights of the nodes at parameters t (numpy, float64)."""
    import numpy as np

    if interpolation == "cubic":
        from scipy.interpolate import CubicSpline

        return CubicSpline(np.linspace(0, 1, nodes), np.eye(nodes), bc_type="not-a-knot")(t)
    n = nodes - 1
    seg = np.minimum(np.floor(t * n).astype(int), n - 1)
    frac = t * n - seg
    out = np.zeros((len(t), nodes))
    rows = np.arange(len(t))
    out[rows, seg], out[rows, seg + 1] = 1 - frac, frac
    return out


class Extrapolation:
    """P geodesics shot past their start (``extrapolate``'s result).

    Attributes:
        path: (P, steps + 1, *shape) points at equal parameter spacing, the start (b)
            first; all NaN when the shot failed.
        t: (steps + 1,) their parameters: continuing a ``Geodesic``'s [0, 1] (1 + tau), or
            tau from 0 for a state.
        error: None, or why the shot failed (its evaluation budget spent, NaN, the step
            size underflowed: the geodesic equation is stiff where lam |s|^2 is large).
        network_passes: single-sample score passes (forward); score_evals: batched calls;
            seconds: wall time.
    """

    def __init__(self, shot, t: torch.Tensor, shape: tuple[int, ...], passes: int):
        p, m = shot.path.shape[:2]
        self.path = shot.path.reshape(p, m, *shape)
        self.t, self.error = t, shot.error
        self.network_passes, self.score_evals, self.seconds = int(passes), int(shot.score_evals), float(shot.seconds)

    @property
    def ok(self) -> bool:
        """True when the shot reached its duration."""
        return self.error is None

    def __repr__(self) -> str:
        return f"Extrapolation(path={tuple(self.path.shape)}, error={self.error!r}, network_passes={self.network_passes})"


def extrapolate(geodesic_or_state: Geodesic | tuple[torch.Tensor, torch.Tensor], duration: float = 0.5,
                steps: int = 8, *, metric: Metric | None = None, method: str = "dopri5", substeps: int = 2,
                rtol: float = 1e-4, atol: float = 1e-6, max_evals: int = 1000) -> Extrapolation:
    """Shoot along the geodesic equation of the metric, past b.

    From a ``Geodesic``: start at b with the path's end velocity (second-order one-sided
    difference), i.e. continue the geodesic beyond t = 1. From a state ``(x, v)``: start at
    points x with velocities v (P, *shape) under ``metric``.

    Args:
        geodesic_or_state: a ``Geodesic``, or a pair (x, v) of tensors of one shape.
        duration: how far, in the geodesic's parameter (a to b spans 1), > 0.
        steps: output points after the start (>= 1).
        metric: the metric of a state (a metric object of ``scoregeo_cli.metrics``); a
            Geodesic carries its own.
        method: a torchdiffeq method: adaptive ("dopri5", "bosh3", ...) or fixed-grid
            ("rk4", "midpoint", "euler", ...).
        substeps: integration steps per output interval of a fixed-grid method.
        rtol, atol: tolerances of an adaptive method.
        max_evals: score evaluations allowed; past them the shot stops with NaN points and
            ``error`` set (not an exception).

    Returns:
        An ``Extrapolation``.
    """
    import torch

    from scoregeo_cli.geometry.base import Metric
    from scoregeo_cli.geometry.shooting import GeodesicShooter, end_tangent

    if isinstance(geodesic_or_state, Geodesic):
        geo = geodesic_or_state
        if metric is not None and metric is not geo.metric:
            raise ArgumentError("metric must be left unset when extrapolating a Geodesic (it carries its own)")
        metric, shape, flat = geo.metric, geo.shape, geo._flat
        x0, v0, offset = flat[:, -1], end_tangent(flat), 1.0
    elif isinstance(geodesic_or_state, (tuple, list)) and len(geodesic_or_state) == 2:
        x, v = geodesic_or_state
        x = _tensor("geodesic_or_state[0]", x, 2, " (points x of shape (P, *shape))")
        v = _tensor("geodesic_or_state[1]", v, 2, " (velocities v of shape (P, *shape))")
        _like("geodesic_or_state[1]", v, x, "geodesic_or_state[0]")
        if not isinstance(metric, Metric):
            raise ArgumentError("metric must be a metric object of scoregeo_cli.metrics when extrapolating a "
                                f"state (x, v), got {type(metric).__name__}")
        shape = tuple(x.shape[1:])
        x0, v0, offset = x.reshape(x.shape[0], -1), v.reshape(v.shape[0], -1), 0.0
        own = metric.score
        if own is not None and own.dim and own.dim != x0.shape[1]:
            raise ArgumentError(f"geodesic_or_state has points of {x0.shape[1]} values but the metric's score "
                                f"works on {own.dim}")
    else:
        raise ArgumentError("geodesic_or_state must be a Geodesic or a pair (x, v) of tensors, "
                            f"got {type(geodesic_or_state).__name__}")
    if not getattr(metric, "has_geodesic_equation", True):
        raise ArgumentError(f"geodesic_or_state has the {type(metric).__name__} metric, which has no geodesic "
                            "equation here; extrapolate a stein, conformal or euclidean geodesic")
    duration = _number("duration", duration, positive=True)
    steps = _integer("steps", steps, 1)
    substeps = _integer("substeps", substeps, 1)
    max_evals = _integer("max_evals", max_evals, 1)
    rtol, atol = _number("rtol", rtol, positive=True), _number("atol", atol, positive=True)
    if not isinstance(method, str):
        raise ArgumentError(f"method must be a torchdiffeq method name, got {method!r}")
    with _as_argument_errors():
        shooter = GeodesicShooter(duration, steps, method, substeps, rtol, atol, max_evals)
    points0 = metric.score.points if metric.score is not None else 0
    shot = shooter(metric, x0, v0)
    passes = (metric.score.points - points0) if metric.score is not None else 0
    t = offset + torch.linspace(0, duration, steps + 1, dtype=x0.dtype, device=x0.device)
    return Extrapolation(shot, t, shape, passes)
