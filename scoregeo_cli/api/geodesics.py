"""Geodesics in the public API: ``geodesic`` (a boundary-value solve between P pairs),
``extrapolate`` (shooting past b) and their results ``Geodesic`` and ``Extrapolation``,
with the defaults they share with ``scoregeo run``."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Sequence

from scoregeo_cli.api.checks import (ArgumentError, as_argument_errors, choice, ends, integer, like, number, prod,
                                     tensor)
from scoregeo_cli.api.score_fields import score_types

if TYPE_CHECKING:
    import torch

    from scoregeo_cli.geometry.base import Metric

METRICS = ("stein", "pullback", "conformal", "euclidean")
SOLVERS = ("gauss_newton", "gauss_newton_plain", "fixed_point", "lbfgs", "adam")
# The defaults of `scoregeo run` (conf/metric, conf/solver, conf/extrapolate; a test checks
# that they agree).
DEFAULT_LAM = {"stein": 1000.0, "pullback": 1.0}
METRIC_OPTIONS: dict[str, dict[str, Any]] = {
    "stein": {"interpolation": "cubic", "quadrature": "gauss4", "evaluate_at": "midpoints", "length_points": 64},
    "pullback": {"alpha": 1.0},
    "conformal": {"beta": 1.0},
    "euclidean": {},
}
SOLVER_OPTIONS: dict[str, dict[str, Any]] = {
    "gauss_newton": {"max_evals": 400, "etol": 1e-4, "gtol": 1e-8, "level_etol": 1e-3, "refine_tol": 0.01,
                     "start_nodes": 5, "max_nodes": 65, "continuation": [1e-3, 1e-2, 1e-1], "length_points": 2, "max_points": 32,
                     "hessian": "gauss_newton", "max_cg": 20, "cg_tol": 0.1, "max_damping": 1e12, "damping": "lm",
                     "line_search": True},
    "gauss_newton_plain": {"max_evals": 200, "etol": 1e-4, "gtol": 1e-8, "warm_start": 0, "max_damping": 1e12,
                           "damping": "lm", "line_search": True},
    "fixed_point": {"max_evals": 50, "tol": 1e-4, "min_step": 1e-3, "gtol": 1e-5},
    "lbfgs": {"lr": 1.0, "max_evals": 200, "tol": 1e-9, "freeze_score": False, "gtol": 1e-6},
    "adam": {"lr": 1e-2, "max_evals": 500, "tol": 1e-7, "freeze_score": False, "gtol": 1e-6},
}
SHOOTING_OPTIONS: dict[str, Any] = {"method": "dopri5", "substeps": 2, "rtol": 1e-4, "atol": 1e-6,
                                    "max_evals": 1000}


def _build_metric(score, metric, lam, normalize, shape, options: dict) -> Metric:
    """The metric object of ``geodesic``'s arguments (consuming its options from ``options``)."""
    from scoregeo_cli.api import families as public
    from scoregeo_cli.geometry.base import Metric

    if isinstance(metric, Metric):
        if lam is not None:
            raise ArgumentError("lam must be left unset when metric is a metric object (set it on the object)")
        if normalize != "none":
            raise ArgumentError("normalize must be left unset when metric is a metric object (set it on the object)")
        own = metric.score
        if score is not None and score is not own and score is not getattr(own, "fn", None):
            raise ArgumentError("score must be None or the metric object's own score when metric is a metric object")
        free = isinstance(own, score_types()[0]) and own.shape is None  # takes any dimension
        if own is None or (not free and own.dim and own.dim != prod(shape)):
            raise ArgumentError(f"a has points of shape {shape} but the metric's score works on "
                                f"{getattr(own, 'dim', None)} values per point")
        own_shape = getattr(own, "shape", None)
        if own_shape is not None and len(shape) > 1 and tuple(own_shape) != tuple(shape):
            raise ArgumentError(f"a has points of shape {shape} but the metric's score expects {tuple(own_shape)}")
        return metric
    if not isinstance(metric, str):
        raise ArgumentError(f"metric must be one of {', '.join(map(repr, METRICS))} or a metric object of "
                            f"scoregeo_cli.families, got {type(metric).__name__}")
    choice("metric", metric, METRICS)
    if metric != "stein" and normalize != "none":
        raise ArgumentError(f"normalize applies to the stein metric only, got normalize={normalize!r} "
                            f"with metric={metric!r}")
    if metric in ("conformal", "euclidean") and lam is not None:
        raise ArgumentError(f"lam does not apply to the {metric} metric"
                            + (" (its exponent is the option beta)" if metric == "conformal" else ""))
    kwargs = {k: options.pop(k) for k in list(options) if k in METRIC_OPTIONS[metric]}
    if metric == "euclidean":
        return public.Euclidean(score, shape=shape)
    if score is None:
        raise ArgumentError(f"score is required for the {metric} metric (a callable x -> s(x))")
    if metric == "stein":
        return public.Stein(score, DEFAULT_LAM["stein"] if lam is None else lam, normalize, shape=shape, **kwargs)
    if metric == "pullback":
        return public.Pullback(score, lam=DEFAULT_LAM["pullback"] if lam is None else lam, shape=shape, **kwargs)
    return public.Conformal(score, shape=shape, **kwargs)


