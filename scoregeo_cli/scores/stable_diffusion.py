"""Stable Diffusion as a score field on its VAE latents, from real diffusers components.

``stable_diffusion_score(pretrained, t, ...)`` (the ``score=stable_diffusion`` factory)
loads, with diffusers' ``from_pretrained``, the UNet (``unet/``), the VAE (``vae/``) and the
scheduler configuration (``scheduler/``) of a diffusers checkpoint, and returns a
:class:`StableDiffusionScore`: the score of the noisy latent marginal at level t,

    s(x_t) = -eps_theta(x_t, t, c) / sqrt(1 - abar_t),

on flat latent vectors of dimension 4 * h * w (16384 for SD 2.1-base at 512 px). Its
``model`` attribute (:class:`LatentDiffusion`) carries what the image pipeline needs:
encode, decode and the noise predictor for DDIM.

``pretrained`` is a packaged name (``ldm_mnist``: the latent diffusion model of rotated digits
that ``scoregeo train experiment=ldm_mnist`` trains, shipped in ``scoregeo_cli/checkpoints/``), a
local diffusers folder or a Hugging Face hub id already in the local cache; nothing is
downloaded (the package sets ``HF_HUB_OFFLINE=1``). Every file is checked before anything is
computed, and a missing one is reported in one sentence naming ``score.pretrained``.

Conditioning c (no classifier-free guidance, as in DiffMorpher's protocol):

* ``prompt`` set: the checkpoint's CLIP text encoder and tokenizer (``text_encoder/``,
  ``tokenizer/``) encode it; this needs transformers (``pip install -e '.[text]'``).
* no prompt: the embedding of the empty prompt, taken from, in order, the file
  ``prompt_embeds`` if set (a tensor of shape (1, L, C) or (L, C), saved with
  ``safetensors`` under the key ``prompt_embeds`` or with ``torch.save``), the
  checkpoint's text encoder applied to "", or a file ``empty_prompt_embeds.safetensors``
  in the checkpoint folder. Nothing is substituted when none exists: the error says what
  to provide.

Networks run in ``dtype`` (float32; float16 or bfloat16 on a GPU); points come in and go
out in the caller's dtype, so the geodesic solver can work in float64.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from scoregeo_cli.scores.eps import EpsScoreField
from scoregeo_cli.schedule import alphas_cumprod_from
from scoregeo_cli.errors import ScoregeoError, check_finite

EMPTY_PROMPT_FILE = "empty_prompt_embeds.safetensors"
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# diffusers folders shipped in the package, by the name ``score.pretrained`` accepts
PACKAGED_NAMES = {"ldm_mnist": CHECKPOINT_DIR / "ldm_mnist"}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ACCEPTS = ("a packaged name (ldm_mnist), a local diffusers folder with unet/, vae/ and scheduler/ subfolders, or a "
            "Hugging Face hub id already in the local cache (e.g. stabilityai/stable-diffusion-2-1-base)")
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) \
        and not name.startswith(("/", "~"))


def resolve_pretrained(pretrained: str | os.PathLike | None) -> Path:
    """The local folder of ``score.pretrained``: the folder itself or the cached hub snapshot."""
    if pretrained is None or str(pretrained).strip() in ("", "???"):
        raise ScoregeoError(f"score.pretrained is not set; it accepts {_ACCEPTS}")
    name = str(pretrained)
    if name in PACKAGED_NAMES:
        if not (PACKAGED_NAMES[name] / "unet" / "config.json").is_file():
            raise ScoregeoError(f"the packaged model {name} ({PACKAGED_NAMES[name]}) is missing; train it with "
                                f"`scoregeo train experiment={name}` and pass score.pretrained=<the model/ folder it "
                                "writes>")
        return PACKAGED_NAMES[name]
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ScoregeoError(f"score.pretrained={name} is a file, not a folder; it accepts {_ACCEPTS}")
        return path
    if not _looks_like_hub_id(name):
        raise ScoregeoError(f"score.pretrained={name} does not exist; it accepts {_ACCEPTS}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise ScoregeoError(f"score.pretrained={name} is neither an existing folder nor a hub id in the "
                            f"local Hugging Face cache (nothing is downloaded); it accepts {_ACCEPTS}") from None


def check_checkpoint(folder: Path, pretrained: str, variant: str | None = None) -> None:
    """Raise one ScoregeoError sentence if unet/, vae/ or scheduler/ lacks a file."""
    missing = []
    for sub in ("unet", "vae"):
        names = [n.replace("model.", f"model.{variant}.", 1) for n in _WEIGHT_NAMES] if variant \
            else list(_WEIGHT_NAMES)
        if not (folder / sub / "config.json").is_file():
            missing.append(f"{sub}/config.json")
        elif not any((folder / sub / n).is_file() for n in names):
            missing.append(f"{sub}/{names[0]}")
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    if missing:
        raise ScoregeoError(f"score.pretrained={pretrained} lacks {', '.join(missing)}; it accepts {_ACCEPTS}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ScoregeoError(f"score.device must be auto, cpu or cuda[:k], got '{device}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScoregeoError(f"score.device={device} but torch sees no CUDA device; use score.device=cpu")
    return dev


def _load_embeds_file(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise ScoregeoError(f"score.prompt_embeds={path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if "prompt_embeds" not in tensors:
                raise ScoregeoError(f"{path} holds no tensor named 'prompt_embeds' "
                                    f"(found: {', '.join(sorted(tensors)) or 'none'})")
            embeds = tensors["prompt_embeds"]
        else:
            embeds = torch.load(path, map_location="cpu", weights_only=True)
    except ScoregeoError:
        raise
    except Exception as err:  # safetensors and torch raise several types on a bad file
        raise ScoregeoError(f"cannot read the prompt embedding {path}: {err}") from None
    if not isinstance(embeds, torch.Tensor):
        raise ScoregeoError(f"{path} does not hold a tensor")
    return embeds[None] if embeds.ndim == 2 else embeds


def encode_prompt(folder: Path, prompt: str, pretrained: str) -> torch.Tensor:
    """CLIP embedding (1, L, C) of a prompt with the checkpoint's text encoder and tokenizer."""
    if not (folder / "text_encoder").is_dir() or not (folder / "tokenizer").is_dir():
        raise ScoregeoError(f"score.prompt needs text_encoder/ and tokenizer/ in score.pretrained={pretrained}; "
                            "unset score.prompt to use the empty-prompt embedding")
    try:
        from transformers import AutoTokenizer, CLIPTextModel
    except ImportError:
        raise ScoregeoError("encoding a prompt with the CLIP text encoder needs transformers: "
                            "pip install -e '.[text]' (or set score.prompt_embeds to a precomputed embedding)") from None
    tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt")
    mask = ids.attention_mask if getattr(encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        return encoder(ids.input_ids, attention_mask=mask)[0].float()


def conditioning(folder: Path, pretrained: str, prompt: str | None,
                 prompt_embeds: str | None) -> tuple[torch.Tensor, str]:
    """The cross-attention conditioning (1, L, C) and a phrase saying where it came from."""
    if prompt is not None and prompt_embeds is not None:
        raise ScoregeoError("set score.prompt or score.prompt_embeds, not both")
    if prompt is not None:
        return encode_prompt(folder, prompt, pretrained), f"prompt {prompt!r} (text encoder)"
    if prompt_embeds is not None:
        return _load_embeds_file(Path(prompt_embeds).expanduser()), f"embedding file {prompt_embeds}"
    if (folder / "text_encoder").is_dir():
        return encode_prompt(folder, "", pretrained), "empty prompt (text encoder)"
    if (folder / EMPTY_PROMPT_FILE).is_file():
        return _load_embeds_file(folder / EMPTY_PROMPT_FILE), f"empty prompt ({EMPTY_PROMPT_FILE})"
    raise ScoregeoError(f"score.pretrained={pretrained} has no text_encoder/ and no {EMPTY_PROMPT_FILE}; "
                        "set score.prompt_embeds to the empty-prompt embedding of this model")


class LatentDiffusion:
    """The loaded components of a latent diffusion model and the operations on them.

    Attributes: ``unet``, ``vae`` (diffusers modules, eval mode, in ``dtype`` on ``device``),
    ``alphas_cumprod`` (T,) float64 on ``device``, ``prompt_embeds`` (1, L, C),
    ``latent_shape`` (c, h, w), ``resolution`` (pixels), ``scaling_factor`` and
    ``shift_factor`` (VAE config), ``prediction_type`` (scheduler config).
    """

    def __init__(self, unet, vae, scheduler_config: dict, prompt_embeds: torch.Tensor,
                 dtype: torch.dtype, device: torch.device, chunk_size: int = 8, source: str = ""):
        self.unet, self.vae = unet, vae
        self.source = source
        self.dtype, self.device = dtype, device
        self.chunk_size = int(chunk_size)
        self.scheduler_config = dict(scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ScoregeoError(f"the scheduler's prediction_type must be one of {PREDICTION_TYPES}, "
                                f"got '{self.prediction_type}'")
        self.alphas_cumprod = alphas_cumprod_from(self.scheduler_config).to(device)
        cross = unet.config.cross_attention_dim
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 1 or prompt_embeds.shape[-1] != cross:
            raise ScoregeoError(f"the prompt embedding has shape {tuple(prompt_embeds.shape)}; this UNet "
                                f"needs (1, L, {cross})")
        self.prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        self.channels = int(vae.config.in_channels)  # image channels the VAE takes and gives
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.latent_shape = (int(unet.config.in_channels), int(h), int(w))
        self.resolution = int(h) * self.downsample

    def eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Predicted noise eps_theta(x_t, t, c) for latents (B, c, h, w), in x's dtype.

        Differentiable with respect to x (for solvers that backpropagate through the score);
        the DDIM loops call it under ``torch.no_grad``.

        v- and x0-predicting models are converted to the noise they imply:
        eps = sqrt(abar) v + sqrt(1 - abar) x, or eps = (x - sqrt(abar) x0) / sqrt(1 - abar).
        """
        out = self._raw(x, t).to(x.dtype)
        abar = self.alphas_cumprod[int(t)].to(x.dtype)
        if self.prediction_type == "v_prediction":
            return abar.sqrt() * out + (1 - abar).sqrt() * x
        if self.prediction_type == "sample":
            return (x - abar.sqrt() * out) / (1 - abar).sqrt()
        return out

    def _raw(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """The UNet's output for (B, c, h, w) latents at integer level t, in the model dtype."""
        cond = self.prompt_embeds.expand(x.shape[0], -1, -1)
        timestep = torch.tensor(int(t), device=self.device)
        return self.unet(x.to(device=self.device, dtype=self.dtype), timestep,
                         encoder_hidden_states=cond).sample

    def to_channels(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) with the VAE's channel count: RGB to grey for a 1-channel VAE (ITU-R
        601 luma, as Pillow's ``convert("L")``), grey repeated for an RGB one."""
        c = images.shape[1]
        if c == self.channels:
            return images
        if c == 3 and self.channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
            return (images * weights[:, None, None]).sum(1, keepdim=True)
        if c == 1:
            return images.expand(-1, self.channels, -1, -1)
        raise ScoregeoError(f"images with {c} channels cannot be encoded by a VAE of {self.channels} channels")

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> latents (B, c, h, w) float32 on ``device``.

        The mean of the VAE posterior, shifted and scaled by the VAE config's factors
        (z = (mean - shift) * scaling), so latents have about unit variance. C is brought to
        the VAE's channels (``to_channels``).
        """
        out = []
        for chunk in self.to_channels(images).split(self.chunk_size):
            x = (2 * chunk - 1).to(device=self.device, dtype=self.dtype)
            mean = self.vae.encode(x).latent_dist.mean
            out.append(((mean.float() - self.shift_factor) * self.scaling_factor))
        z = torch.cat(out)
        check_finite(z, "the VAE latents", "encoding")
        return z

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, c, h, w) -> images (B, C, H, W) float32 in [0, 1] on the CPU (C: ``channels``)."""
        out = []
        for chunk in latents.split(self.chunk_size):
            z = (chunk.float() / self.scaling_factor + self.shift_factor).to(device=self.device, dtype=self.dtype)
            img = self.vae.decode(z).sample.float()
            out.append(((img + 1) / 2).clamp(0, 1).cpu())
        images = torch.cat(out)
        check_finite(images, "the decoded images", "VAE decoding")
        return images


class StableDiffusionScore(EpsScoreField):
    """The latent score of a Stable Diffusion UNet at level t; ``model`` holds the components."""

    def __init__(self, model: LatentDiffusion, t: int, chunk_size: int | None = 8):
        super().__init__(model.eps, model.latent_shape, t, model.alphas_cumprod, chunk_size)
        self.model = model


def stable_diffusion_score(pretrained: str, t: int = 400, prompt: str | None = None,
                           prompt_embeds: str | None = None, dtype: str = "float32",
                           device: str = "auto", chunk_size: int = 8,
                           variant: str | None = None) -> StableDiffusionScore:
    """Load a diffusers Stable Diffusion checkpoint and return its latent score at level t.

    Args:
        pretrained: local diffusers folder, or hub id already in the HF cache.
        t: diffusion level (0-based, of the scheduler's num_train_timesteps).
        prompt: text condition (needs transformers); None: the empty prompt.
        prompt_embeds: file with a precomputed conditioning (1, L, C) instead of a prompt.
        dtype: float32 | float16 | bfloat16 for the networks (half precision on GPU only).
        device: auto | cpu | cuda[:k].
        chunk_size: latents per UNet / VAE call.
        variant: weight-file variant (e.g. "fp16") where a checkpoint stores only that one.
    """
    if dtype not in DTYPES:
        raise ScoregeoError(f"score.dtype must be one of {list(DTYPES)}, got '{dtype}'")
    if int(chunk_size) < 1:
        raise ScoregeoError(f"score.chunk_size must be at least 1, got {chunk_size}")
    dev = resolve_device(device)
    if dev.type == "cpu" and dtype != "float32":
        raise ScoregeoError(f"score.dtype={dtype} is meant for a GPU; use score.dtype=float32 on the CPU")
    folder = resolve_pretrained(pretrained)
    check_checkpoint(folder, str(pretrained), variant)
    embeds, source = conditioning(folder, str(pretrained), prompt, prompt_embeds)

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch_dtype = DTYPES[dtype]
    # without accelerate, diffusers falls back to a plain load anyway; saying so keeps it quiet
    options = dict(torch_dtype=torch_dtype, variant=variant,
                   low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **options)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **options)
        scheduler_config = DDIMScheduler.load_config(folder, subfolder="scheduler")
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ScoregeoError(f"score.pretrained={pretrained} could not be loaded ({first}); "
                            f"it accepts {_ACCEPTS}") from None
    unet.eval().requires_grad_(False).to(dev)
    vae.eval().requires_grad_(False).to(dev)
    model = LatentDiffusion(unet, vae, scheduler_config, embeds, torch_dtype, dev, chunk_size,
                            source=f"{folder} ({source})")
    return StableDiffusionScore(model, t, chunk_size)
