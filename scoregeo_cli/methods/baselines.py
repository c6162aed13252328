"""Baselines: straight line (LERP), spherical (SLERP) and LERP of the clean data (pixel_lerp)."""

from __future__ import annotations

import torch

from scoregeo_cli.geometry.shooting import linear_extrapolation
from scoregeo_cli.geometry.solvers import straight_path
from scoregeo_cli.methods.base import Method, MethodPath, Plan
from scoregeo_cli.spaces.base import Endpoints


def lerp(a: torch.Tensor, b: torch.Tensor, nodes: int) -> torch.Tensor:
    """(P, D) endpoints -> (P, nodes, D) evenly spaced on the segment."""
    return straight_path(a, b, nodes)


def slerp_at(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation about the origin at parameters t (T,): (P, D) -> (P, T, D).

    x(t) = sin((1-t) W)/sin W a + sin(t W)/sin W b with W the angle between a and b, so
    norms are interpolated along the arc as Gaussian-noise latents expect. t outside
    [0, 1] continues the arc. Falls back to the straight line where a and b are
    (anti)parallel within 1e-7 rad.
    """
    t = t.to(a)[None, :, None]
    cos = ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)).clamp(-1, 1)
    omega = torch.arccos(cos)[:, None, None]
    sin = torch.sin(omega)
    safe = sin.abs() > 1e-7
    sin = torch.where(safe, sin, torch.ones_like(sin))
    wa = torch.where(safe, torch.sin((1 - t) * omega) / sin, 1 - t)
    wb = torch.where(safe, torch.sin(t * omega) / sin, t)
    return wa * a[:, None] + wb * b[:, None]


def slerp(a: torch.Tensor, b: torch.Tensor, nodes: int) -> torch.Tensor:
    """(P, D) endpoints -> (P, nodes, D) evenly spaced in angle on the arc about the origin."""
    return slerp_at(a, b, torch.linspace(0, 1, nodes, dtype=a.dtype))


class Lerp(Method):
    """The straight line between the ends where paths live; continued straight past b."""

    def __call__(self, ends: Endpoints, plan: Plan, generator: torch.Generator) -> MethodPath:
        ext = linear_extrapolation(ends.a, ends.b, plan.shooter.duration, plan.shooter.steps)
        return MethodPath(lerp(ends.a, ends.b, plan.nodes), ext)


class Slerp(Method):
    """The arc about the origin between the ends (Gaussian-noise latents); the arc continues past b."""

    def __call__(self, ends: Endpoints, plan: Plan, generator: torch.Generator) -> MethodPath:
        return MethodPath(slerp(ends.a, ends.b, plan.nodes), slerp_at(ends.a, ends.b, 1 + plan.tau))


class PixelLerp(Method):
    """The no-model baseline: LERP of the clean encoded data (pixels), continued straight."""

    def __call__(self, ends: Endpoints, plan: Plan, generator: torch.Generator) -> MethodPath:
        a, b = ends.clean_a, ends.clean_b
        ext = linear_extrapolation(a, b, plan.shooter.duration, plan.shooter.steps)
        return MethodPath(lerp(a, b, plan.nodes), ext, at_level=False)
