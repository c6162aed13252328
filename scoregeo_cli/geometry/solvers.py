"""Boundary-value geodesics: minimise the discrete curve energy with fixed ends.

Every solver reports the true gradient norm of the energy (over the interior nodes) at its
start and end (``grad_norm0``, ``grad_norm``, measured after the solve and not counted in
``score_evals``); ``converged`` means grad_norm <= gtol * grad_norm0 (Gauss-Newton with
float32 tolerances: also an energy stable to ``etol``). ``score_points`` and ``vjp_points``
count single-point forward and backward passes through the score (``network_passes``).

Solvers are callables ``solver(metric, a, b) -> GeodesicResult`` on P pairs at once
(a, b of shape (P, D)). Every path of every pair goes through the score network in one
batched call per iteration (chunked by the score field).

* ``GaussNewtonSolver`` (the default): linearise the residuals r_k = sqrt(lam w_k) u(y_k).y'_k
  of the energy including how the scores move with the nodes (one batched score
  evaluation and one vector-Jacobian product per iteration), solve the Gauss-Newton normal
  equations through their low-rank structure (a K x K solve, K quadrature points, never
  D x D), backtrack on the true energy. Converges to a stationary point of the true energy.
  Coarse to fine (``levels``): most iterations on paths of a few nodes, the last from their
  resampled curve.
* ``FixedPointSolver``: freeze the metric at the current path, solve the frozen problem in
  closed form (an (N k) x (N k) solve), re-evaluate the scores, repeat; steps that raise
  the true energy are damped. No gradient through the network.
* ``OptimizerSolver``: torch.optim (Adam or L-BFGS) on the interior nodes, with the score
  differentiated through or frozen per step. ``adam_reference`` in conf/solver is the
  recipe of independent re-implementations of the paper (Adam, lr 1e-3, 500 steps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from scoregeo_cli.errors import ScoregeoError, check_finite
from scoregeo_cli.geometry.metrics import Metric
from scoregeo_cli.io import progress as _progress


@dataclass
class GeodesicResult:
    """A solved batch of curves.

    path: (P, N+1, D) nodes, endpoints included. energy: (P,) final curve energy.
    energy_trace: the energies (P,) of the current paths after each iteration. score_evals: batched score
    evaluations used (forward passes). seconds: wall time. converged: (P,) bool, the true
    gradient norm fell below gtol times its value at the start. grad_norm, grad_norm0: (P,)
    norm of the true energy gradient over the interior nodes at the end and at the start.
    vjp_evals: batched vector-Jacobian products through the score (backward passes);
    score_points, vjp_points: points those passes covered (for forward-equivalent costs).
    """

    path: torch.Tensor
    energy: torch.Tensor
    score_evals: int
    seconds: float
    converged: torch.Tensor
    iterations: int
    energy_trace: list[list[float]] = field(default_factory=list)
    grad_norm: torch.Tensor | None = None
    grad_norm0: torch.Tensor | None = None
    vjp_evals: int = 0
    score_points: int = 0
    vjp_points: int = 0


class SolveProgress:
    """The progress bar of one solve (``io.progress``): batched score evaluations
    spent of the budget, the summed energy of the pairs' paths and, where the solver knows
    it, the largest gradient norm relative to its start. It only reads the solver's values."""

    def __init__(self, name: str, metric: Metric, budget: int):
        self.metric, self.evals0 = metric, metric.score.calls
        self.bar = _progress.bar(int(budget), name, "eval")

    def update(self, energy: torch.Tensor, grad_rel: torch.Tensor | None = None) -> None:
        if self.bar.disable:
            return
        self.bar.update(max(0, self.metric.score.calls - self.evals0 - self.bar.n))
        post = {"energy": f"{float(energy.detach().sum()):.5g}"}
        if grad_rel is not None and grad_rel.numel():
            post["grad_rel"] = f"{float(grad_rel.max()):.2g}"
        self.bar.set_postfix(post, refresh=False)

    def __enter__(self) -> "SolveProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def gradient_norm(metric: Metric, path: torch.Tensor) -> torch.Tensor:
    """|dE/dx_interior| (P,) of the metric's energy at ``path``, left out of the score's
    counters (a measurement, not part of a solve)."""
    score = metric.score
    saved = (score.calls, score.points, score.seconds)
    try:
        if hasattr(metric, "energy_gradient"):
            grad = metric.energy_gradient(path)[1]
        else:
            with torch.enable_grad():
                x = path.detach().requires_grad_(True)
                grad = torch.autograd.grad(metric.energy(x).sum(), x)[0][:, 1:-1]
    finally:
        score.calls, score.points, score.seconds = saved
    return grad.flatten(1).norm(dim=-1).detach()


def network_passes(result: "GeodesicResult", cost: float) -> float:
    """Single-point network passes per pair of a solve: (forward points + backward points x
    ``cost``) / pairs."""
    return (result.score_points + cost * result.vjp_points) / max(1, result.path.shape[0])


