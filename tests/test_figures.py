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
