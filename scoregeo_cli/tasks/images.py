"""Image experiments (rotated digits, Stable Diffusion morphing): one pipeline.

For the selected pairs, in batches of ``pair_batch``:

1. load both images of each pair, encode them (``space.encode``);
2. bring both ends to where paths live (``space.endpoints``: level t with one Gaussian eps
   shared by the pair, or DDIM inversion);
3. every selected method turns the ends into a path of N nodes (and, with ``extrapolate``,
   continues it past b): ``methods.run_methods``;
4. all methods' nodes and both endpoints go back to images in one batched pass
   (``space.to_data``: DDIM from t to 0, decode); methods on clean data are only decoded;
5. scores: where the dataset knows the truth (rotated digits: the digit rotated to each
   node's angle) PSNR, SSIM and LPIPS of the interior frames against it, else ``lpips`` is
   the mean LPIPS between consecutive frames; path metrics of consecutive LPIPS distances
   (``ppl``, ``pdv``, ``smoothness``, ``consistency``); ``energy`` of paths at level t
   under the run's metric; ``score_evals`` and ``seconds`` (per pair) of building the path;
   the same prefixed ``extrapolation_`` past b. Method ``roundtrip`` (with ground truth):
   the denoised endpoints against the true ones, the loss of noising to t alone. Rows with
   pair = -1: ``fid``, ``kid``, ``kid_std`` of intermediate frames per method against the
   dataset's reference images (rotated digits: ``eval.fid_real`` real digits at the same
   angle distribution; image pairs: the input images), and the same past b.

Node i of N sits at fraction i/(N-1) of the way from a to b; extrapolated point j at
1 + tau_j, tau_j = j duration / steps (``extrapolate``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from scoregeo_cli.build import build_metric, build_score, instantiate
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.methods import Plan, build_methods, run_methods
from scoregeo_cli.reporting.figures import save_frames, save_strip
from scoregeo_cli.reporting.results import atomic_write_json, row

LPIPS_NETS = ("alex", "vgg")
PATH_KEYS = ("ppl", "pdv", "smoothness", "consistency")


class ImageTask:
    """One image experiment; ``run`` returns metrics rows (module docstring).

    Args:
        extrapolate: continue every path past b (needs ground truth to be scored).
        pair_batch: pairs solved and denoised together (null: all at once; bounds memory).
        save_frames: write every frame as a PNG under frames/<method>/<pair>/.
        table_metrics: the columns of the summary printed at the end of a run.
    """

    def __init__(self, extrapolate: bool = True, pair_batch: int | None = None, save_frames: bool = False,
                 table_metrics: list[str] | None = None):
        if pair_batch is not None and int(pair_batch) < 1:
            raise ScoregeoError(f"task.pair_batch must be at least 1 or null, got {pair_batch}")
        self.extrapolate, self.save_frames = bool(extrapolate), bool(save_frames)
        self.pair_batch = None if pair_batch is None else int(pair_batch)
        self.table_metrics = list(table_metrics or ["lpips", "fid", "kid", "score_evals", "seconds"])

    @staticmethod
    def _check_eval(ev: DictConfig) -> None:
        if ev.lpips_net not in LPIPS_NETS:
            raise ScoregeoError(f"eval.lpips_net must be one of {LPIPS_NETS}, got '{ev.lpips_net}'")
        for key in ("fid_frames", "fid_real", "strips"):
            value = ev.get(key)
            if value is not None and int(value) < (0 if key == "strips" else 2):
                raise ScoregeoError(f"eval.{key} must be at least {0 if key == 'strips' else 2} or null, got {value}")

    def run(self, cfg: DictConfig, run_dir: Path) -> list[dict]:
        from scoregeo_cli.evaluation.images import inception_features

        run_dir, ev = Path(run_dir), cfg.eval
        self._check_eval(ev)
        dataset = instantiate(cfg.dataset)
        solver, shooter = instantiate(cfg.solver), instantiate(cfg.extrapolate)
        methods = build_methods(cfg)
        dataset.check()
        score = build_score(cfg)
        space = instantiate(cfg.space)(score=score)
        metric = build_metric(cfg, score)
        plan = Plan(solver.nodes, metric, solver, shooter, extrapolate=self.extrapolate and dataset.has_truth)

        gen = torch.Generator().manual_seed(int(cfg.seed))
        from scoregeo_cli.build import check_memory; check_memory(cfg, plan.nodes, score.dim, methods)
        n_pairs = dataset.select(cfg.n_pairs, gen, resolution=getattr(space, "resolution", None))
        n_nodes = plan.nodes
        if ev.fid and n_pairs * (n_nodes - 2) < 2:
            raise ScoregeoError(f"FID/KID need at least 2 intermediate frames; {n_pairs} pair(s) of {n_nodes} "
                                "nodes give fewer: raise n_pairs or solver.nodes, or set eval.fid=false")
        eps = torch.randn(n_pairs, score.dim, generator=gen, dtype=torch.float64)
        print(f"{dataset.describe()}; {space.describe()}; {n_pairs} pair(s), {n_nodes} nodes"
              + (f", {shooter.steps} extrapolated" if plan.extrapolate else "") + f"; methods {list(methods)}")
        atomic_write_json(run_dir / "pairs.json", dataset.records())

        fid = _SetMetrics(cfg, dataset, list(methods), n_pairs, n_nodes, plan, inception_features) if ev.fid else None
        fractions = torch.linspace(0, 1, n_nodes, dtype=torch.float64)
        rows: list[dict] = []
        strips_left = n_pairs if ev.get("strips") is None else int(ev.strips)
        batch_size = self.pair_batch or n_pairs
        method_gen = torch.Generator().manual_seed(int(cfg.seed) + 1)
        for start in range(0, n_pairs, batch_size):
            batch = list(range(start, min(start + batch_size, n_pairs)))
            images_a, images_b = dataset.load(batch)
            ends = space.endpoints(space.encode(images_a), space.encode(images_b), eps[batch])
            results = run_methods(methods, ends, plan, method_gen)
            frames, frames_ext, denoised_ends = self._to_images(space, results, ends)
            truth = dataset.truth(batch, fractions)
            truth_ext = dataset.truth(batch, 1 + plan.tau) if plan.extrapolate else None
            start_metrics = time.perf_counter()
            rows += self._pair_rows(batch, dataset, metric, results, frames, frames_ext, truth, truth_ext, ev.lpips_net)
            if truth is not None and denoised_ends is not None:
                true_ends = torch.stack([truth[:, 0], truth[:, -1]], 1)
                roundtrip = _framewise(denoised_ends, true_ends, ev.lpips_net)
                rows += [row(p, "roundtrip", k, float(v[k_].mean())) for k_, p in enumerate(batch)
                         for k, v in roundtrip.items()]
            if fid is not None:
                fid.add(batch, images_a, images_b, frames, frames_ext)
            print(f"pairs {batch[0] + 1}-{batch[-1] + 1}/{n_pairs}: frame and path metrics "
                  f"{time.perf_counter() - start_metrics:.1f} s")
            first = torch.stack([images_a] + [torch.ones_like(images_a)] * (n_nodes - 2) + [images_b], 1)
            for k, p in enumerate(batch):
                if strips_left > 0:
                    strip = {("truth" if truth is not None else "input"):
                             torch.cat([truth[k], truth_ext[k, 1:]]) if truth_ext is not None
                             else (truth[k] if truth is not None else first[k])}
                    strip.update({m: torch.cat([frames[m][k], frames_ext[m][k, 1:]]) if m in frames_ext else frames[m][k]
                                  for m in frames})
                    save_strip(strip, run_dir / "strips" / f"{dataset.names[p]}.png",
                               split=n_nodes if plan.extrapolate else None, scale=int(ev.get("strip_scale", 1)))
                    strips_left -= 1
                if self.save_frames:
                    save_frames({m: f[k] for m, f in frames.items()}, run_dir / "frames", dataset.names[p])
        if isinstance(getattr(space, "denoise_seconds", None), float):
            print(f"DDIM: {space.denoise_seconds:.1f} s in all")
        if fid is not None:
            start_fid = time.perf_counter()
            rows += fid.rows()
            print(f"FID/KID: {time.perf_counter() - start_fid:.1f} s")
        if ev.get("strips") != 0:
            print(f"strips ({'truth' if dataset.has_truth else 'inputs'} on top"
                  + ("; interpolation | extrapolation" if plan.extrapolate else "") + f"): {run_dir / 'strips'}")
        return rows

    @staticmethod
    def _to_images(space, results, ends):
        """Frames (P, N, C, H, W) and extrapolations (P, steps+1, ...) per method, and the
        denoised endpoints (P, 2, ...): every point at level t goes through one batched pass."""
        at_level = [m for m, r in results.items() if r.at_level]
        stacked = [results[m].path for m in at_level]
        stacked += [results[m].extrapolation for m in at_level if results[m].extrapolation is not None]
        diffusion = hasattr(space, "denoise")
        if diffusion:
            stacked.append(torch.stack([ends.a, ends.b], 1))
        p = len(ends.a)
        sizes = [x.shape[1] for x in stacked]
        images = space.to_data(torch.cat(stacked, 1).reshape(-1, ends.a.shape[-1]))
        images = images.reshape(p, sum(sizes), *images.shape[1:]).split(sizes, dim=1)
        frames = dict(zip(at_level, images))
        ext_names = [m for m in at_level if results[m].extrapolation is not None]
        frames_ext = dict(zip(ext_names, images[len(at_level):]))
        for m, r in results.items():
            if not r.at_level:
                f = space.to_data(r.path.reshape(-1, r.path.shape[-1]), at_level=False)
                frames[m] = f.reshape(p, -1, *f.shape[1:])
                if r.extrapolation is not None:
                    e = space.to_data(r.extrapolation.reshape(-1, r.path.shape[-1]), at_level=False)
                    frames_ext[m] = e.reshape(p, -1, *e.shape[1:])
        order = list(results)
        return ({m: frames[m] for m in order}, {m: frames_ext[m] for m in order if m in frames_ext},
                images[-1] if diffusion else None)

    @staticmethod
    def _pair_rows(batch, dataset, metric, results, frames, frames_ext, truth, truth_ext, net) -> list[dict]:
        from scoregeo_cli.evaluation.path import consecutive_lpips, path_metrics

        rows = []
        for method, result in results.items():
            if truth is not None:
                per_frame = _framewise(frames[method][:, 1:-1], truth[:, 1:-1], net)
            energy = result.energy
            if energy is None and result.at_level:
                with torch.no_grad():
                    energy = metric.energy(result.path)
            ext = frames_ext.get(method)
            ext_ok = ext is not None and truth_ext is not None and bool(torch.isfinite(ext).all())
            if ext is not None and truth_ext is not None:
                per_frame_ext = _framewise(ext[:, 1:], truth_ext[:, 1:], net) if ext_ok else \
                    {k: torch.full(ext[:, 1:].shape[:2], float("nan")) for k in ("psnr", "ssim", "lpips")}
            for k, p in enumerate(batch):
                d = consecutive_lpips(frames[method][k], net=net).cpu()
                values = {k_: float(v[k].mean()) for k_, v in per_frame.items()} if truth is not None \
                    else {"lpips": float(d.mean())}
                values.update(path_metrics(d))
                if energy is not None:
                    values["energy"] = float(energy[k])
                values.update({"score_evals": result.score_evals, "seconds": result.seconds})
                values.update({key: float(v[k]) for key, v in result.extra.items()})
                if ext is not None and truth_ext is not None:
                    values.update({f"extrapolation_{k_}": float(v[k].mean()) for k_, v in per_frame_ext.items()})
                    ext_path = path_metrics(consecutive_lpips(ext[k], net=net).cpu()) if ext_ok else \
                        dict.fromkeys(PATH_KEYS, float("nan"))
                    values.update({f"extrapolation_{k_}": v for k_, v in ext_path.items()})
                    values.update({"extrapolation_score_evals": result.ext_score_evals,
                                   "extrapolation_seconds": result.ext_seconds})
                extra = {"name": dataset.names[p]} if dataset.named_pairs else {}
                rows += [row(p, method, key, value, **extra) for key, value in values.items()]
        return rows


def _framewise(frames: torch.Tensor, truth: torch.Tensor, net: str) -> dict[str, torch.Tensor]:
    """PSNR, SSIM, LPIPS of frames (P, F, C, H, W) against truth of the same shape -> (P, F) each."""
    from scoregeo_cli.evaluation.images import lpips_distance, psnr, ssim

    p, f = frames.shape[:2]
    x, y = frames.reshape(p * f, *frames.shape[2:]), truth.reshape(p * f, *truth.shape[2:]).clamp(0, 1)
    return {"psnr": psnr(x, y).reshape(p, f), "ssim": ssim(x, y).reshape(p, f),
            "lpips": lpips_distance(x, y, net=net).reshape(p, f)}


class _SetMetrics:
    """FID/KID of intermediate (and extrapolated) frames per method against reference images.

    ``eval.fid_frames`` frames per method are drawn at random (null: all) before any frame
    exists, so Inception runs only on the drawn ones, batch by batch; reference features come
    from ``dataset.reference`` (``eval.fid_real`` images) or, when the dataset has none, from
    the input images of every pair.
    """

    def __init__(self, cfg, dataset, methods, n_pairs, n_nodes, plan, inception_features):
        ev = cfg.eval
        self.ev, self.features = ev, inception_features
        self.batch = int(ev.inception_batch)
        gen = torch.Generator().manual_seed(int(cfg.seed) + 1)
        n_real = None if ev.get("fid_real") is None else int(ev.fid_real)
        real = dataset.reference(n_real, gen, (0.0, 1.0))
        self.real = None if real is None else inception_features(real, self.batch)
        self.real_ext = None
        if plan.extrapolate:
            real_ext = dataset.reference(n_real, gen, (1.0, 1.0 + plan.shooter.duration))
            self.real_ext = None if real_ext is None else inception_features(real_ext, self.batch)
        self.inputs: list[torch.Tensor] = []
        sizes = {"": n_pairs * (n_nodes - 2), "extrapolation_": n_pairs * plan.shooter.steps}
        prefixes = ["", "extrapolation_"] if plan.extrapolate else [""]
        self.picks, self.fake, self.finite = {}, {}, {}
        for method in methods:
            for prefix in prefixes:
                total = sizes[prefix]
                k = total if ev.get("fid_frames") is None else int(ev.fid_frames)
                chosen = torch.zeros(total, dtype=torch.bool)
                chosen[torch.randperm(total, generator=gen)[:k]] = True
                self.picks[method, prefix] = chosen
                self.fake[method, prefix], self.finite[method, prefix] = [], True

    def add(self, batch, images_a, images_b, frames, frames_ext) -> None:
        if self.real is None:
            self.inputs.append(self.features(torch.cat([images_a, images_b]), self.batch).cpu())
        for (method, prefix), chosen in self.picks.items():
            source = frames.get(method) if prefix == "" else frames_ext.get(method)
            if source is None:
                continue
            inner = source[:, 1:-1] if prefix == "" else source[:, 1:]
            per_pair = inner.shape[1]
            mask = chosen.reshape(-1, per_pair)[batch[0]:batch[-1] + 1].reshape(-1)
            picked = inner.reshape(-1, *inner.shape[2:])[mask]
            if not bool(torch.isfinite(inner).all()):  # a failed extrapolation
                self.finite[method, prefix] = False
            elif len(picked):
                self.fake[method, prefix].append(self.features(picked, self.batch).cpu())

    def rows(self) -> list[dict]:
        from scoregeo_cli.evaluation.images import fid_from_features, kid_from_features

        real = self.real if self.real is not None else torch.cat(self.inputs)
        references = {"": real, "extrapolation_": self.real_ext}
        rows = []
        for (method, prefix), parts in self.fake.items():
            reference = references[prefix]
            if not self.finite[method, prefix] or not parts or reference is None:
                rows += [row(-1, method, f"{prefix}{k}", float("nan")) for k in ("fid", "kid", "kid_std")]
                continue
            fake = torch.cat(parts)
            kid, kid_std = kid_from_features(reference, fake, self.ev.kid_subset_size)
            scope = f"{len(reference)} reference images vs {len(fake)} frames"
            rows += [row(-1, method, f"{prefix}fid", fid_from_features(reference, fake), name=scope),
                     row(-1, method, f"{prefix}kid", kid, name=scope),
                     row(-1, method, f"{prefix}kid_std", kid_std, name=scope)]
        return rows