def _finish(metric: Metric, result: "GeodesicResult", path0: torch.Tensor, gtol: float,
            points0: int) -> "GeodesicResult":
    """Fill the gradient norms, ``converged`` and the point counts of a result."""
    if result.grad_norm0 is None:
        result.grad_norm0 = gradient_norm(metric, path0)
    if result.grad_norm is None:
        result.grad_norm = gradient_norm(metric, result.path)
    result.converged = result.grad_norm <= gtol * result.grad_norm0
    result.score_points = metric.score.points - points0
    return result


def score_is_float32(score, points: torch.Tensor) -> bool:
    """Whether ``score`` computes in float32 (a network): points of a float32 dtype, or a
    score whose value does not change when its float64 input is rounded to float32 (one
    point, two evaluations, left out of the score's counters)."""
    if points.dtype != torch.float64:
        return True
    x = points[:1].detach()
    saved = (score.calls, score.points, score.seconds)
    try:
        with torch.no_grad():
            return bool(torch.equal(score(x), score(x.float().to(x.dtype))))
    finally:  # two single-point passes: a measurement, not counted
        score.calls, score.points, score.seconds = saved


def straight_path(a: torch.Tensor, b: torch.Tensor, nodes: int) -> torch.Tensor:
    """nodes points evenly spaced on the segment from a to b: (P, D) -> (P, nodes, D)."""
    t = torch.linspace(0, 1, nodes, dtype=a.dtype, device=a.device)[None, :, None]
    return (1 - t) * a[:, None] + t * b[:, None]


def _check_nodes(nodes: int) -> int:
    if int(nodes) < 3:
        raise ScoregeoError(f"solver.nodes must be at least 3 (endpoints included), got {nodes}")
    return int(nodes)


def _check_positive(name: str, value) -> None:
    if not value > 0:
        raise ScoregeoError(f"{name} must be positive, got {value}")


def _select(mask: torch.Tensor, new, old):
    """Per-pair choice between two factor tensors (P, ...) or two ``Evaluation``s."""
    if isinstance(new, torch.Tensor):
        return torch.where(mask.reshape(-1, *([1] * (new.dim() - 1))), new, old)
    if bool(mask.all()):
        return new
    if not bool(mask.any()):
        return old
    for name in ("path", "r", "_u", "velocity", "energy"):  # the fields _target reads
        value = torch.where(mask.reshape(-1, *([1] * (getattr(new, name).dim() - 1))),
                            getattr(new, name).detach(), getattr(old, name).detach())
        setattr(old, name, value)
    return old


