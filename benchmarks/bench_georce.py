"""GEORCE's update on scoregeo's energy, against Gauss-Newton on the same nodes (a direction
tried for the stiff Stein metric and not kept: README, "Solver benchmark").

    python benchmarks/bench_georce.py --problem sphere --normalize none --max-evals 200
    python benchmarks/bench_georce.py --problem mnist --max-evals 200      # the packaged UNet, t = 400

GEORCE (Rygaard and Hauberg, 2025) freezes the metric at the current path, keeps the metric's
dependence on the path as a linear "force" term, minimises that quadratic in closed form and
line-searches between the old and the new path. On the Stein metric's quadrature energy
(``scoregeo_cli.geometry.solvers.normal_equations``: E = 1/2 x^T (S (x) I) x + 1/2 sum_k r_k^2,
r_k = sqrt(lam w_k) s(y_k).y'_k) the frozen quadratic's Hessian H0 is the normal matrix
without the score's Jacobian (the fixed point's), and the force term nu_k = lam w_k (s.y') J^T y'
makes the quadratic's gradient at the current path the true gradient of E. Its minimiser is
therefore x - H0^{-1} grad E: the Gauss-Newton step with the score-Jacobian terms left out of
the matrix but not of the gradient. The line search halves the step until Armijo's condition
(1e-4) holds on the true energy, per pair.

Both solvers run on the bench's problems (``scoregeo bench``: 4 pairs, seed 0, 16 nodes, cubic
spline with 4 Gauss points, lam 1000) within the same budget of batched score evaluations; it
prints per solver the mean energy, the largest relative gradient, the g-length and the single-
point forward plus backward passes per pair.
"""

from __future__ import annotations

import argparse
import time

import torch

from scoregeo_cli.geometry.solvers import straight_path
from scoregeo_cli.geometry.solvers.normal_equations import gauss_newton_solve, gauss_newton_step
from scoregeo_cli.studies.bench import mnist_problem, solver_from_config, sphere_problem


def georce(metric, a: torch.Tensor, b: torch.Tensor, nodes: int, max_evals: int, gtol: float = 1e-8):
    """GEORCE's iteration from the straight line: (path, energy, relative gradient, iterations,
    forward points, backward points)."""
    path = straight_path(a, b, nodes)
    calls0, points0, backward = metric.score.calls, metric.score.points, 0
    grad_norm0, iterations = None, 0
    while metric.score.calls - calls0 < max_evals:
        ev = metric.evaluate(path)
        r, u, g = ev.linearize()
        backward += u.shape[0] * u.shape[1]
        energy = ev.energy.detach()
        _, grad = gauss_newton_step(ev.model, metric.lam, path, r.detach(), u, g.detach())
        norm = grad.flatten(1).norm(dim=-1)
        grad_norm0 = norm if grad_norm0 is None else grad_norm0
        if bool((norm <= gtol * grad_norm0).all()):
            break
        step = -gauss_newton_solve(ev.model, metric.lam, u, torch.zeros_like(g), grad).to(path.dtype)
        slope = (grad * step).flatten(1).sum(-1)
        alpha, done, new = torch.ones_like(energy), torch.zeros_like(energy, dtype=torch.bool), path.clone()
        while not bool(done.all()) and metric.score.calls - calls0 < max_evals:
            trial = path.clone()
            trial[:, 1:-1] += alpha[:, None, None] * step
            accept = ~done & (metric.energy(trial).detach() <= energy + 1e-4 * alpha * slope)
            new[accept], done = trial[accept], done | accept
            alpha = torch.where(done, alpha, alpha / 2)
        path, iterations = new, iterations + 1
    energy, grad = metric.energy_gradient(path)
    return path, energy, grad.flatten(1).norm(dim=-1) / grad_norm0, iterations, \
        metric.score.points - points0, backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", choices=["sphere", "mnist"], default="sphere")
    parser.add_argument("--normalize", choices=["none", "unit"], default="none")
    parser.add_argument("--max-evals", type=int, default=200, help="batched score evaluations per solver")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    make = sphere_problem if args.problem == "sphere" else mnist_problem
    metric, a, b, _ = make(4, 0, args.normalize)
    pairs = len(a)

    began = time.perf_counter()
    path, energy, grad_rel, iterations, fwd, bwd = georce(metric, a, b, 16, args.max_evals)
    seconds = time.perf_counter() - began
    print(f"{args.problem}, normalize={args.normalize}, {args.max_evals} evaluations, {pairs} pairs, 16 nodes")
    print(f"  georce:             energy {float(energy.mean()):.6g}  grad_rel max {float(grad_rel.max()):.1e}  "
          f"g-length {float(metric.length(path).mean()):.6g}  iterations {iterations}  "
          f"passes/pair {(fwd + bwd) / pairs:.0f}  s/pair {seconds / pairs:.2f}")

    solver = solver_from_config("gauss_newton_plain", 16)
    solver.max_evals = args.max_evals
    began = time.perf_counter()
    result = solver(metric, a, b)
    seconds = time.perf_counter() - began
    grad_rel = result.grad_norm / result.grad_norm0
    print(f"  gauss_newton_plain: energy {float(result.energy.mean()):.6g}  grad_rel max {float(grad_rel.max()):.1e}  "
          f"g-length {float(metric.length(result.path).mean()):.6g}  converged {int(result.converged.sum())}/{pairs}  "
          f"passes/pair {(result.score_points + result.vjp_points) / pairs:.0f}  s/pair {seconds / pairs:.2f}")


if __name__ == "__main__":
    main()
