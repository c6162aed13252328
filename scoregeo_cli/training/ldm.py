"""``scoregeo train experiment=ldm_mnist``: a small latent diffusion model in Stable Diffusion's
own diffusers classes, trained on rotated digits.

``train_ldm`` trains, one after the other and each resumably (a training state every
``checkpoint_every`` steps and on Ctrl-C; the same command continues where it stopped):

1. an ``AutoencoderKL`` (1-channel 28x28 digits <-> ``latent_channels`` x 7 x 7 latents with
   three encoder levels): reconstruction MSE of a posterior sample plus ``kl_weight`` times
   the KL term, both per pixel (latent-diffusion's ratio: summed reconstruction error, summed
   KL, weight 1e-6). Its ``scaling_factor`` is then set as Stable Diffusion's was, to one over
   the standard deviation of the (mean) latents of training digits, so that scaled latents
   have unit variance;
2. a ``UNet2DConditionModel`` on the scaled latents of posterior samples (eps-prediction,
   Stable Diffusion's noise schedule: scaled_linear betas 0.00085..0.012 over 1000 steps),
   conditioned through cross-attention on one fixed "empty prompt" embedding (1, 77, C),
   with an EMA of its weights.

Both on the rotated digits of ``cfg.dataset`` (``train_split``, uniform ``train_angles``).
It writes ``<out_dir>/model/`` in diffusers' folder layout: ``vae/``, ``unet/``,
``scheduler/`` (a ``DDIMScheduler`` config with SD's schedule), the embedding as
``empty_prompt_embeds.safetensors``, and ``training.json``, the record. ``score=stable_diffusion
score.pretrained=<that folder>`` loads it through the same ``from_pretrained`` path as a real
Stable Diffusion checkpoint, and every number in the record is measured through that path, on
the weights as stored (``export_dtype``): the VAE round trip's PSNR on held-out digits, and
FID/KID of DDIM samples (diffusers' ``DDIMScheduler``, 50 steps, eta 0, VAE-decoded) and of
VAE reconstructions against held-out digits, with the real-vs-real floor at the same n.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.scores.stable_diffusion import EMPTY_PROMPT_FILE
from scoregeo_cli.training.loop import train_phase
from scoregeo_cli.training.unet import data_record, fid_verdict, sample_grid, training_command

MODEL_DIR = "model"
RECORD_FILE = "training.json"
VAE_STATE, UNET_STATE = "vae_state.pt", "unet_state.pt"
FID_TARGET = 3.0  # sample FID within this factor of real-vs-real FID at the same n
PSNR_TARGET = 25.0  # dB, VAE round trip on held-out digits

SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
               "beta_end": 0.012}
# as Stable Diffusion's scheduler configs: no clipping of predicted latents, the last DDIM step to
# abar_0 rather than 1, timesteps offset by one
SD_SAMPLER = {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon"}
DEFAULT_VAE = {"block_out_channels": [16, 32, 64], "latent_channels": 4, "layers_per_block": 1,
               "norm_num_groups": 16}
DEFAULT_UNET = {"block_out_channels": [64, 128], "layers_per_block": 1, "norm_num_groups": 16,
                "cross_attention_dim": 32, "attention_head_dim": 8}
PHASE_DEFAULTS = {"steps": 1000, "batch_size": 64, "lr": 1e-3, "warmup": 50, "weight_decay": 0.0,
                  "grad_clip": 1.0}


def _check_channels(key: str, channels, groups) -> tuple[int, ...]:
    channels = tuple(int(c) for c in channels)
    if not channels or any(c % int(groups) for c in channels):
        raise ScoregeoError(f"{key}.block_out_channels must be multiples of norm_num_groups ({groups}), "
                            f"got {list(channels)}")
    return channels


def build_vae(block_out_channels=(16, 32, 64), latent_channels: int = 4, layers_per_block: int = 1,
              norm_num_groups: int = 16, channels: int = 1, sample_size: int = 28):
    """An ``AutoencoderKL``: one encoder level per entry of ``block_out_channels``, each but the
    last halving the image (28 -> 14 -> 7 for three), ``latent_channels`` latent channels."""
    from diffusers import AutoencoderKL

    boc = _check_channels("score.train.vae.model", block_out_channels, norm_num_groups)
    return AutoencoderKL(in_channels=int(channels), out_channels=int(channels), latent_channels=int(latent_channels),
                         sample_size=int(sample_size), down_block_types=("DownEncoderBlock2D",) * len(boc),
                         up_block_types=("UpDecoderBlock2D",) * len(boc), block_out_channels=boc,
                         layers_per_block=int(layers_per_block), norm_num_groups=int(norm_num_groups))


def build_conditional_unet(sample_size: int, in_channels: int, block_out_channels=(64, 128),
                           layers_per_block: int = 1, norm_num_groups: int = 16, cross_attention_dim: int = 32,
                           attention_head_dim: int = 8):
    """A ``UNet2DConditionModel`` laid out as Stable Diffusion's: cross-attention blocks at every
    level but the lowest (``CrossAttnDownBlock2D`` ... ``DownBlock2D``, mirrored going up) and a
    cross-attention mid block."""
    from diffusers import UNet2DConditionModel

    boc = _check_channels("score.train.unet.model", block_out_channels, norm_num_groups)
    down = ("CrossAttnDownBlock2D",) * (len(boc) - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(boc) - 1)
    return UNet2DConditionModel(sample_size=int(sample_size), in_channels=int(in_channels),
                                out_channels=int(in_channels), down_block_types=down, up_block_types=up,
                                block_out_channels=boc, layers_per_block=int(layers_per_block),
                                norm_num_groups=int(norm_num_groups), cross_attention_dim=int(cross_attention_dim),
                                attention_head_dim=int(attention_head_dim))


def _phase_settings(name: str, given: dict | None, defaults: dict) -> dict:
    settings = {**PHASE_DEFAULTS, **defaults, **(dict(given) if given else {})}
    for key in ("steps", "batch_size", "checkpoint_every"):
        if key in settings and int(settings[key]) < 1:
            raise ScoregeoError(f"score.train.{name}.{key} must be at least 1, got {settings[key]}")
    if not float(settings["lr"]) > 0:
        raise ScoregeoError(f"score.train.{name}.lr must be positive, got {settings['lr']}")
    if int(settings["warmup"]) < 0:
        raise ScoregeoError(f"score.train.{name}.warmup must be at least 0, got {settings['warmup']}")
    ema = settings.get("ema_decay")
    if ema is not None and not 0 <= float(ema) < 1:
        raise ScoregeoError(f"score.train.{name}.ema_decay must lie in [0, 1) or be null, got {ema}")
    return settings


def _cast(module: torch.nn.Module, dtype: torch.dtype, back: bool = False) -> torch.nn.Module:
    """Cast the module's floating-point parameters and buffers to ``dtype`` in place (``back``:
    and back to their own dtype, i.e. round them to what storing them in ``dtype`` keeps)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype).to(tensor.dtype) if back else tensor.data.to(dtype)
    return module


