"""A small diffusers ``UNet2DModel`` trained on rotated digits, as a score field.

``load_unet_score(checkpoint, t)`` (the ``score=unet`` factory) loads a checkpoint and
returns a :class:`UNetScore`, the score of the noisy marginal at level t,
s(x_t) = -eps_theta(x_t, t) / sqrt(1 - abar_t), on flat vectors of 784 = 1x28x28 pixels
scaled to [-1, 1] (the model's data range: x = 2 * image - 1).

A checkpoint is two files side by side: ``<name>.safetensors`` (the EMA weights) and
``<name>.json`` (the UNet2DModel config, the diffusers noise-schedule config, the data
range and a record of the training). ``checkpoint: null`` means the one shipped in the
package (``scoregeo_cli/checkpoints/rotated_digits_unet.*``), trained by
``scoregeo train experiment=rotated_mnist`` on the offline default source (the trainer is
``scoregeo_cli.training.unet``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.schedule import alphas_cumprod_from
from scoregeo_cli.scores.eps import EpsScoreField

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
PACKAGED = CHECKPOINT_DIR / "rotated_digits_unet.safetensors"
# Checkpoints shipped in the package, by the name ``score.checkpoint`` accepts.
PACKAGED_NAMES = {"unet_digits": PACKAGED,
                  "unet_mnist": CHECKPOINT_DIR / "unet_mnist.safetensors",
                  "unet_orbit": CHECKPOINT_DIR / "unet_orbit.safetensors",
                  # the ladder of unet_orbit (README, "Learned versus exact"): EMA snapshots at
                  # steps 150 and 400 of a rerun of its 1000-step command
                  "unet_orbit_s150": CHECKPOINT_DIR / "unet_orbit_s150.safetensors",
                  "unet_orbit_s400": CHECKPOINT_DIR / "unet_orbit_s400.safetensors",
                  # unet_orbit's recipe trained only on levels 0..250 (score.train.levels), EMA
                  # weights at steps 1000 and 3000 of one run, in float16
                  "unet_orbit_lv1000": CHECKPOINT_DIR / "unet_orbit_lv1000.safetensors",
                  "unet_orbit_lv3000": CHECKPOINT_DIR / "unet_orbit_lv3000.safetensors"}
FORMAT = "scoregeo-unet/1"
EXPORT_NAME = "unet.safetensors"
# how each packaged checkpoint was trained (the file to take from the training folder)
TRAINED_BY = {"unet_orbit_s150": ("scoregeo train experiment=unet_orbit 'score.train.snapshots=[150,400]'",
                                  "unet_step150.safetensors"),
              "unet_orbit_s400": ("scoregeo train experiment=unet_orbit 'score.train.snapshots=[150,400]'",
                                  "unet_step400.safetensors"),
              "unet_orbit_lv1000": ("scoregeo train experiment=unet_orbit_levels", "unet_step1000.safetensors"),
              "unet_orbit_lv3000": ("scoregeo train experiment=unet_orbit_levels", EXPORT_NAME)}
SAMPLE_SHAPE = (1, 28, 28)


def resolve_checkpoint(checkpoint: str | os.PathLike | None, key: str = "score.checkpoint") -> Path:
    """The .safetensors file of ``score.checkpoint``, checked: a packaged name (``unet_mnist``,
    ``unet_orbit``, ``unet_digits``; null is ``unet_digits``), a file, or a training folder.
    ``key`` is the config key the errors name (``denoiser.checkpoint`` for a denoiser)."""
    if checkpoint is None or str(checkpoint).strip() in ("", "null", "None"):
        checkpoint = "unet_digits"
    if str(checkpoint) in PACKAGED_NAMES:
        packaged = PACKAGED_NAMES[str(checkpoint)]
        if not packaged.is_file() or not packaged.with_suffix(".json").is_file():
            command, name = TRAINED_BY.get(str(checkpoint), (f"scoregeo train experiment={checkpoint}", EXPORT_NAME))
            raise ScoregeoError(f"the packaged UNet checkpoint {checkpoint} ({packaged}) is missing; train it with "
                                f"`{command}` and pass {key}=<the {name} it writes>")
        return packaged
    path = Path(str(checkpoint)).expanduser()
    if path.is_dir():
        if not (path / EXPORT_NAME).is_file():
            raise ScoregeoError(f"{key}={checkpoint} is a directory without {EXPORT_NAME}; pass a "
                                f"training folder of `scoregeo train`, a .safetensors file, or a packaged name "
                                f"({', '.join(PACKAGED_NAMES)})")
        path = path / EXPORT_NAME
    if not path.is_file():
        raise ScoregeoError(f"{key}={checkpoint} does not exist; pass the {EXPORT_NAME} written by "
                            f"`scoregeo train`, or a packaged name ({', '.join(PACKAGED_NAMES)})")
    if path.suffix != ".safetensors" or not path.with_suffix(".json").is_file():
        raise ScoregeoError(f"{key}={checkpoint} must be a .safetensors file with its .json "
                            "config beside it, as `scoregeo train experiment=rotated_mnist` writes them")
    return path


def load_checkpoint(checkpoint: str | os.PathLike | None = None, key: str = "score.checkpoint"):
    """(model in eval mode without parameter gradients, alphas_cumprod (T,) float64, meta dict)."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    path = resolve_checkpoint(checkpoint, key)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ScoregeoError(f"cannot read the checkpoint config {path.with_suffix('.json')}: {err}") from None
    if meta.get("format") != FORMAT:
        raise ScoregeoError(f"{path.with_suffix('.json')} is not a scoregeo UNet checkpoint config "
                            f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta["scheduler"].get("prediction_type", "epsilon") != "epsilon":
        raise ScoregeoError(f"{path} predicts {meta['scheduler']['prediction_type']}; only epsilon models are supported")
    model = UNet2DModel.from_config(meta["unet"])
    try:
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001  (SafetensorError: a truncated or foreign file; OSError)
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ScoregeoError(f"cannot read the checkpoint {path}: {cause} (a truncated or foreign "
                            "file; write it again with `scoregeo train`)") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, OSError) as err:
        raise ScoregeoError(f"{path} does not match its config: {str(err).splitlines()[0]}") from None
    model.eval().requires_grad_(False)
    return model, alphas_cumprod_from(meta["scheduler"]), meta


