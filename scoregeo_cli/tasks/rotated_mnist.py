"""Rotated digits with a trained diffusion UNet: interpolation and extrapolation between two
rotations of one digit, scored frame by frame against the true rotations.

For P pairs (one digit at theta_a and theta_b) with N nodes:

1. encode: pixels in [0, 1] to the model's range, x = 2 * image - 1 (784-d vectors);
2. noise both ends to level t = ``score.t`` with one Gaussian eps shared by the pair;
3. paths at level t: the geodesic of g = I + lam s s^T (``cfg.solver``, all nodes of all
   pairs through the UNet in one batched call per iteration), LERP and SLERP; past theta_b,
   extrapolation by shooting along the geodesic equation (``cfg.extrapolate``) from the
   geodesic's end tangent, the straight continuation of LERP and the continuation of
   SLERP's arc;
4. every node DDIM-denoised (eta 0) from t to 0 and decoded back to [0, 1];
5. ``pixel_lerp``: LERP of the clean images in pixel space (and its straight continuation),
   the no-model baseline.

Node i of N sits at the angle theta_a + i/(N-1) (theta_b - theta_a); extrapolated point j of
``extrapolate.steps`` at theta_b + tau_j (theta_b - theta_a), tau_j = j * duration / steps
(a curve parametrised on [0, 1] continued for parameter time ``duration``).

Rows per pair and method: ``psnr``, ``ssim``, ``lpips`` (means over the interior nodes,
against the true rotation at each node's angle); ``ppl``, ``pdv``, ``smoothness``,
``consistency`` (path metrics of LPIPS between consecutive frames, all N frames); ``energy``
(curve energy at level t under the metric; noisy-space methods); ``score_evals`` and
``seconds`` (batched UNet evaluations and wall time per pair to build the path at level t;
denoising costs the same for every method); the same frame-wise and path metrics prefixed
``extrapolation_`` for the frames beyond theta_b, with ``extrapolation_score_evals`` and
``extrapolation_seconds``. Method ``roundtrip``: PSNR/SSIM/LPIPS of the denoised endpoints
against the true endpoints, the loss that noising to t and denoising alone causes. Rows
with pair = -1: ``fid``, ``kid``, ``kid_std`` of ``eval.fid_frames`` random intermediate
frames against ``eval.fid_real`` real digits of the pair split at the same angle
distribution, and ``extrapolation_fid``/``_kid``/``_kid_std`` likewise beyond theta_b.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from scoregeo_cli.baselines import lerp, slerp, slerp_at
from scoregeo_cli.build import build_metric, build_score
from scoregeo_cli.diffusion import ddim_denoise, noise_to
from scoregeo_cli.errors import ScoregeoError, check_finite
from scoregeo_cli.geometry.shooting import end_tangent, linear_extrapolation
from scoregeo_cli.reporting.results import atomic_write_json, row

METHODS = ("geodesic", "lerp", "slerp", "pixel_lerp")
NOISY_METHODS = ("geodesic", "lerp", "slerp")
LPIPS_NETS = ("alex", "vgg")


def encode(images: torch.Tensor) -> torch.Tensor:
    """(P, 1, 28, 28) images in [0, 1] -> (P, 784) vectors in the model's range [-1, 1]."""
    return (images * 2 - 1).flatten(1)


def decode(x: torch.Tensor, shape=(1, 28, 28)) -> torch.Tensor:
    """(..., 784) vectors in [-1, 1] scale -> (..., 1, 28, 28) float32 images clamped to [0, 1]."""
    return ((x.reshape(*x.shape[:-1], *shape) + 1) / 2).clamp(0, 1).float()


