"""scoregeo's Python API: geodesics of score-based metrics for a score model you bring.

    import scoregeo_cli as sg

    geo = sg.geodesic(score, a, b)             # a, b: (P, D) or (P, *shape) tensors
    geo.path, geo.energy, geo.length, geo.converged, geo.network_passes
    geo.at([0.25, 0.5])                        # the curve between the nodes
    ext = sg.extrapolate(geo, duration=0.5, steps=8)   # shooting past b

    score = sg.score_from_unet(unet, scheduler, t=400)   # a diffusers UNet at level t
    a = sg.noise(x0_a, eps, 400, scheduler)              # shared-noise endpoints
    frames = sg.denoise(unet, scheduler, geo.path, 400, steps=20)

The public names are ``geodesic``, ``extrapolate``, ``Geodesic``, ``Extrapolation``,
``score_from_unet``, ``score_from_conditional_unet``, ``noise``, ``denoise`` (all also at
``scoregeo_cli.<name>``) and the module of metric families ``scoregeo_cli.families``
(``scoregeo_cli.api.families``: ``Stein``, ``Pullback``, ``Conformal``, ``Euclidean``).
Everything else in the package is internal and may change. ``scoregeo run`` computes its geodesics and extrapolations through ``geodesic`` and
``extrapolate``.

Conventions. A score is any callable ``s(x)`` on a batch of points (B, *shape) returning a
tensor of the same shape, differentiable in x for every solver but ``fixed_point``. A path
of N nodes is parametrised by t in [0, 1] from a (t = 0) to b (t = 1); node j sits at
t = j / (N - 1). Energies are the discrete curve energy 1/2 int_0^1 g(x', x') dt (squared
length units of the data: a straight line in the flat metric costs |b - a|^2 / 2) and
lengths the continuous g-length int_0^1 sqrt(g(x', x')) dt. Tensors stay on their device
and in their dtype (float32 or float64); nothing is copied to the CPU. A bad argument raises
a ``ValueError`` whose one-sentence message starts with the argument's name.

Importing this module imports neither torch nor Hydra; torch is imported on the first call.

Modules: ``geodesics`` (``geodesic``, ``extrapolate``, their results and defaults),
``unets`` (diffusers UNets: ``score_from_unet``, ``score_from_conditional_unet``, ``noise``,
``denoise``), ``families`` (the metric families), ``score_fields`` (a callable as a score
field) and ``checks`` (the argument checks every public function uses).
"""

from scoregeo_cli.api.checks import ArgumentError  # noqa: F401
from scoregeo_cli.api.geodesics import (DEFAULT_LAM, METRIC_OPTIONS, METRICS, SHOOTING_OPTIONS, SOLVER_OPTIONS,
                                        SOLVERS, Extrapolation, Geodesic, extrapolate, geodesic)  # noqa: F401
from scoregeo_cli.api.score_fields import as_score_field  # noqa: F401
from scoregeo_cli.api.unets import denoise, noise, score_from_conditional_unet, score_from_unet  # noqa: F401

__all__ = ["geodesic", "extrapolate", "Geodesic", "Extrapolation", "score_from_unet",
           "score_from_conditional_unet", "noise", "denoise"]
