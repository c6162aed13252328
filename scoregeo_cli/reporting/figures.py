"""Figures: paths on synthetic manifolds (matplotlib, Agg backend), image strips and frames (PIL).
The one strip drawer of every image experiment is ``save_strip``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

COLORS = {"geodesic": "tab:red", "geodesic_unit": "tab:purple", "geodesic_pullback": "tab:orange",
          "geodesic_conformal": "tab:brown", "lerp": "tab:blue", "slerp": "tab:green"}


def _view(coords: torch.Tensor) -> torch.Tensor:
    """Screen coordinates of points (..., 2) or (..., 3): a plane is drawn as it is, 3-space
    by an orthographic camera at azimuth -60 and elevation 30 degrees (matplotlib's 3-D
    default); the last column of the 3-D result is the depth towards the viewer."""
    if coords.shape[-1] == 2:
        return coords
    az, el = math.radians(-60), math.radians(30)
    view = torch.tensor([[-math.sin(az), -math.sin(el) * math.cos(az), math.cos(el) * math.cos(az)],
                         [math.cos(az), -math.sin(el) * math.sin(az), math.cos(el) * math.sin(az)],
                         [0.0, math.cos(el), math.sin(el)]], dtype=coords.dtype)
    return coords @ view


def plot_synthetic_paths(manifold, a: torch.Tensor, b: torch.Tensor, paths: dict, extrapolated: dict,
                         out: Path, max_pairs: int = 4) -> None:
    """Draw paths in the manifold's own coordinates: its 3-space (spheres S^2, in any
    ambient dimension; seen from one direction, the near side of the reference cloud darker)
    or its plane (curves, S^1). Dashed: extrapolations. Drawn on a plain 2-D axes, without
    pyplot: a 3-D axes costs several times more per figure, which a sweep pays per run."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    k = manifold.draw_coords(a[:1]).shape[-1]
    if k not in (2, 3):
        return  # nothing faithful to draw for spheres of dimension > 2
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ref = _view(manifold.draw_coords(manifold.sample(1200, torch.Generator().manual_seed(0)))).numpy()
    near = ref[:, 2] >= 0 if k == 3 else np.ones(len(ref), dtype=bool)  # a plane has no far side
    ax.scatter(ref[~near, 0], ref[~near, 1], s=3, c="0.9", linewidths=0)
    ax.scatter(ref[near, 0], ref[near, 1], s=3, c="0.75", linewidths=0)
    for p in range(min(max_pairs, a.shape[0])):
        truth = _view(manifold.draw_coords(manifold.geodesic(a[p], b[p], 200))).numpy()
        ax.plot(truth[:, 0], truth[:, 1], c="k", lw=1)
        for name, path in paths.items():
            xy = _view(manifold.draw_coords(path[p])).numpy()
            ax.plot(xy[:, 0], xy[:, 1], "o-", ms=2, c=COLORS.get(name))
        for name, path in extrapolated.items():
            xy = _view(manifold.draw_coords(path[p])).numpy()
            ax.plot(xy[:, 0], xy[:, 1], "--", c=COLORS.get(name))
    # legend keys without markers: a marker key costs a third of the figure's drawing time
    keys = [Line2D([], [], c="k", lw=1, label="true geodesic")]
    keys += [Line2D([], [], c=COLORS.get(name), label=name) for name in paths]
    ax.legend(handles=keys, loc="upper right", fontsize=7)
    ax.set_aspect("equal")
    if k == 3:
        ax.set_axis_off()  # screen coordinates: ticks would mean nothing
        fig.subplots_adjust(0.02, 0.02, 0.98, 0.98)
    else:
        fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, pil_kwargs={"compress_level": 1})  # PNG's default level 6: 5x the time


def to_uint8(images: torch.Tensor):
    """(..., C, H, W) in [0, 1] -> (..., H, W, C) uint8 numpy array (rounded; NaN drawn white)."""
    return (images.nan_to_num(1.0).clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def save_strip(rows: dict[str, torch.Tensor], path: Path, split: int | None = None, scale: int = 1,
               label_width: int = 84, gap: int = 6, row_gap: int = 2) -> None:
    """Image strips: one row of frames per entry of ``rows`` ((F, C, H, W) in [0, 1], C = 1
    or 3; rows may be shorter, left-aligned), labelled on the left, frames drawn ``scale``
    times larger (nearest neighbour), a white gap after column ``split`` (interpolation |
    extrapolation). NaN frames (a failed extrapolation) are drawn white. Saved as a PNG."""
    from PIL import Image, ImageDraw

    h, w = (s * scale for s in next(iter(rows.values())).shape[-2:])
    width = max(len(v) for v in rows.values())
    x_of = [label_width + c * w + (gap if split is not None and c >= split else 0) for c in range(width)]
    canvas = Image.new("RGB", (x_of[-1] + w, len(rows) * (h + row_gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, frames) in enumerate(rows.items()):
        y = r * (h + row_gap)
        draw.text((4, y + h // 2 - 6), name, fill="black")
        for c, frame in enumerate(to_uint8(frames.expand(-1, 3, -1, -1))):
            canvas.paste(Image.fromarray(frame).resize((w, h), Image.NEAREST), (x_of[c], y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def save_frames(frames: dict[str, torch.Tensor], folder: Path, name: str) -> None:
    """Every frame of one pair as ``folder/<method>/<name>/<i:02d>.png``; frames (F, C, H, W) in [0, 1]."""
    from PIL import Image

    for method, sequence in frames.items():
        out = folder / method / name
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_uint8(sequence)):
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(out / f"{i:02d}.png")
