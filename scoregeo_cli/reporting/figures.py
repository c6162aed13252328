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


SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def manifold_title(manifold) -> str:
    """'the sphere S² of radius 1 in R³', 'the ellipse (semi-axes 2, 1) in R¹⁰', ..."""
    space = f"R{str(manifold.ambient_dim).translate(SUPERSCRIPTS)}"
    if hasattr(manifold, "radius"):
        d = str(manifold.intrinsic_dim).translate(SUPERSCRIPTS)
        return f"the sphere S{d} of radius {manifold.radius:g} in {space}"
    a, b = manifold.semi_axes
    return (f"the circle of radius {a:g} in {space}" if a == b
            else f"the ellipse (semi-axes {a:g}, {b:g}) in {space}")


def plot_synthetic_paths(manifold, a: torch.Tensor, b: torch.Tensor, paths: dict, extrapolated: dict,
                         out: Path, max_pairs: int = 4) -> None:
    """Draw paths in the manifold's own coordinates (u1, u2, u3: an orthonormal basis of the
    subspace it lies in): its 3-space (spheres S^2, in any ambient dimension; seen from one
    direction, the near side of the reference cloud darker, the axes drawn as a labelled
    triad) or its plane (curves, S^1). Dots: the nodes of each path; dashed: extrapolations
    past b. Title, labelled axes and a legend of every style beside the data. Drawn on a
    plain 2-D axes, without pyplot: a 3-D axes costs several times more per figure, which a
    sweep pays per run."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    k = manifold.draw_coords(a[:1]).shape[-1]
    if k not in (2, 3):
        return  # nothing faithful to draw for spheres of dimension > 2
    fig = Figure(figsize=(7.8, 4.8))
    ax = fig.add_axes((0, 0, 1, 1))  # placed below, once the height is known (no layout engine:
    # it would triple the time savefig takes, paid by every run of a sweep)
    ref = _view(manifold.draw_coords(manifold.sample(1200, torch.Generator().manual_seed(0)))).numpy()
    near = ref[:, 2] >= 0 if k == 3 else np.ones(len(ref), dtype=bool)  # a plane has no far side
    ax.scatter(ref[~near, 0], ref[~near, 1], s=3, c="0.9", linewidths=0)
    ax.scatter(ref[near, 0], ref[near, 1], s=3, c="0.75", linewidths=0)
    shown = min(max_pairs, a.shape[0])
    for p in range(shown):
        truth = _view(manifold.draw_coords(manifold.geodesic(a[p], b[p], 200))).numpy()
        ax.plot(truth[:, 0], truth[:, 1], c="k", lw=1)
        for name, path in paths.items():
            xy = _view(manifold.draw_coords(path[p])).numpy()
            ax.plot(xy[:, 0], xy[:, 1], "o-", ms=2, c=COLORS.get(name))
        for name, path in extrapolated.items():
            xy = _view(manifold.draw_coords(path[p])).numpy()
            ax.plot(xy[:, 0], xy[:, 1], "--", c=COLORS.get(name))
    if k == 3:
        _triad(ax, ref)
    ax.set_aspect("equal", adjustable="datalim")  # the axes keep their box: no label is cut
    box = ax.dataLim  # the figure as tall as the drawing needs beside a legend column
    width, left, right, bottom, top = 8.0, 0.75, 2.65, (0.7 if k == 3 else 0.55), 0.35
    height = min(5.6, max(3.4, (width - left - right) * box.height / max(box.width, 1e-9) + bottom + top))
    fig.set_size_inches(width, height)
    ax.set_position((left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height))
    if k == 3:
        ax.set_xlabel("the sphere's 3-D subspace, axes u₁, u₂, u₃ as drawn\n"
                      "(orthographic view from azimuth −60°, elevation 30°)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        cloud = "the sphere (samples; pale: far side)"
    else:
        ax.set_xlabel("u₁ (axis of the curve's plane)")
        ax.set_ylabel("u₂ (axis of the curve's plane)")
        cloud = "the curve (samples)"
    ax.set_title(f"Paths on {manifold_title(manifold)}: {shown} of {a.shape[0]} pairs", fontsize=10)
    # method keys without markers (a marker key costs a third of the figure's drawing time);
    # one key says what the dots are
    keys = [Line2D([], [], c="k", lw=1, label="true geodesic")]
    keys += [Line2D([], [], c=COLORS.get(name), label=name) for name in paths]
    keys += [Line2D([], [], ls="", marker="o", ms=3, c="0.35", label="nodes of a path"),
             Line2D([], [], ls="", marker="o", ms=3, c="0.75", label=cloud)]
    if extrapolated:
        keys.append(Line2D([], [], ls="--", c="0.35", label="extrapolation past b"))
    fig.legend(handles=keys, loc="upper left", bbox_to_anchor=(1 - (right - 0.1) / width, 1 - top / height),
               fontsize=8, frameon=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, pil_kwargs={"compress_level": 1})  # PNG's default level 6: 5x the time


def _triad(ax, ref: np.ndarray) -> None:
    """The subspace's axes u1, u2, u3 as labelled arrows, below the drawing on the left."""
    span = ref[:, :2].max(0) - ref[:, :2].min(0)
    origin = ref[:, :2].min(0) + np.array([0.0, -0.12 * span[1]])
    axes = _view(torch.eye(3, dtype=torch.float64)).numpy()[:, :2] * 0.18 * span.max()
    for (dx, dy), name in zip(axes, ("u₁", "u₂", "u₃")):
        ax.annotate("", xy=(origin[0] + dx, origin[1] + dy), xytext=origin,
                    arrowprops={"arrowstyle": "->", "color": "0.3", "lw": 0.8})
        ax.text(origin[0] + 1.25 * dx, origin[1] + 1.25 * dy, name, fontsize=8, color="0.3",
                ha="center", va="center")
    ax.update_datalim(np.vstack([origin, origin + 1.4 * axes]))  # room for the triad


