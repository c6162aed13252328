"""Noise-level diagnostics of a score field near its manifold (science.md section 4).

For points x perturbed off the manifold and each noise level sigma:
  * ``angle_deg``: the angle between s(x) and P(x) - x, the direction to the nearest
    manifold point (0 degrees: the score points straight back to the manifold). This is
    not the paper's appendix quantity, which is the angle to the outward normal of the
    sphere at x (180 degrees ideal) for points on both sides: on S^2 the paper's angle is
    about 108 / 174 / 180 degrees at sigma 0.1 / 0.3 / >= 0.5 where this one is 13 / 80 /
    85 degrees: the two answer different questions;
  * ``residual``: |sigma^2 s(x) + (x - P(x))|, which "When Scores Learn Geometry"
    predicts to vanish as O(sigma^2) (slope 2 on log-log axes);
  * ``ddpm_t``: the level of the 1000-step linear DDPM schedule (1e-4 to 0.02) whose noise
    sqrt((1 - abar_t) / abar_t), relative to the signal, equals sigma; the paper's t = 400
    is sigma of about 2.04 in these units on that schedule, and about 1.16 on Stable
    Diffusion's scaled-linear schedule (0.00085 to 0.012).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from scoregeo_cli.build import build_score, instantiate
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io import progress
from scoregeo_cli.evaluation.rows import row
from scoregeo_cli.tasks.synthetic import validate_manifold


def ddpm_level(sigma: float, beta_start: float = 1e-4, beta_end: float = 0.02, steps: int = 1000) -> int:
    """The DDPM linear-schedule level whose noise-to-signal ratio is closest to sigma."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    return int((((1 - abar) / abar).sqrt() - sigma).abs().argmin())


class NoiseDiagnosticsTask:
    """Sweep ``eval.sigmas`` over one set of perturbed points; one method per sigma."""

    table_metrics = ["angle_deg", "residual", "ddpm_t"]
    table_row_header = "sigma"  # the printed table's rows are noise levels

    def prepare(self, cfg: DictConfig):
        """Every refusal before anything runs; returns the manifold."""
        validate_manifold(cfg)
        sigmas = [float(s) for s in cfg.eval.sigmas]
        if not sigmas or min(sigmas) <= 0:
            raise ScoregeoError(f"eval.sigmas must be a non-empty list of positive levels, got {sigmas}")
        if int(cfg.eval.points) < 1:
            raise ScoregeoError(f"eval.points must be at least 1, got {cfg.eval.points}")
        if not cfg.eval.perturbation > 0:
            raise ScoregeoError(f"eval.perturbation must be positive, got {cfg.eval.perturbation}")
        manifold = instantiate(cfg.dataset)
        build_score(OmegaConf.merge(cfg, {"score": {"sigma": sigmas[0]}}), manifold=manifold)
        return manifold

    def run(self, cfg: DictConfig, run_dir: Path, prepared=None) -> list[dict]:
        manifold = prepared if prepared is not None else self.prepare(cfg)
        sigmas = [float(s) for s in cfg.eval.sigmas]
        generator = torch.Generator().manual_seed(int(cfg.seed))
        n = int(cfg.eval.points)
        on = manifold.sample(n, generator)
        noise = torch.randn(on.shape, generator=generator, dtype=on.dtype)
        x = on + cfg.eval.perturbation * noise / manifold.ambient_dim**0.5
        to_manifold = manifold.project(x) - x

        rows, curves = [], {"sigma": sigmas, "angle_deg": [], "residual": []}
        for sigma in progress.steps(sigmas, desc="noise levels", unit="level"):
            score = build_score(OmegaConf.merge(cfg, {"score": {"sigma": sigma}}), manifold=manifold)
            with torch.no_grad():
                s = score(x)
            cos = (s * to_manifold).sum(-1) / (s.norm(dim=-1) * to_manifold.norm(dim=-1)).clamp_min(1e-300)
            angle = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
            residual = (sigma**2 * s - to_manifold).norm(dim=-1)
            name = f"sigma={sigma:g}"
            level = ddpm_level(sigma)
            for i in range(n):
                rows += [row(i, name, "angle_deg", angle[i]), row(i, name, "residual", residual[i]),
                         row(i, name, "ddpm_t", level)]
            curves["angle_deg"].append(float(angle.mean()))
            curves["residual"].append(float(residual.mean()))
            print(f"sigma={sigma:<6g} ddpm_t={level:<4d} angle={curves['angle_deg'][-1]:7.2f} deg  "
                  f"residual={curves['residual'][-1]:.3e}")
        _plot(curves, run_dir / "noise_diagnostics.png", n)
        return rows


def _plot(curves: dict, out: Path, points: int | None = None) -> None:
    """Both diagnostics against sigma, with a title, labelled axes and legends below the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = f"mean over {points} points" if points else "mean over the points"
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.2), layout="constrained")
    left.semilogx(curves["sigma"], curves["angle_deg"], "o-", label=f"measured ({mean})")
    left.set(xlabel="noise level sigma", ylabel="angle between s(x) and P(x) - x [deg]",
             title="score direction (0: straight to the manifold)")
    right.loglog(curves["sigma"], curves["residual"], "o-", label=f"measured ({mean})")
    s0, r0 = curves["sigma"][0], curves["residual"][0]
    right.loglog(curves["sigma"], [r0 * (s / s0) ** 2 for s in curves["sigma"]], "k--",
                 label="slope 2 (O(sigma^2)), through the first point")
    right.set(xlabel="noise level sigma", ylabel="|sigma^2 s(x) + (x - P(x))|", title="geometry residual")
    for ax in (left, right):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, frameon=False)
    fig.suptitle("Noise-level diagnostics of the score near the manifold (x perturbed off it, P(x) its projection)",
                 fontsize=10)
    fig.savefig(out, dpi=110)
    plt.close(fig)