def _build_solver(solver, nodes, metric: Metric, options: dict):
    """The solver object of ``geodesic``'s arguments (consuming its options from ``options``)."""
    from scoregeo_cli.geometry.solvers import AdaptiveSolver, FixedPointSolver, GaussNewtonSolver, OptimizerSolver

    nodes = integer("nodes", nodes, 3)
    if isinstance(solver, str):
        choice("solver", solver, SOLVERS)
        kwargs = dict(SOLVER_OPTIONS[solver])
        kwargs.update({k: options.pop(k) for k in list(options) if k in kwargs})
        with as_argument_errors():
            if solver == "gauss_newton":
                built = AdaptiveSolver(nodes, **kwargs)
            elif solver == "gauss_newton_plain":
                built = GaussNewtonSolver(nodes, **kwargs)
            elif solver == "fixed_point":
                built = FixedPointSolver(nodes, **kwargs)
            else:
                built = OptimizerSolver(nodes, solver, **kwargs)
        name = solver
    elif callable(solver) and isinstance(getattr(solver, "nodes", None), int):
        built, name = solver, type(solver).__name__
        if nodes != built.nodes:
            raise ArgumentError(f"nodes is {nodes} but the solver object has {built.nodes}; set both alike")
    else:
        raise ArgumentError(f"solver must be one of {', '.join(map(repr, SOLVERS))}, got {solver!r}")
    missing = [n for n in getattr(built, "needs", ()) if not hasattr(metric, n)]
    if missing:
        raise ArgumentError(f"solver {name!r} needs the stein metric; with {type(metric).__name__} use "
                            "'gauss_newton', 'lbfgs' or 'adam'")
    return built


