"""Figures a run draws: a title, labelled axes, and a legend that names every style (the
dots are nodes, dashed lines extrapolations) and sits beside the data, not on it."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from scoregeo_cli.tasks.synthetic import SyntheticTask


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures saved while a test runs."""
    figures = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


@pytest.mark.parametrize("overrides, title", [
    (["experiment=sphere"], "Paths on the sphere S² of radius 1 in R³: 2 of 2 pairs"),
    (["experiment=sphere", "dataset.ambient_dim=10"], "Paths on the sphere S² of radius 1 in R¹⁰: 2 of 2 pairs"),
    (["experiment=ellipse", "dataset.ambient_dim=10"], "Paths on the ellipse (semi-axes 1.5, 0.75) in R¹⁰: 2 of 2 pairs"),
])
def test_paths_figure_is_titled_labelled_and_explained(overrides, title, compose_cfg, tmp_path, drawn):
    cfg = compose_cfg([*overrides, "n_pairs=2"])
    SyntheticTask().run(cfg, tmp_path)
    assert (tmp_path / "paths.png").stat().st_size > 0
    (fig,) = drawn
    (ax,) = fig.axes
    assert ax.get_title() == title
    assert ax.get_xlabel() and (ax.get_ylabel() or "u₁, u₂, u₃" in ax.get_xlabel())
    (legend,) = fig.legends
    keys = [text.get_text() for text in legend.get_texts()]
    assert keys == ["true geodesic", "geodesic", "lerp", "slerp", "nodes of a path", keys[5], "extrapolation past b"]
    assert keys[5] in ("the sphere (samples; pale: far side)", "the curve (samples)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # lay out and draw again at one resolution
    canvas.draw()
    renderer = canvas.get_renderer()
    assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))  # beside the data


def test_rotated_digit_strips_label_each_column_with_its_angle_and_have_a_title(compose_cfg, tmp_path):
    """A strip of rotated digits: a title (which pair, the rotation), each column's angle
    above it (extrapolated columns past theta_b too), then one row per method."""
    import numpy as np
    import torch
    from PIL import Image

    from scoregeo_cli.data.rotated_mnist import RotatedDigits
    from scoregeo_cli.methods import Plan
    from scoregeo_cli.reporting.figures import save_strip
    from scoregeo_cli.tasks.images import strip_labels

    cfg = compose_cfg(["experiment=rotated_mnist", "dataset.source=digits", "n_pairs=1"])
    dataset = RotatedDigits(source="digits")
    dataset.select(1, torch.Generator().manual_seed(0))
    theta_a, theta_b = dataset.records()[0]["theta_a"], dataset.records()[0]["theta_b"]
    plan = Plan(5, None, None, type("Shooter", (), {"steps": 2, "duration": 0.5})(), extrapolate=True)
    fractions = torch.linspace(0, 1, 5, dtype=torch.float64)
    columns, title = strip_labels(dataset, 0, fractions, plan, cfg)
    assert len(columns) == 5 + 2 and columns[0] == f"{theta_a:.0f}°" and columns[4] == f"{theta_b:.0f}°"
    assert all(c.endswith("°") for c in columns) and float(columns[-1][:-1]) > theta_b
    assert title.startswith("rotated_mnist pair_00 (seed 0, t = 400): rotation from ") and "extrapolation" in title
    frames = {name: torch.rand(7, 1, 28, 28) for name in ("truth", "geodesic", "lerp")}
    save_strip(frames, tmp_path / "labelled.png", split=5, scale=2, columns=columns, title=title)
    save_strip(frames, tmp_path / "bare.png", split=5, scale=2)
    labelled, bare = (np.asarray(Image.open(tmp_path / f"{n}.png").convert("L")) for n in ("labelled", "bare"))
    header = labelled.shape[0] - bare.shape[0]
    assert header >= 24 and (labelled[:header] < 128).any()  # two lines of dark text above the frames
    assert (labelled[header:, : bare.shape[1]] == bare).all()


def test_strip_labels_are_never_cut_by_the_frames(tmp_path):
    """A row name longer than the default label column (``geodesic_conformal``) widens the
    column: the frames start right of the whole name, so no frame is pasted over its text."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    from scoregeo_cli.reporting.figures import save_strip

    frames = {name: torch.zeros(3, 1, 28, 28) for name in ("truth", "geodesic_conformal")}  # black frames
    save_strip(frames, tmp_path / "strip.png")
    image = np.asarray(Image.open(tmp_path / "strip.png").convert("L"))
    text = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength("geodesic_conformal", font=ImageFont.load_default()))
    first_frame = int(np.flatnonzero((image[28 + 2: 2 * 28 + 2] == 0).all(axis=0))[0])  # first all-black column
    assert first_frame >= 4 + text, (first_frame, text)
    assert image.shape[1] == first_frame + 3 * 28
