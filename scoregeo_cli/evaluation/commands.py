"""``scoregeo lpips A B`` and ``scoregeo fid DIR_A DIR_B``: the metrics on image files.

Results go to stdout as ``key: value`` lines (easy to parse); what was read (how many
images from where) and progress go to stderr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scoregeo_cli.errors import ScoregeoError

# as evaluation.images.INCEPTION_RESIZES; that module (torch) is imported only when a command runs
INCEPTION_RESIZES = ("tf1_bilinear", "antialiased_bilinear")


def lpips_main(argv: list[str], prog: str) -> int:
    """Print the LPIPS distance between two image files of the same size, or the mean and
    std over the images of the same name in two folders."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="LPIPS v0.1 distance between two images of the same size, computed at "
                    "their own size (grayscale is repeated to RGB; only images too small for "
                    "the trunk, under 31 px on the shorter side for alex or 16 px for vgg, "
                    "are upsampled bilinearly to 64). Given two folders: every image of DIR_A "
                    "against the image of the same name in DIR_B, their mean and std. Prints "
                    "lpips_<net>: <value> lines. Needs `scoregeo weights`.")
    parser.add_argument("image_a", type=Path, metavar="A", help="an image file, or a folder of images")
    parser.add_argument("image_b", type=Path, metavar="B", help="an image file, or a folder of images")
    parser.add_argument("--net", choices=("alex", "vgg"), default="alex",
                        help="trunk network (default: alex)")
    parser.add_argument("--digits", type=int, default=4, help="significant digits printed (default: 4)")
    args = parser.parse_args(argv)
    if args.digits < 1:
        raise ScoregeoError(f"--digits must be at least 1, got {args.digits}")

    from scoregeo_cli.io import progress

    with progress.activity(prog):
        if args.image_a.is_dir() or args.image_b.is_dir():
            return _lpips_folders(args, prog)
        import sys

        from scoregeo_cli.evaluation.images import lpips_distance

        a, b = _lpips_pair(args.image_a, args.image_b)
        print(f"{prog}: read {args.image_a} and {args.image_b} ({_size(a)})", file=sys.stderr, flush=True)
        distance = float(lpips_distance(a[None], b[None], net=args.net)[0])
    print(f"lpips_{args.net}: {distance:#.{args.digits}g}")
    return 0


def _size(image) -> str:
    """'64x48 px, RGB' of a (C, H, W) image."""
    return f"{image.shape[2]}x{image.shape[1]} px, {'RGB' if image.shape[0] == 3 else 'grayscale'}"


def _lpips_pair(path_a: Path, path_b: Path):
    """Two images of the same size, as (C, H, W) with the same number of channels."""
    from scoregeo_cli.io.image_files import load_image

    a, b = load_image(path_a), load_image(path_b)
    if a.shape[1:] != b.shape[1:]:
        raise ScoregeoError(f"{path_a} is {a.shape[2]}x{a.shape[1]} but {path_b} is "
                            f"{b.shape[2]}x{b.shape[1]}; LPIPS compares images of the same size.")
    if a.shape[0] != b.shape[0]:  # one grayscale, one RGB
        a, b = a.expand(3, -1, -1), b.expand(3, -1, -1)
    return a, b


def _lpips_folders(args, prog: str) -> int:
    import sys

    import torch

    from scoregeo_cli.evaluation.images import lpips_distance
    from scoregeo_cli.io.image_files import list_images
    from scoregeo_cli.io import progress

    for path in (args.image_a, args.image_b):
        if not path.is_dir():
            raise ScoregeoError(f"{path} is not a folder; give two image files or two folders")
    files_b = {p.name: p for p in list_images(args.image_b)}
    files_a = list_images(args.image_a)
    pairs = [(p, files_b[p.name]) for p in files_a if p.name in files_b]
    if not pairs:
        raise ScoregeoError(f"no image of {args.image_a} has a namesake in {args.image_b}; "
                            "LPIPS of folders compares images of the same name")
    print(f"{prog}: {len(pairs)} image pairs of the same name ({len(files_a)} images in {args.image_a}, "
          f"{len(files_b)} in {args.image_b})", file=sys.stderr, flush=True)
    values = []
    with progress.bar(len(pairs), "LPIPS", "pair") as bar:
        for path_a, path_b in pairs:
            a, b = _lpips_pair(path_a, path_b)
            values.append(float(lpips_distance(a[None], b[None], net=args.net)[0]))
            bar.update(1)
    values = torch.tensor(values, dtype=torch.float64)
    std = float(values.std()) if len(values) > 1 else 0.0
    print(f"lpips_{args.net}_mean: {float(values.mean()):#.{args.digits}g}")
    print(f"lpips_{args.net}_std: {std:#.{args.digits}g}")
    print(f"pairs: {len(values)}")
    return 0


def fid_main(argv: list[str], prog: str) -> int:
    """Print FID (and with --kid, KID) between two folders of images."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="FID between the images of two folders (2048-d pool features of the 2015 "
                    "TF Inception, inputs resized to 299 px with TF1's legacy bilinear resize "
                    "as pytorch-fid and torch-fidelity do); --kid adds KID. Images may differ "
                    "in size; grayscale is repeated to RGB. Needs `scoregeo weights`.")
    parser.add_argument("dir_a", type=Path, metavar="DIR_A", help="reference (real) images")
    parser.add_argument("dir_b", type=Path, metavar="DIR_B", help="images to score")
    parser.add_argument("--kid", action="store_true", help="also print KID and its std")
    parser.add_argument("--kid-subset-size", type=int, default=None,
                        help="largest KID subset size (default 1000); the size used, capped "
                             "at half of each set, is printed as kid_subset_size")
    parser.add_argument("--resize", choices=INCEPTION_RESIZES, default="tf1_bilinear",
                        help="resize of the images to 299 px: tf1_bilinear (default, TF1's "
                             "legacy bilinear, the FID reference) or antialiased_bilinear "
                             "(torchmetrics' default)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per Inception forward pass (default: 32)")
    args = parser.parse_args(argv)

    from scoregeo_cli.evaluation.images import (
        check_set_sizes,
        fid_from_features,
        folder_features,
        kid_from_features,
        kid_subset_size_for,
    )
    from scoregeo_cli.io.image_files import list_images

    import sys

    from scoregeo_cli.io import progress

    # fail on a bad or too small folder, or a bad subset size, before the network runs
    n_real, n_fake = len(list_images(args.dir_a)), len(list_images(args.dir_b))
    check_set_sizes(n_real, n_fake)
    if args.kid:
        subset_size = kid_subset_size_for(n_real, n_fake, args.kid_subset_size)
    with progress.activity(prog):
        real = folder_features(args.dir_a, args.batch_size, args.resize)
        fake = folder_features(args.dir_b, args.batch_size, args.resize)
    print(f"{prog}: read {len(real)} images from {args.dir_a} (reference) and {len(fake)} from {args.dir_b}",
          file=sys.stderr, flush=True)
    print(f"fid: {fid_from_features(real, fake):.4f}")
    if args.kid:
        kid, kid_std = kid_from_features(real, fake, subset_size)
        print(f"kid: {kid:.6f}")
        print(f"kid_std: {kid_std:.6f}")
        print(f"kid_subset_size: {subset_size}")
    return 0