def geodesic(score: Callable | None, a: torch.Tensor, b: torch.Tensor, *, metric: str | Metric = "stein",
             lam: float | None = None, normalize: str = "none", nodes: int = 16,
             solver: str | Callable = "gauss_newton", init: torch.Tensor | None = None, **options: Any) -> Geodesic:
    """Geodesics of a score-based metric between P pairs of points, solved together.

    Minimises the discrete curve energy of a path of ``nodes`` nodes with fixed ends (a
    boundary-value problem); every iteration evaluates the score on all pairs in one batch.

    Args:
        score: the score s(x): any callable on a batch of points (B, *shape) returning the
            same shape (a torch module, a function, ``score_from_unet(...)``); None with
            ``metric="euclidean"`` or a metric object.
        a, b: start and end points, (P, D) or (P, *shape) (e.g. (P, C, H, W) images or
            latents), same dtype (float32 or float64) and device.
        metric: "stein" (g = I + lam u u^T, u = s or s/|s|; the paper's), "pullback"
            (g = alpha I + lam J^T J, J = ds/dx), "conformal" (g = p(x)^(-beta) I),
            "euclidean" (g = I), or a metric object of ``scoregeo_cli.families``.
        lam: weight lam >= 0 of the score term; None: 1000 for stein (the paper's value),
            1 for pullback.
        normalize: stein only: "none" (u = s) or "unit" (u = s / |s|).
        nodes: nodes per path, both ends included (>= 3).
        solver: "gauss_newton" (the default, the same as ``scoregeo run``'s: a continuation in
            lam on a coarse path, then Gauss-Newton levels refined until the continuous
            g-length changes by less than ``refine_tol``; with a metric other than stein it
            runs L-BFGS), "gauss_newton_plain" (Gauss-Newton at ``nodes`` nodes only),
            "fixed_point" (stein only), "lbfgs" or "adam".
        init: starting path (P, M, *shape); None: the straight line. Its first and last
            nodes are replaced by a and b. "gauss_newton" takes any M >= 3 (it skips the
            continuation and refines from M nodes); the other solvers need M = nodes.
        **options: of the metric: ``interpolation`` ("cubic" | "linear"), ``quadrature``
            ("gauss4", "midpoint", "trapezoid", "simpson", "gauss<k>"), ``evaluate_at``,
            ``length_points`` (stein), ``alpha`` (pullback), ``beta`` (conformal); of the
            solver: ``max_evals`` (budget of batched score evaluations), ``etol`` and ``gtol``
            (``converged``: energy stable to etol relative, or relative gradient below gtol),
            ``level_etol``, ``refine_tol``, ``start_nodes``, ``max_nodes``, ``continuation``,
            ``length_points``, ``max_points``, ``hessian``, ``max_cg``, ``cg_tol``, ``max_damping``,
            ``damping``, ``line_search`` (gauss_newton;
            the last three and ``warm_start`` for gauss_newton_plain), ``tol``, ``min_step``
            (fixed_point), ``lr``, ``tol``, ``freeze_score`` (lbfgs, adam). Defaults are those
            of ``scoregeo run`` (conf/solver).

    Returns:
        A ``Geodesic``: the path (P, nodes, *shape) and its energy, g-length, convergence
        and cost.

    Raises:
        ValueError: a bad argument, named in one sentence.
        scoregeo_cli.errors.NonFiniteError: the score returned NaN or Inf (the message names
            the evaluation).
    """
    a, b = ends(a, b)
    shape = tuple(a.shape[1:])
    p, d = a.shape[0], prod(shape)
    if normalize not in ("none", "unit"):
        choice("normalize", normalize, ("none", "unit"))
    if lam is not None:
        number("lam", lam, minimum=0)
    options = dict(options)
    metric_obj = _build_metric(score, metric, lam, normalize, shape, options)
    solver_obj = _build_solver(solver, nodes, metric_obj, options)
    if options:
        raise ArgumentError(f"{sorted(options)[0]} is not an option of metric "
                            f"{metric if isinstance(metric, str) else type(metric).__name__!r} or solver "
                            f"{solver if isinstance(solver, str) else type(solver).__name__!r}")
    flat_a, flat_b = a.detach().reshape(p, d), b.detach().reshape(p, d)  # no gradient through the solve
    start = None
    if init is not None:
        init = tensor("init", init, 3, f" of shape (P, nodes, *shape) = ({p}, {solver_obj.nodes}, "
                                        f"{', '.join(map(str, shape))})")
        from scoregeo_cli.geometry.solvers import AdaptiveSolver

        any_nodes = isinstance(solver_obj, AdaptiveSolver) and init.dim() >= 3 and init.shape[1] >= 3
        m = init.shape[1] if any_nodes else solver_obj.nodes
        if tuple(init.shape) not in ((p, m, *shape), (p, m, d)):
            want = f"(P, M >= 3, *shape) = ({p}, M, {', '.join(map(str, shape))})" if any_nodes else \
                str((p, solver_obj.nodes, *shape))
            raise ArgumentError(f"init must have shape {want}, got {tuple(init.shape)}")
        like("init", init[:, 0].reshape(p, *shape), a, "a")
        start = init.detach().reshape(p, m, d).clone()
        start[:, 0], start[:, -1] = flat_a, flat_b
    result = solver_obj(metric_obj, flat_a, flat_b, start)
    return Geodesic(result, metric_obj, shape)


def _grad_rel(result) -> torch.Tensor:
    import torch

    g, g0 = result.grad_norm, result.grad_norm0
    return torch.where(g0 > 0, g / g0.clamp_min(torch.finfo(g0.dtype).tiny), torch.zeros_like(g))


