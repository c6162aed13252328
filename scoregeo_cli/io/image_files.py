"""Image files read with Pillow: one file as a tensor, and the image files of a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from scoregeo_cli.errors import ScoregeoError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def load_image(path: str | Path) -> Tensor:
    """Read an image file with Pillow.

    Returns:
        (C, H, W) float32 tensor in [0, 1]: C = 1 for grayscale files (8- or 16-bit),
        C = 3 otherwise (palette expanded, alpha dropped).

    Raises:
        ScoregeoError naming the file when it is missing, unreadable, corrupt or of an
        unsupported mode (32-bit integer or float).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I;16"):
                array = np.asarray(image).astype(np.float32) / 65535
                return torch.from_numpy(array)[None]
            if image.mode in ("I", "F"):
                raise ScoregeoError(f"cannot read image {path}: mode {image.mode} (32-bit) is not "
                                    "supported; save it as 8- or 16-bit.")
            grayscale = image.mode in ("1", "L", "LA")
            array = np.asarray(image.convert("L" if grayscale else "RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ScoregeoError(f"cannot read image {path}: {err}") from err
    tensor = torch.from_numpy(array.copy()).float() / 255
    return tensor[None] if grayscale else tensor.permute(2, 0, 1).contiguous()


def list_images(folder: str | Path) -> list[Path]:
    """Image files (by suffix, case-insensitive) directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ScoregeoError(f"{folder} is not a folder.")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ScoregeoError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return files
