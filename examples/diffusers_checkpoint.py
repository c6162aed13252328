"""Geodesics between two images under the score of a diffusers checkpoint, from Python.

FOLDER is a pixel-space diffusers checkpoint: ``unet/`` (a UNet2DModel) and ``scheduler/``,
as ``DDPMPipeline.save_pretrained`` writes them (a Hub download such as
google/ddpm-cifar10-32 has this layout). Both images are noised to level t with one shared
noise, the geodesic of g = I + lam u u^T (u = s/|s|) is solved between them at level t,
and every node is denoised by DDIM; LERP at level t is denoised beside it. The strip
(top: geodesic, bottom: LERP) is written to --out.

    python examples/diffusers_checkpoint.py FOLDER --images A.png B.png [--t 400] [--out strip.png]

Without --images two random images stand in (a smoke test of the checkpoint).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import scoregeo_cli as sg


def load_image(path: str, channels: int, size: int) -> torch.Tensor:
    """An image file as a (channels, size, size) tensor in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)
    x = x[None] if channels == 1 else x.permute(2, 0, 1)
    return x * 2 - 1


def save_strip(rows: list[torch.Tensor], path: Path) -> None:
    """Rows of frames (N, C, H, W) in [-1, 1] as one PNG."""
    from PIL import Image

    grid = torch.cat([torch.cat(list(row), dim=-1) for row in rows], dim=-2)  # (C, rows*H, N*W)
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="diffusers checkpoint folder with unet/ and scheduler/")
    parser.add_argument("--images", nargs=2, metavar=("A", "B"), help="the two end images")
    parser.add_argument("--t", type=int, default=400, help="diffusion level of the paths")
    parser.add_argument("--lam", type=float, default=1000.0)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--max-evals", type=int, default=50, help="batched score evaluations of the solve")
    parser.add_argument("--ddim-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="strip.png")
    args = parser.parse_args(argv)

    from diffusers import DDIMScheduler, UNet2DModel

    folder = Path(args.folder)
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet").eval().requires_grad_(False).to(args.device)
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    channels, size = unet.config.in_channels, unet.config.sample_size
    gen = torch.Generator().manual_seed(args.seed)
    if args.images:
        clean = torch.stack([load_image(p, channels, size) for p in args.images])
    else:
        print("no --images: two random images stand in")
        clean = torch.rand(2, channels, size, size, generator=gen) * 2 - 1
    clean = clean.double().to(args.device)                          # (2, C, H, W) in [-1, 1]
    eps = torch.randn(1, channels, size, size, generator=gen, dtype=torch.float64).to(args.device)
    a, b = sg.noise(clean[:1], eps, args.t, scheduler), sg.noise(clean[1:], eps, args.t, scheduler)

    score = sg.score_from_unet(unet, scheduler, args.t)
    geo = sg.geodesic(score, a, b, lam=args.lam, normalize="unit", nodes=args.nodes, max_evals=args.max_evals)
    lerp = torch.lerp(a[:, None], b[:, None], torch.linspace(0, 1, args.nodes, dtype=a.dtype,
                                                             device=a.device)[:, None, None, None])
    frames = sg.denoise(unet, scheduler, torch.cat([geo.path, lerp]), args.t, steps=args.ddim_steps)

    energy_lerp = float(geo.metric.energy(lerp)[0])
    print(f"geodesic at t = {args.t}: energy {float(geo.energy[0]):.4g} (LERP {energy_lerp:.4g}), g-length "
          f"{float(geo.length[0]):.4g} (LERP {float(geo.metric.length(lerp)[0]):.4g}), grad_rel "
          f"{float(geo.grad_rel[0]):.1e}, {geo.network_passes} UNet passes in {geo.seconds:.1f} s")
    save_strip([frames[0].cpu(), frames[1].cpu()], Path(args.out))
    print(f"strip (geodesic over LERP, {args.nodes} frames each): {args.out}")
    return {"geodesic": geo, "frames": frames, "energy_lerp": energy_lerp}


if __name__ == "__main__":
    main()
