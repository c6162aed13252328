"""``scoregeo train`` of the rotated-digits UNet (``score=unet``): training, snapshots and
the quality of its samples.

``train_unet`` is that command's trainer: eps-prediction with a diffusers DDPMScheduler
(linear betas 1e-4..0.02 over 1000 steps by default), AdamW with warm-up and cosine decay,
an EMA of the weights (diffusers' EMAModel), a tqdm progress bar, and a resumable
training state written every ``checkpoint_every`` steps (and on Ctrl-C): running the same
command again continues where it stopped (the loop of ``training/loop.py``, shared with
``training/ldm.py``). At the end it exports the EMA weights, draws
samples with DDIM from pure noise and scores them with FID/KID against real rotated digits.
The checkpoint it writes is read by ``scoregeo_cli.scores.unet``.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.schedule import alphas_cumprod_from, noise_to
from scoregeo_cli.scores.unet import EXPORT_NAME, FORMAT, SAMPLE_SHAPE
from scoregeo_cli.training.loop import train_phase

STATE_FILE = "train_state.pt"

DEFAULT_ARCHITECTURE = {"block_out_channels": [16, 32, 64], "layers_per_block": 1, "norm_num_groups": 8}
DEFAULT_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                    "beta_end": 0.02}


def build_unet(block_out_channels=(16, 32, 64), layers_per_block: int = 1, norm_num_groups: int = 8,
               sample_size: int = 28, channels: int = 1):
    """A UNet2DModel without attention: one resolution per entry of ``block_out_channels``
    (28 -> 14 -> 7 for three), ``layers_per_block`` ResNet blocks at each, and a mid block
    of ResNets only. (Geodesic shooting differentiates the score twice; PyTorch's fused CPU
    attention has no second derivative, and a 7x7 attention adds little to a digit model.)"""
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    if levels < 1 or any(int(c) % int(norm_num_groups) for c in block_out_channels):
        raise ScoregeoError(f"score.train.model.block_out_channels must be multiples of norm_num_groups "
                            f"({norm_num_groups}), got {list(block_out_channels)}")
    if sample_size % (2 ** (levels - 1)):
        raise ScoregeoError(f"{levels} UNet levels halve {sample_size} px {levels - 1} times, which does not "
                            "divide evenly; use fewer block_out_channels")
    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                       block_out_channels=tuple(int(c) for c in block_out_channels),
                       layers_per_block=int(layers_per_block), norm_num_groups=int(norm_num_groups),
                       down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
                       add_attention=False)


def _plain_config(config) -> dict:
    """A diffusers config as a JSON-able dict without its private keys."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def save_checkpoint(path: str | Path, model, scheduler_config: dict, training: dict | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``path`` (.safetensors weights, stored as ``dtype`` if given: float16 halves a
    snapshot; loading casts back to float32) and the JSON beside it; returns ``path``."""
    from safetensors.torch import save_file

    from scoregeo_cli.io.files import atomic_write_json, new_file_mode

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ScoregeoError(f"a UNet checkpoint path must end in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    os.chmod(tmp, new_file_mode())  # the mode any new file gets (umask), as results are written
    os.replace(tmp, path)
    atomic_write_json(path.with_suffix(".json"), {
        "format": FORMAT, "unet": _plain_config(model.config), "scheduler": _plain_config(scheduler_config),
        "sample_shape": list(SAMPLE_SHAPE), "data_range": [-1.0, 1.0], "training": training or {},
        "weights_dtype": str(dtype or next(iter(state.values())).dtype).replace("torch.", "")})
    return path


def sample_grid(images: torch.Tensor, path: Path, columns: int = 16) -> None:
    """Save (n, 1, H, W) images in [0, 1] as one grayscale PNG grid."""
    import numpy as np
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    canvas = np.zeros((rows * h, columns * w), dtype=np.uint8)
    pixels = (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = pixels[i]
    Image.fromarray(canvas).save(path)


@torch.no_grad()
def generate(model, scheduler_config: dict, n: int, generator: torch.Generator, steps: int = 50,
             batch_size: int = 128) -> torch.Tensor:
    """n samples (n, 1, 28, 28) in [0, 1] from pure noise by diffusers' DDIM sampler (eta 0)
    built from the model's own scheduler configuration, as ``DDIMPipeline`` samples: its
    ``steps`` "leading" timesteps and its clipping of the predicted x_0 (``clip_sample``)."""
    from diffusers import DDIMScheduler

    sampler = DDIMScheduler.from_config(dict(scheduler_config))
    sampler.set_timesteps(int(steps))
    noise = torch.randn(n, *SAMPLE_SHAPE, generator=generator)
    out = []
    for x in noise.split(batch_size):
        for t in sampler.timesteps:
            x = sampler.step(model(x, t).sample, t, x, eta=0.0).prev_sample
        out.append(x)
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)


def check_levels(levels, num_train_timesteps: int) -> tuple[int, int]:
    """``score.train.levels`` as (lo, hi), checked: null is the whole schedule (0, T - 1);
    otherwise two integer levels 0 <= lo <= hi <= T - 1."""
    top = int(num_train_timesteps) - 1
    if levels is None:
        return 0, top
    try:
        lo, hi = (v for v in levels)
        if isinstance(lo, bool) or isinstance(hi, bool) or int(lo) != lo or int(hi) != hi:
            raise TypeError
        lo, hi = int(lo), int(hi)
    except (TypeError, ValueError):
        raise ScoregeoError(f"score.train.levels must be null (every level) or two integer levels [lo, hi] "
                            f"with 0 <= lo <= hi <= {top}, got {levels!r}") from None
    if not 0 <= lo <= hi <= top:
        raise ScoregeoError(f"score.train.levels must be two levels [lo, hi] with 0 <= lo <= hi <= {top} (the "
                            f"schedule has {top + 1} levels), got [{lo}, {hi}]")
    return lo, hi


def draw_levels(n: int, levels: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """n training levels (long), uniform over the integers lo..hi of ``levels`` (both included)."""
    lo, hi = levels
    return torch.randint(int(lo), int(hi) + 1, (int(n),), generator=generator)


def _predict_eps(model, x_t: torch.Tensor, levels: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """The model's noise prediction for points (n, 1, 28, 28) at per-point levels (n,), in batches."""
    return torch.cat([model(xb, tb).sample for xb, tb in zip(x_t.split(batch), levels.split(batch))])


