"""What an image run measures besides each method's frame and path metrics (``tasks/images.py``).

* ``orbit_rows``: geometry against the rotation orbit of each pair's digit (rotated digits).
* ``exact_score`` and ``score_error_rows``: ``eval.score_error``, the run's score against
  the exact orbit-set score on the nodes each method visits.
* ``framewise``: PSNR, SSIM and LPIPS of frames against the truth; ``FrameMemo`` reuses them
  and path energies through the cache.
* ``SetMetrics``: FID/KID of intermediate (and extrapolated) frames per method.
"""

from __future__ import annotations

import math

import torch

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.evaluation.rows import row
from scoregeo_cli.io.cache import digest, file_digest


@torch.no_grad()
def orbit_rows(batch, dataset, space, results, frames, fractions, step: float) -> list[dict]:
    """Geometry against the rotation orbit of each pair's own digit (a grid of ``step`` degrees
    over the training range): ``orbit_distance_max``, the largest distance of an interior node
    at level t to the noised orbit, min_k |x - sqrt(abar_t) y_k| with y_k the rotations encoded
    as the space encodes data (pixels in [-1, 1], or VAE latents) (paths at level t only),
    and ``orbit_excess_max``, the same above the mean of the two ends' distances (which the
    shared noise sets: 0 is as close as the endpoints); and
    ``angle_error`` / ``angle_error_max``, the mean / largest |angle of the nearest true
    rotation to a denoised interior frame - the node's ideal angle|, degrees."""
    lo, hi = dataset.train_angles
    grid = torch.arange(lo, hi + 1e-9, step, dtype=torch.float64)
    images = dataset.orbit(grid, batch)  # (B, G, C, H, W) in [0, 1]
    orbit = images.flatten(2)  # (B, G, D)
    ideal = dataset.angles(batch, fractions)[:, 1:-1]  # (B, N-2)
    # the orbit where paths live: encoded as the space encodes data (pixels: 2 x - 1; latents: the
    # VAE), scaled to level t
    encoded = space.encode(images.flatten(0, 1)).double().reshape(len(batch), len(grid), -1)
    level = math.sqrt(getattr(space, "abar_t", 1.0)) * encoded
    rows = []
    for method, result in results.items():
        values = {}
        if result.error is not None:
            nan = torch.full((len(batch),), float("nan"))
            values = {"angle_error": nan, "angle_error_max": nan}
            if result.at_level:
                values.update(orbit_distance_max=nan, orbit_excess_max=nan)
            rows += [row(p, method, key, float(v[k])) for key, v in values.items() for k, p in enumerate(batch)]
            continue
        if result.at_level:
            dist = torch.cdist(result.path.double(), level).amin(-1)  # (B, N)
            values["orbit_distance_max"] = dist[:, 1:-1].amax(-1)
            # above the ends' own distance (the shared noise): 0 = as close as the endpoints
            values["orbit_excess_max"] = (dist[:, 1:-1] - 0.5 * (dist[:, :1] + dist[:, -1:])).amax(-1)
        inner = frames[method][:, 1:-1].flatten(2).double()
        nearest = torch.cdist(inner, orbit.double()).argmin(-1)  # (B, N-2)
        err = (grid[nearest] - ideal).abs()
        values["angle_error"], values["angle_error_max"] = err.mean(-1), err.amax(-1)
        rows += [row(p, method, key, float(v[k])) for key, v in values.items() for k, p in enumerate(batch)]
    return rows


def exact_score(score, dataset):
    """``eval.score_error``: the exact score of the orbit set at the run's level and schedule
    (the run's own score when it is that oracle); one sentence where it is undefined."""
    from scoregeo_cli.scores.orbit import OrbitScore, orbit_score

    if getattr(dataset, "pair_split", None) != "orbit_set":
        raise ScoregeoError("eval.score_error measures the score against the exact score of the orbit set; "
                            "it needs rotated digits with dataset.pair_split=orbit_set")
    for candidate in (score, getattr(score, "exact", None)):  # the oracle itself, or score=blend's
        if isinstance(candidate, OrbitScore):
            return candidate
    if not hasattr(score, "alphas_cumprod") or not hasattr(score, "t"):
        raise ScoregeoError(f"eval.score_error needs a score on the diffusion levels (a UNet or score=orbit), "
                            f"not {type(score).__name__}")
    return orbit_score(dataset, t=score.t, alphas_cumprod=score.alphas_cumprod)


@torch.no_grad()
def score_error_rows(batch, score, exact, results) -> list[dict]:
    """``score_error``: per pair, the run's score against the exact orbit-set score on the
    interior nodes of each method's path at level t, sum |s - s*|^2 / sum |s*|^2 over them
    (``studies/fidelity.py``'s relative error on the points the method visits; 0 for the oracle)."""
    rows = []
    for method, result in results.items():
        if not result.at_level:
            continue
        if result.error is not None:
            rows += [row(p, method, "score_error", float("nan")) for p in batch]
            continue
        inner = result.path[:, 1:-1]
        flat = inner.reshape(-1, inner.shape[-1])
        s, e = score(flat).double().reshape(inner.shape), exact(flat).double().reshape(inner.shape)
        ratio = ((s - e) ** 2).sum((-1, -2)) / (e ** 2).sum((-1, -2))
        rows += [row(p, method, "score_error", float(ratio[k])) for k, p in enumerate(batch)]
    return rows