class Geodesic:
    """P solved geodesics (``geodesic``'s result).

    Attributes:
        path: (P, N, *shape) the nodes, a and b included (node j at t = j / (N - 1)).
        energy: (P,) the discrete curve energy of the path under the metric, about
            1/2 int_0^1 g(x', x') dt (squared data units; length^2 / 2 at constant speed).
        converged: (P,) bool: the solve converged (energy stable to ``etol``, or the true
            energy gradient below ``gtol`` times its value on the straight line).
        grad_rel: (P,) that gradient norm over its value on the straight line.
        solve_nodes: nodes of the discretisation the energy was minimised on (the default
            solver chooses it per pair; ``path`` is that curve at ``nodes`` evenly spaced
            parameters): the most of any pair. nodes_per_pair: (P,) each pair's own.
        length_change: (P,) relative change of the continuous g-length at the last
            refinement, or None (fixed resolution). resolved: (P,) bool, that change was
            below the solver's ``refine_tol`` (None: fixed resolution).
        network_passes: single-sample forward passes of the score the solve took (a batch
            of B points counts B).
        backward_passes: single-sample vector-Jacobian products through the score.
        hessian_passes: single-sample Hessian-vector products (double backward passes;
            ``hessian="exact"`` only).
        score_evals: batched score calls (what the budget ``max_evals`` counts).
        iterations: solver iterations. seconds: wall time of the solve.
        metric: the metric object (``scoregeo_cli.families``), for ``extrapolate`` and for
            measuring other paths.
        shape: the shape of one point.

    ``length`` (P,) is the continuous g-length of the solved curve (data units), computed on
    first access (dense Gauss-Legendre quadrature: score evaluations of its own, not counted
    above). ``at(t)`` evaluates the solved curve between its nodes.
    """

    def __init__(self, result, metric: Metric, shape: tuple[int, ...]):
        import torch

        p, n = result.path.shape[:2]
        self._result, self.metric, self.shape = result, metric, tuple(shape)
        self._frames = result.path.detach()
        solved = getattr(result, "solved_path", None)
        self._flat = self._frames if solved is None else solved.detach()  # the curve that was solved
        self.path = self._frames.reshape(p, n, *self.shape)
        self.energy = result.energy.detach()
        self.converged = result.converged
        self.grad_rel = _grad_rel(result)
        self.network_passes = int(result.score_points)
        self.backward_passes = int(result.vjp_points)
        self.hessian_passes = int(getattr(result, "hvp_points", 0))
        self.score_evals = int(result.score_evals)
        self.iterations = int(result.iterations)
        self.seconds = float(result.seconds)
        self.solve_nodes = int(getattr(result, "solve_nodes", 0) or n)
        per_pair = getattr(result, "nodes_per_pair", None)
        self.nodes_per_pair = torch.full((p,), self.solve_nodes) if per_pair is None else per_pair.cpu()
        self.length_change = getattr(result, "length_change", None)
        self.resolved = getattr(result, "resolved", None)

    @property
    def nodes(self) -> int:
        """N, nodes per path."""
        return self.path.shape[1]

    @cached_property
    def length(self) -> torch.Tensor:
        """(P,) continuous g-length int_0^1 sqrt(g(x', x')) dt of the curve through the nodes."""
        return self.metric.length(self._flat).detach()

    def at(self, t: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Points of the curve the solver's energy is defined on (the metric's interpolation
        through the nodes: the not-a-knot cubic spline for the stein metric's default, else
        the polygon) at parameters t in [0, 1]: (P, len(t), *shape)."""
        import numpy as np
        import torch

        values = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)
        values = np.atleast_1d(values)
        if values.ndim != 1 or not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ArgumentError("t must be a number or a 1-D sequence of parameters in [0, 1]")
        basis = torch.as_tensor(_curve_basis(self._flat.shape[1], getattr(self.metric, "interpolation", "linear"), values),
                                dtype=self._flat.dtype, device=self._flat.device)
        out = torch.einsum("mj,pjd->pmd", basis, self._flat)
        return out.reshape(out.shape[0], len(values), *self.shape)

    def __repr__(self) -> str:
        return (f"Geodesic(path={tuple(self.path.shape)}, energy={[round(float(e), 6) for e in self.energy[:4]]}"
                f"{'...' if len(self.energy) > 4 else ''}, converged={int(self.converged.sum())}/{len(self.energy)}, "
                f"network_passes={self.network_passes})")


def _curve_basis(nodes: int, interpolation: str, t) -> Any:
    """(len(t), nodes) weights of the nodes at parameters t (numpy, float64)."""
    import numpy as np

    if interpolation == "cubic":
        from scipy.interpolate import CubicSpline

        return CubicSpline(np.linspace(0, 1, nodes), np.eye(nodes), bc_type="not-a-knot")(t)
    n = nodes - 1
    seg = np.minimum(np.floor(t * n).astype(int), n - 1)
    frac = t * n - seg
    out = np.zeros((len(t), nodes))
    rows = np.arange(len(t))
    out[rows, seg], out[rows, seg + 1] = 1 - frac, frac
    return out


class Extrapolation:
    """P geodesics shot past their start (``extrapolate``'s result).

    Attributes:
        path: (P, steps + 1, *shape) points at equal parameter spacing, the start (b)
            first; all NaN when the shot failed.
        t: (steps + 1,) their parameters: continuing a ``Geodesic``'s [0, 1] (1 + tau), or
            tau from 0 for a state.
        error: None, or why the shot failed (its evaluation budget spent, NaN, the step
            size underflowed: the geodesic equation is stiff where lam |s|^2 is large).
        network_passes: single-sample score passes (forward); score_evals: batched calls;
            seconds: wall time.
    """

    def __init__(self, shot, t: torch.Tensor, shape: tuple[int, ...], passes: int):
        p, m = shot.path.shape[:2]
        self.path = shot.path.reshape(p, m, *shape)
        self.t, self.error = t, shot.error
        self.network_passes, self.score_evals, self.seconds = int(passes), int(shot.score_evals), float(shot.seconds)

    @property
    def ok(self) -> bool:
        """True when the shot reached its duration."""
        return self.error is None

    def __repr__(self) -> str:
        return f"Extrapolation(path={tuple(self.path.shape)}, error={self.error!r}, network_passes={self.network_passes})"


def extrapolate(geodesic_or_state: Geodesic | tuple[torch.Tensor, torch.Tensor], duration: float = 0.5,
                steps: int = 8, *, metric: Metric | None = None, method: str = "dopri5", substeps: int = 2,
                rtol: float = 1e-4, atol: float = 1e-6, max_evals: int = 1000) -> Extrapolation:
    """Shoot along the geodesic equation of the metric, past b.

    From a ``Geodesic``: start at b with the path's end velocity (second-order one-sided
    difference), i.e. continue the geodesic beyond t = 1. From a state ``(x, v)``: start at
    points x with velocities v (P, *shape) under ``metric``.

    Args:
        geodesic_or_state: a ``Geodesic``, or a pair (x, v) of tensors of one shape.
        duration: how far, in the geodesic's parameter (a to b spans 1), > 0.
        steps: output points after the start (>= 1).
        metric: the metric of a state (a metric object of ``scoregeo_cli.families``); a
            Geodesic carries its own.
        method: a torchdiffeq method: adaptive ("dopri5", "bosh3", ...) or fixed-grid
            ("rk4", "midpoint", "euler", ...).
        substeps: integration steps per output interval of a fixed-grid method.
        rtol, atol: tolerances of an adaptive method.
        max_evals: score evaluations allowed; past them the shot stops with NaN points and
            ``error`` set (not an exception).

    Returns:
        An ``Extrapolation``.
    """
    import torch

    from scoregeo_cli.geometry.base import Metric
    from scoregeo_cli.geometry.shooting import GeodesicShooter, end_tangent

    if isinstance(geodesic_or_state, Geodesic):
        geo = geodesic_or_state
        if metric is not None and metric is not geo.metric:
            raise ArgumentError("metric must be left unset when extrapolating a Geodesic (it carries its own)")
        metric, shape, flat = geo.metric, geo.shape, geo._flat
        x0, v0, offset = flat[:, -1], end_tangent(flat), 1.0
    elif isinstance(geodesic_or_state, (tuple, list)) and len(geodesic_or_state) == 2:
        x, v = geodesic_or_state
        x = tensor("geodesic_or_state[0]", x, 2, " (points x of shape (P, *shape))")
        v = tensor("geodesic_or_state[1]", v, 2, " (velocities v of shape (P, *shape))")
        like("geodesic_or_state[1]", v, x, "geodesic_or_state[0]")
        if not isinstance(metric, Metric):
            raise ArgumentError("metric must be a metric object of scoregeo_cli.families when extrapolating a "
                                f"state (x, v), got {type(metric).__name__}")
        shape = tuple(x.shape[1:])
        x0, v0, offset = x.reshape(x.shape[0], -1), v.reshape(v.shape[0], -1), 0.0
        own = metric.score
        if own is not None and own.dim and own.dim != x0.shape[1]:
            raise ArgumentError(f"geodesic_or_state has points of {x0.shape[1]} values but the metric's score "
                                f"works on {own.dim}")
    else:
        raise ArgumentError("geodesic_or_state must be a Geodesic or a pair (x, v) of tensors, "
                            f"got {type(geodesic_or_state).__name__}")
    if not getattr(metric, "has_geodesic_equation", True):
        raise ArgumentError(f"geodesic_or_state has the {type(metric).__name__} metric, which has no geodesic "
                            "equation here; extrapolate a stein, conformal or euclidean geodesic")
    duration = number("duration", duration, positive=True)
    steps = integer("steps", steps, 1)
    substeps = integer("substeps", substeps, 1)
    max_evals = integer("max_evals", max_evals, 1)
    rtol, atol = number("rtol", rtol, positive=True), number("atol", atol, positive=True)
    if not isinstance(method, str):
        raise ArgumentError(f"method must be a torchdiffeq method name, got {method!r}")
    with as_argument_errors():
        shooter = GeodesicShooter(duration, steps, method, substeps, rtol, atol, max_evals)
    points0 = metric.score.points if metric.score is not None else 0
    shot = shooter(metric, x0, v0)
    passes = (metric.score.points - points0) if metric.score is not None else 0
    t = offset + torch.linspace(0, duration, steps + 1, dtype=x0.dtype, device=x0.device)
    return Extrapolation(shot, t, shape, passes)