def save_strip(rows: dict[str, torch.Tensor], path: Path, split: int | None = None, scale: int = 2,
               label_width: int = 84, gap: int = 6) -> None:
    """One row of frames per entry of ``rows`` ((F, 1, H, W) in [0, 1]; rows may be shorter,
    left-aligned), labelled on the left; a white gap after column ``split`` (interpolation |
    extrapolation). Saved as a PNG (grayscale frames on a white canvas; NaN frames, from a
    failed extrapolation, are drawn white)."""
    from PIL import Image, ImageDraw

    h, w = (s * scale for s in next(iter(rows.values())).shape[-2:])
    width = max(len(v) for v in rows.values())
    x_of = [label_width + c * w + (gap if split is not None and c >= split else 0) for c in range(width)]
    canvas = Image.new("L", (x_of[-1] + w, len(rows) * (h + 2)), 255)
    draw = ImageDraw.Draw(canvas)
    for r, (name, frames) in enumerate(rows.items()):
        y = r * (h + 2)
        draw.text((4, y + h // 2 - 6), name, fill=0)
        pixels = (frames[:, 0].nan_to_num(1.0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        for c, frame in enumerate(pixels):
            tile = Image.fromarray(frame).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (x_of[c], y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


class RotatedMnistTask:
    """The rotated-digits experiment; ``run`` returns metrics rows (module docstring)."""

    table_metrics = ["psnr", "ssim", "lpips", "fid", "kid", "ppl", "energy",
                     "extrapolation_psnr", "extrapolation_ssim", "extrapolation_lpips", "score_evals", "seconds"]

    def _check(self, cfg: DictConfig) -> list[str]:
        ev = cfg.eval
        methods = list(ev.methods)
        unknown = sorted(set(methods) - set(METHODS))
        if unknown or not methods:
            raise ScoregeoError(f"eval.methods may hold {', '.join(METHODS)}; got {methods}")
        if ev.lpips_net not in LPIPS_NETS:
            raise ScoregeoError(f"eval.lpips_net must be one of {LPIPS_NETS}, got '{ev.lpips_net}'")
        if int(cfg.n_pairs) < 1:
            raise ScoregeoError(f"n_pairs must be at least 1, got {cfg.n_pairs}")
        if int(ev.ddim_steps) < 1:
            raise ScoregeoError(f"eval.ddim_steps must be at least 1, got {ev.ddim_steps}")
        if ev.fid and (int(ev.fid_frames) < 2 or int(ev.fid_real) < 2):
            raise ScoregeoError(f"eval.fid_frames and eval.fid_real must be at least 2 for FID/KID, "
                                f"got {ev.fid_frames} and {ev.fid_real}")
        return methods

    def run(self, cfg: DictConfig, run_dir: Path) -> list[dict]:
        from scoregeo_cli.evaluation.images import lpips_distance, psnr, ssim
        from scoregeo_cli.evaluation.path import consecutive_lpips, path_metrics

        run_dir = Path(run_dir)
        methods = self._check(cfg)
        ev = cfg.eval
        dataset = instantiate(cfg.dataset)
        solver = instantiate(cfg.solver)
        shooter = instantiate(cfg.extrapolate)
        score = build_score(cfg)
        metric = build_metric(cfg, score)
        t, abar, shape = score.t, score.alphas_cumprod, score.shape
        n_pairs, n_nodes, n_ext = int(cfg.n_pairs), solver.nodes, shooter.steps
        if n_pairs * (n_nodes - 2) < 2 and ev.fid:
            raise ScoregeoError(f"FID/KID need at least 2 intermediate frames; {n_pairs} pair(s) of {n_nodes} "
                                "nodes give fewer: raise n_pairs or solver.nodes, or set eval.fid=false")

        gen = torch.Generator().manual_seed(int(cfg.seed))
        digits, theta_a, theta_b, index = dataset.pairs(n_pairs, gen)
        eps = torch.randn(n_pairs, score.dim, generator=gen, dtype=torch.float64)
        s = torch.linspace(0, 1, n_nodes, dtype=torch.float64)
        tau = torch.linspace(0, shooter.duration, n_ext + 1, dtype=torch.float64)
        span = (theta_b - theta_a)[:, None]
        node_angles = theta_a[:, None] + s * span
        ext_angles = theta_b[:, None] + tau * span
        truth = dataset.frames(digits.double(), node_angles).float()  # (P, N, 1, 28, 28)
        truth_ext = dataset.frames(digits.double(), ext_angles).float()  # (P, steps+1, 1, 28, 28)
        x_a, x_b = encode(truth[:, 0].double()), encode(truth[:, -1].double())
        a, b = noise_to(x_a, eps, t, abar), noise_to(x_b, eps, t, abar)
        print(f"{n_pairs} pair(s) of {dataset.source} digits ({dataset.pair_split} split), theta_a in "
              f"{list(dataset.angle_a)}, theta_b in {list(dataset.angle_b)} deg; level t={t} "
              f"(abar {float(abar[t]):.4f}); {n_nodes} nodes, {n_ext} extrapolated; checkpoint {score.checkpoint}")
        atomic_write_json(run_dir / "pairs.json", [
            {"pair": p, "split": dataset.pair_split, "index": int(index[p]), "theta_a": float(theta_a[p]),
             "theta_b": float(theta_b[p])} for p in range(n_pairs)])

        noisy, noisy_ext, cost = self._noisy_paths(methods, metric, solver, shooter, a, b, tau)

        # every node of every noisy path, plus the two endpoints, denoised in one batch
        names = list(noisy)
        stacked = [noisy[m] for m in names] + [noisy_ext[m] for m in names] + [torch.stack([a, b], 1)]
        sizes = [x.shape[1] for x in stacked]
        start = time.perf_counter()
        flat = torch.cat(stacked, 1).reshape(-1, score.dim)
        finite = torch.isfinite(flat).all(-1)  # a failed shot stays NaN
        clean = torch.full_like(flat, float("nan"))
        clean[finite] = ddim_denoise(score.eps_model, flat[finite].reshape(-1, *shape), t, abar,
                                     int(ev.ddim_steps), batch_size=score.chunk_size or 128).reshape(-1, score.dim)
        clean = decode(clean.reshape(n_pairs, sum(sizes), -1), shape).split(sizes, dim=1)
        print(f"DDIM: {int(finite.sum())} images, {ev.ddim_steps} steps from t={t}, "
              f"{time.perf_counter() - start:.1f} s")
        frames = {m: clean[i] for i, m in enumerate(names)}
        frames_ext = {m: clean[len(names) + i] for i, m in enumerate(names)}
        endpoints = clean[-1]
        if "pixel_lerp" in methods:
            frames["pixel_lerp"] = decode(lerp(x_a, x_b, n_nodes), shape)
            frames_ext["pixel_lerp"] = decode(linear_extrapolation(x_a, x_b, shooter.duration, n_ext), shape)
            cost["pixel_lerp"] = (0, 0.0, 0, 0.0)
        frames = {m: frames[m] for m in methods}
        frames_ext = {m: frames_ext[m] for m in methods}

        start = time.perf_counter()
        net = ev.lpips_net
        rows: list[dict] = []
        for method in methods:
            interior, truth_in = frames[method][:, 1:-1], truth[:, 1:-1]
            beyond, truth_beyond = frames_ext[method][:, 1:], truth_ext[:, 1:]
            per_frame = self._framewise(interior, truth_in, net, psnr, ssim, lpips_distance)
            ext_ok = bool(torch.isfinite(frames_ext[method]).all())
            per_frame_ext = self._framewise(beyond, truth_beyond, net, psnr, ssim, lpips_distance) if ext_ok else \
                {k: torch.full(beyond.shape[:2], float("nan")) for k in ("psnr", "ssim", "lpips")}
            evals, seconds, ext_evals, ext_seconds = cost[method]
            energy = None
            if method in noisy:
                with torch.no_grad():
                    energy = metric.energy(noisy[method])
            for p in range(n_pairs):
                values = {k: float(v[p].mean()) for k, v in per_frame.items()}
                values.update(path_metrics(consecutive_lpips(frames[method][p], net=net)))
                if energy is not None:
                    values["energy"] = float(energy[p])
                values.update({"score_evals": evals, "seconds": seconds})
                values.update({f"extrapolation_{k}": float(v[p].mean()) for k, v in per_frame_ext.items()})
                ext_path = path_metrics(consecutive_lpips(frames_ext[method][p], net=net)) if ext_ok else \
                    dict.fromkeys(("ppl", "pdv", "smoothness", "consistency"), float("nan"))
                values.update({f"extrapolation_{k}": v for k, v in ext_path.items()})
                values.update({"extrapolation_score_evals": ext_evals, "extrapolation_seconds": ext_seconds})
                rows += [row(p, method, key, value) for key, value in values.items()]
        true_ends = torch.stack([truth[:, 0], truth[:, -1]], 1)
        roundtrip = self._framewise(endpoints, true_ends, net, psnr, ssim, lpips_distance)
        rows += [row(p, "roundtrip", k, float(v[p].mean())) for p in range(n_pairs) for k, v in roundtrip.items()]
        print(f"frame and path metrics: {time.perf_counter() - start:.1f} s")

        if ev.fid:
            start = time.perf_counter()
            rows += self._set_metrics(cfg, dataset, frames, frames_ext, shooter.duration)
            print(f"FID/KID: {time.perf_counter() - start:.1f} s")
        if int(ev.strips) > 0:
            for p in range(min(int(ev.strips), n_pairs)):
                strip = {"truth": torch.cat([truth[p], truth_ext[p, 1:]])}
                strip.update({m: torch.cat([frames[m][p], frames_ext[m][p, 1:]]) for m in methods})
                save_strip(strip, run_dir / "strips" / f"pair_{p:02d}.png", split=n_nodes)
            print(f"strips (truth on top; interpolation | extrapolation): {run_dir / 'strips'}")
        return rows

    @staticmethod
    def _framewise(frames, truth, net, psnr, ssim, lpips_distance) -> dict[str, torch.Tensor]:
        """PSNR, SSIM, LPIPS of frames (P, F, 1, H, W) against truth of the same shape -> (P, F) each."""
        p, f = frames.shape[:2]
        x, y = frames.reshape(p * f, *frames.shape[2:]), truth.reshape(p * f, *truth.shape[2:]).clamp(0, 1)
        return {"psnr": psnr(x, y).reshape(p, f), "ssim": ssim(x, y).reshape(p, f),
                "lpips": lpips_distance(x, y, net=net).reshape(p, f)}

    @staticmethod
    def _noisy_paths(methods, metric, solver, shooter, a, b, tau):
        """Paths (P, N, D) and extrapolations (P, steps+1, D) at level t, with the cost per
        method: (score_evals, seconds per pair, extrapolation score_evals, seconds per pair).
        Geodesic shooting that runs out of budget or diverges gives a NaN extrapolation."""
        n_pairs, n_nodes = a.shape[0], solver.nodes
        paths, ext, cost = {}, {}, {}
        for method in (m for m in methods if m in NOISY_METHODS):
            start = time.perf_counter()
            if method == "geodesic":
                result = solver(metric, a, b)
                paths[method] = result.path.detach()
                print(f"geodesic: {result.score_evals} batched score evaluations, {result.iterations} iterations, "
                      f"{int(result.converged.sum())}/{n_pairs} converged, {result.seconds:.1f} s")
                shot = shooter(metric, result.path[:, -1], end_tangent(result.path))
                ext[method] = shot.path.detach()
                shot_evals, shot_seconds = shot.score_evals, shot.seconds
                if shot.error is None:
                    print(f"geodesic shooting: {shot_evals} score evaluations, {shot_seconds:.1f} s")
                else:
                    print(f"geodesic shooting failed after {shot_seconds:.1f} s, extrapolation recorded as NaN: "
                          f"{shot.error}; the geodesic equation is stiff when lam |s|^2 is large "
                          "(raise extrapolate.max_evals, or try metric.normalize=unit)")
                cost[method] = (result.score_evals, result.seconds / n_pairs, shot_evals, shot_seconds / n_pairs)
                continue
            if method == "lerp":
                paths[method] = lerp(a, b, n_nodes)
                ext[method] = linear_extrapolation(a, b, shooter.duration, shooter.steps)
            else:
                paths[method] = slerp(a, b, n_nodes)
                ext[method] = slerp_at(a, b, 1 + tau)
            cost[method] = (0, (time.perf_counter() - start) / n_pairs, 0, 0.0)
        for method in paths:
            check_finite(paths[method], f"the {method} path", "level t")
            if method != "geodesic":
                check_finite(ext[method], f"the {method} extrapolation", "level t")
        return paths, ext, cost

    @staticmethod
    def _set_metrics(cfg, dataset, frames, frames_ext, duration) -> list[dict]:
        """FID/KID of intermediate (and extrapolated) frames per method against real rotated digits."""
        from scoregeo_cli.evaluation.images import fid_from_features, inception_features, kid_from_features

        ev = cfg.eval
        gen = torch.Generator().manual_seed(int(cfg.seed) + 1)
        batch = int(ev.inception_batch)
        real = inception_features(dataset.real_rotated(int(ev.fid_real), gen, (0.0, 1.0)), batch)
        real_ext = inception_features(dataset.real_rotated(int(ev.fid_real), gen, (1.0, 1.0 + duration)), batch)
        rows = []
        for method in frames:
            for prefix, reference, chosen in (("", real, frames[method][:, 1:-1]),
                                              ("extrapolation_", real_ext, frames_ext[method][:, 1:])):
                chosen = chosen.reshape(-1, *chosen.shape[2:])
                pick = torch.randperm(len(chosen), generator=gen)[: int(ev.fid_frames)]
                if not bool(torch.isfinite(chosen).all()):  # a failed extrapolation
                    rows += [row(-1, method, f"{prefix}{k}", float("nan")) for k in ("fid", "kid", "kid_std")]
                    continue
                fake = inception_features(chosen[pick], batch)
                kid, kid_std = kid_from_features(reference, fake, ev.kid_subset_size)
                rows += [row(-1, method, f"{prefix}fid", fid_from_features(reference, fake)),
                         row(-1, method, f"{prefix}kid", kid), row(-1, method, f"{prefix}kid_std", kid_std)]
        return rows
