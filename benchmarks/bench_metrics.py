"""Benchmark of the image metrics: FID/KID against the bare Inception, and LPIPS throughput.

    .venv/bin/python benchmarks/bench_metrics.py [--n 32] [--repeats 3] [--device cpu]
        [--resize tf1_bilinear|antialiased_bilinear]

FID/KID (``fid_kid``: validation, uint8 conversion by rounding, Inception forward with the
chosen 299 px resize, torchmetrics FID and KID) and the bare network forward, with the same
resize, on the same uint8 batches are timed alternately in one run; the best of
``--repeats`` of each is compared (target: the metric adds at most 10%).
The statistics alone (FID and KID from precomputed features) are timed too: on a shared,
busy machine that figure is steadier than the difference of two long timings.
LPIPS is timed on batches of 32 pairs at 28x28 (AlexNet upsamples to 64x64, VGG16 runs
at 28x28), 64x64 and 256x256. Real images: sklearn's
handwritten digits upsampled to 64x64 (the Inception resizes every input to 299x299, so
its cost does not depend on the input size). Needs ``scoregeo weights``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from scoregeo_cli.io import weights
from scoregeo_cli.evaluation.images import (
    INCEPTION_RESIZES,
    fid_from_features,
    fid_kid,
    inception_features,
    kid_from_features,
    lpips_distance,
    lpips_size,
    to_uint8,
)

LPIPS_PAIRS = 32


def _digits(count: int, offset: int, device: torch.device) -> torch.Tensor:
    """(count, 1, 64, 64) handwritten digits in [0, 1]."""
    scans = torch.tensor(load_digits().images[offset:offset + count], dtype=torch.float32)
    images = F.interpolate(scans[:, None] / 16, size=(64, 64), mode="bilinear",
                           align_corners=False)
    return images.clamp(0, 1).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(run: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def bench_fid(n: int, repeats: int, batch_size: int, device: torch.device, resize: str) -> None:
    from torchmetrics.image.fid import NoTrainInceptionV3

    real, fake = _digits(n, 0, device), _digits(n, n, device)
    network = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(weights.require_inception()),
                                 antialias=resize == "antialiased_bilinear").to(device)
    batches = [to_uint8(images.expand(-1, 3, -1, -1)[i:i + batch_size])
               for images in (real, fake) for i in range(0, n, batch_size)]

    def bare() -> None:
        with torch.no_grad():
            for batch in batches:
                network(batch)

    def statistics() -> None:
        fid_from_features(real_features, fake_features)
        kid_from_features(real_features, fake_features)

    result = fid_kid(real, fake, batch_size=batch_size, resize=resize)  # warm-up, loads the model
    bare()
    real_features = inception_features(real, batch_size, resize)
    fake_features = inception_features(fake, batch_size, resize)
    bare_times, metric_times, statistics_times = [], [], []
    for _ in range(repeats):
        bare_times.append(_best_time(bare, device))
        metric_times.append(_best_time(
            lambda: fid_kid(real, fake, batch_size=batch_size, resize=resize), device))
        statistics_times.append(_best_time(statistics, device))
    t_bare, t_metric, t_statistics = min(bare_times), min(metric_times), min(statistics_times)
    images = 2 * n
    print(f"FID/KID, {n} + {n} digits at 64x64, {resize} resize, batch {batch_size}, "
          f"best of {repeats}:")
    print(f"  bare Inception forward  {t_bare:8.2f} s  {images / t_bare:7.1f} images/s")
    print(f"  fid_kid (FID + KID)     {t_metric:8.2f} s  {images / t_metric:7.1f} images/s")
    print(f"  metric / network        {t_metric / t_bare:8.3f}  "
          f"(overhead {100 * (t_metric / t_bare - 1):+.1f}%, target <= +10%)")
    print(f"  FID + KID from features {t_statistics:8.2f} s  "
          f"({100 * t_statistics / t_bare:.1f}% of the network's time)")
    print(f"  values: fid {result['fid']:.3f}, kid {result['kid']:.5f} +- {result['kid_std']:.5f} "
          f"(subsets of {result['kid_subset_size']})")


def bench_lpips(repeats: int, device: torch.device) -> None:
    print(f"LPIPS, batches of {LPIPS_PAIRS} pairs, best of {repeats}:")
    for side in (28, 64, 256):
        a = F.interpolate(_digits(LPIPS_PAIRS, 0, device), size=(side, side), mode="bilinear")
        b = F.interpolate(_digits(LPIPS_PAIRS, LPIPS_PAIRS, device), size=(side, side),
                          mode="bilinear")
        a, b = a.clamp(0, 1), b.clamp(0, 1)
        for net in ("alex", "vgg"):
            lpips_distance(a[:2], b[:2], net=net)  # warm-up
            best = min(_best_time(lambda: lpips_distance(a, b, net=net), device)
                       for _ in range(repeats))
            height, width = lpips_size(side, side, net)
            print(f"  {net:<4} {side:>3}x{side:<3}  {LPIPS_PAIRS / best:8.1f} pairs/s  "
                  f"(scored at {height}x{width})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images per set for FID/KID")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resize", choices=INCEPTION_RESIZES, default="tf1_bilinear",
                        help="Inception input resize (default: tf1_bilinear, the FID reference)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    bench_fid(args.n, args.repeats, args.batch_size, device, args.resize)
    bench_lpips(args.repeats, device)


if __name__ == "__main__":
    main()
