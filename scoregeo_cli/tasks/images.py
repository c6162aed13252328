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
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from scoregeo_cli.build import build_metric, build_score, check_memory, instantiate
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.evaluation.image_runs import (FrameMemo, SetMetrics, exact_score, framewise, orbit_rows,
                                                score_error_rows)
from scoregeo_cli.evaluation.rows import row
from scoregeo_cli.io import progress
from scoregeo_cli.io.cache import Cache
from scoregeo_cli.io.files import atomic_write_json
from scoregeo_cli.methods import Plan, build_methods, check_methods
from scoregeo_cli.reporting.figures import save_frames, save_strip
from scoregeo_cli.tasks import astuple_shallow, run_methods_shown

LPIPS_NETS = ("alex", "vgg")
PATH_KEYS = ("ppl", "pdv", "smoothness", "consistency")


@dataclass
class Prepared:
    """What an image run builds before it computes (``ImageTask.prepare``); ``generator``
    has drawn the pairs and goes on to draw the noise."""

    dataset: object
    shooter: object
    methods: dict
    generator: torch.Generator
    score: object
    space: object
    n_pairs: int
    metric: object
    plan: Plan
    exact: object = None  # eval.score_error: the exact orbit score the run's score is measured against


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
        if ev.get("fid"):
            from scoregeo_cli.evaluation.images import check_inception_resize

            check_inception_resize(ev.get("fid_resize", "tf1_bilinear"))
        for key in ("fid_frames", "fid_real", "strips"):
            value = ev.get(key)
            if value is not None and int(value) < (0 if key == "strips" else 2):
                raise ScoregeoError(f"eval.{key} must be at least {0 if key == 'strips' else 2} or null, got {value}")

    def prepare(self, cfg: DictConfig) -> "Prepared":
        """Everything the run builds before it computes (dataset and its pairs, score, space,
        metric, methods), and so every refusal, in one sentence, before anything is written."""
        from scoregeo_cli.io import weights

        ev = cfg.eval
        self._check_eval(ev)
        dataset = instantiate(cfg.dataset)
        solver, shooter = instantiate(cfg.solver), instantiate(cfg.extrapolate)
        methods = build_methods(cfg)
        dataset.check()
        gen = torch.Generator().manual_seed(int(cfg.seed))
        oracle = _wants_dataset(cfg.score)  # a score built from the selected pairs (score=orbit)
        if not oracle:
            score = build_score(cfg)
            space = instantiate(cfg.space)(score=score)
        check_memory(cfg, solver.nodes, dataset.dim if oracle else score.dim, methods)
        n_pairs = dataset.select(cfg.n_pairs, gen, resolution=None if oracle else getattr(space, "resolution", None))
        if oracle:
            score = build_score(cfg, dataset=dataset)
            space = instantiate(cfg.space)(score=score)
        if "denoiser" in cfg and hasattr(space, "set_denoiser"):
            space.set_denoiser(instantiate(cfg.denoiser)(score=score, dataset=dataset))
        metric = build_metric(cfg, score)
        plan = Plan(solver.nodes, metric, solver, shooter, extrapolate=self.extrapolate and dataset.has_truth)
        check_methods(methods, plan)
        n_nodes = plan.nodes
        if ev.fid and n_pairs * (n_nodes - 2) < 2:
            raise ScoregeoError(f"FID/KID need at least 2 intermediate frames; {n_pairs} pair(s) of {n_nodes} "
                                "nodes give fewer: raise n_pairs or solver.nodes, or set eval.fid=false")
        weights.require_lpips(ev.lpips_net)
        if ev.fid:
            weights.require_inception()
        exact = exact_score(score, dataset) if ev.get("score_error") else None
        return Prepared(dataset, shooter, methods, gen, score, space, n_pairs, metric, plan, exact)

    def run(self, cfg: DictConfig, run_dir: Path, prepared: "Prepared | None" = None) -> list[dict]:
        run_dir, ev = Path(run_dir), cfg.eval
        dataset, shooter, methods, gen, score, space, n_pairs, metric, plan, exact = astuple_shallow(
            prepared or self.prepare(cfg))
        n_nodes = plan.nodes
        eps = torch.randn(n_pairs, score.dim, generator=gen, dtype=torch.float64)
        print(f"{dataset.describe()}; {space.describe()}; {n_pairs} pair(s), {n_nodes} nodes"
              + (f", {shooter.steps} extrapolated" if plan.extrapolate else "") + f"; methods {list(methods)}")
        atomic_write_json(run_dir / "pairs.json", dataset.records())

        cache = Cache(Path(cfg.output_root) / ".cache", enabled=bool(cfg.get("cache", True)))
        fid = SetMetrics(cfg, dataset, list(methods), n_pairs, n_nodes, plan, cache) if ev.fid else None
        fractions = torch.linspace(0, 1, n_nodes, dtype=torch.float64)
        memo = FrameMemo(cache, getattr(space, "fingerprint", lambda: None)(), metric, ev.lpips_net)
        plan.cache = cache  # geodesic solves are reused across runs that differ only after them
        rows: list[dict] = []
        strips_left = n_pairs if ev.get("strips") is None else int(ev.strips)
        batch_size = self.pair_batch or n_pairs
        method_gen = torch.Generator().manual_seed(int(cfg.seed) + 1)
        with progress.bar(n_pairs, "pairs", "pair") as pairs_bar:
            for start in range(0, n_pairs, batch_size):
                batch = list(range(start, min(start + batch_size, n_pairs)))
                images_a, images_b = dataset.load(batch)
                ends = space.endpoints(space.encode(images_a), space.encode(images_b), eps[batch])
                results = run_methods_shown(methods, ends, plan, method_gen)
                frames, frames_ext, denoised_ends = self._to_images(space, results, ends, cache)
                truth = dataset.truth(batch, fractions)
                truth_ext = dataset.truth(batch, 1 + plan.tau) if plan.extrapolate else None
                start_metrics = time.perf_counter()
                rows += self._pair_rows(batch, dataset, metric, results, frames, frames_ext, truth, truth_ext,
                                        ev.lpips_net, memo)
                if hasattr(dataset, "orbit"):
                    rows += orbit_rows(batch, dataset, space, results, frames, fractions, float(ev.get("orbit_step", 0.5)))
                if exact is not None:
                    rows += score_error_rows(batch, score, exact, results)
                if truth is not None and denoised_ends is not None:
                    true_ends = torch.stack([truth[:, 0], truth[:, -1]], 1)
                    roundtrip = framewise(denoised_ends, true_ends, ev.lpips_net)
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
                        columns, title = strip_labels(dataset, p, fractions, plan, cfg)
                        save_strip(strip, run_dir / "strips" / f"{dataset.names[p]}.png",
                                   split=n_nodes if plan.extrapolate else None, scale=int(ev.get("strip_scale", 1)),
                                   columns=columns, title=title)
                        strips_left -= 1
                    if self.save_frames:
                        save_frames({m: f[k] for m, f in frames.items()}, run_dir / "frames", dataset.names[p])
                pairs_bar.update(len(batch))
        if isinstance(getattr(space, "denoise_seconds", None), float):
            print(f"DDIM: {space.denoise_seconds:.1f} s in all")
        if fid is not None:
            start_fid = time.perf_counter()
            rows += fid.rows()
            print(f"FID/KID: {time.perf_counter() - start_fid:.1f} s")
        print(cache.describe())
        atomic_write_json(run_dir / "cache.json", cache.report())
        if ev.get("strips") != 0:
            print(f"strips ({'truth' if dataset.has_truth else 'inputs'} on top"
                  + ("; interpolation | extrapolation" if plan.extrapolate else "") + f"): {run_dir / 'strips'}")
        return rows

    @staticmethod
    def _to_images(space, results, ends, cache=None):
        """Frames (P, N, C, H, W) and extrapolations (P, steps+1, ...) per method, and the
        denoised endpoints (P, 2, ...) (None outside a diffusion space). Each endpoint is
        denoised once (every path starts at a and ends at b; every continuation starts at b);
        the interior points of all methods go through one batched DDIM pass, less those the
        cache already holds; methods on clean data are only decoded."""
        p, d = ends.a.shape
        groups: dict[tuple, torch.Tensor] = {("ends", ""): torch.stack([ends.a, ends.b], 1)}
        for m, r in results.items():
            if r.at_level:
                groups[m, "path"] = r.path[:, 1:-1]
                if r.extrapolation is not None:
                    groups[m, "ext"] = r.extrapolation[:, 1:]
        if hasattr(space, "denoise_groups"):
            clean = dict(zip(groups, space.denoise_groups(list(groups.values()), cache)))
            images = {k: space.to_data(v.reshape(-1, d), at_level=False) for k, v in clean.items()}
        else:
            images = {k: space.to_data(v.reshape(-1, d)) for k, v in groups.items()}
        images = {k: v.reshape(p, -1, *v.shape[1:]) for k, v in images.items()}
        first, last = images["ends", ""][:, :1], images["ends", ""][:, 1:]
        frames, frames_ext = {}, {}
        for m, r in results.items():
            if r.at_level:
                frames[m] = torch.cat([first, images[m, "path"], last], 1)
                if r.extrapolation is not None:
                    frames_ext[m] = torch.cat([last, images[m, "ext"]], 1)
                continue
            f = space.to_data(r.path.reshape(-1, d), at_level=False)
            frames[m] = f.reshape(p, -1, *f.shape[1:])
            if r.extrapolation is not None:
                e = space.to_data(r.extrapolation.reshape(-1, d), at_level=False)
                frames_ext[m] = e.reshape(p, -1, *e.shape[1:])
        return frames, frames_ext, (images["ends", ""] if hasattr(space, "denoise") else None)

    @staticmethod
    def _pair_rows(batch, dataset, metric, results, frames, frames_ext, truth, truth_ext, net,
                   memo=None) -> list[dict]:
        """Rows of every method for the pairs of ``batch``. ``memo`` (a ``FrameMemo``) reuses frame
        metrics and energies computed before on exactly the same inputs."""
        from scoregeo_cli.evaluation.path import path_metrics

        memo = memo or FrameMemo(None, None, metric, net)
        rows = []
        for method, result in progress.steps(list(results.items()), desc="frame metrics", unit="method"):
            if result.error is not None:  # a failed method: its rows say NaN, nothing is hidden
                keys = (["psnr", "ssim"] if truth is not None else []) + ["lpips", *PATH_KEYS, "energy"]
                rows += [row(p, method, key, float("nan")) for p in batch for key in keys]
                rows += [row(p, method, key, value) for p in batch
                         for key, value in (("score_evals", result.score_evals), ("seconds", result.seconds))]
                continue
            if truth is not None:
                per_frame = memo.framewise(frames[method][:, 1:-1], truth[:, 1:-1])
            energy = result.energy
            if energy is None and result.at_level:
                energy = memo.energy(result.path)
            consecutive = memo.consecutive(frames[method])
            ext = frames_ext.get(method)
            ext_ok = ext is not None and truth_ext is not None and bool(torch.isfinite(ext).all())
            consecutive_ext = memo.consecutive(ext) if ext_ok else None
            if ext is not None and truth_ext is not None:
                per_frame_ext = memo.framewise(ext[:, 1:], truth_ext[:, 1:]) if ext_ok else \
                    {k: torch.full(ext[:, 1:].shape[:2], float("nan")) for k in ("psnr", "ssim", "lpips")}
            for k, p in enumerate(batch):
                d = consecutive[k]
                values = {k_: float(v[k].mean()) for k_, v in per_frame.items()} if truth is not None \
                    else {"lpips": float(d.mean())}
                values.update(path_metrics(d))
                if energy is not None:
                    values["energy"] = float(energy[k])
                values.update({"score_evals": result.score_evals, "seconds": result.seconds})
                values.update({key: float(v[k]) for key, v in result.extra.items()})
                if ext is not None and truth_ext is not None:
                    values.update({f"extrapolation_{k_}": float(v[k].mean()) for k_, v in per_frame_ext.items()})
                    ext_path = path_metrics(consecutive_ext[k]) if ext_ok else \
                        dict.fromkeys(PATH_KEYS, float("nan"))
                    values.update({f"extrapolation_{k_}": v for k_, v in ext_path.items()})
                    values.update({"extrapolation_score_evals": result.ext_score_evals,
                                   "extrapolation_seconds": result.ext_seconds})
                extra = {"name": dataset.names[p]} if dataset.named_pairs else {}
                rows += [row(p, method, key, value, **extra) for key, value in values.items()]
        return rows


