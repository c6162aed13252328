"""Inception (FID/KID features) in channels_last against the contiguous layout: time and
agreement, side by side in one process.

    .venv/bin/python benchmarks/bench_inception_layout.py [--images 32] [--size 28] [--reps 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import scoregeo_cli  # noqa: F401  (torchvision import fix)
from scoregeo_cli.evaluation import images as im


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    u8 = im.to_uint8(x)
    model = im._inception(torch.device("cpu"), "tf1_bilinear")
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    times: dict[str, list[float]] = {k: [] for k in layouts}
    out = {}
    with torch.no_grad():
        for _ in range(args.reps):  # interleaved, so load drifts hit both alike
            for name, fmt in layouts.items():
                m = model.to(memory_format=fmt)
                start = time.perf_counter()
                out[name] = m(u8)
                times[name].append(time.perf_counter() - start)
    rel = float((out["channels_last"] - out["contiguous"]).abs().max() / out["contiguous"].abs().max())
    best = {k: min(v) for k, v in times.items()}
    print(f"{args.images} images of {args.size} px, {args.threads} thread(s), best of {args.reps}:")
    for name, t in best.items():
        print(f"  {name:14s} {t:.3f} s  ({t / best['contiguous']:.2f} x contiguous)")
    print(f"  max feature difference: {rel:.1e} relative")


if __name__ == "__main__":
    main()