def frozen_metric_step(path: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Exact minimiser of the energy with the metric frozen at ``factors``, same endpoints.

    With G_i = I + U_i^T U_i the minimiser has G_i v_i = c for every segment and
    sum_i v_i = x_N - x_0 = delta. G_i^{-1} = I - U_i^T M_i U_i with M_i = (I + U_i U_i^T)^{-1}
    (k x k); writing M_i = L_i L_i^T and B_i = L_i^T U_i,
        (N I - B^T B) c = delta  =>  c = (delta + B^T (N I - B B^T)^{-1} B delta) / N
    (Woodbury; N I - B B^T is positive definite since each |B_i^T B_i| < 1).

    path: (P, N+1, D); factors: (P, N, k, D) -> new path (P, N+1, D).
    """
    p, n, k, d = factors.shape
    eye_k = torch.eye(k, dtype=factors.dtype, device=factors.device)
    m_inv = torch.linalg.inv(eye_k + factors @ factors.transpose(-1, -2))  # M_i, (P, N, k, k)
    m_chol = torch.linalg.cholesky(m_inv)  # L_i
    b = (m_chol.transpose(-1, -2) @ factors).reshape(p, n * k, d)  # stacked B_i
    delta = path[:, -1] - path[:, 0]  # (P, D)
    bd = torch.einsum("pjd,pd->pj", b, delta)
    system = n * torch.eye(n * k, dtype=b.dtype, device=b.device) - b @ b.transpose(-1, -2)
    y = torch.linalg.solve(system, bd.unsqueeze(-1)).squeeze(-1)
    c = (delta + torch.einsum("pjd,pj->pd", b, y)) / n  # (P, D)
    uc = torch.einsum("pnkd,pd->pnk", factors, c)
    v = c[:, None] - torch.einsum("pnkd,pnkl,pnl->pnd", factors, m_inv, uc)
    inner = path[:, :1] + torch.cumsum(v[:, :-1], dim=1)  # the last node stays exactly x_N
    return torch.cat([path[:, :1], inner, path[:, -1:]], dim=1)


class FixedPointSolver:
    """Alternate the frozen-metric closed-form step with re-evaluating the scores.

    It needs the low-rank structure of the Stein metric (``evaluate``); with any other metric
    the run refuses at start-up (``methods.geodesic.check_solver``).

    Each iteration costs one batched score evaluation. A pair's step is accepted when the
    true energy does not rise; otherwise its step length halves (and doubles again, up to 1,
    after an accepted step). A pair has converged when the full fixed-point step moves no
    node by more than ``tol`` times |b - a|; it stops unconverged ("stalled") when its
    step length falls below ``min_step``. Stalling is expected near the solution at small
    noise levels: the frozen-metric fixed point ignores how the scores move with the nodes,
    so it is not exactly a minimiser of the true energy, and close to it the step stops
    lowering that energy.

    For metrics other than the polygon with one or two rows per segment (e.g. the cubic
    spline, ``metric.interpolation=cubic``) the frozen minimiser comes from
    ``gauss_newton_step`` with the score's Jacobian left out.

    ``converged`` in the result follows the module's rule (true gradient norm below
    ``gtol`` times its start value); the iteration itself stops on ``tol``.

    Args:
        nodes: nodes per path, endpoints included (>= 3).
        max_evals: budget of batched score evaluations (> 0).
        tol: stopping tolerance on the relative node displacement (> 0).
        min_step: smallest damping factor before giving up on a pair.
        gtol: relative gradient-norm tolerance of ``converged`` (> 0).
    """

    needs = ("evaluate",)  # metric methods it relies on

    def __init__(self, nodes: int = 16, max_evals: int = 50, tol: float = 1e-4, min_step: float = 1e-3,
                 gtol: float = 1e-5):
        self.nodes = _check_nodes(nodes)
        _check_positive("solver.max_evals", max_evals)
        _check_positive("solver.tol", tol)
        _check_positive("solver.gtol", gtol)
        self.max_evals, self.tol, self.min_step = int(max_evals), float(tol), float(min_step)
        self.gtol = float(gtol)

    @staticmethod
    def _frozen(metric: Metric, path: torch.Tensor):
        """(target, factors-or-evaluation, energy) of the frozen problem at ``path``."""
        if getattr(metric, "polygon_factors", True):
            factors = metric.factors(path)
            return factors, metric.energy_from_factors(path, factors)
        ev = metric.evaluate(path)
        return ev, ev.energy.detach()

    @staticmethod
    def _target(path: torch.Tensor, state, lam: float) -> torch.Tensor:
        if isinstance(state, torch.Tensor):
            return frozen_metric_step(path, state)
        step, _ = gauss_newton_step(state.model, lam, path, state.r.detach(), state._u.detach(), None)
        out = path.clone()
        out[:, 1:-1] += step
        return out

    def __call__(self, metric: Metric, a: torch.Tensor, b: torch.Tensor,
                 init: torch.Tensor | None = None) -> GeodesicResult:
        with SolveProgress("fixed-point solve", metric, self.max_evals) as progress:
            return self._solve(metric, a, b, init, progress)

    def _solve(self, metric: Metric, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None,
               progress: SolveProgress) -> GeodesicResult:
        start, evals0, points0 = time.perf_counter(), metric.score.calls, metric.score.points
        path = straight_path(a, b, self.nodes) if init is None else init.clone()
        path0 = path
        scale = (b - a).norm(dim=-1).clamp_min(1e-30)  # (P,)
        lam = getattr(metric, "lam", 0.0)
        with torch.no_grad():
            factors, energy = self._frozen(metric, path)
            trace = [energy.tolist()]
            step = torch.ones_like(energy)
            done = torch.zeros_like(energy, dtype=torch.bool)
            it = 0
            while metric.score.calls - evals0 < self.max_evals and not bool(done.all()):
                it += 1
                target = self._target(path, factors, lam)
                check_finite(target, "the fixed-point path", f"solver iteration {it}")
                residual = (target - path).norm(dim=-1).amax(dim=-1) / scale
                done = done | (residual < self.tol) | (step < self.min_step)
                active = ~done
                if not bool(active.any()):
                    break
                trial = path + step[:, None, None] * (target - path)
                trial_factors, trial_energy = self._frozen(metric, trial)
                check_finite(trial_energy, "the curve energy", f"solver iteration {it}")
                accept = active & (trial_energy <= energy * (1 + 1e-12))
                path = torch.where(accept[:, None, None], trial, path)
                factors = _select(accept, trial_factors, factors)
                energy = torch.where(accept, trial_energy, energy)
                step = torch.where(accept, (2 * step).clamp(max=1.0), torch.where(active, step / 2, step))
                trace.append(energy.tolist())
                progress.update(energy)
        result = GeodesicResult(path, energy, metric.score.calls - evals0, 0.0, done, it, trace)
        result = _finish(metric, result, path0, self.gtol, points0)
        result.seconds = time.perf_counter() - start
        return result


class OptimizerSolver:
    """Minimise the curve energy over the interior nodes with a torch.optim optimiser.

    Args:
        nodes: nodes per path, endpoints included (>= 3).
        optimizer: "adam" or "lbfgs".
        lr: learning rate (> 0).
        max_evals: budget of batched score evaluations (> 0); Adam uses one per step.
        tol: stop when the total energy changes by less than tol (relative) between steps;
            0 runs the whole budget.
        freeze_score: treat the scores as constants within each step (no backward pass
            through the network) instead of differentiating through them.
        gtol: relative gradient-norm tolerance of ``converged`` (> 0).
    """

    OPTIMIZERS = ("adam", "lbfgs")

    def __init__(self, nodes: int = 16, optimizer: str = "adam", lr: float = 1e-3,
                 max_evals: int = 500, tol: float = 0.0, freeze_score: bool = False, gtol: float = 1e-6):
        self.nodes = _check_nodes(nodes)
        _check_positive("solver.gtol", gtol)
        self.gtol = float(gtol)
        if optimizer not in self.OPTIMIZERS:
            raise ScoregeoError(f"solver.optimizer must be one of {self.OPTIMIZERS}, got '{optimizer}'")
        _check_positive("solver.lr", lr)
        if int(max_evals) < 2:
            raise ScoregeoError(f"solver.max_evals must be at least 2 for an optimiser "
                                f"(one step and the final energy), got {max_evals}")
        if tol < 0:
            raise ScoregeoError(f"solver.tol must be >= 0, got {tol}")
        self.optimizer, self.lr, self.max_evals = optimizer, float(lr), int(max_evals)
        self.tol, self.freeze_score = float(tol), bool(freeze_score)

    def __call__(self, metric: Metric, a: torch.Tensor, b: torch.Tensor,
                 init: torch.Tensor | None = None) -> GeodesicResult:
        name = "Adam solve" if self.optimizer == "adam" else "L-BFGS solve"
        with SolveProgress(name, metric, self.max_evals) as progress:
            return self._solve(metric, a, b, init, progress)

    def _solve(self, metric: Metric, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None,
               progress: SolveProgress) -> GeodesicResult:
        start, evals0, points0 = time.perf_counter(), metric.score.calls, metric.score.points
        path0 = straight_path(a, b, self.nodes) if init is None else init
        interior = path0[:, 1:-1].clone().requires_grad_(True)
        backward = [0, 0]  # vector-Jacobian products through the score and their points
        trace: list[list[float]] = []

        def full_path() -> torch.Tensor:
            return torch.cat([a[:, None], interior, b[:, None]], dim=1)

        def energy_of(path: torch.Tensor) -> torch.Tensor:
            if self.freeze_score:
                return metric.energy(path, detach_score=True)
            points = metric.score.points
            energy = metric.energy(path)
            backward[0], backward[1] = backward[0] + 1, backward[1] + metric.score.points - points
            return energy

        def closure() -> torch.Tensor:
            opt.zero_grad()
            energy = energy_of(full_path())
            check_finite(energy.detach(), "the curve energy", f"score evaluation {metric.score.calls - evals0}")
            total = energy.sum()
            total.backward()
            trace.append(energy.detach().tolist())
            progress.update(energy)
            return total

        if self.optimizer == "adam":
            opt = torch.optim.Adam([interior], lr=self.lr)
            previous, steps = None, 0
            # the budget counts score evaluations, and steps for a metric that needs none (euclidean)
            while metric.score.calls - evals0 < self.max_evals - 1 and steps < self.max_evals - 1:
                steps += 1
                total = float(opt.step(closure).detach())
                if self.tol and previous is not None and abs(previous - total) <= self.tol * abs(previous):
                    break
                previous = total
        else:
            opt = torch.optim.LBFGS([interior], lr=self.lr, max_iter=self.max_evals - 1,
                                    max_eval=self.max_evals - 1, tolerance_change=self.tol or 1e-12,
                                    tolerance_grad=1e-12, history_size=20, line_search_fn="strong_wolfe")
            opt.step(closure)
        with torch.no_grad():
            path = full_path().detach()
            energy = metric.energy(path)  # the final energy costs one evaluation
        result = GeodesicResult(path, energy, metric.score.calls - evals0, 0.0,
                                torch.zeros_like(energy, dtype=torch.bool), len(trace), trace,
                                vjp_evals=backward[0], vjp_points=backward[1])
        result = _finish(metric, result, path0, self.gtol, points0)
        result.seconds = time.perf_counter() - start
        return result



def gauss_newton_step(model, lam: float, path: torch.Tensor, r: torch.Tensor, u: torch.Tensor,
                      g: torch.Tensor | None, damping: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton step and true gradient over the interior nodes, both (P, N-1, D).

    With the curve model's phi, dphi, weights w (``metrics.CurveModel``, K quadrature
    points), E = 1/2 x^T (S (x) I) x + 1/2 sum_k r_k^2, S the stiffness, r_k =
    sqrt(lam w_k) u_k.y'_k. Its linearised residual rows over the interior nodes are
    w_k = a_k (x) u_k + b_k (x) g_k, a_k = sqrt(lam w_k) dphi_k, b_k = sqrt(lam w_k) phi_k,
    g_k = J_k^T y'_k, and the true gradient is (S x)_int + sum_k r_k w_k. The normal
    equations (S_int (x) I + W W^T) delta = -grad are solved by Woodbury: S_int^{-1} is
    (N-1) x (N-1), and the capacitance matrix I + W^T (S_int^{-1} (x) I) W is K x K,
    assembled from the Gram matrices of the u_k and g_k (K^2 D work, never D x D):
        [W^T A^-1 W]_kl = (a_k A^-1 a_l)(u_k.u_l) + (a_k A^-1 b_l)(u_k.g_l)
                          + (b_k A^-1 a_l)(g_k.u_l) + (b_k A^-1 b_l)(g_k.g_l).
    With g None (the frozen metric) the step lands on the exact minimiser of the frozen
    quadratic problem. ``damping`` (P,) adds mu I to the normal matrix (Levenberg-Marquardt:
    S_int + mu I in place of S_int, the same structure). Solves run in float64.
    """
    work = torch.float64
    x, r, u = path.to(work), r.to(work), u.to(work)
    dev = path.device
    a, b, stiff = model.residual_rows(lam, work, dev)  # (K, N-1), (K, N-1), (N+1, N+1)
    s_int = stiff[1:-1, 1:-1].expand(x.shape[0], -1, -1)
    if damping is not None:
        s_int = s_int + damping.to(work)[:, None, None] * torch.eye(s_int.shape[-1], dtype=work, device=dev)
    a_inv = torch.linalg.inv(s_int)  # S_int^{-1}, (P, N-1, N-1)
    grad = stiff[1:-1] @ x + a.T @ (r[..., None] * u)
    cap = (a @ a_inv @ a.T) * (u @ u.transpose(1, 2))
    if g is not None:
        g = g.to(work)
        grad = grad + b.T @ (r[..., None] * g)
        cross = (a @ a_inv @ b.T) * (u @ g.transpose(1, 2))
        cap = cap + cross + cross.transpose(1, 2) + (b @ a_inv @ b.T) * (g @ g.transpose(1, 2))
    cap = cap + torch.eye(cap.shape[-1], dtype=work, device=dev)
    z = a_inv @ grad  # A^-1 grad
    rhs = ((a @ z) * u).sum(-1)
    if g is not None:
        rhs = rhs + ((b @ z) * g).sum(-1)
    y = torch.linalg.solve(cap, rhs.unsqueeze(-1)).squeeze(-1)  # (P, K)
    wy = a.T @ (y[..., None] * u)
    if g is not None:
        wy = wy + b.T @ (y[..., None] * g)
    step = -(z - a_inv @ wy)
    return step.to(path.dtype), grad.to(path.dtype)