def strip_labels(dataset, pair: int, fractions: torch.Tensor, plan, cfg: DictConfig) -> tuple[list[str], str]:
    """A strip's column labels and title: each column's rotation angle where the dataset
    knows the true rotation (rotated digits), else its fraction of the path from a to b (past
    1: extrapolation)."""
    positions = torch.cat([fractions, (1 + plan.tau)[1:].to(fractions)]) if plan.extrapolate else fractions
    name = dataset.names[pair]
    if hasattr(dataset, "angles"):
        angles = dataset.angles([pair], positions)[0]
        columns = [f"{float(a):.0f}°" for a in angles]
        what = f"rotation from {float(angles[0]):.0f}° to {float(angles[len(fractions) - 1]):.0f}°, columns: angle"
    else:
        columns = [f"{float(f):.2g}" for f in positions]
        what = "columns: fraction of the path from a to b"
    level = OmegaConf.select(cfg, "score.t", default=None)
    title = (f"{cfg.experiment_name} {name} (seed {cfg.seed}{f', t = {level}' if level is not None else ''}): {what}"
             + ("; right of the gap: extrapolation" if plan.extrapolate else "")
             + f"; rows: {'truth' if dataset.has_truth else 'inputs'}, then each method")
    return columns, title


def _wants_dataset(score_cfg) -> bool:
    """Whether the score's factory takes the dataset (an oracle built from the selected pairs)."""
    import inspect

    from hydra.utils import get_method

    try:
        return "dataset" in inspect.signature(get_method(score_cfg._target_)).parameters
    except Exception:  # an unresolvable target is reported when the score is built
        return False
