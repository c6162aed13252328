"""`scoregeo bench`: geodesic solvers side by side on problems with a known answer.

Every solver minimises the same energy: the run's default metric (conf/metric/stein.yaml,
with ``--normalize``). For each problem and solver: batched score evaluations (forward
passes) and vector-Jacobian products through the score, forward-equivalents (``fwd_eq``:
points scored forward plus points differentiated backward times the measured cost of a VJP
relative to a forward, in units of one batched forward at the metric's quadrature points of
all paths), wall time, the share of wall time spent outside the score's forward passes
(``bwd+ovh``: backward passes through the network plus the solver's own work),
final curve energy, the true gradient norm relative to the start (``grad_rel``), the
continuous g-length, ground-truth error (the great circle / the true rotation), on the
sphere the distance to the metric's own geodesic (``geometry.truth``), and the ratios to
``adam_reference`` measured in the same run. ``network_passes_per_pair``: the same cost in
single-point network passes per pair (forward points + backward points x the measured VJP
cost, over the pairs); ``seconds_per_pair``; with ``--reference``, ``g_length_error`` and
``ref_node_error`` against a fine reference (``reference_solve``); ``nodes``: the nodes solved
on (``nodes_per_pair``, each pair's, where the solver chooses them); ``forward_passes_per_pair``
and ``backward_passes_per_pair``: the two counts apart (a run's ``network_passes_per_pair``
is their sum). Printed as a table and
written as JSON. Without ``--solvers`` the UNet gets the fixed point and the default only.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from scoregeo_cli import paths
from scoregeo_cli.methods.baselines import lerp
from scoregeo_cli.build import instantiate
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.data.synthetic import Sphere, polyline_distance
from scoregeo_cli.evaluation.geometry import TruthReference, truth_rows
from scoregeo_cli.geometry.truth import manifold_metric_geodesic
from scoregeo_cli.io.files import atomic_write_json
from scoregeo_cli.reporting.provenance import git_commit, git_modified, machine

SOLVERS = ("adam_reference", "adam", "lbfgs", "fixed_point", "gauss_newton_plain", "newton", "gauss_newton")
# what `scoregeo bench` runs on each problem without --solvers: the optimisers on the UNet take
# tens of minutes on a CPU (ask for them with --solvers)
DEFAULT_SOLVERS = {"sphere": SOLVERS, "mnist": ("fixed_point", "gauss_newton")}
SLOW_ON_UNET = ("adam_reference", "adam")  # run on the UNet only with --unet-adam


def compose_config(overrides: list[str]):
    """The config of `scoregeo run` with ``overrides``. Hydra's basic sweeper and launcher
    stand in for scoregeo's: only the app registers those (the bench runs no sweep), and
    a composition from outside the repository would not find them otherwise."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(paths.CONF_DIR)):
            return compose("config", overrides=[*overrides, "hydra/sweeper=basic", "hydra/launcher=basic"])
    finally:
        GlobalHydra.instance().clear()


def solver_from_config(name: str, nodes: int):
    return instantiate(compose_config([f"solver={name}", f"solver.nodes={nodes}"]).solver)


def metric_from_config(score, normalize: str = "none"):
    """The default metric of `scoregeo run` (conf/metric) on ``score``."""
    return instantiate(compose_config([f"metric.normalize={normalize}"]).metric)(score=score)


def reference_solve(metric, a: torch.Tensor, b: torch.Tensor, nodes: int, max_evals: int = 60):
    """The fine reference of a problem: the default solver's curve at twice its solve's
    segments (at least 31 nodes), solved again there by Gauss-Newton to a tight tolerance
    (relative gradient 1e-9, or energy stable to 1e-7; at most ``max_evals`` evaluations)."""
    from scoregeo_cli.geometry.solvers import GaussNewtonSolver, resample

    start = solver_from_config("gauss_newton", nodes)(metric, a, b)
    curve = solved_curve(start)
    fine = max(31, 2 * (curve.shape[1] - 1) + 1)
    solver = GaussNewtonSolver(fine, max_evals=max_evals, gtol=1e-9, etol=1e-7)
    return solver(metric, a, b, resample(curve, fine, metric.interpolation))


def solved_curve(result) -> torch.Tensor:
    """The nodes a solve minimised its energy on (the default solver returns that curve
    resampled at the frames' nodes)."""
    return result.path if result.solved_path is None else result.solved_path