@torch.no_grad()
def eps_test_loss(model, dataset, scheduler, n: int = 512, seed: int = 1,
                  levels: tuple[int, int] | None = None) -> float:
    """Mean squared eps error on held-out digits (``dataset.heldout_split``) at uniform
    training angles and levels (``levels``: the training range, default every level)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = dataset.rotated_batch(dataset.heldout_split, n, gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    ts = draw_levels(n, levels or (0, scheduler.config.num_train_timesteps - 1), gen)
    return float(F.mse_loss(_predict_eps(model, scheduler.add_noise(x0, noise, ts), ts), noise))


@torch.no_grad()
def eps_mse_per_level(model, dataset, alphas_cumprod: torch.Tensor, levels=(50, 100, 200, 400, 800),
                      n: int = 256, seed: int = 2) -> dict:
    """{level: eps-MSE} on held-out digits at uniform training angles, the same digits and
    noise at every level."""
    gen = torch.Generator().manual_seed(seed)
    x0 = dataset.rotated_batch(dataset.heldout_split, n, gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    out = {}
    for level in levels:
        x_t = noise_to(x0, noise, int(level), alphas_cumprod)
        pred = _predict_eps(model, x_t, torch.full((n,), int(level), dtype=torch.long))
        out[str(int(level))] = float(F.mse_loss(pred, noise))
    return out


def train_unet(cfg: DictConfig, out_dir: str | Path, steps: int = 3000, batch_size: int = 32, lr: float = 2e-3,
               warmup: int = 100, weight_decay: float = 0.0, grad_clip: float = 1.0, ema_decay: float = 0.999,
               checkpoint_every: int = 200, model: dict | None = None, schedule: dict | None = None,
               fid_samples: int = 64, sample_steps: int = 50, test_loss_samples: int = 512,
               threads: int | None = None, snapshots=(), export_dtype: str = "float32", levels=None) -> Path:
    """Train an eps-prediction UNet on rotated digits of ``cfg.dataset``; return the exported
    EMA checkpoint ``<out_dir>/unet.safetensors`` (see the module docstring).

    ``snapshots``: steps (< ``steps``) at which the EMA weights are also exported, in float16,
    as ``<out_dir>/unet_step<N>.safetensors`` with their held-out eps-MSE per level: a ladder of
    one training run at increasing steps (they do not change the run itself). ``export_dtype``:
    float32 or float16 (half the file; loading casts back to float32) for the final weights.

    ``levels``: [lo, hi], the diffusion levels trained (uniform integers lo..hi, both
    included); null trains every level of the schedule. The record holds the range; the
    held-out eps-MSE per t is measured at the same levels either way."""
    from diffusers import DDPMScheduler
    from hydra.utils import instantiate

    for name, value in (("steps", steps), ("batch_size", batch_size), ("checkpoint_every", checkpoint_every),
                        ("sample_steps", sample_steps)):
        if int(value) < 1:
            raise ScoregeoError(f"score.train.{name} must be at least 1, got {value}")
    if not lr > 0:
        raise ScoregeoError(f"score.train.lr must be positive, got {lr}")
    if not 0 <= ema_decay < 1:
        raise ScoregeoError(f"score.train.ema_decay must lie in [0, 1), got {ema_decay}")
    if int(test_loss_samples) < 1:
        raise ScoregeoError(f"score.train.test_loss_samples must be at least 1, got {test_loss_samples}")
    if fid_samples and int(fid_samples) < 2:
        raise ScoregeoError(f"score.train.fid_samples must be 0 (no FID) or at least 2, got {fid_samples}")
    if export_dtype not in ("float32", "float16"):
        raise ScoregeoError(f"score.train.export_dtype must be float32 or float16, got {export_dtype!r}")
    snapshots = sorted({int(n) for n in (snapshots or ())})
    if snapshots and not 1 <= snapshots[0] <= snapshots[-1] < int(steps):
        raise ScoregeoError(f"score.train.snapshots must be steps between 1 and steps - 1 = {int(steps) - 1}, "
                            f"got {snapshots}")
    schedule = {**DEFAULT_SCHEDULE, **(dict(schedule) if schedule else {}), "prediction_type": "epsilon"}
    levels = check_levels(levels, int(schedule["num_train_timesteps"]))
    every_level = levels == (0, int(schedule["num_train_timesteps"]) - 1)
    if threads:
        torch.set_num_threads(int(threads))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    architecture = {**DEFAULT_ARCHITECTURE, **(dict(model) if model else {})}
    dataset = instantiate(cfg.dataset)
    torch.manual_seed(int(cfg.seed))
    net = build_unet(**architecture)
    scheduler = DDPMScheduler(**schedule)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    signature = {"architecture": architecture, "schedule": schedule, "batch_size": int(batch_size),
                 "source": dataset.source, "train_split": dataset.train_split,
                 "train_angles": list(dataset.train_angles)}
    if not every_level:  # (a state written before levels existed trained every level)
        signature["levels"] = list(levels)

    n_params = sum(p.numel() for p in net.parameters())
    print(f"UNet2DModel {architecture['block_out_channels']}, {n_params} parameters; "
          f"{len(dataset.images(dataset.train_split))} training digits ({dataset.source}, {dataset.train_split}) "
          f"rotated in {list(dataset.train_angles)} deg"
          + ("" if every_level else f"; levels {levels[0]}..{levels[1]}"))

    def batch_loss() -> torch.Tensor:
        x0 = dataset.training_batch(int(batch_size), gen) * 2 - 1
        noise = torch.randn(x0.shape, generator=gen)
        ts = draw_levels(x0.shape[0], levels, gen)
        return F.mse_loss(net(scheduler.add_noise(x0, noise, ts), ts).sample, noise)

    def snapshot(step: int, seconds: float, ema) -> None:
        path = out_dir / f"unet_step{step}.safetensors"
        if step in snapshots and not path.exists():
            save_snapshot(path, net, ema, scheduler, dataset, step,
                          {"batch_size": int(batch_size), "lr": float(lr), "of_steps": int(steps),
                           "ema_decay": float(ema_decay), **levels_record(levels, every_level),
                           "train_seconds": round(seconds, 3), "threads": torch.get_num_threads(),
                           "device": f"cpu ({torch.get_num_threads()} threads)"})

    settings = {"steps": int(steps), "batch_size": int(batch_size), "lr": float(lr), "warmup": int(warmup),
                "weight_decay": float(weight_decay), "grad_clip": grad_clip, "ema_decay": float(ema_decay)}
    phase = train_phase("unet", net, batch_loss, settings, out_dir / STATE_FILE, signature, gen,
                        int(checkpoint_every), on_step=snapshot)
    step, seconds = phase["steps"], phase["train_seconds"]

    exported = net  # train_phase leaves the EMA weights in it, in eval mode
    stored = exported if export_dtype == "float32" else copy.deepcopy(exported).half().float()
    record = {"command": training_command(out_dir), **data_record(dataset), "steps": int(step),
              "batch_size": int(batch_size), "lr": float(lr), "ema_decay": float(ema_decay),
              **levels_record(levels, every_level),
              "parameters": int(n_params), "train_seconds": seconds, "threads": torch.get_num_threads(),
              "final_loss": phase["final_loss"], "final_loss_note": "mean eps-MSE of the last 100 training steps",
              "ema_test_loss": eps_test_loss(exported, dataset, scheduler, int(test_loss_samples), levels=levels),
              "ema_test_loss_note": f"eps-MSE of the EMA weights on {int(test_loss_samples)} digits of the "
                                    f"{dataset.heldout_split} split at uniform training angles and levels"
                                    + ("" if every_level else f" (levels {levels[0]}..{levels[1]})"),
              "eps_mse_per_t": eps_mse_per_level(stored, dataset, alphas_cumprod_from(scheduler.config)),
              "eps_mse_per_t_note": f"eps-MSE of the EMA weights as stored ({export_dtype}) at fixed levels t, 256 "
                                    f"digits of the {dataset.heldout_split} split at uniform training angles (same "
                                    "noise at every t)",
              "device": f"cpu ({torch.get_num_threads()} threads)"}
    print(f"trained {step} steps in {seconds:.0f} s; final loss {record['final_loss']:.4f}, "
          f"EMA held-out loss {record['ema_test_loss']:.4f}")
    if fid_samples:
        record.update(sample_quality(exported, scheduler.config, dataset, int(fid_samples),
                                     int(sample_steps), int(cfg.seed), out_dir / "samples.png"))
        print(f"DDIM samples ({sample_steps} steps): FID {record['sample_fid']:.1f}, KID {record['sample_kid']:.4f} "
              f"against {fid_samples} real rotated digits (real vs real at this size: FID "
              f"{record['real_vs_real_fid']:.1f}); grid in {out_dir / 'samples.png'}")
    return save_checkpoint(out_dir / EXPORT_NAME, exported, scheduler.config, record,
                           dtype=getattr(torch, export_dtype))


FID_TARGET = 2.0  # a model worth testing samples within this factor of real-vs-real FID at the same size


def training_command(out_dir: Path) -> str | None:
    """The command a training folder's command.sh replays, if it has one."""
    path = Path(out_dir) / "command.sh"
    return path.read_text().strip() if path.exists() else None