def to_uint8(images: torch.Tensor):
    """(..., C, H, W) in [0, 1] -> (..., H, W, C) uint8 numpy array (rounded; NaN drawn white)."""
    return (images.nan_to_num(1.0).clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def save_strip(rows: dict[str, torch.Tensor], path: Path, split: int | None = None, scale: int = 1,
               label_width: int = 84, gap: int = 6, row_gap: int = 2, columns: list[str] | None = None,
               title: str | None = None) -> None:
    """Image strips: one row of frames per entry of ``rows`` ((F, C, H, W) in [0, 1], C = 1
    or 3; rows may be shorter, left-aligned), labelled on the left, frames drawn ``scale``
    times larger (nearest neighbour), a white gap after column ``split`` (interpolation |
    extrapolation). ``columns`` labels each column above its frames (an angle, a fraction of
    the path) and ``title`` heads the strip. NaN frames (a failed extrapolation) are drawn
    white. The label column is ``label_width`` pixels wide, wider where a row's name needs it.
    Saved as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    line = 14  # pixels per line of text
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(label_width, *(int(measure.textlength(name, font=font)) + 8 for name in rows))
    h, w = (s * scale for s in next(iter(rows.values())).shape[-2:])
    width = max(len(v) for v in rows.values())
    x_of = [label_width + c * w + (gap if split is not None and c >= split else 0) for c in range(width)]
    top = (line if title else 0) + (line if columns else 0)
    title_width = int(measure.textlength(title, font=font)) + 8 if title else 0
    canvas = Image.new("RGB", (max(x_of[-1] + w, title_width), top + len(rows) * (h + row_gap)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    if columns:
        y = (line if title else 0) + 2
        for c, text in enumerate(columns[:width]):
            draw.text((x_of[c] + w // 2, y), text, fill="black", font=font, anchor="ma")
    for r, (name, frames) in enumerate(rows.items()):
        y = top + r * (h + row_gap)
        draw.text((4, y + h // 2 - 6), name, fill="black", font=font)
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
