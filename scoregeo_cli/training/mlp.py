"""``scoregeo train score=mlp``: the noise-conditional MLP score trained by denoising score
matching on a synthetic manifold.

Training draws fresh manifold samples every step and log-uniform noise levels in
[sigma_min, sigma_max], and minimises E |eps_theta(y + sigma eps, sigma) - eps|^2 (the DSM
loss, weighted by sigma^2). The checkpoint is read by ``scoregeo_cli.scores.mlp``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from scoregeo_cli.build import instantiate
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.scores.mlp import NoiseConditionalMLP


def train_mlp(cfg: DictConfig, out_dir: Path, steps: int = 4000, batch_size: int = 512, lr: float = 2e-3,
              hidden: int = 256, layers: int = 4, sigma_min: float = 0.02, sigma_max: float = 1.0) -> Path:
    """Train on fresh samples of ``cfg.dataset``; save ``out_dir/mlp.pt``; return its path."""
    if steps < 1 or batch_size < 1 or not lr > 0 or not 0 < sigma_min < sigma_max:
        raise ScoregeoError("score.train needs steps >= 1, batch_size >= 1, lr > 0 and 0 < sigma_min < sigma_max")
    torch.manual_seed(int(cfg.seed))
    manifold = instantiate(cfg.dataset)
    generator = torch.Generator().manual_seed(int(cfg.seed) + 1)
    model = NoiseConditionalMLP(manifold.ambient_dim, hidden, layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    log_lo, log_hi = math.log(sigma_min), math.log(sigma_max)
    start, losses = time.perf_counter(), []
    bar = tqdm(range(steps), desc="train mlp", unit="step")
    for step in bar:
        y = manifold.sample(batch_size, generator).float()
        sigma = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(batch_size, generator=generator))
        eps = torch.randn(y.shape, generator=generator)
        loss = ((model(y + sigma[:, None] * eps, sigma) - eps) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
        if step % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "mlp.pt"
    final = sum(losses[-200:]) / len(losses[-200:])
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(),
                "architecture": {"dim": manifold.ambient_dim, "hidden": hidden, "layers": layers},
                "train": {"steps": steps, "final_loss": final, "seconds": time.perf_counter() - start}}, tmp)
    tmp.replace(path)
    print(f"trained {steps} steps in {time.perf_counter() - start:.0f} s, final loss {final:.4f}")
    return path
