"""The training loop that ``scoregeo train`` shares between its models (the rotated-digits
UNet, the latent diffusion model's VAE and UNet): AdamW with warm-up and cosine decay,
gradient clipping, an optional EMA of the weights (diffusers' EMAModel), a tqdm bar, and a
resumable training state written every ``checkpoint_every`` steps and on Ctrl-C, so that
running the same command again continues where it stopped, bit for bit."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from scoregeo_cli.errors import ScoregeoError, check_finite

__all__ = ["atomic_torch_save", "train_phase"]


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_phase(name: str, net: torch.nn.Module, batch_loss, settings: dict, state_path: Path, signature: dict,
                gen: torch.Generator, checkpoint_every: int, on_step=None) -> dict:
    """Optimise ``batch_loss()`` (a scalar from one fresh batch) over ``net``'s parameters:
    AdamW, linear warm-up and cosine decay to 0 over ``settings['steps']``, gradient clipping,
    an EMA of the weights unless ``ema_decay`` is None (copied into ``net`` at the end). Resumes
    from ``state_path`` (which must hold the same ``signature``); leaves ``net`` in eval mode
    without parameter gradients. ``on_step(step, seconds, ema)``, if given, is called after
    every step with the training seconds so far and the EMA (None without one), e.g. to write
    snapshots. Returns the phase's record."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    steps = int(settings["steps"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=float(settings["lr"]),
                                  weight_decay=float(settings["weight_decay"]))
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, int(settings["warmup"]), steps)
    ema_decay = settings.get("ema_decay")
    ema = EMAModel(net.parameters(), decay=float(ema_decay), use_ema_warmup=True) \
        if ema_decay is not None else None
    step, losses, seconds = 0, [], 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["signature"] != signature:
            raise ScoregeoError(f"{state_path} holds the training state of a different model or data; "
                                "delete it or choose another output_root to start afresh")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        gen.set_state(state["generator"])
        step, losses, seconds = int(state["step"]), list(state["losses"]), float(state["seconds"])
        print(f"{name}: resuming from step {step} of {steps} ({state_path})")

    def save_state() -> None:
        atomic_torch_save({"signature": signature, "step": step, "model": net.state_dict(),
                           "optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict(),
                           "ema": ema.state_dict() if ema is not None else None, "generator": gen.get_state(),
                           "losses": losses, "seconds": seconds}, state_path)

    net.train().requires_grad_(True)
    bar = tqdm(total=steps, initial=min(step, steps), desc=f"train {name}", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        while step < steps:
            loss = batch_loss()
            check_finite(loss.detach(), f"the {name} training loss", f"step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(net.parameters(), float(settings["grad_clip"]))
            optimizer.step()
            lr_schedule.step()
            if ema is not None:
                ema.step(net.parameters())
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if on_step is not None:
                on_step(step, seconds + time.perf_counter() - t0, ema)
            if step % int(checkpoint_every) == 0 or step == steps:
                seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                save_state()
    except KeyboardInterrupt:
        seconds += time.perf_counter() - t0
        save_state()
        bar.close()
        raise ScoregeoError(f"training interrupted at step {step} of {steps} ({name}); the state is saved in "
                            f"{state_path} and the same command resumes it") from None
    bar.close()
    if ema is not None:
        ema.copy_to(net.parameters())
    net.eval().requires_grad_(False)
    tail = losses[-100:] or [float("nan")]
    return {"steps": step, "batch_size": int(settings["batch_size"]), "lr": float(settings["lr"]),
            "warmup": int(settings["warmup"]), "ema_decay": None if ema is None else float(ema_decay),
            "parameters": sum(p.numel() for p in net.parameters()), "train_seconds": round(seconds, 1),
            "final_loss": sum(tail) / len(tail)}
