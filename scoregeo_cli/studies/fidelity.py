"""Score fidelity: how close a learned score is to the exact orbit score, and how well its
denoiser brings noised digits back (science.md section 8).

At a level t the relative score error of a model s_theta against the exact score s* is

    r_t = E |s_theta(x) - s*(x)|^2 / E |s*(x)|^2,

a ratio of sums over the same points (not a mean of per-point ratios). The exact score is
the orbit oracle (``scores/orbit.py``) of the orbit set: the rotations of a fixed set of
test digits (``dataset.pair_split=orbit_set``), smoothed by the forward process. Points are
drawn three ways, all at level t:

* ``orbit``: the noised orbit set, x = sqrt(abar_t) y + sqrt(1 - abar_t) eps, y an orbit-set
  digit at a uniform angle of ``train_angles``: where denoising score matching trains;
* ``lerp``: the nodes of LERP between the two ends of a pair, both noised with one shared
  eps as the image pipeline does;
* ``geodesic``: the nodes of the model's own Stein geodesic (lam, normalize) between those
  ends, solved by Gauss-Newton: the points a geodesic method actually visits.

The denoiser's round trip at t: an orbit-set digit noised to t and brought back by DDIM
(``ddim_steps``), PSNR in dB against the digit (images in [0, 1]). It bounds every method's
frame scores from above: a path cannot come back sharper than its endpoints do.

``scoregeo fidelity`` prints the table for packaged models and the oracle and writes it to
JSON; ``relative_score_error`` is the measure on any points.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from scoregeo_cli.errors import ScoregeoError

DEFAULT_MODELS = ("orbit", "unet_orbit", "unet_mnist", "unet_digits")
DEFAULT_LEVELS = (50, 100, 200, 400)


def relative_score_error(score, exact, points: torch.Tensor, chunk: int = 256) -> float:
    """sum_i |score(x_i) - exact(x_i)|^2 / sum_i |exact(x_i)|^2 over points (n, D).

    ``score`` and ``exact`` map (B, D) to (B, D); both are evaluated without gradients, in
    chunks, in float64 accumulation. 0 when the two fields agree on the points."""
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty (n, D) tensor, got shape {tuple(points.shape)}")
    num = den = 0.0
    with torch.no_grad():
        for x in points.split(chunk):
            s, e = score(x).double(), exact(x).double()
            num += float(((s - e) ** 2).sum())
            den += float((e ** 2).sum())
    if not den > 0:
        raise ValueError("the exact score is zero on every point: the relative error is undefined")
    return num / den


def _orbit_dataset(source: str):
    from scoregeo_cli.data.rotated_mnist import RotatedDigits

    return RotatedDigits(source=source, pair_split="orbit_set")


def _unet_fields(models) -> dict:
    """{name: (model, alphas_cumprod, meta)} of every checkpoint in ``models``, each read once and
    checked to be on the oracle's schedule before any work."""
    from scoregeo_cli.scores.unet import load_checkpoint
    from scoregeo_cli.training.unet import DEFAULT_SCHEDULE
    from scoregeo_cli.schedule import alphas_cumprod_from

    oracle_abar = alphas_cumprod_from(DEFAULT_SCHEDULE)
    loaded = {}
    for name in models:
        if name == "orbit":
            continue
        loaded[name] = load_checkpoint(name)
        abar = loaded[name][1]
        if abar.shape != oracle_abar.shape or not torch.allclose(abar, oracle_abar):
            raise ScoregeoError(f"{name} has another noise schedule than the orbit oracle's "
                                "(linear 1e-4..0.02 over 1000 levels); its errors would compare different levels")
    return loaded


