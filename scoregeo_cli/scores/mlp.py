"""A noise-conditional MLP score, trained by denoising score matching
(``scoregeo_cli.training.mlp``).

The network predicts the noise: eps_theta(x, sigma) for x = y + sigma eps, y on the
manifold; the score is s(x) = -eps_theta(x, sigma) / sigma.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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