def reference_errors(metric, path: torch.Tensor, reference: torch.Tensor, ref_length: torch.Tensor,
                     a: torch.Tensor, b: torch.Tensor) -> dict:
    """g-length error (max over pairs, relative) and the largest node distance to the fine
    reference curve (relative to |b - a|)."""
    from scoregeo_cli.geometry.solvers import resample

    dense = resample(reference, 8 * (reference.shape[1] - 1) + 1, metric.interpolation)
    length = metric.length(path)
    node = max(float(polyline_distance(path[p], dense[p]).max() / (b[p] - a[p]).norm()) for p in range(len(a)))
    return {"g_length_error": float(((length - ref_length).abs() / ref_length).max()), "ref_node_error": node}


def vjp_cost(metric, path: torch.Tensor, repeats: int = 5, order: int = 1) -> float:
    """Measured cost, relative to one forward pass on the batch of quadrature points of
    ``path``, of one vector-Jacobian product through the score (``order`` 1: the backward
    pass after a forward with its graph) or of one Hessian-vector product (``order`` 2: a
    backward through the graph of a VJP, as each conjugate-gradient step of Newton-CG costs
    once its iteration's graph is built): the median over ``repeats`` of paired ratios, each
    pair timed back to back (a median of paired ratios moves less than a ratio of minima when
    other work shares the machine)."""
    import numpy as np

    phi = torch.as_tensor(metric.curve(path.shape[1]).phi, dtype=path.dtype, device=path.device)
    points = torch.einsum("kj,pjd->pkd", phi, path).detach()
    ratios = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            metric.direction(points)
        forward = time.perf_counter() - start
        x = points.clone().requires_grad_(True)
        start = time.perf_counter()
        u = metric.direction(x)
        if order == 1:
            torch.autograd.grad(u, x, grad_outputs=torch.ones_like(u))
            product = time.perf_counter() - start - forward
        else:
            (g,) = torch.autograd.grad(u, x, grad_outputs=torch.ones_like(u), create_graph=True)
            start = time.perf_counter()
            torch.autograd.grad(g, x, grad_outputs=torch.ones_like(g))
            product = time.perf_counter() - start
        ratios.append(product / forward)
    return max(float(np.median(ratios)), 0.0)


def sphere_problem(pairs: int, seed: int, normalize: str = "none"):
    """S^2 in R^10, sigma 0.15, lambda 1000, 16 nodes (the issue's reference problem)."""
    sphere = Sphere(2, 10, 1.0, centre_offset=0.5, angle_range=(60, 150), seed=seed)
    a, b = sphere.pairs(pairs, torch.Generator().manual_seed(seed))
    metric = metric_from_config(sphere.exact_score(0.15), normalize)
    truths = [manifold_metric_geodesic(sphere, metric, a[p], b[p]) for p in range(pairs)]
    references = [TruthReference(t, 2049) for t in truths]

    def error(path: torch.Tensor) -> dict:
        rows = [truth_rows(references[p], "", p, path[p]) for p in range(pairs)]
        return {"error_max": max(float(polyline_distance(path[p], sphere.geodesic(a[p], b[p])).max())
                                 for p in range(pairs)),
                "metric_error_max": max(r[0]["value"] for r in rows),
                "truth_length": sum(t.length for t in truths) / pairs}

    return metric, a, b, error


def mnist_problem(pairs: int, seed: int, normalize: str = "none"):
    """Rotated digits through the packaged UNet at t = 400, lambda 1000.

    Ground truth lives in the noisy space where the geodesic is computed: the true rotation
    of the digit noised with the pair's own noise, sqrt(abar) x(theta) + sqrt(1 - abar) eps,
    sampled at 257 angles between theta_a and theta_b.
    """
    from scoregeo_cli.data.rotated_mnist import RotatedDigits
    from scoregeo_cli.schedule import noise_to
    from scoregeo_cli.scores.unet import load_unet_score

    score = load_unet_score(None, t=400)
    generator = torch.Generator().manual_seed(seed)
    dataset = RotatedDigits()
    digits, theta_a, theta_b, _ = dataset.pairs(pairs, generator)
    angles = theta_a[:, None] + torch.linspace(0, 1, 257, dtype=torch.float64) * (theta_b - theta_a)[:, None]
    truth = 2 * RotatedDigits.frames(digits, angles).double().flatten(2) - 1  # (P, 257, 784) in [-1, 1]
    eps = torch.randn(pairs, 1, 784, generator=generator, dtype=torch.float64)
    truth = noise_to(truth, eps, score.t, score.alphas_cumprod)
    metric = metric_from_config(score, normalize)

    def error(path: torch.Tensor) -> dict:
        return {"error_max": max(float(polyline_distance(path[p], truth[p]).max()) for p in range(pairs))}

    return metric, truth[:, 0].contiguous(), truth[:, -1].contiguous(), error


PROBLEMS = {"sphere": ("sphere S2 in R10 (sigma 0.15, lam 1000)", sphere_problem),
            "mnist": ("rotated digits, packaged UNet, t 400 (lam 1000)", mnist_problem)}