class UNetEps:
    """eps_model(x (B, 1, 28, 28), t: int) -> predicted noise, in the caller's dtype.

    The network runs in float32; points may come in float64 (the geodesic solver's dtype).
    Differentiable with respect to x (the parameters carry no gradient).
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        timesteps = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        return self.model(x.float(), timesteps).sample.to(x.dtype)


class UNetScore(EpsScoreField):
    """The score of a rotated-digits UNet at level t, on flat (B, 784) vectors in [-1, 1] scale.

    Extra attributes: ``model`` (the UNet2DModel), ``checkpoint`` (its path), ``meta`` (its
    JSON: configs and training record), ``sample_shape`` (1, 28, 28).
    """

    def __init__(self, model, alphas_cumprod: torch.Tensor, t: int, chunk_size: int | None,
                 checkpoint: Path, meta: dict):
        self.sample_shape = tuple(meta.get("sample_shape", SAMPLE_SHAPE))
        super().__init__(UNetEps(model), self.sample_shape, t, alphas_cumprod, chunk_size)
        self.model, self.checkpoint, self.meta = model, checkpoint, meta

    def fingerprint(self) -> str:
        """A digest of the network's weights and the noise schedule (the level is keyed apart)."""
        from scoregeo_cli.io.cache import digest

        return digest("unet", self.model, self.alphas_cumprod)


def load_unet_score(checkpoint: str | None = None, t: int = 400, chunk_size: int | None = 128,
                    key: str = "score.checkpoint") -> UNetScore:
    """score=unet: the packaged (``checkpoint: null``) or a trained checkpoint, at level t."""
    if chunk_size is not None and int(chunk_size) < 1:
        raise ScoregeoError(f"score.chunk_size must be at least 1 or null, got {chunk_size}")
    model, abar, meta = load_checkpoint(checkpoint, key)
    return UNetScore(model, abar, int(t), None if chunk_size is None else int(chunk_size),
                     resolve_checkpoint(checkpoint, key), meta)
