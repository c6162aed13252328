"""`scoregeo bench`: geodesic solvers side by side on problems with a known answer.

For each problem and solver: batched score evaluations, wall time, the share of wall time
spent outside the score network's forward passes, final curve energy, ground-truth error,
and the ratios to ``adam_reference`` measured in the same run. Printed as a table and
written as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from scoregeo_cli.app import CONF_DIR
from scoregeo_cli.methods.baselines import lerp
from scoregeo_cli.build import instantiate
from scoregeo_cli.data.synthetic import Sphere, polyline_distance
from scoregeo_cli.geometry.metrics import SteinMetric
from scoregeo_cli.reporting.results import atomic_write_json

SOLVERS = ("adam_reference", "adam", "lbfgs", "fixed_point")


def solver_from_config(name: str, nodes: int):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=[f"solver={name}", f"solver.nodes={nodes}"])
    GlobalHydra.instance().clear()
    return instantiate(cfg.solver)


def sphere_problem(pairs: int, seed: int, normalize: str = "none"):
    """S^2 in R^10, sigma 0.15, lambda 1000, 16 nodes (the issue's reference problem)."""
    sphere = Sphere(2, 10, 1.0, centre_offset=0.5, angle_range=(60, 150), seed=seed)
    a, b = sphere.pairs(pairs, torch.Generator().manual_seed(seed))
    metric = SteinMetric(sphere.exact_score(0.15), 1000.0, normalize=normalize)

    def error(path: torch.Tensor) -> float:
        return max(float(polyline_distance(path[p], sphere.geodesic(a[p], b[p])).max()) for p in range(pairs))

    return metric, a, b, error


def mnist_problem(pairs: int, seed: int, normalize: str = "none"):
    """Rotated digits through the packaged UNet at t = 400, lambda 1000.

    Ground truth lives in the noisy space where the geodesic is computed: the true rotation
    of the digit noised with the pair's own noise, sqrt(abar) x(theta) + sqrt(1 - abar) eps,
    sampled at 257 angles between theta_a and theta_b.
    """
    from scoregeo_cli.data.rotated_mnist import RotatedDigits
    from scoregeo_cli.spaces.ddim import noise_to
    from scoregeo_cli.scores.unet import load_unet_score

    score = load_unet_score(None, t=400)
    generator = torch.Generator().manual_seed(seed)
    dataset = RotatedDigits()
    digits, theta_a, theta_b, _ = dataset.pairs(pairs, generator)
    angles = theta_a[:, None] + torch.linspace(0, 1, 257, dtype=torch.float64) * (theta_b - theta_a)[:, None]
    truth = 2 * RotatedDigits.frames(digits, angles).double().flatten(2) - 1  # (P, 257, 784) in [-1, 1]
    eps = torch.randn(pairs, 1, 784, generator=generator, dtype=torch.float64)
    truth = noise_to(truth, eps, score.t, score.alphas_cumprod)
    metric = SteinMetric(score, 1000.0, normalize=normalize)

    def error(path: torch.Tensor) -> float:
        return max(float(polyline_distance(path[p], truth[p]).max()) for p in range(pairs))

    return metric, truth[:, 0].contiguous(), truth[:, -1].contiguous(), error


PROBLEMS = {"sphere": ("sphere S2 in R10 (sigma 0.15, lam 1000)", sphere_problem),
            "mnist": ("rotated digits, packaged UNet, t 400 (lam 1000)", mnist_problem)}


def run_bench(pairs: int = 4, seed: int = 0, nodes: int = 16, solvers=SOLVERS,
              problems=("sphere", "mnist"), normalize: str = "none") -> list[dict]:
    records = []
    for key in problems:
        problem, make = PROBLEMS[key]
        metric, a, b, error = make(pairs, seed, normalize)
        problem = f"{problem}, normalize={normalize}"
        records.append({"problem": problem, "solver": "lerp (no solve)", "score_evals": 0, "seconds": 0.0,
                        "outside_network": float("nan"), "pairs": a.shape[0], "converged": a.shape[0],
                        "energy": float(metric.energy(lerp(a, b, nodes)).mean()),
                        "error_max": error(lerp(a, b, nodes))})
        for name in solvers:
            solver = solver_from_config(name, nodes)
            metric.score.reset_counters()
            start = time.perf_counter()
            result = solver(metric, a, b)
            wall = time.perf_counter() - start
            records.append({
                "problem": problem, "solver": name, "score_evals": result.score_evals,
                "seconds": wall, "outside_network": 1 - metric.score.seconds / wall,
                "energy": float(result.energy.mean()), "error_max": error(result.path),
                "converged": int(result.converged.sum()), "pairs": a.shape[0],
            })
            print(f"{problem}: {name} done in {wall:.1f} s", flush=True)
        ref = next(r for r in records if r["problem"] == problem and r["solver"] == "adam_reference") \
            if "adam_reference" in solvers else None
        for r in records:
            if r["problem"] == problem and ref is not None and r["score_evals"]:
                r["evals_vs_reference"] = r["score_evals"] / ref["score_evals"]
                r["time_vs_reference"] = r["seconds"] / ref["seconds"]
    return records


def format_records(records: list[dict]) -> str:
    head = (f"{'solver':<15} {'evals':>6} {'x ref':>7} {'seconds':>8} {'x ref':>7} {'s/pair':>7} "
            f"{'outside':>8} {'energy':>10} {'error_max':>10}")
    lines = []
    for problem in dict.fromkeys(r["problem"] for r in records):
        lines += [f"\n{problem}", head, "-" * len(head)]
        for r in (r for r in records if r["problem"] == problem):
            lines.append(f"{r['solver']:<15} {r['score_evals']:>6d} {r.get('evals_vs_reference', float('nan')):>7.3f} "
                         f"{r['seconds']:>8.3f} {r.get('time_vs_reference', float('nan')):>7.3f} "
                         f"{r['seconds'] / r['pairs']:>7.3f} {100 * r['outside_network']:>7.1f}% "
                         f"{r['energy']:>10.4g} {r['error_max']:>10.3g}")
    return "\n".join(lines)


def main(argv: list[str], prog: str = "scoregeo bench") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4, help="pairs solved together (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--normalize", default="none", choices=["none", "unit"],
                        help="metric.normalize of every problem (default: none, the raw score)")
    parser.add_argument("--out", default="outputs/bench/bench.json", help="JSON results (default %(default)s)")
    args = parser.parse_args(argv)
    records = run_bench(args.pairs, args.seed, args.nodes, args.solvers, args.problems, args.normalize)
    print(format_records(records))
    atomic_write_json(Path(args.out), records)
    print(f"\nwritten {args.out}")
    return 0
