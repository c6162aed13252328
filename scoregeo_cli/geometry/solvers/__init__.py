"""Boundary-value geodesics: minimise the discrete curve energy with fixed ends, one solver
per file.

Solvers are callables ``solver(metric, a, b) -> GeodesicResult`` on P pairs at once
(a, b of shape (P, D)). Every path of every pair goes through the score network in one
batched call per iteration (chunked by the score field).

* ``adaptive.AdaptiveSolver`` (the default): a continuation in lam on a coarse path, then
  Gauss-Newton levels refined until the continuous g-length is resolved.
* ``gauss_newton.GaussNewtonSolver``: Gauss-Newton (Levenberg-Marquardt) on the true energy
  at one discretisation (the iteration of every level of the default), its step in
  ``normal_equations``.
* ``fixed_point.FixedPointSolver``: the frozen-metric step in closed form, re-evaluated.
* ``optimizer.OptimizerSolver``: torch.optim (Adam or L-BFGS) on the interior nodes.

``base`` holds what they share (``GeodesicResult``, ``SolveProgress``, ``gradient_norm``,
``straight_path``, ``resample``). The names below are re-exported here.
"""

from scoregeo_cli.geometry.solvers.adaptive import AdaptiveSolver
from scoregeo_cli.geometry.solvers.base import (GeodesicResult, SolveProgress, gradient_norm, network_passes,
                                                resample, score_is_float32, straight_path)
from scoregeo_cli.geometry.solvers.fixed_point import FixedPointSolver, frozen_metric_step
from scoregeo_cli.geometry.solvers.gauss_newton import GaussNewtonSolver
from scoregeo_cli.geometry.solvers.normal_equations import gauss_newton_step
from scoregeo_cli.geometry.solvers.optimizer import OptimizerSolver

__all__ = ["AdaptiveSolver", "GeodesicResult", "SolveProgress", "gradient_norm", "network_passes", "resample", "score_is_float32",
           "straight_path", "FixedPointSolver", "frozen_metric_step", "GaussNewtonSolver", "gauss_newton_step",
           "OptimizerSolver"]