@torch.no_grad()
def latent_scaling_factor(vae, dataset, n: int = 2048, seed: int = 3) -> float:
    """One over the standard deviation of the posterior-mean latents of ``n`` rotated training
    digits (Stable Diffusion's 0.18215 was set this way), so that scaled latents have unit variance."""
    gen = torch.Generator().manual_seed(seed)
    x = dataset.training_batch(n, gen) * 2 - 1
    z = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in x.split(256)])
    return float(1.0 / z.std())


def _write_model(folder: Path, vae, unet, embeds: torch.Tensor, dtype: torch.dtype) -> None:
    """The diffusers folder: vae/, unet/ (weights in ``dtype``), scheduler/ and the embedding."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    from scoregeo_cli.io.files import new_file_mode

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _cast(copy.deepcopy(vae), dtype).save_pretrained(tmp / "vae")
    _cast(copy.deepcopy(unet), dtype).save_pretrained(tmp / "unet")
    DDIMScheduler(**SD_SCHEDULE, **SD_SAMPLER).save_pretrained(tmp / "scheduler")
    save_file({"prompt_embeds": embeds.to(dtype).contiguous()}, str(tmp / EMPTY_PROMPT_FILE))
    for path in tmp.rglob("*"):  # the mode any new file gets (umask), as results are written
        if path.is_file():
            os.chmod(path, new_file_mode())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


@torch.no_grad()
def ddim_sample_latents(model, n: int, generator: torch.Generator, steps: int = 50,
                        batch_size: int = 250) -> torch.Tensor:
    """n latents (n, c, h, w) from pure noise by diffusers' ``DDIMScheduler`` (eta 0) built from
    the model's scheduler config, as Stable Diffusion's pipeline samples without guidance."""
    from diffusers import DDIMScheduler

    sampler = DDIMScheduler.from_config(model.scheduler_config)
    sampler.set_timesteps(int(steps))
    noise = torch.randn(n, *model.latent_shape, generator=generator)
    out = []
    for x in noise.split(batch_size):
        for t in sampler.timesteps:
            x = sampler.step(model.eps(x, int(t)), t, x, eta=0.0).prev_sample
        out.append(x)
    return torch.cat(out)


@torch.no_grad()
def roundtrip_psnr(model, dataset, n: int = 1000, seed: int = 5) -> dict:
    """PSNR (dB, per image, data range 1) of held-out rotated digits through encode and decode."""
    from scoregeo_cli.evaluation.images import psnr

    gen = torch.Generator().manual_seed(seed)
    real = dataset.rotated_batch(dataset.heldout_split, n, gen)
    values = psnr(model.decode(model.encode(real)), real)
    return {"vae_psnr": float(values.mean()), "vae_psnr_min": float(values.min()),
            "vae_psnr_median": float(values.median()), "vae_psnr_samples": n,
            "vae_psnr_target": f"mean >= {PSNR_TARGET:g} dB", "vae_psnr_target_met": bool(values.mean() >= PSNR_TARGET),
            "vae_psnr_note": f"per-image PSNR of {n} {dataset.heldout_split}-split digits at uniform training "
                             "angles after VAE encode (posterior mean, scaled) and decode, as score=stable_diffusion "
                             "loads the folder"}


def ldm_sample_quality(model, dataset, n: int, steps: int, seed: int, grid_path: Path | None = None) -> dict:
    """FID/KID against n held-out rotated digits of: n DDIM samples decoded by the VAE; the VAE
    reconstructions of a second draw of n real digits; and that second real draw itself (the
    real-vs-real floor at this n)."""
    from scoregeo_cli.evaluation.images import fid_from_features, inception_features, kid_from_features

    gen = torch.Generator().manual_seed(seed + 101)
    fake = model.decode(ddim_sample_latents(model, n, gen, steps))
    if grid_path is not None:
        sample_grid(fake[:256], grid_path)
    real = dataset.rotated_batch(dataset.heldout_split, n, gen)
    real_2 = dataset.rotated_batch(dataset.heldout_split, n, gen)
    with torch.no_grad():
        recon = model.decode(model.encode(real_2))
    f_fake, f_real, f_real_2, f_recon = (inception_features(x) for x in (fake, real, real_2, recon))
    kid, kid_std = kid_from_features(f_real, f_fake)
    fid, floor = fid_from_features(f_real, f_fake), fid_from_features(f_real, f_real_2)
    return {"sample_fid": fid, "sample_kid": kid, "sample_kid_std": kid_std, "real_vs_real_fid": floor,
            "real_vs_real_kid": kid_from_features(f_real, f_real_2)[0],
            "vae_reconstruction_fid": fid_from_features(f_real, f_recon),
            "vae_reconstruction_kid": kid_from_features(f_real, f_recon)[0], "fid_samples": n,
            **fid_verdict(fid, floor, FID_TARGET), "sample_steps": steps,
            "fid_note": f"diffusers DDIMScheduler from the folder's scheduler config ({steps} steps, eta 0, no "
                        f"guidance) from pure latent noise, VAE-decoded, vs {n} real digits of the "
                        f"{dataset.heldout_split} split at uniform training angles; real_vs_real: a second "
                        "independent real draw; vae_reconstruction: that second draw through the VAE"}


def train_ldm(cfg: DictConfig, out_dir: str | Path, vae: dict | None = None, unet: dict | None = None,
              schedule: dict | None = None, prompt_length: int = 77, checkpoint_every: int = 200,
              export_dtype: str = "float16", psnr_samples: int = 1000, fid_samples: int = 500,
              sample_steps: int = 50, threads: int | None = None) -> Path:
    """Train the VAE, then the UNet, on rotated digits of ``cfg.dataset``; write and measure the
    diffusers folder ``<out_dir>/model`` and return it (see the module docstring).

    ``vae`` / ``unet``: each phase's ``steps``, ``batch_size``, ``lr``, ``warmup``,
    ``weight_decay``, ``grad_clip``, ``model`` (the architecture) and, for the VAE, ``kl_weight``;
    for the UNet ``ema_decay``. ``schedule``: the DDPM schedule (Stable Diffusion's by default).
    ``export_dtype``: float16 (half the files; loading casts to float32) or float32."""
    from diffusers import DDPMScheduler
    from hydra.utils import instantiate

    from scoregeo_cli.scores.stable_diffusion import stable_diffusion_score

    if export_dtype not in ("float32", "float16"):
        raise ScoregeoError(f"score.train.export_dtype must be float32 or float16, got {export_dtype!r}")
    for key, value, least in (("prompt_length", prompt_length, 1), ("checkpoint_every", checkpoint_every, 1),
                              ("psnr_samples", psnr_samples, 1), ("sample_steps", sample_steps, 1)):
        if int(value) < least:
            raise ScoregeoError(f"score.train.{key} must be at least {least}, got {value}")
    if fid_samples and int(fid_samples) < 2:
        raise ScoregeoError(f"score.train.fid_samples must be 0 (no FID) or at least 2, got {fid_samples}")
    vae_cfg = _phase_settings("vae", vae, {"kl_weight": 1e-6})
    unet_cfg = _phase_settings("unet", unet, {"ema_decay": 0.999})
    vae_arch = {**DEFAULT_VAE, **dict(vae_cfg.pop("model", None) or {})}
    unet_arch = {**DEFAULT_UNET, **dict(unet_cfg.pop("model", None) or {})}
    if not float(vae_cfg["kl_weight"]) >= 0:
        raise ScoregeoError(f"score.train.vae.kl_weight must be at least 0, got {vae_cfg['kl_weight']}")
    schedule = {**SD_SCHEDULE, **(dict(schedule) if schedule else {}), "prediction_type": "epsilon"}
    if threads:
        torch.set_num_threads(int(threads))
    dtype = getattr(torch, export_dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = instantiate(cfg.dataset)
    seed = int(cfg.seed)
    data = {"source": dataset.source, "train_split": dataset.train_split, "train_angles": list(dataset.train_angles)}
    print(f"{len(dataset.images(dataset.train_split))} training digits ({dataset.source}, {dataset.train_split}) "
          f"rotated in {list(dataset.train_angles)} deg")

    # 1. the autoencoder
    torch.manual_seed(seed)
    vae_net = build_vae(**vae_arch)
    gen = torch.Generator().manual_seed(seed)
    kl_weight = float(vae_cfg["kl_weight"])

    def vae_loss() -> torch.Tensor:
        x = dataset.training_batch(int(vae_cfg["batch_size"]), gen) * 2 - 1
        posterior = vae_net.encode(x).latent_dist
        recon = vae_net.decode(posterior.sample(generator=gen)).sample
        return F.mse_loss(recon, x) + kl_weight * posterior.kl().mean() / x[0].numel()

    vae_signature = {"architecture": vae_arch, "settings": {k: v for k, v in vae_cfg.items() if k != "steps"}, **data}
    print(f"AutoencoderKL {vae_arch['block_out_channels']}, {sum(p.numel() for p in vae_net.parameters())} "
          "parameters")
    vae_record = train_phase("vae", vae_net, vae_loss, vae_cfg, out_dir / VAE_STATE, vae_signature, gen,
                             int(checkpoint_every))
    vae_record["kl_weight"] = kl_weight
    _cast(vae_net, dtype, back=True)  # the UNet learns the latents of the VAE as stored
    scaling = latent_scaling_factor(vae_net, dataset)
    vae_net.register_to_config(scaling_factor=scaling)
    vae_record["scaling_factor"] = scaling
    with torch.no_grad():
        probe = vae_net.encode(torch.zeros(1, 1, 28, 28)).latent_dist.mean
    latent_shape = tuple(int(s) for s in probe.shape[1:])
    print(f"VAE: latents {latent_shape}, scaling factor {scaling:.4f}")

    # 2. the latent UNet
    torch.manual_seed(seed + 1)
    unet_net = build_conditional_unet(latent_shape[1], latent_shape[0], **unet_arch)
    embeds = torch.randn(1, int(prompt_length), int(unet_arch["cross_attention_dim"]),
                         generator=torch.Generator().manual_seed(seed + 2))
    embeds = embeds.to(dtype).float()
    noise_schedule = DDPMScheduler(**schedule)
    unet_gen = torch.Generator().manual_seed(seed + 1)

    def unet_loss() -> torch.Tensor:
        b = int(unet_cfg["batch_size"])
        with torch.no_grad():
            x = dataset.training_batch(b, unet_gen) * 2 - 1
            z = vae_net.encode(x).latent_dist.sample(generator=unet_gen) * scaling
        noise = torch.randn(z.shape, generator=unet_gen)
        ts = torch.randint(0, noise_schedule.config.num_train_timesteps, (b,), generator=unet_gen)
        pred = unet_net(noise_schedule.add_noise(z, noise, ts), ts, encoder_hidden_states=embeds.expand(b, -1, -1))
        return F.mse_loss(pred.sample, noise)

    unet_signature = {"architecture": unet_arch, "schedule": schedule, "prompt_length": int(prompt_length),
                      "settings": {k: v for k, v in unet_cfg.items() if k != "steps"}, "vae": vae_signature,
                      "vae_steps": vae_record["steps"], "export_dtype": export_dtype, **data}
    print(f"UNet2DConditionModel {unet_arch['block_out_channels']} on {latent_shape} latents, "
          f"{sum(p.numel() for p in unet_net.parameters())} parameters")
    unet_record = train_phase("unet", unet_net, unet_loss, unet_cfg, out_dir / UNET_STATE, unet_signature,
                              unet_gen, int(checkpoint_every))
    _cast(unet_net, dtype, back=True)

    # 3. the folder, and what it measures when loaded as a real checkpoint would be
    folder = out_dir / MODEL_DIR
    _write_model(folder, vae_net, unet_net, embeds, dtype)
    model = stable_diffusion_score(str(folder), t=400, device="cpu", chunk_size=250).model
    record = {"command": training_command(out_dir), **data_record(dataset),
              "latent_shape": list(latent_shape), "vae": vae_record, "unet": unet_record,
              "schedule": schedule, "prompt_embeds": f"fixed N(0, 1) draw (1, {int(prompt_length)}, "
                                                     f"{int(unet_arch['cross_attention_dim'])}), seed {seed + 2}",
              "train_seconds": round(vae_record["train_seconds"] + unet_record["train_seconds"], 1),
              "threads": torch.get_num_threads(), "device": f"cpu ({torch.get_num_threads()} threads)",
              "weights_dtype": export_dtype,
              "weights_note": f"stored in {export_dtype}; every measured number of this record is of the folder as "
                              "stored, loaded in float32 by score=stable_diffusion"}
    record.update(roundtrip_psnr(model, dataset, int(psnr_samples)))
    print(f"trained in {record['train_seconds']:.0f} s; VAE round trip {record['vae_psnr']:.2f} dB PSNR on "
          f"{psnr_samples} held-out digits (target {PSNR_TARGET:g})")
    if fid_samples:
        start = time.perf_counter()
        record.update(ldm_sample_quality(model, dataset, int(fid_samples), int(sample_steps), seed,
                                         out_dir / "samples.png"))
        record["fid_seconds"] = round(time.perf_counter() - start, 1)
        print(f"DDIM samples ({sample_steps} steps): FID {record['sample_fid']:.1f}, KID "
              f"{record['sample_kid']:.4f}; VAE reconstructions FID {record['vae_reconstruction_fid']:.1f}; real vs "
              f"real FID {record['real_vs_real_fid']:.1f} (n = {fid_samples}); ratio {record['fid_ratio']:.2f} "
              f"(target {FID_TARGET:g}); grid in {out_dir / 'samples.png'}")
    from scoregeo_cli.io.files import atomic_write_json

    atomic_write_json(folder / RECORD_FILE, record)
    print(f"use it with: scoregeo run experiment=latent_rotations score.pretrained={folder}")
    return folder