def levels_record(levels: tuple[int, int], every_level: bool) -> dict:
    """What a checkpoint's record says of the levels it was trained on."""
    lo, hi = levels
    return {"levels": [int(lo), int(hi)],
            "levels_note": "every level of the schedule, uniform" if every_level else
                           f"trained only on levels {lo}..{hi} (uniform integers, both included); at other "
                           "levels the network was never trained"}


def data_record(dataset) -> dict:
    """What a checkpoint's record says of the data it was trained on."""
    return {"source": dataset.source, "train_split": dataset.train_split,
            "train_digits": len(dataset.images(dataset.train_split)), "train_angles": list(dataset.train_angles)}


def save_snapshot(path: Path, net, ema, scheduler, dataset, step: int, settings: dict) -> Path:
    """Export the EMA weights at ``step`` of a running training as a float16 checkpoint."""
    snapshot = copy.deepcopy(net)
    ema.copy_to(snapshot.parameters())
    snapshot.eval().requires_grad_(False)
    record = {"command": training_command(path.parent), **data_record(dataset), "steps": int(step), **settings,
              "snapshot_note": f"EMA weights at step {step} of a {settings.get('of_steps')}-step run "
                               "(cosine learning-rate schedule over the whole run), stored in float16",
              "eps_mse_per_t": eps_mse_per_level(snapshot.half().float(), dataset,
                                                 alphas_cumprod_from(scheduler.config)),
              "eps_mse_per_t_note": f"eps-MSE of the float16-stored weights at fixed levels t, 256 digits of the "
                                    f"{dataset.heldout_split} split at uniform training angles (same noise at every t)"}
    print(f"snapshot at step {step}: {path}")
    return save_checkpoint(path, snapshot, scheduler.config, record, dtype=torch.float16)


