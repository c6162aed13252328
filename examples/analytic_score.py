"""Geodesics of the Stein metric g = I + lam s s^T for an analytic score, from Python.

The density is a blurred ring in the plane, p(x) ~ exp(-(|x| - 1)^2 / (2 sigma^2)), whose
score s(x) = -(|x| - 1) / sigma^2 * x / |x| points back to the ring. Moving along s is
expensive under the metric, so its geodesics follow the ring where the straight line (LERP)
cuts across it; shooting along the geodesic equation continues them around the ring.

    python examples/analytic_score.py [--lam 1000] [--sigma 0.15] [--nodes 16]
"""

from __future__ import annotations

import argparse
import math

import torch

import scoregeo_cli as sg


def ring_score(sigma: float):
    def score(x: torch.Tensor) -> torch.Tensor:  # (B, 2) -> (B, 2)
        r = x.norm(dim=-1, keepdim=True)
        return -(r - 1) / sigma**2 * x / r
    return score


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lam", type=float, default=1000.0)
    parser.add_argument("--sigma", type=float, default=0.15)
    parser.add_argument("--nodes", type=int, default=16)
    args = parser.parse_args(argv)

    score = ring_score(args.sigma)
    start = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)    # angles of a (radians)
    arc = torch.tensor([1.0, 2.0, 2.8], dtype=torch.float64)      # angle from a to b
    on_ring = lambda angle: torch.stack([angle.cos(), angle.sin()], dim=1)  # noqa: E731
    a, b = on_ring(start), on_ring(start + arc)                   # (P, 2)

    geo = sg.geodesic(score, a, b, lam=args.lam, nodes=args.nodes)
    ext = sg.extrapolate(geo, duration=0.5, steps=8)
    t = torch.linspace(0, 1, args.nodes, dtype=torch.float64)[:, None]
    lerp = torch.lerp(a[:, None], b[:, None], t)                  # (P, N, 2)

    print(f"{len(a)} geodesics of g = I + {args.lam:g} s s^T, {args.nodes} nodes, "
          f"{geo.network_passes} score passes, {int(geo.converged.sum())}/{len(a)} converged")
    print(f"{'arc':>6} {'off the ring: geodesic':>23} {'LERP':>6} {'g-length: geodesic':>19} {'LERP':>7} "
          f"{'shot to t = 1.5: angle':>23} {'on the ring':>12}")
    for p in range(len(a)):
        end = math.degrees(math.atan2(float(ext.path[p, -1, 1]), float(ext.path[p, -1, 0]))) % 360
        expected = math.degrees(float(start[p] + arc[p] * ext.t[-1])) % 360
        print(f"{math.degrees(arc[p]):5.1f}° {float((geo.path[p].norm(dim=-1) - 1).abs().max()):23.4f} "
              f"{float((lerp[p].norm(dim=-1) - 1).abs().max()):6.3f} {float(geo.length[p]):19.3f} "
              f"{float(geo.metric.length(lerp[p:p + 1])[0]):7.1f} {end:22.1f}° {expected:11.1f}°")
    return {"geodesic": geo, "extrapolation": ext, "lerp": lerp}


if __name__ == "__main__":
    main()