def _resample_matrix(nodes_from: int, nodes_to: int, interpolation: str) -> np.ndarray:
    """(nodes_to, nodes_from): the curve through ``nodes_from`` nodes at t_j = j / (nodes_from - 1)
    (not-a-knot cubic spline or polygon), evaluated at ``nodes_to`` evenly spaced parameters."""
    t = np.linspace(0, 1, nodes_to)
    knots, eye = np.linspace(0, 1, nodes_from), np.eye(nodes_from)
    if interpolation == "linear":
        return np.stack([np.interp(t, knots, eye[j]) for j in range(nodes_from)], axis=1)
    from scipy.interpolate import CubicSpline

    return CubicSpline(knots, eye, bc_type="not-a-knot")(t)


def resample(path: torch.Tensor, nodes: int, interpolation: str = "cubic") -> torch.Tensor:
    """The curve through the nodes of ``path`` (P, M, D) (``interpolation``: "cubic", the
    not-a-knot spline, or "linear") at ``nodes`` evenly spaced parameters: (P, nodes, D),
    with the end nodes kept exactly."""
    mat = torch.as_tensor(_resample_matrix(path.shape[1], int(nodes), interpolation), dtype=path.dtype,
                          device=path.device)
    out = torch.einsum("nm,pmd->pnd", mat, path)
    out[:, 0], out[:, -1] = path[:, 0], path[:, -1]
    return out


