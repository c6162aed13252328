"""A noise-conditional MLP score, trained by denoising score matching.

The network predicts the noise: eps_theta(x, sigma) for x = y + sigma eps, y on the
manifold; the score is s(x) = -eps_theta(x, sigma) / sigma. Training draws fresh manifold
samples every step and log-uniform noise levels in [sigma_min, sigma_max], and minimises
E |eps_theta(y + sigma eps, sigma) - eps|^2 (the DSM loss, weighted by sigma^2).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from scoregeo_cli.build import instantiate
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.scores.base import ScoreField


class NoiseConditionalMLP(nn.Module):
    """eps_theta(x, sigma): (B, D), (B,) -> (B, D); sigma enters as log(sigma) features."""

    def __init__(self, dim: int, hidden: int = 256, layers: int = 4):
        super().__init__()
        self.dim, self.hidden, self.layers = dim, hidden, layers
        blocks: list[nn.Module] = [nn.Linear(dim + 2, hidden), nn.SiLU()]
        for _ in range(layers - 1):
            blocks += [nn.Linear(hidden, hidden), nn.SiLU()]
        blocks.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = torch.log(sigma).reshape(-1, 1).expand(x.shape[0], 1).to(x)
        # inputs scaled to unit variance whatever sigma (preconditioning)
        scale = 1 / torch.sqrt(1 + sigma.reshape(-1, 1).to(x) ** 2)
        return self.net(torch.cat([x * scale, log_sigma, log_sigma**2 / 10], dim=-1))


class MLPScore(ScoreField):
    """s(x) = -eps_theta(x, sigma) / sigma at a fixed sigma."""

    def __init__(self, model: NoiseConditionalMLP, sigma: float, chunk_size: int | None = None):
        super().__init__(model.dim, chunk_size)
        self.model = model.double().eval()
        self.sigma = float(sigma)
        self._sigma = torch.tensor([self.sigma], dtype=torch.float64)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return -self.model(x, self._sigma) / self.sigma


def load_mlp_score(manifold, checkpoint: str, sigma: float, chunk_size: int | None = None) -> MLPScore:
    """Load a checkpoint written by ``train_mlp`` as a score field at level ``sigma``."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ScoregeoError(f"score.checkpoint '{checkpoint}' does not exist; train one with "
                            "`scoregeo train score=mlp experiment=...` and pass the path it prints")
    if not sigma > 0:
        raise ScoregeoError(f"score.sigma must be positive, got {sigma}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = NoiseConditionalMLP(**state["architecture"])
        model.load_state_dict(state["model"])
    except Exception as err:  # a truncated or foreign file
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ScoregeoError(f"score.checkpoint '{checkpoint}' is not a scoregeo MLP checkpoint ({cause})") from None
    if model.dim != manifold.ambient_dim:
        raise ScoregeoError(f"score.checkpoint was trained in dimension {model.dim}, "
                            f"but dataset.ambient_dim is {manifold.ambient_dim}")
    return MLPScore(model, sigma, chunk_size)


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