def measure(models=DEFAULT_MODELS, levels=DEFAULT_LEVELS, source: str = "mnist5k", points: int = 256,
            pairs: int = 4, nodes: int = 8, max_evals: int = 40, lam: float = 1000.0, normalize: str = "none",
            ddim_steps: int = 20, seed: int = 0, progress=None) -> list[dict]:
    """One row per (model, t): relative score errors on the three point sets and the
    denoiser's round-trip PSNR. See the module docstring; ``models`` are ``orbit``, packaged
    UNet names or checkpoint paths."""
    from scoregeo_cli.evaluation.images import psnr
    from scoregeo_cli.geometry.stein import SteinMetric
    from scoregeo_cli.geometry.solvers import GaussNewtonSolver, straight_path
    from scoregeo_cli.scores.orbit import orbit_score
    from scoregeo_cli.scores.unet import SAMPLE_SHAPE, UNetScore
    from scoregeo_cli.training.unet import DEFAULT_SCHEDULE
    from scoregeo_cli.schedule import alphas_cumprod_from, check_level, noise_to
    from scoregeo_cli.spaces.ddim import ddim_denoise

    for name, value in (("points", points), ("pairs", pairs), ("ddim_steps", ddim_steps), ("max_evals", max_evals)):
        if int(value) < 1:
            raise ScoregeoError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if int(nodes) < 3:
        raise ScoregeoError(f"--nodes must be at least 3, got {nodes}")
    abar_all = alphas_cumprod_from(DEFAULT_SCHEDULE)
    for t in levels:
        check_level(int(t), abar_all)
    networks = _unet_fields(models)
    dataset = _orbit_dataset(source)
    gen = torch.Generator().manual_seed(seed)
    # the same digits, angles and noise for every model and level
    y = (dataset.rotated_batch("orbit_set", int(points), gen) * 2 - 1).reshape(int(points), -1).double()
    eps = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    truth = ((y.reshape(-1, *SAMPLE_SHAPE) + 1) / 2).float()
    dataset.select(int(pairs), gen)
    a, b = (v.reshape(int(pairs), -1).double() * 2 - 1 for v in dataset.load(list(range(int(pairs)))))
    pair_eps = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    rows = []
    for t in levels:
        t = int(t)
        x_orbit = noise_to(y, eps, t, abar_all)
        ends_a, ends_b = noise_to(a, pair_eps, t, abar_all), noise_to(b, pair_eps, t, abar_all)
        lerp_nodes = straight_path(ends_a, ends_b, int(nodes)).reshape(-1, a.shape[1])
        exact = orbit_score(dataset, t=t, schedule=DEFAULT_SCHEDULE)
        for name in models:
            start = time.perf_counter()
            field = exact if name == "orbit" else UNetScore(networks[name][0], networks[name][1], t, 128, name,
                                                            networks[name][2])
            metric = SteinMetric(field, lam=lam, normalize=normalize)
            solve = GaussNewtonSolver(nodes=int(nodes), max_evals=int(max_evals))(metric, ends_a, ends_b)
            geo_nodes = solve.path.detach().reshape(-1, a.shape[1])
            back = ddim_denoise(field.eps_model, x_orbit.reshape(-1, *SAMPLE_SHAPE).float(), t, abar_all,
                                steps=int(ddim_steps))
            row = {"model": name, "t": t,
                   "score_error_orbit": relative_score_error(field, exact, x_orbit),
                   "score_error_lerp": relative_score_error(field, exact, lerp_nodes),
                   "score_error_geodesic": relative_score_error(field, exact, geo_nodes),
                   "geodesic_converged": int(solve.converged.sum()), "pairs": int(pairs),
                   "roundtrip_psnr": float(psnr(((back.float() + 1) / 2).clamp(0, 1), truth).mean()),
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


COLUMNS = (("model", "model", "{}"), ("t", "t", "{}"), ("r_orbit", "score_error_orbit", "{:.3g}"),
           ("r_lerp", "score_error_lerp", "{:.3g}"), ("r_geodesic", "score_error_geodesic", "{:.3g}"),
           ("geo conv", None, None), ("round-trip PSNR dB", "roundtrip_psnr", "{:.2f}"))


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table."""
    head = [c[0] for c in COLUMNS]
    body = []
    for r in rows:
        cells = []
        for label, key, fmt in COLUMNS:
            cells.append(f"{r['geodesic_converged']}/{r['pairs']}" if key is None else fmt.format(r[key]))
        body.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [head, *body])


def main(argv: list[str], prog: str) -> int:
    """``scoregeo fidelity [--models ...] [--t ...] [--out FILE]``."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Score fidelity of UNet checkpoints against the exact orbit score of the orbit set "
                               "(relative score error on the noised orbit set, along LERP and along the model's own "
                               "Stein geodesic) and the denoiser's DDIM round-trip PSNR, per level t.")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME",
                        help="orbit (the oracle itself), packaged names (unet_orbit, unet_mnist, unet_digits) or "
                             "checkpoint paths (default: %(default)s)")
    parser.add_argument("--t", nargs="+", type=int, default=list(DEFAULT_LEVELS), metavar="T",
                        help="levels 1..999 (default: %(default)s)")
    parser.add_argument("--source", default="mnist5k", help="digits of the orbit set: mnist5k (default) or digits")
    parser.add_argument("--points", type=int, default=256, help="noised orbit-set points per level (default 256)")
    parser.add_argument("--pairs", type=int, default=4, help="orbit-set pairs for the LERP and geodesic paths (default 4)")
    parser.add_argument("--nodes", type=int, default=8, help="nodes per path (default 8)")
    parser.add_argument("--max-evals", type=int, default=40, help="Gauss-Newton budget per geodesic (default 40)")
    parser.add_argument("--lam", type=float, default=1000.0, help="lambda of the Stein metric (default 1000)")
    parser.add_argument("--normalize", choices=("none", "unit"), default="none", help="score direction (default none)")
    parser.add_argument("--ddim-steps", type=int, default=20, help="DDIM steps of the round trip (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path("outputs/fidelity/fidelity.json"),
                        help="JSON file of the rows (default %(default)s)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.lam) and args.lam >= 0):
        raise ScoregeoError(f"--lam must be a finite number >= 0, got {args.lam}")
    torch.set_num_threads(max(1, args.threads))
    from tqdm import tqdm

    bar = tqdm(total=len(args.models) * len(args.t), desc="fidelity", unit="model-level", file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 15.0)

    def progress(row: dict) -> None:
        bar.set_postfix(done=f"{row['model']} t={row['t']}", refresh=False)
        bar.update(1)

    rows = measure(args.models, args.t, args.source, args.points, args.pairs, args.nodes, args.max_evals,
                   args.lam, args.normalize, args.ddim_steps, args.seed, progress)
    bar.close()
    from scoregeo_cli.io.files import atomic_write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"command": " ".join(["scoregeo fidelity", *argv]), "rows": rows})
    print(format_table(rows))
    print(f"-> {args.out}")
    return 0