def fid_verdict(sample_fid: float, real_vs_real_fid: float, target: float = FID_TARGET) -> dict:
    """The sample FID as a multiple of the real-vs-real floor and whether it meets ``target``
    (FID_TARGET for the pixel UNets)."""
    ratio = sample_fid / real_vs_real_fid
    return {"fid_ratio": ratio, "fid_target": f"sample FID <= {target:g} x real-vs-real FID",
            "fid_target_met": bool(ratio <= target)}


def sample_quality(model, scheduler_config: dict, dataset, n: int, steps: int, seed: int,
                   grid_path: Path | None = None) -> dict:
    """FID/KID of n DDIM samples against n real held-out digits (``dataset.heldout_split``:
    the test split, or the orbit set for a model of the orbit set) at uniform training
    angles, and the same figures for a second, independent draw of n real digits (the floor
    of FID at this sample size)."""
    from scoregeo_cli.evaluation.images import fid_from_features, inception_features, kid_from_features

    gen = torch.Generator().manual_seed(seed + 101)
    fake = generate(model, scheduler_config, n, gen, steps)
    if grid_path is not None:
        sample_grid(fake, grid_path)
    real = dataset.rotated_batch(dataset.heldout_split, n, gen)
    real_2 = dataset.rotated_batch(dataset.heldout_split, n, gen)
    f_fake, f_real, f_real_2 = (inception_features(x) for x in (fake, real, real_2))
    kid, kid_std = kid_from_features(f_real, f_fake)
    fid, floor = fid_from_features(f_real, f_fake), fid_from_features(f_real, f_real_2)
    return {"sample_fid": fid, "sample_kid": kid, "sample_kid_std": kid_std, "real_vs_real_fid": floor,
            "real_vs_real_kid": kid_from_features(f_real, f_real_2)[0], "fid_samples": n, **fid_verdict(fid, floor),
            "sample_steps": steps, "fid_note": f"diffusers DDIM (eta 0, clip_sample as the model's scheduler config "
                                               f"says) from pure noise vs real digits of the "
                                               f"{dataset.heldout_split} split at uniform training angles; "
                                               "real_vs_real: a second independent real draw"}
