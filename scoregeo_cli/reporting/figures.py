"""Figures of paths on synthetic manifolds (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

COLORS = {"geodesic": "tab:red", "lerp": "tab:blue", "slerp": "tab:green"}


def plot_synthetic_paths(manifold, a: torch.Tensor, b: torch.Tensor, paths: dict, extrapolated: dict,
                         out: Path, max_pairs: int = 4) -> None:
    """Draw paths in the manifold's own coordinates: its 3-space (spheres S^2, in any
    ambient dimension) or its plane (curves, S^1). Dashed: extrapolations."""
    k = manifold.draw_coords(a[:1]).shape[-1]
    if k not in (2, 3):
        return  # nothing faithful to draw for spheres of dimension > 2
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="3d" if k == 3 else None)
    ref = manifold.draw_coords(manifold.sample(3000, torch.Generator().manual_seed(0)))
    ax.scatter(*ref.T.numpy(), s=1, c="0.85", alpha=0.4)
    for p in range(min(max_pairs, a.shape[0])):
        truth = manifold.draw_coords(manifold.geodesic(a[p], b[p], 200))
        ax.plot(*truth.T.numpy(), c="k", lw=1, label="true geodesic" if p == 0 else None)
        for name, path in paths.items():
            xy = manifold.draw_coords(path[p])
            ax.plot(*xy.T.numpy(), "o-", ms=2, c=COLORS.get(name), label=name if p == 0 else None)
        for name, path in extrapolated.items():
            xy = manifold.draw_coords(path[p])
            ax.plot(*xy.T.numpy(), "--", c=COLORS.get(name))
    ax.legend(loc="upper right", fontsize=7)
    if k == 2:
        ax.set_aspect("equal")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
