"""Image morphing in a latent diffusion model: Stein-metric geodesics against LERP, SLERP and
NoiseDiffusion, as in the paper's Stable Diffusion experiment on MorphBench.

For each pair of images (A, B), all methods share one pipeline:

1. VAE-encode both images to clean latents z_A, z_B (posterior mean, scaled);
2. bring them to level t: forward noising with one Gaussian eps shared by both ends,
   x = sqrt(abar_t) z + sqrt(1 - abar_t) eps (the paper's protocol), or deterministic DDIM
   inversion (``inversion: true``, the protocol of NoiseDiffusion and DiffMorpher);
3. a path of ``frames`` latents from x_A to x_B at level t: the geodesic of
   g = I + lambda s s^T on the UNet's score at t (the configured solver; every node of every
   pair of a batch goes through the UNet in chunks of ``score.chunk_size``), LERP, SLERP
   about the origin, or NoiseDiffusion;
4. DDIM (eta = 0) from t to 0 for every frame, with the same conditioning and no guidance;
5. VAE-decode; frames and a strip per pair are saved in the run folder.

Per pair and method: ``lpips`` (mean LPIPS between consecutive frames), ``ppl``, ``pdv``,
``smoothness``, ``consistency`` (path metrics of those distances), ``energy`` (the curve
energy of the latent path under the metric), ``seconds`` (wall time to build the latent
path at level t, per pair; denoising and decoding cost the same for every method) and
``score_evals`` (batched UNet evaluations the path needed); NoiseDiffusion adds
``clipped_fraction`` and ``clipped_fraction_endpoints``. Per method over all pairs
(rows with ``pair = -1``): ``fid``, ``kid`` and ``kid_std`` of all intermediate frames
against the input images (Inception features are accumulated batch by batch, so no frame
set is held in memory).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from scoregeo_cli.baselines import lerp, slerp
from scoregeo_cli.build import build_metric, build_score
from scoregeo_cli.diffusion import ddim_denoise, ddim_invert, noise_to
from scoregeo_cli.errors import ScoregeoError, check_finite
from scoregeo_cli.noisediffusion import NoiseDiffusion
from scoregeo_cli.reporting.results import row

METHODS = ("geodesic", "lerp", "slerp", "noisediffusion")
LPIPS_NETS = ("alex", "vgg")


def noisy_endpoints(model, z_a: torch.Tensor, z_b: torch.Tensor, t: int, eps: torch.Tensor,
                    inversion: bool = False, steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (P, c, h, w) at level t: shared-noise forward noising, or DDIM inversion."""
    abar = model.alphas_cumprod
    if inversion:
        both = ddim_invert(model.eps, torch.cat([z_a, z_b]), t, abar, steps, batch_size=model.chunk_size)
        return both[: len(z_a)], both[len(z_a):]
    return noise_to(z_a, eps, t, abar), noise_to(z_b, eps, t, abar)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] -> (..., H, W, 3) uint8 (rounded)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def strip_image(rows: dict[str, torch.Tensor], label_width: int = 110) -> np.ndarray:
    """One row of frames per method, (F, 3, H, W) each, labelled on the left -> (H', W', 3) uint8."""
    from PIL import Image, ImageDraw

    names = list(rows)
    f, _, h, w = rows[names[0]].shape
    canvas = Image.new("RGB", (label_width + f * w, len(names) * h), "white")
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(names):
        line = np.concatenate(list(to_uint8(rows[name])), axis=1)
        canvas.paste(Image.fromarray(line), (label_width, r * h))
        draw.text((4, r * h + h // 2 - 6), name, fill="black")
    return np.asarray(canvas)


class MorphTask:
    """The latent-diffusion morphing experiment; ``run`` returns metrics rows.

    Args:
        frames: frames per sequence, endpoints included (DiffMorpher: 17); the solver's
            ``nodes`` must equal it.
        inversion: reach level t by DDIM inversion instead of shared-noise forward noising.
        inversion_steps: DDIM steps from 0 to t for the inversion.
        ddim_steps: DDIM steps from t to 0 for every frame (20 from t = 400 is the spacing
            of a 50-step schedule over 1000 levels).
        pair_batch: pairs processed together (solver batch; bounds memory).
        save_frames: write every frame as a PNG (strips are always written).
        noisediffusion: the NoiseDiffusion baseline (its bound, gamma and boost).
    """

    table_metrics = ["lpips", "ppl", "pdv", "smoothness", "fid", "kid", "seconds", "score_evals"]

    def __init__(self, frames: int = 17, inversion: bool = False, inversion_steps: int = 20,
                 ddim_steps: int = 20, pair_batch: int = 4, save_frames: bool = True,
                 noisediffusion: NoiseDiffusion | None = None):
        if int(frames) < 3:
            raise ScoregeoError(f"task.frames must be at least 3 (endpoints included), got {frames}")
        for name, value in (("task.ddim_steps", ddim_steps), ("task.inversion_steps", inversion_steps),
                            ("task.pair_batch", pair_batch)):
            if int(value) < 1:
                raise ScoregeoError(f"{name} must be at least 1, got {value}")
        self.frames, self.inversion = int(frames), bool(inversion)
        self.inversion_steps, self.ddim_steps = int(inversion_steps), int(ddim_steps)
        self.pair_batch, self.save_frames = int(pair_batch), bool(save_frames)
        self.noisediffusion = noisediffusion or NoiseDiffusion()

    def _check(self, cfg: DictConfig, n_pairs: int) -> list[str]:
        methods = list(cfg.eval.methods)
        unknown = sorted(set(methods) - set(METHODS))
        if unknown or not methods:
            raise ScoregeoError(f"eval.methods may hold {', '.join(METHODS)}; got {methods}")
        if cfg.eval.lpips_net not in LPIPS_NETS:
            raise ScoregeoError(f"eval.lpips_net must be one of {LPIPS_NETS}, got '{cfg.eval.lpips_net}'")
        if n_pairs * (self.frames - 2) < 2:
            raise ScoregeoError(f"FID and KID need at least 2 intermediate frames in all; {n_pairs} pair(s) "
                                f"of {self.frames} frames give {n_pairs * (self.frames - 2)}: raise task.frames")
        return methods

    def run(self, cfg: DictConfig, run_dir: Path) -> list[dict]:
        from scoregeo_cli.evaluation.images import fid_from_features, inception_features, kid_from_features
        from scoregeo_cli.evaluation.path import consecutive_lpips, path_metrics

        run_dir = Path(run_dir)
        dataset = instantiate(cfg.dataset)
        methods = self._check(cfg, len(dataset))
        solver = instantiate(cfg.solver)
        if "geodesic" in methods and solver.nodes != self.frames:
            raise ScoregeoError(f"solver.nodes ({solver.nodes}) must equal task.frames ({self.frames})")
        dataset.check()
        score = build_score(cfg)
        model = score.model
        dataset.with_resolution(model.resolution)
        metric = build_metric(cfg, score)
        t, abar, shape = score.t, model.alphas_cumprod, model.latent_shape
        device, n_pairs, n_frames = model.device, len(dataset), self.frames
        print(f"model: {model.source}; latents {shape} at {dataset.resolution} px; level t={t} "
              f"(abar {float(abar[t]):.4f}); {n_pairs} pair(s), {n_frames} frames, methods {methods}")

        noise_gen = torch.Generator().manual_seed(int(cfg.seed))
        shared_eps = torch.randn(n_pairs, *shape, generator=noise_gen, dtype=torch.float64)
        nd_gen = torch.Generator().manual_seed(int(cfg.seed) + 1)

        rows: list[dict] = []
        real_features: list[torch.Tensor] = []
        fake_features: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
        net = cfg.eval.lpips_net
        for start in range(0, n_pairs, self.pair_batch):
            batch = list(range(start, min(start + self.pair_batch, n_pairs)))
            images_a, images_b = dataset.load(batch)
            real_features.append(inception_features(torch.cat([images_a, images_b]).to(device),
                                                    cfg.eval.inception_batch).cpu())
            z_a = model.encode(images_a).double()
            z_b = model.encode(images_b).double()
            x_a, x_b = noisy_endpoints(model, z_a, z_b, t, shared_eps[batch].to(device),
                                       self.inversion, self.inversion_steps)
            a, b = x_a.flatten(1), x_b.flatten(1)
            paths, extra = self._paths(methods, metric, solver, z_a.flatten(1), z_b.flatten(1), a, b,
                                       float(abar[t]), nd_gen)
            with torch.no_grad():  # the solver already returned the geodesic's energy
                energies = {m: energy if energy is not None else metric.energy(path)
                            for m, (path, _, _, energy) in paths.items()}
            decoded: dict[str, torch.Tensor] = {}
            for method, (path, seconds, evals, _) in paths.items():
                check_finite(path, f"the {method} path", "level t")
                clean = ddim_denoise(model.eps, path.reshape(-1, *shape), t, abar, self.ddim_steps,
                                     batch_size=model.chunk_size)
                frames = model.decode(clean).reshape(len(batch), n_frames, 3, dataset.resolution,
                                                     dataset.resolution)
                decoded[method] = frames  # on the CPU; the metric networks run on the model's device
                inner = frames[:, 1:-1].reshape(-1, *frames.shape[2:]).to(device)
                fake_features[method].append(inception_features(inner, cfg.eval.inception_batch).cpu())
                for k, p in enumerate(batch):
                    d = consecutive_lpips(frames[k].to(device), net=net).cpu()
                    values = {"lpips": float(d.mean()), **path_metrics(d), "energy": float(energies[method][k]),
                              "seconds": seconds, "score_evals": evals}
                    values.update({key: float(v[k]) for key, v in extra.get(method, {}).items()})
                    rows += [row(p, method, key, value, name=dataset.names[p]) for key, value in values.items()]
            self._save(run_dir, dataset, batch, images_a, images_b, decoded)
            print(f"pairs {batch[0] + 1}-{batch[-1] + 1}/{n_pairs}: "
                  + ", ".join(f"{m} {paths[m][1]:.2f} s/pair, {paths[m][2]} evals" for m in paths))

        real = torch.cat(real_features)
        for method in methods:
            fake = torch.cat(fake_features[method])
            fid = fid_from_features(real, fake)
            kid, kid_std = kid_from_features(real, fake, cfg.eval.kid_subset_size)
            scope = f"{len(real)} input images vs {len(fake)} intermediate frames"
            rows += [row(-1, method, "fid", fid, name=scope), row(-1, method, "kid", kid, name=scope),
                     row(-1, method, "kid_std", kid_std, name=scope)]
        return rows

    def _paths(self, methods, metric, solver, z_a, z_b, a, b, abar_t, generator):
        """Per method: latent path (P, F, D) at level t, seconds per pair, batched score
        evaluations and, for the geodesic, its energy (P,); plus NoiseDiffusion's clip fractions."""
        n = len(a)
        paths: dict[str, tuple[torch.Tensor, float, int, torch.Tensor | None]] = {}
        extra: dict[str, dict[str, torch.Tensor]] = {}
        for method in methods:
            start = time.perf_counter()
            if method == "geodesic":
                result = solver(metric, a, b)
                paths[method] = (result.path.detach(), result.seconds / n, result.score_evals,
                                 result.energy.detach())
                continue
            if method == "lerp":
                path = lerp(a, b, self.frames)
            elif method == "slerp":
                path = slerp(a, b, self.frames)
            else:
                nd = self.noisediffusion(z_a, z_b, a, b, abar_t, self.frames, generator=generator)
                path = nd.path
                extra[method] = {"clipped_fraction": nd.clipped_fraction,
                                 "clipped_fraction_endpoints": nd.clipped_fraction_endpoints}
            paths[method] = (path, (time.perf_counter() - start) / n, 0, None)
        return paths, extra

    def _save(self, run_dir: Path, dataset, batch, images_a, images_b, decoded) -> None:
        for k, p in enumerate(batch):
            name = dataset.names[p]
            rows = {"input": torch.stack([images_a[k]] + [torch.ones_like(images_a[k])] * (self.frames - 2)
                                         + [images_b[k]])}
            rows.update({m: frames[k] for m, frames in decoded.items()})
            save_png(strip_image(rows), run_dir / "strips" / f"{name}.png")
            if self.save_frames:
                for method, frames in decoded.items():
                    for i, image in enumerate(to_uint8(frames[k])):
                        save_png(image, run_dir / "frames" / method / name / f"{i:02d}.png")