def run_bench(pairs: int = 4, seed: int = 0, nodes: int = 16, solvers=None,
              problems=("sphere", "mnist"), normalize: str = "none", reference: bool = False,
              unet_adam: bool = False) -> list[dict]:
    """Records of every (problem, solver); ``solvers`` None: ``DEFAULT_SOLVERS`` per problem.
    ``reference``: also solve a fine reference (``reference_solve``) and record every path's
    g-length error and node distance to it. ``unet_adam``: run Adam and the paper's recipe on
    the UNet too (about an hour on a CPU); otherwise they are left out there."""
    records = []
    for key in problems:
        names = DEFAULT_SOLVERS[key] if solvers is None else solvers
        if key == "mnist" and not unet_adam:
            names = [n for n in names if n not in SLOW_ON_UNET]
        problem, make = PROBLEMS[key]
        metric, a, b, error = make(pairs, seed, normalize)
        problem = (f"{problem}, normalize={normalize}, {metric.interpolation} {metric.quadrature}, "
                   f"{nodes} nodes")
        line = lerp(a, b, nodes)
        cost = vjp_cost(metric, line)
        hcost = vjp_cost(metric, line, order=2) if "newton" in names else 0.0
        unit = a.shape[0] * metric.curve(nodes).phi.shape[0]  # points of one batched forward
        refs = {}
        if reference:
            start = time.perf_counter()
            ref = reference_solve(metric, a, b, nodes)
            ref_length = metric.length(ref.path)
            refs = {"path": ref.path, "length": ref_length}
            print(f"{problem}: fine reference ({ref.path.shape[1]} nodes) in {time.perf_counter() - start:.1f} s, "
                  f"{int(ref.converged.sum())}/{len(a)} converged", flush=True)

        def against_reference(path):
            return reference_errors(metric, path, refs["path"], refs["length"], a, b) if refs else {}

        records.append({"problem": problem, "solver": "lerp (no solve)", "score_evals": 0, "vjp_evals": 0,
                        "fwd_eq": 0.0, "network_passes_per_pair": 0.0, "vjp_cost": cost, "seconds": 0.0,
                        "outside_network": float("nan"), "pairs": a.shape[0], "converged": a.shape[0],
                        "energy": float(metric.energy(line).mean()), "grad_rel": 1.0,
                        "g_length": float(metric.length(line).mean()), **error(line), **against_reference(line)})
        for name in names:
            solver = solver_from_config(name, nodes)
            metric.score.reset_counters()
            start = time.perf_counter()
            result = solver(metric, a, b)
            wall = time.perf_counter() - start
            curve = solved_curve(result)
            records.append({
                "problem": problem, "solver": name, "score_evals": result.score_evals,
                "vjp_evals": result.vjp_evals, "vjp_cost": cost,
                "fwd_eq": (result.score_points + cost * result.vjp_points + hcost * result.hvp_points) / unit,
                "network_passes_per_pair": (result.score_points + cost * result.vjp_points
                                            + hcost * result.hvp_points) / a.shape[0],
                "forward_passes_per_pair": result.score_points / a.shape[0],
                "backward_passes_per_pair": result.vjp_points / a.shape[0],
                "hessian_passes_per_pair": result.hvp_points / a.shape[0], "hvp_cost": hcost,
                "seconds": wall, "seconds_per_pair": wall / a.shape[0], "outside_network": 1 - metric.score.seconds / wall,
                "energy": float(result.energy.mean()),
                "grad_rel": float((result.grad_norm / result.grad_norm0).max()),
                "g_length": float(metric.length(curve).mean()), **error(curve),
                **against_reference(curve), "solve_nodes": curve.shape[1],
                "nodes_per_pair": (None if getattr(result, "nodes_per_pair", None) is None
                                   else result.nodes_per_pair.tolist()),
                "converged": int(result.converged.sum()), "pairs": a.shape[0],
            })
            print(f"{problem}: {name} done in {wall:.1f} s", flush=True)
        ref = next(r for r in records if r["problem"] == problem and r["solver"] == "adam_reference") \
            if "adam_reference" in names else None
        for r in records:
            if r["problem"] == problem and ref is not None and r["score_evals"]:
                r["evals_vs_reference"] = r["score_evals"] / ref["score_evals"]
                r["fwd_eq_vs_reference"] = r["fwd_eq"] / ref["fwd_eq"]
                r["time_vs_reference"] = r["seconds"] / ref["seconds"]
    return records


def _nodes(record: dict) -> str:
    """The nodes solved on: each pair's range where they differ."""
    per_pair = record.get("nodes_per_pair") or ([record["solve_nodes"]] if "solve_nodes" in record else None)
    if not per_pair:
        return "-"
    low, high = min(per_pair), max(per_pair)
    return str(low) if low == high else f"{low}-{high}"