class FrameMemo:
    """Frame metrics and path energies through the cache: the baselines' frames and paths do not
    change when a solver or metric is swept. Keys hold the exact frames (and truth) or path, the
    LPIPS weights by value, and for energies the metric's parameters and the space's fingerprint
    (no energy caching when the space has none); the Stein metric's energy is cached as its two
    lam-free parts, so a lam sweep reuses them too."""

    def __init__(self, cache, space_fingerprint: str | None, metric, net: str):
        self.cache = cache if cache is not None and cache.root is not None else None
        self.metric, self.net = metric, net
        self.lpips = ""
        self.metric_id = None
        if self.cache is not None:
            from scoregeo_cli.io import weights

            self.lpips = file_digest(weights.require_lpips(net))
            if space_fingerprint is not None:
                # a metric whose energy splits into parts free of lam is keyed without lam
                split = hasattr(metric, "energy_terms")
                params = sorted((k, v) for k, v in vars(metric).items() if isinstance(v, (int, float, str, bool))
                                and not (split and k == "lam"))
                self.metric_id = digest(type(metric).__name__, params, space_fingerprint)

    def _get(self, kind: str, parts: list, compute):
        if self.cache is None:
            return compute()
        return self.cache.get(kind, digest(kind, *parts), compute)

    def framewise(self, frames: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
        stacked = self._get("framewise", [self.lpips, self.net, frames, truth], lambda: torch.stack(
            [v.double().cpu() for v in framewise(frames, truth, self.net).values()]))
        return dict(zip(("psnr", "ssim", "lpips"), stacked))

    def consecutive(self, frames: torch.Tensor) -> torch.Tensor:
        """LPIPS between consecutive frames, (P, F-1), for frames (P, F, C, H, W)."""
        from scoregeo_cli.evaluation.path import consecutive_lpips

        return self._get("consecutive", [self.lpips, self.net, frames], lambda: torch.stack(
            [consecutive_lpips(f, net=self.net).double().cpu() for f in frames]))

    @torch.no_grad()
    def energy(self, path: torch.Tensor) -> torch.Tensor:
        if self.metric_id is None:
            return self.metric.energy(path)
        if hasattr(self.metric, "energy_terms"):  # cached parts serve every lam of a sweep
            kinetic, score_part = self._get("energy_terms", [self.metric_id, path], lambda: torch.stack(
                self.metric.energy_terms(path)).cpu())
            return kinetic + self.metric.lam * score_part
        return self._get("energy", [self.metric_id, path], lambda: self.metric.energy(path).cpu())


def framewise(frames: torch.Tensor, truth: torch.Tensor, net: str) -> dict[str, torch.Tensor]:
    """PSNR, SSIM, LPIPS of frames (P, F, C, H, W) against truth of the same shape -> (P, F) each."""
    from scoregeo_cli.evaluation.images import lpips_distance, psnr, ssim

    p, f = frames.shape[:2]
    x, y = frames.reshape(p * f, *frames.shape[2:]), truth.reshape(p * f, *truth.shape[2:]).clamp(0, 1)
    return {"psnr": psnr(x, y).reshape(p, f), "ssim": ssim(x, y).reshape(p, f),
            "lpips": lpips_distance(x, y, net=net).reshape(p, f)}


class SetMetrics:
    """FID/KID of intermediate (and extrapolated) frames per method against reference images.

    ``eval.fid_frames`` frames per method are drawn at random (null: all) before any frame
    exists, so Inception runs only on the drawn ones, batch by batch; reference features come
    from ``dataset.reference`` (``eval.fid_real`` images) or, when the dataset has none, from
    the input images of every pair.
    """

    def __init__(self, cfg, dataset, methods, n_pairs, n_nodes, plan, cache):
        from scoregeo_cli.io import weights
        from scoregeo_cli.evaluation.images import inception_features

        ev = cfg.eval
        self.ev, self.cache, self._inception = ev, cache, inception_features
        self.batch = int(ev.inception_batch)
        self.resize = ev.get("fid_resize", "tf1_bilinear")
        self.network = file_digest(weights.require_inception()) if cache.root is not None else ""
        gen = torch.Generator().manual_seed(int(cfg.seed) + 1)
        n_real = None if ev.get("fid_real") is None else int(ev.fid_real)
        real = dataset.reference(n_real, gen, (0.0, 1.0))
        self.real = None if real is None else self.features(real)
        self.real_ext = None
        if plan.extrapolate:
            real_ext = dataset.reference(n_real, gen, (1.0, 1.0 + plan.shooter.duration))
            self.real_ext = None if real_ext is None else self.features(real_ext)
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

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Inception features of images (N, C, H, W), from the cache when these exact images
        met this network with this resize before."""
        key = digest("inception", self.network, self.resize, images)
        return self.cache.get("inception", key, lambda: self._inception(images, self.batch, resize=self.resize).cpu())

    def add(self, batch, images_a, images_b, frames, frames_ext) -> None:
        if self.real is None:
            self.inputs.append(self.features(torch.cat([images_a, images_b])))
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
                self.fake[method, prefix].append(self.features(picked))

    def rows(self) -> list[dict]:
        from scoregeo_cli.evaluation.images import fid_from_features, kid_from_features, kid_subset_size_for

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
            subset = kid_subset_size_for(len(reference), len(fake), self.ev.kid_subset_size)
            scope = f"{len(reference)} reference images vs {len(fake)} frames, KID subsets of {subset}"
            rows += [row(-1, method, f"{prefix}fid", fid_from_features(reference, fake), name=scope),
                     row(-1, method, f"{prefix}kid", kid, name=scope),
                     row(-1, method, f"{prefix}kid_std", kid_std, name=scope)]
        return rows
