"""Initial-value geodesics: shoot along the geodesic equation of the metric.

The state (x, x') is integrated with torchdiffeq; every right-hand-side evaluation costs
one batched score evaluation (plus its first and second backward passes, see
``SteinMetric.acceleration``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS  # the method table odeint dispatches on

from scoregeo_cli.errors import NonFiniteError, ScoregeoError, check_finite
from scoregeo_cli.geometry.base import Metric


ADAPTIVE = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")


@dataclass
class ShootingResult:
    """path: (P, steps+1, D) points at equal parameter spacing, the start included; all NaN
    when the shot failed, and then ``error`` says why (budget spent, NaN, step underflow)."""

    path: torch.Tensor
    score_evals: int
    seconds: float
    error: str | None = None


class _BudgetSpent(Exception):
    pass


def end_tangent(path: torch.Tensor) -> torch.Tensor:
    """Velocity at the last node of curves (P, N+1, D) parametrised on [0, 1].

    Second-order one-sided difference N (3 x_N - 4 x_{N-1} + x_{N-2}) / 2: a chord
    direction (first order) is off the tangent by half a segment's turning angle.
    """
    n = path.shape[1] - 1
    return n * (3 * path[:, -1] - 4 * path[:, -2] + path[:, -3]) / 2


class GeodesicShooter:
    """Integrate x'' = a(x, x') from (x0, v0) for parameter time ``duration``.

    Args:
        duration: how far to shoot, in the parameter of the interpolating curve (which
            spans [0, 1]); 0.5 continues for about half the interpolation's length.
        steps: output points after the start (> 0).
        method: a torchdiffeq method: adaptive ("dopri5", the default: the equation is stiff
            near the manifold when sigma is small) or fixed-grid ("rk4", "midpoint", ...).
        substeps: integration steps per output interval for fixed-grid methods.
        rtol, atol: tolerances of adaptive methods.
        max_evals: score evaluations allowed to one shot (>= 1). The geodesic equation is
            stiff where lam |s|^2 is large and the score's Jacobian is far from symmetric
            (learned scores); an adaptive method may then take thousands of steps. A shot
            that spends its budget, meets NaN or underflows its step is not an error of the
            run: its path is NaN and ``error`` says why.
    """

    def __init__(self, duration: float = 0.5, steps: int = 8, method: str = "dopri5", substeps: int = 2,
                 rtol: float = 1e-4, atol: float = 1e-6, max_evals: int = 1000):
        if not duration > 0:
            raise ScoregeoError(f"extrapolate.duration must be positive, got {duration}")
        if int(steps) < 1 or int(substeps) < 1:
            raise ScoregeoError("extrapolate.steps and extrapolate.substeps must be at least 1")
        if method not in SOLVERS:
            raise ScoregeoError(f"extrapolate.method must be a torchdiffeq method ({', '.join(sorted(SOLVERS))}), got '{method}'")
        if int(max_evals) < 1:
            raise ScoregeoError(f"extrapolate.max_evals must be at least 1, got {max_evals}")
        if not (rtol > 0 and atol > 0):
            raise ScoregeoError(f"extrapolate.rtol and extrapolate.atol must be positive, got {rtol}, {atol}")
        self.duration, self.steps, self.method, self.substeps = float(duration), int(steps), method, int(substeps)
        self.rtol, self.atol, self.max_evals = float(rtol), float(atol), int(max_evals)

    def __call__(self, metric: Metric, x0: torch.Tensor, v0: torch.Tensor) -> ShootingResult:
        """x0, v0: (P, D) start points and velocities -> points (P, steps+1, D)."""
        start, evals0 = time.perf_counter(), metric.score.calls
        p, d = x0.shape

        def rhs(t, state):
            if metric.score.calls - evals0 >= self.max_evals:
                raise _BudgetSpent(f"its budget of {self.max_evals} score evaluations "
                                   f"(extrapolate.max_evals) was spent by parameter time {float(t):.4f}")
            check_finite(state, "the shooting state", f"parameter time {float(t):.4f}")
            x, v = state[:, :d], state[:, d:]
            acc = metric.acceleration(x, v)
            check_finite(acc, "the geodesic acceleration", f"parameter time {float(t):.4f}")
            return torch.cat([v, acc], dim=1)

        times = torch.linspace(0, self.duration, self.steps + 1, dtype=x0.dtype, device=x0.device)
        kwargs = {"rtol": self.rtol, "atol": self.atol}
        if self.method not in ADAPTIVE:
            kwargs = {"options": {"step_size": self.duration / (self.steps * self.substeps)}}
        try:
            states = odeint(rhs, torch.cat([x0, v0], dim=1), times, method=self.method, **kwargs)
        except (_BudgetSpent, NonFiniteError, AssertionError) as err:  # AssertionError: dt underflow
            nan = torch.full((p, self.steps + 1, d), float("nan"), dtype=x0.dtype, device=x0.device)
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            return ShootingResult(nan, metric.score.calls - evals0, time.perf_counter() - start, reason)
        path = states[:, :, :d].transpose(0, 1).detach()  # (P, steps+1, D)
        return ShootingResult(path, metric.score.calls - evals0, time.perf_counter() - start)


def linear_extrapolation(a: torch.Tensor, b: torch.Tensor, duration: float, steps: int) -> torch.Tensor:
    """Continue the straight line from a through b: b + tau (b - a), tau in [0, duration]."""
    tau = torch.linspace(0, duration, steps + 1, dtype=a.dtype, device=a.device)[None, :, None]
    return b[:, None] + tau * (b - a)[:, None]