def format_records(records: list[dict]) -> str:
    nan = float("nan")
    head = (f"{'solver':<19} {'evals':>6} {'vjps':>5} {'passes/pair':>11} {'fwd_eq':>8} {'x ref':>7} "
            f"{'s/pair':>7} {'bwd+ovh':>8} {'energy':>10} {'grad_rel':>9} {'conv':>5} {'g_length':>9} "
            f"{'g_len_err':>9} {'ref_node':>8} {'error_max':>10} {'metric_err':>10} {'nodes':>6}")
    lines = []
    for problem in dict.fromkeys(r["problem"] for r in records):
        first = next(r for r in records if r["problem"] == problem)
        truth = f"; metric geodesic g-length {first['truth_length']:.5g}" if "truth_length" in first else ""
        lines += [f"\n{problem} (VJP = {first['vjp_cost']:.2f} forward{truth})", head, "-" * len(head)]
        for r in (r for r in records if r["problem"] == problem):
            lines.append(f"{r['solver']:<19} {r['score_evals']:>6d} {r['vjp_evals']:>5d} "
                         f"{r['network_passes_per_pair']:>11.0f} {r['fwd_eq']:>8.1f} "
                         f"{r.get('fwd_eq_vs_reference', nan):>7.3f} {r.get('seconds_per_pair', 0.0):>7.2f} "
                         f"{100 * r['outside_network']:>7.1f}% "
                         f"{r['energy']:>10.5g} {r['grad_rel']:>9.1e} {r['converged']:>2d}/{r['pairs']:<2d} "
                         f"{r['g_length']:>9.5g} {r.get('g_length_error', nan):>9.1e} "
                         f"{r.get('ref_node_error', nan):>8.1e} {r['error_max']:>10.3g} "
                         f"{r.get('metric_error_max', nan):>10.3g} {_nodes(r):>6}")
    return "\n".join(lines)


def main(argv: list[str], prog: str = "scoregeo bench") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4, help="pairs solved together (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--solvers", nargs="+", default=None, choices=SOLVERS,
                        help="solvers of every problem (default: all on the sphere; fixed_point and "
                             "gauss_newton on the UNet, where the optimisers take tens of minutes)")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=[*PROBLEMS, "oracle"],
                        help="sphere and mnist (the default), and oracle: the exact orbit score per t, "
                             "converged and start independence (studies/oracle_bench.py; long)")
    parser.add_argument("--ts", nargs="+", type=int, default=[50, 100, 200, 400],
                        help="oracle: the levels t (default %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="oracle: the seeds of experiment=learned_vs_exact (default %(default)s)")
    parser.add_argument("--oracle-pairs", type=int, default=10, help="oracle: pairs per seed (default 10)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="oracle: config overrides of its runs, e.g. solver.hessian=exact score.angle_step=0.25")
    parser.add_argument("--normalize", default="none", choices=["none", "unit"],
                        help="metric.normalize of every problem (default: none, the raw score)")
    parser.add_argument("--reference", action="store_true",
                        help="also solve a fine reference (2x the segments, tight tolerance) and report "
                             "each path's g-length error and node distance to it")
    parser.add_argument("--unet-adam", action="store_true",
                        help="also run adam and adam_reference on the UNet (about an hour on a CPU)")
    parser.add_argument("--out", default="outputs/bench/bench.json", help="JSON results (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, fastest on a shared 2-core machine; 0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads < 0:
        raise ScoregeoError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if "oracle" in args.problems:
        from scoregeo_cli.studies.oracle_bench import format_oracle, run_oracle

        if args.oracle_pairs < 1 or any(t < 1 or t > 999 for t in args.ts):
            raise ScoregeoError(f"--oracle-pairs must be >= 1 and --ts levels in 1..999, got {args.oracle_pairs} "
                                f"and {args.ts}")
        oracle = run_oracle(args.ts, args.seeds, args.oracle_pairs, compose_config, args.set)
        print(format_oracle(oracle))
    problems = [p for p in args.problems if p != "oracle"]
    records = run_bench(args.pairs, args.seed, args.nodes, args.solvers, problems, args.normalize,
                        args.reference, args.unet_adam) if problems else []
    if records:
        print(format_records(records))
    if "oracle" in args.problems:  # with where it comes from: the command (its --set overrides), commit, machine
        provenance = {"command": shlex.join([*prog.split(), *argv]), "commit": git_commit(),
                      "modified": git_modified(), "machine": machine()}
        records = {"provenance": provenance, "solvers": records, "oracle": oracle}
    atomic_write_json(Path(args.out), records)
    print(f"\nwritten {args.out}")
    return 0
