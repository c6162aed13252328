"""Held-out digits as image pairs in MorphBench's folder layout, so that the paper's Stable
Diffusion table (``scoregeo reproduce table2_morphbench``) runs offline with the packaged latent
diffusion model ``ldm_mnist``:

    python -m scoregeo_cli.data.digit_pairs /tmp/digit_pairs
    scoregeo reproduce table2_morphbench score.pretrained=ldm_mnist dataset.root=/tmp/digit_pairs

``write_digit_pairs(root)`` writes 28x28 greyscale PNGs of test-split digits of ``mnist5k``
(never seen by ``ldm_mnist``'s training) as MorphBench's two categories:

* ``Metamorphosis/<k>_<a>to<b>_{0,1}.png``: a digit of class a and one of another class b;
* ``Animation/<k>_<c>_{0,1}.png``: one digit of class c at two rotations, theta_a in
  ``angle_a`` and theta_b in ``angle_b`` degrees (rotated_mnist's pair angles).

Digits, classes and angles are drawn from ``seed``; ``pairs.json`` beside the folders records
each pair's rows in the source file, classes and angles.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from scoregeo_cli.errors import ScoregeoError


def _save_png(image: torch.Tensor, path: Path) -> None:
    """(1, H, W) in [0, 1] -> an 8-bit greyscale PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


def write_digit_pairs(root: str | Path, metamorphosis: int = 10, animation: int = 10, seed: int = 0,
                      angle_a=(-45.0, -15.0), angle_b=(15.0, 45.0)) -> Path:
    """Write ``metamorphosis`` + ``animation`` pairs of held-out mnist5k digits under ``root``
    (module docstring); returns ``root``."""
    from scoregeo_cli.data.rotated_mnist import RotatedDigits, rotate

    if int(metamorphosis) < 0 or int(animation) < 0 or int(metamorphosis) + int(animation) < 1:
        raise ScoregeoError(f"at least one pair is needed, got {metamorphosis} metamorphosis and {animation} "
                            "animation pairs")
    root = Path(root)
    data = RotatedDigits(source="mnist5k", angle_a=angle_a, angle_b=angle_b)
    images, rows = data.images("test"), data.source_rows("test")
    labels = data.labels()[rows]
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(images), generator=gen)
    records, used = [], 0

    def next_digit(exclude_class: int | None = None) -> int:
        nonlocal used
        while True:
            i = int(order[used % len(order)])
            used += 1
            if exclude_class is None or int(labels[i]) != exclude_class:
                return i

    for k in range(int(metamorphosis)):
        i = next_digit()
        j = next_digit(exclude_class=int(labels[i]))
        name = f"Metamorphosis/{k:02d}_{int(labels[i])}to{int(labels[j])}"
        _save_png(images[i], root / f"{name}_0.png")
        _save_png(images[j], root / f"{name}_1.png")
        records.append({"name": name, "source_rows": [int(rows[i]), int(rows[j])],
                        "classes": [int(labels[i]), int(labels[j])]})
    for k in range(int(animation)):
        i = next_digit()
        theta = [lo + (hi - lo) * float(torch.rand(1, generator=gen, dtype=torch.float64))
                 for lo, hi in (data.angle_a, data.angle_b)]
        name = f"Animation/{k:02d}_{int(labels[i])}"
        both = rotate(images[i:i + 1].double().expand(2, -1, -1, -1), torch.tensor(theta, dtype=torch.float64))
        _save_png(both[0].float(), root / f"{name}_0.png")
        _save_png(both[1].float(), root / f"{name}_1.png")
        records.append({"name": name, "source_rows": [int(rows[i])], "classes": [int(labels[i])],
                        "angles": theta})
    (root / "pairs.json").write_text(json.dumps({"source": "mnist5k", "split": "test", "seed": int(seed),
                                                 "pairs": records}, indent=1) + "\n")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scoregeo_cli.data.digit_pairs",
                                     description="Write held-out MNIST digits as image pairs in MorphBench's layout.")
    parser.add_argument("root", type=Path, help="folder to write Metamorphosis/ and Animation/ into")
    parser.add_argument("--metamorphosis", type=int, default=10, help="pairs of two digits of different classes")
    parser.add_argument("--animation", type=int, default=10, help="pairs of one digit at two rotations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        root = write_digit_pairs(args.root, args.metamorphosis, args.animation, args.seed)
    except ScoregeoError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"{args.metamorphosis + args.animation} pairs in {root}\n"
          f"scoregeo reproduce table2_morphbench score.pretrained=ldm_mnist dataset.root={root}")


if __name__ == "__main__":
    main()
