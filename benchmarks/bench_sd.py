"""Cost of Stable Diffusion geodesics: time per UNet call and per geodesic, score evaluations.

    python benchmarks/bench_sd.py                       # tiny random SD (tests/sd_tiny.py), CPU
    python benchmarks/bench_sd.py --pretrained <folder> # a real diffusers checkpoint
    python benchmarks/bench_sd.py --sd21-random --device cuda --dtype float16
                                                        # SD 2.1-base-sized random UNet and VAE

For each run: the median wall time of one UNet call at batch 1 and at the chunk size;
then ``--pairs`` geodesics of ``--frames`` nodes between shared-noise latents at level t
(images from tests/sd_tiny.make_image_pairs, VAE-encoded), solved together by the fixed-point
solver (lambda = 1000), with the batched score evaluations used, the wall time per geodesic,
how many converged, and the energy against the straight line. On a GPU the peak memory is
reported too. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import scoregeo_cli  # noqa: E402,F401  (torchvision fix before diffusers)
from scoregeo_cli.schedule import noise_to  # noqa: E402
from scoregeo_cli.geometry.solvers import FixedPointSolver, straight_path  # noqa: E402
from scoregeo_cli.geometry.stein import SteinMetric  # noqa: E402
from scoregeo_cli.scores.stable_diffusion import (  # noqa: E402
    DTYPES, LatentDiffusion, StableDiffusionScore, stable_diffusion_score)

# SD 2.1-base architecture (diffusers configs of stabilityai/stable-diffusion-2-1-base)
SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD21_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", prediction_type="epsilon")


def sd21_random(device: torch.device, dtype: torch.dtype, t: int, chunk: int) -> StableDiffusionScore:
    """A randomly initialised SD 2.1-base-sized UNet and VAE (no weights can be fetched)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET).to(device, dtype).eval().requires_grad_(False)
    vae = AutoencoderKL(**SD21_VAE).to(device, dtype).eval().requires_grad_(False)
    embeds = torch.randn(1, 77, 1024)
    model = LatentDiffusion(unet, vae, SD21_SCHEDULER, embeds, dtype, device, chunk,
                            source="random SD 2.1-base-sized UNet and VAE")
    return StableDiffusionScore(model, t, chunk)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_unet(model: LatentDiffusion, batch: int, t: int, repeats: int) -> float:
    x = torch.randn(batch, *model.latent_shape, device=model.device)
    with torch.no_grad():
        model.eps(x, t)  # warm-up
        times = []
        for _ in range(repeats):
            sync(model.device)
            start = time.perf_counter()
            model.eps(x, t)
            sync(model.device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained", help="diffusers folder or cached hub id (default: tiny random SD)")
    parser.add_argument("--sd21-random", action="store_true", help="SD 2.1-base-sized random networks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--t", type=int, default=400)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--max-evals", type=int, default=50)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--chunk", type=int, default=34, help="latents per UNet call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    device = torch.device(args.device)
    start = time.perf_counter()
    if args.sd21_random:
        score = sd21_random(device, DTYPES[args.dtype], args.t, args.chunk)
    else:
        pretrained = args.pretrained
        if pretrained is None:
            from sd_tiny import build_tiny_sd

            pretrained = str(build_tiny_sd(Path(tempfile.mkdtemp()) / "model"))
        score = stable_diffusion_score(pretrained, t=args.t, dtype=args.dtype, device=args.device,
                                       chunk_size=args.chunk)
    model = score.model
    load_seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.unet.parameters())

    unet_1 = time_unet(model, 1, args.t, args.repeats)
    unet_chunk = time_unet(model, args.chunk, args.t, args.repeats)

    from sd_tiny import make_image_pairs
    from scoregeo_cli.data.image_pairs import ImagePairs

    names = tuple(f"pair{i}/{'disc' if i % 2 else 'square'}" for i in range(args.pairs))
    pairs = ImagePairs(make_image_pairs(Path(tempfile.mkdtemp()), names=names), resolution=model.resolution)
    images_a, images_b = pairs.load(range(len(pairs)))
    z_a, z_b = model.encode(images_a).double(), model.encode(images_b).double()
    eps = torch.randn(z_a.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    abar = model.alphas_cumprod
    a = noise_to(z_a, eps, args.t, abar).flatten(1)
    b = noise_to(z_b, eps, args.t, abar).flatten(1)

    metric = SteinMetric(score, lam=1000.0)
    solver = FixedPointSolver(nodes=args.frames, max_evals=args.max_evals, tol=args.tol)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = solver(metric, a, b)
    with torch.no_grad():
        line_energy = metric.energy(straight_path(a, b, args.frames))
    report = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "model": model.source, "unet_params": params, "dtype": args.dtype,
        "latent_shape": list(model.latent_shape), "load_seconds": round(load_seconds, 2),
        "threads": torch.get_num_threads(),
        "unet_call_seconds": {"batch_1": round(unet_1, 4), f"batch_{args.chunk}": round(unet_chunk, 4)},
        "geodesics": args.pairs, "frames": args.frames, "t": args.t,
        "points_per_evaluation": args.pairs * (args.frames - 1),
        "score_evals": result.score_evals, "iterations": result.iterations,
        "converged": int(result.converged.sum()),
        "solver_seconds": round(result.seconds, 3),
        "seconds_per_geodesic": round(result.seconds / args.pairs, 3),
        "energy_ratio_to_straight_line": [round(float(e), 4) for e in result.energy / line_energy],
    }
    if device.type == "cuda":
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