@dataclass
class _Solve:
    """State of one Gauss-Newton solve at one discretisation."""

    path: torch.Tensor
    energy: torch.Tensor
    converged: torch.Tensor
    grad_norm0: torch.Tensor | None
    iterations: int = 0
    trace: list = field(default_factory=list)
    vjp_evals: int = 0
    vjp_points: int = 0


class GaussNewtonSolver:
    """Gauss-Newton (Levenberg-Marquardt) on the true curve energy.

    Each iteration linearises the residuals at the current path (one batched score
    evaluation, kept differentiable, and one vector-Jacobian product through the score) and
    solves the normal equations, damped by mu I, with ``gauss_newton_step``. The trial is
    accepted when the true energy falls by at least 1e-4 of the decrease the linear model
    predicts (one batched score evaluation per trial; an accepted trial's evaluation is the
    next linearisation's, also when it came after rejected ones). mu starts at 0 (pure
    Gauss-Newton: quadratic convergence where the residuals vanish at the solution); a
    rejected trial raises it and re-solves without a new evaluation; a good step lowers it.
    ``damping="lm"``: x4 (at least 1e-2 of the mean stiffness) on a rejection, /10 after a
    very good step and back to 0 below a tenth of its unit; ``damping="nielsen"`` (Nielsen's
    rule): x2, x4, x8 ... on successive rejections, x max(1/3, 1 - (2 rho - 1)^3) after an
    accepted step with gain ratio rho, so that a problem whose undamped steps overshoot keeps
    the damping it needed. Damping matters where the residuals' own curvature, which
    Gauss-Newton leaves out, is large: e.g. when a path leaves the sphere's subspace
    (codimension > 1), or on a learned score with lam |s|^2 large. A pair stops as converged
    when its true gradient norm falls below ``gtol`` times its value on the first path, and
    as stalled when mu exceeds ``max_damping`` times its unit.

    Float32 scores (``float32_gtol`` set): a relative gradient of 1e-8 is below float32's
    rounding, so a score that computes in float32 (``score_is_float32``) gets
    ``float32_gtol`` instead. With ``etol`` > 0 a pair has also converged when its energy is
    stable: its last accepted step changed the energy by less than ``etol`` relative, and the
    Gauss-Newton model predicts that a full, undamped step would lower it by no more (checked
    at each linearisation; the undamped step costs a K x K solve, no network pass). Energy
    changes below 16 float32 rounding units then count as no change (in the acceptance test
    too). A metric without residual linearisation (no ``evaluate``) is handed to L-BFGS with
    the same budget.

    Coarse-to-fine (``levels``): the geodesic is first solved on paths of ``levels[0]``,
    ``levels[1]``, ... nodes (to ``coarse_gtol``, with the quadrature rule
    ``coarse_quadrature`` on every segment), each start resampled from the previous
    level's curve (the metric's interpolation); the finest path then starts from the last
    coarse curve. Most iterations run on a few cheap points; the path returned has
    ``nodes`` nodes and is a stationary point of the energy at ``nodes`` nodes.

    Args:
        nodes: nodes per path, endpoints included (>= 3).
        max_evals: budget of batched score evaluations (forward passes, > 0), all levels
            together; the coarse levels spend at most half of it, and stop once their points
            reach a quarter of the budget's (an evaluation of all P paths at ``nodes`` nodes
            counting as one).
        gtol: relative gradient-norm tolerance (> 0).
        warm_start: fixed-point iterations first (0: none); each costs one evaluation.
        max_damping: largest damping, in units of 1e-2 of the mean stiffness, before a
            pair stops as stalled.
        levels: node counts (increasing, each >= 3) of the coarse paths solved first; those
            above ``nodes`` are skipped, and one equal to ``nodes`` solves the final path with
            ``coarse_quadrature`` before its own rule; empty: none.
        coarse_quadrature: the rule per segment at the coarse levels ("gauss2", ...);
            None: the metric's own.
        coarse_gtol: relative gradient tolerance of the coarse levels (> 0).
        damping: "lm" or "nielsen" (see above).
        etol: relative energy change of the energy criterion (>= 0; 0: none).
        float32_gtol: the relative gradient tolerance for scores that compute in float32;
            None: ``gtol`` for every score.
    """

    DAMPING = ("lm", "nielsen")
    revision = 2  # of the algorithm: the solve cache keys on it (2: the undamped energy criterion)

    def __init__(self, nodes: int = 16, max_evals: int = 200, gtol: float = 1e-8, warm_start: int = 0,
                 max_damping: float = 1e12, levels=(), coarse_quadrature: str | None = None,
                 coarse_gtol: float = 1e-3, damping: str = "lm", etol: float = 0.0,
                 float32_gtol: float | None = None):
        self.nodes = _check_nodes(nodes)
        _check_positive("solver.max_evals", max_evals)
        _check_positive("solver.gtol", gtol)
        if int(warm_start) < 0:
            raise ScoregeoError(f"solver.warm_start must be >= 0, got {warm_start}")
        self.max_evals, self.gtol = int(max_evals), float(gtol)
        _check_positive("solver.max_damping", max_damping)
        self.warm_start, self.max_damping = int(warm_start), float(max_damping)
        levels = [int(n) for n in (levels or ())]
        if any(n < 3 for n in levels) or levels != sorted(set(levels)):
            raise ScoregeoError(f"solver.levels must be increasing node counts >= 3, got {levels}")
        self.levels = [n for n in levels if n <= self.nodes]  # those above nodes: skipped
        if coarse_quadrature is not None:
            from scoregeo_cli.geometry.metrics import quadrature_rule

            quadrature_rule(str(coarse_quadrature))  # validates
        self.coarse_quadrature = None if coarse_quadrature is None else str(coarse_quadrature)
        _check_positive("solver.coarse_gtol", coarse_gtol)
        self.coarse_gtol = float(coarse_gtol)
        if damping not in self.DAMPING:
            raise ScoregeoError(f"solver.damping must be one of {self.DAMPING}, got '{damping}'")
        self.damping = damping
        if not etol >= 0:
            raise ScoregeoError(f"solver.etol must be >= 0, got {etol}")
        self.etol = float(etol)
        if float32_gtol is not None:
            _check_positive("solver.float32_gtol", float32_gtol)
        self.float32_gtol = None if float32_gtol is None else float(float32_gtol)

    def __call__(self, metric: Metric, a: torch.Tensor, b: torch.Tensor,
                 init: torch.Tensor | None = None) -> GeodesicResult:
        if not hasattr(metric, "evaluate"):  # no residual structure: L-BFGS on its energy
            return OptimizerSolver(self.nodes, "lbfgs", 1.0, max(self.max_evals, 2), 1e-12,
                                   gtol=self.gtol)(metric, a, b, init)
        with SolveProgress("Gauss-Newton solve", metric, self.max_evals) as progress:
            return self._solve(metric, a, b, init, progress)

    def _coarse_metric(self, metric: Metric) -> Metric:
        if self.coarse_quadrature is None or getattr(metric, "quadrature", None) in (None, self.coarse_quadrature):
            return metric
        import copy

        coarse = copy.copy(metric)
        coarse.quadrature = self.coarse_quadrature
        return coarse

    def tolerances(self, metric: Metric, a: torch.Tensor) -> tuple[float, float]:
        """(gtol, etol) of a solve: ``float32_gtol`` for a score that computes in float32 (a
        network), else (or with ``float32_gtol`` None) ``gtol``; ``etol`` for both."""
        if self.float32_gtol is None:
            return self.gtol, self.etol
        if score_is_float32(metric.score, a):
            return self.float32_gtol, self.etol
        return self.gtol, self.etol

    def _solve(self, metric: Metric, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None,
               progress: SolveProgress) -> GeodesicResult:
        start, evals0, points0 = time.perf_counter(), metric.score.calls, metric.score.points
        path = straight_path(a, b, self.nodes) if init is None else init.clone()
        path0 = path
        trace: list[list[float]] = []
        vjps = vjp_points = it = 0
        gtol, etol = self.tolerances(metric, a)
        gnorm0 = None
        if self.warm_start:
            warm = FixedPointSolver(self.nodes, max_evals=min(self.warm_start, self.max_evals - 1) or 1,
                                    tol=1e-6)(metric, a, b, path)
            path, trace, it = warm.path, warm.energy_trace[:-1], warm.iterations
            gnorm0 = warm.grad_norm0.clone()  # at the first path
        elif self.levels and self.max_evals >= 3:
            interpolation = getattr(metric, "interpolation", "cubic")
            coarse_metric = self._coarse_metric(metric)
            coarse = None
            # the coarse levels spend at most a quarter of the budget, counted in points scored
            # (an evaluation of all paths at the final discretisation is one evaluation)
            full = path0.shape[0] * metric.curve(self.nodes).weights.shape[0]
            coarse_points = points0 + self.max_evals * full / 4
            coarse_calls = evals0 + max(1, min(self.max_evals // 2, self.max_evals - 2))  # half of the calls
            for n in self.levels:
                first = (straight_path(a, b, n) if coarse is None and init is None
                         else resample(path0 if coarse is None else coarse, n, interpolation))
                state = self._iterate(coarse_metric, first, self.coarse_gtol, None,
                                      lambda: metric.score.points >= coarse_points
                                      or metric.score.calls >= coarse_calls, progress, 10 * etol)
                coarse, it = state.path, it + state.iterations
                vjps, vjp_points = vjps + state.vjp_evals, vjp_points + state.vjp_points
            path = resample(coarse, self.nodes, interpolation)
            # the tolerance stays relative to the first path: its gradient, counted as a solve's work
            points = metric.score.points
            gnorm0 = metric.energy_gradient(path0)[1].flatten(1).norm(dim=-1)
            vjps, vjp_points = vjps + 1, vjp_points + metric.score.points - points
        state = self._iterate(metric, path, gtol, gnorm0, lambda: metric.score.calls - evals0 >= self.max_evals,
                              progress, etol)
        result = GeodesicResult(state.path, state.energy, metric.score.calls - evals0, 0.0, state.converged,
                                it + state.iterations, trace + state.trace, grad_norm0=state.grad_norm0,
                                vjp_evals=vjps + state.vjp_evals, vjp_points=vjp_points + state.vjp_points)
        result = _finish(metric, result, path0, gtol, points0)
        result.converged = result.converged | state.converged  # the energy criterion (etol) too
        result.seconds = time.perf_counter() - start
        return result

    @staticmethod
    def _linearize(pieces: list, active: torch.Tensor, p: int, state: _Solve):
        """r, u, g (``Evaluation.linearize``) of the active pairs, from the evaluations that
        hold their current paths: ``pieces`` is a list of (pair indices, evaluation, rows
        wanted), one vector-Jacobian product per evaluation still needed."""
        wanted = torch.zeros(p, dtype=torch.bool, device=active.device)
        wanted[active] = True
        out = None
        for idx, ev, rows in pieces:
            take = rows & wanted[idx]
            if not bool(take.any()):
                continue
            r, u, g = ev.linearize()
            state.vjp_evals, state.vjp_points = state.vjp_evals + 1, state.vjp_points + u.shape[0] * u.shape[1]
            if out is None:
                out = [torch.zeros((p, *x.shape[1:]), dtype=x.dtype, device=x.device) for x in (r, u, g)]
            for full, part in zip(out, (r, u, g)):
                full[idx[take]] = part[take].detach()
        return tuple(x[active] for x in out)

    def _iterate(self, metric: Metric, path: torch.Tensor, gtol: float, gnorm0: torch.Tensor | None,
                 exhausted, progress: SolveProgress, etol: float = 0.0) -> _Solve:
        """Levenberg-Marquardt from ``path`` until every pair has converged (gradient norm
        <= gtol * gnorm0; None: its value at ``path``) or stalled, or the score's call
        budget is spent (``exhausted()``)."""
        path = path.clone()
        p = path.shape[0]
        dev, dtype = path.device, path.dtype
        ev = metric.evaluate(path)
        energy = ev.energy.detach().clone()
        state = _Solve(path, energy, torch.zeros(p, dtype=torch.bool, device=dev), gnorm0, trace=[energy.tolist()])
        idx_all = torch.arange(p, device=dev)
        pieces = [(idx_all, ev, torch.ones(p, dtype=torch.bool, device=dev))]
        done = torch.zeros(p, dtype=torch.bool, device=dev)
        gnorm = torch.zeros(p, dtype=dtype, device=dev)
        model = metric.curve(path.shape[1])
        diag = torch.as_tensor(model.stiffness.diagonal()[1:-1].mean(), dtype=dtype, device=dev)
        mu_unit = torch.full((p,), 1e-2, dtype=dtype, device=dev) * diag
        mu = torch.zeros(p, dtype=dtype, device=dev)  # Levenberg-Marquardt damping
        nu = torch.full((p,), 2.0, dtype=dtype, device=dev)  # Nielsen's growth factor
        nielsen = self.damping == "nielsen"
        last_gain = torch.full((p,), float("inf"), dtype=dtype, device=dev)  # of each pair's last accepted step
        # energy changes below 16 rounding units are noise: of the path's dtype, or of float32,
        # the precision networks run in, when etol asks for a float32-reachable criterion
        self._floor = 16 * torch.finfo(torch.float32 if etol > 0 else dtype).eps
        while True:
            active = idx_all[~done]
            if active.numel() == 0:
                break
            r, u, g = self._linearize(pieces, active, p, state)
            pieces = []
            step, grad = gauss_newton_step(model, metric.lam, path[active], r, u, g, mu[active])
            norm = grad.flatten(1).norm(dim=-1)
            if state.grad_norm0 is None:
                state.grad_norm0 = norm.clone()
            gnorm[active] = norm
            conv = norm <= gtol * state.grad_norm0[active]
            limit_e = etol * energy[active].abs()
            quiet = (last_gain[active] <= limit_e) & ~conv  # candidates of the energy criterion
            if etol > 0 and bool(quiet.any()):  # energy stable: the undamped model promises < etol too
                q = quiet.nonzero().squeeze(1)
                undamped, _ = gauss_newton_step(model, metric.lam, path[active[q]], r[q], u[q], g[q], None)
                promise = -0.5 * (undamped * grad[q]).flatten(1).sum(-1)
                conv[q] = promise <= limit_e[q]
            state.converged[active] |= conv
            done[active] |= conv
            if exhausted():
                break
            keep = ~conv
            active, step, grad = active[keep], step[keep], grad[keep]
            if active.numel() == 0:
                break
            state.iterations += 1
            r, u, g = r[keep], u[keep], g[keep]
            e0 = energy[active]
            pending = torch.ones_like(e0, dtype=torch.bool)
            first = True
            while bool(pending.any()) and not exhausted():
                sel = pending.nonzero().squeeze(1)
                if not first:  # re-solve the rejected pairs with their raised damping
                    step[sel], _ = gauss_newton_step(model, metric.lam, path[active[sel]], r[sel], u[sel],
                                                     g[sel], mu[active[sel]])
                first = False
                mu_sel = mu[active[sel]]
                pred = (-0.5 * (step[sel] * grad[sel]).flatten(1).sum(-1)
                        + 0.5 * mu_sel * (step[sel] ** 2).flatten(1).sum(-1))
                trial = path[active[sel]].clone()
                trial[:, 1:-1] += step[sel]
                ev_trial = metric.evaluate(trial)
                e_trial = ev_trial.energy.detach()
                check_finite(e_trial, "the curve energy", f"solver iteration {state.iterations}")
                gain = e0[sel] - e_trial
                floor = self._floor * e0[sel].abs()  # rounding: not measurable below
                rho = gain / pred.clamp_min(1e-300)
                ok = (rho > 1e-4) | ((pred <= floor) & (gain >= -floor))
                acc = sel[ok]
                last_gain[active[acc]] = gain[ok].abs()
                path[active[acc]] = trial[ok]
                energy[active[acc]] = e_trial[ok]
                if bool(ok.any()):
                    pieces.append((active[sel], ev_trial, ok))
                pending[acc] = False
                scale = mu_unit[active[sel]]
                if nielsen:
                    nu_sel = nu[active[sel]]
                    shrink = (1 - (2 * rho - 1) ** 3).clamp(min=1 / 3, max=1.0)
                    new_mu = torch.where(ok, mu_sel * shrink, torch.maximum(mu_sel, scale) * nu_sel)
                    nu[active[sel]] = torch.where(ok, torch.full_like(nu_sel, 2.0), 2 * nu_sel)
                else:  # trust the model more after good steps, less after poor ones
                    new_mu = torch.where(rho > 0.75, mu_sel / 10,
                                         torch.where(rho < 0.25, (2 * mu_sel).clamp_min(scale), mu_sel))
                    new_mu = torch.where(ok, torch.where(new_mu < 0.1 * scale, torch.zeros_like(new_mu), new_mu),
                                         (4 * mu_sel).clamp_min(scale))
                mu[active[sel]] = new_mu
                stalled = ~ok & (new_mu > self.max_damping * scale)
                done[active[sel[stalled]]] = True
                pending[sel[stalled]] = False
            done[active[pending]] = True  # budget spent in the line search
            state.trace.append(energy.tolist())
            progress.update(energy, gnorm / state.grad_norm0)
            if bool(done.all()) or exhausted():
                break
        state.path, state.energy = path, energy
        return state
