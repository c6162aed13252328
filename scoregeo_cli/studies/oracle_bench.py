"""`scoregeo bench --problems oracle`: the solver on the exact orbit score, where the truth is
known, per level t: does it converge, and does it depend on where it starts?

The problem is that of ``scoregeo run experiment=learned_vs_exact score=orbit score.t=T
seed=S``: the same pairs of the orbit set (two test digits per class of real MNIST, each
rotated between two angles), the same shared noise, the same exact score of the rotation
orbits (``score.angle_step``) and the same metric and solver settings, composed from the
configs. For each pair the solver runs twice with the same settings: from the straight line
(LERP, what a run does) and from the noised true rotation (the pair's digit at evenly spaced
angles from theta_a to theta_b, noised with the pair's noise, at the first node count of the
refinement's ladder that holds the frames: 17 for 16 frames).
Per t it reports the pairs that converged from LERP (and from the true rotation), the pairs
whose LERP solve ended within 1% of the true-start solve's energy or lower ("start
independent"), the resolution chosen, evaluations, network passes and seconds per pair.
The two solves may end at different resolutions, and their quadrature energies then differ by
the discretisation as well as by the curve; so the energies compared are each curve's continuous
energy at constant speed, L^2 / 2, with L its g-length measured alike for both (65 nodes, 32
Gauss points per segment). The quadrature energies' ratio is recorded too.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from scoregeo_cli.build import build_metric, build_score, instantiate
from scoregeo_cli.schedule import noise_to

START_TOLERANCE = 0.01  # the LERP solve may end at most 1% above the true-start solve
COMMON_NODES, COMMON_POINTS = 65, 32  # the rule both solves' curves are measured with


def oracle_problem(t: int, seed: int, pairs: int, compose, overrides=()):
    """(metric, solver, a, b, true rotation path maker) of ``experiment=learned_vs_exact
    score=orbit score.t=t seed=seed n_pairs=pairs``; ``compose(overrides)`` composes a config."""
    cfg = compose(["experiment=learned_vs_exact", "score=orbit", f"score.t={t}", f"seed={seed}",
                   f"n_pairs={pairs}", *overrides])
    dataset = instantiate(cfg.dataset)
    dataset.check()
    generator = torch.Generator().manual_seed(int(cfg.seed))
    n = dataset.select(cfg.n_pairs, generator, resolution=None)  # as an image run draws its pairs ...
    score = build_score(cfg, dataset=dataset)
    space = instantiate(cfg.space)(score=score)
    eps = torch.randn(n, score.dim, generator=generator, dtype=torch.float64)  # ... and then its noise
    images_a, images_b = dataset.load(list(range(n)))
    ends = space.endpoints(space.encode(images_a), space.encode(images_b), eps)
    metric = build_metric(cfg, score)
    solver = instantiate(cfg.solver)

    def true_rotation(nodes: int) -> torch.Tensor:
        truth = dataset.truth(list(range(n)), torch.linspace(0, 1, nodes, dtype=torch.float64))
        clean = space.encode(truth.reshape(-1, *truth.shape[2:])).reshape(n, nodes, -1)
        path = noise_to(clean, eps[:, None], score.t, score.alphas_cumprod)
        path[:, 0], path[:, -1] = ends.a, ends.b
        return path

    return metric, solver, ends.a, ends.b, true_rotation


def start_nodes(solver) -> int:
    """Nodes of the true-rotation start: the frames' nodes, raised to the refinement's ladder
    (5, 9, 17, 33, 65 by doubled segments) where the solver refines, so that both starts are
    refined on the same ladder."""
    frames = int(solver.nodes)
    if getattr(solver, "refine_tol", None) is None or not hasattr(solver, "ladder_nodes"):
        return frames
    return solver.ladder_nodes(frames)


def start_independence(metric, solver, a, b, true_rotation) -> dict:
    """Both solves of one problem and what they say (per-pair lists and counts)."""
    records = {}
    for start in ("lerp", "true"):
        init = None if start == "lerp" else true_rotation(start_nodes(solver))
        metric.score.reset_counters()
        began = time.perf_counter()
        result = solver(metric, a, b, init)
        seconds = time.perf_counter() - began
        passes = (result.score_points + result.vjp_points + getattr(result, "hvp_points", 0)) / len(a)
        length = common_length(metric, result.path if result.solved_path is None else result.solved_path)
        records[start] = {"energy": result.energy.tolist(), "converged": result.converged.tolist(),
                          "length": length.tolist(), "continuous_energy": (length ** 2 / 2).tolist(),
                          "grad_rel": (result.grad_norm / result.grad_norm0).tolist(),
                          "resolved": None if result.resolved is None else result.resolved.tolist(),
                          "solve_nodes": int(result.solve_nodes or result.path.shape[1]),
                          "nodes_per_pair": None if result.nodes_per_pair is None else result.nodes_per_pair.tolist(),
                          "score_evals": result.score_evals, "network_passes_per_pair": passes,
                          "seconds_per_pair": seconds / len(a)}
    lerp, true = np.array(records["lerp"]["continuous_energy"]), np.array(records["true"]["continuous_energy"])
    records["start_independent"] = (lerp <= true * (1 + START_TOLERANCE)).tolist()
    records["lerp_over_true"] = (lerp / true).tolist()
    quadrature = np.array(records["lerp"]["energy"]) / np.array(records["true"]["energy"])
    records["lerp_over_true_quadrature"] = quadrature.tolist()
    return records


def common_length(metric, curves: torch.Tensor) -> torch.Tensor:
    """The continuous g-length (P,) of solved curves measured alike whatever resolution each
    solve chose: the curve at ``COMMON_NODES`` nodes (the same spline where its segments divide
    64), ``COMMON_POINTS`` Gauss points per segment (not counted in the solves' evaluations)."""
    from scoregeo_cli.geometry.solvers import resample

    score = metric.score
    saved = (score.calls, score.points, score.seconds)
    try:
        fine = resample(curves, COMMON_NODES, getattr(metric, "interpolation", "cubic"))
        return metric.length(fine, points=COMMON_POINTS)
    finally:
        score.calls, score.points, score.seconds = saved


def run_oracle(levels, seeds, pairs: int, compose, overrides=()) -> list[dict]:
    """One record per (t, seed): both solves of its pairs."""
    out = []
    for t in levels:
        for seed in seeds:
            began = time.perf_counter()
            metric, solver, a, b, true_rotation = oracle_problem(t, seed, pairs, compose, overrides)
            record = {"t": int(t), "seed": int(seed), "pairs": int(len(a)),
                      **start_independence(metric, solver, a, b, true_rotation)}
            out.append(record)
            print(f"oracle t={t} seed={seed}: {sum(record['lerp']['converged'])}/{len(a)} converged from LERP, "
                  f"{sum(record['start_independent'])}/{len(a)} start independent, "
                  f"{time.perf_counter() - began:.0f} s", flush=True)
    return out


def format_oracle(records: list[dict]) -> str:
    """Per t, pooled over seeds: converged and start-independent pairs, the LERP solve's
    median energy over the true-start one's, resolution and cost."""
    head = (f"{'t':>4} {'pairs':>5} {'conv lerp':>9} {'conv true':>9} {'indep.':>7} {'lerp/true med':>13} "
            f"{'max':>7} {'nodes':>6} {'resolved':>8} {'evals':>6} {'passes/pair':>11} {'s/pair':>7}")
    lines = [head, "-" * len(head)]
    for t in sorted({r["t"] for r in records}):
        rows = [r for r in records if r["t"] == t]
        n = sum(r["pairs"] for r in rows)
        conv = sum(sum(r["lerp"]["converged"]) for r in rows)
        conv_true = sum(sum(r["true"]["converged"]) for r in rows)
        indep = sum(sum(r["start_independent"]) for r in rows)
        ratio = np.concatenate([r["lerp_over_true"] for r in rows])
        resolved = [x for r in rows for x in (r["lerp"]["resolved"] or [])]
        nodes = max(r["lerp"]["solve_nodes"] for r in rows)  # the finest pair's
        evals = np.mean([r["lerp"]["score_evals"] for r in rows])
        passes = np.mean([r["lerp"]["network_passes_per_pair"] for r in rows])
        seconds = np.mean([r["lerp"]["seconds_per_pair"] for r in rows])
        lines.append(f"{t:>4} {n:>5} {conv:>5}/{n:<3} {conv_true:>5}/{n:<3} {indep:>3}/{n:<3} "
                     f"{float(np.median(ratio)):>13.4f} {float(ratio.max()):>7.3f} {nodes:>6} "
                     f"{(str(sum(resolved)) + '/' + str(len(resolved))) if resolved else '-':>8} "
                     f"{evals:>6.0f} {passes:>11.0f} {seconds:>7.2f}")
    return "\n".join(lines)
