"""Pairs of natural images to interpolate between, from a folder in MorphBench's layout.

MorphBench (DiffMorpher, CVPR 2024) stores each pair as ``<name>_0.png`` and
``<name>_1.png`` in the subfolders ``Metamorphosis/`` and ``Animation/``. ``ImagePairs``
reads any folder in that layout, or a flat folder of ``<name>_0.*``/``<name>_1.*`` files:
pairs are found recursively, named by their path relative to the root without the
``_0`` suffix (``Metamorphosis/cat``), and sorted by name. Images are read with Pillow
(grayscale and palette images become RGB, alpha is dropped), resized so that the shorter
side matches the model's resolution (bicubic, antialiased) and centre-cropped to a square.

The folder is listed when the dataset is built and :meth:`check` decodes every file, so a
wrong root, an unpaired or a corrupt file is reported (by name) before any model work;
pixels are then read batch by batch with :meth:`load`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from scoregeo_cli.errors import ScoregeoError

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LAYOUT = ("<name>_0.png and <name>_1.png files (MorphBench layout: "
          "<root>/Metamorphosis/<name>_0.png, <root>/Animation/<name>_0.png, ...)")


def _partner(first: Path) -> Path | None:
    stem = first.stem[:-2] + "_1"
    for suffix in (first.suffix, *SUFFIXES):
        for candidate in (first.with_name(stem + suffix), first.with_name(stem + suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size): shorter side to ``size`` (bicubic, antialiased), centre crop."""
    _, h, w = image.shape
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bicubic", antialias=True,
                              align_corners=False)[0].clamp(0, 1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[:, top:top + size, left:left + size]


class ImagePairs:
    """Image pairs under ``root``; ``load(indices)`` gives (a, b), each (B, 3, R, R) in [0, 1].

    Args:
        root: the folder (MorphBench's root, one of its subfolders, or any folder of pairs).
        resolution: side R of the square images; None: set later by the task to the
            model's native resolution (``with_resolution``).
        limit: use the first ``limit`` pairs in name order (None: all).
    """

    def __init__(self, root: str | Path, resolution: int | None = None, limit: int | None = None):
        if root is None or str(root) in ("", "???"):
            raise ScoregeoError(f"dataset.root is not set; point it at a folder of {LAYOUT}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ScoregeoError(f"dataset.root={root} is not a folder; it must hold {LAYOUT}")
        if resolution is not None and int(resolution) < 8:
            raise ScoregeoError(f"dataset.resolution must be at least 8 pixels, got {resolution}")
        if limit is not None and int(limit) < 1:
            raise ScoregeoError(f"the number of pairs must be at least 1, got {limit}")
        self.resolution = None if resolution is None else int(resolution)
        firsts = sorted(p for p in self.root.rglob("*")
                        if p.is_file() and p.suffix.lower() in SUFFIXES and p.stem.endswith("_0")
                        and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        self.files: list[tuple[Path, Path]] = []
        self.names: list[str] = []
        for first in firsts:
            second = _partner(first)
            if second is None:
                raise ScoregeoError(f"{first} has no partner {first.stem[:-2]}_1{first.suffix} beside it")
            self.files.append((first, second))
            self.names.append(str(first.relative_to(self.root).with_suffix(""))[:-2])
        if not self.files:
            raise ScoregeoError(f"dataset.root={root} holds no image pairs; it must hold {LAYOUT}")
        if limit is not None:
            self.files, self.names = self.files[:int(limit)], self.names[:int(limit)]

    def __len__(self) -> int:
        return len(self.files)

    def with_resolution(self, resolution: int) -> "ImagePairs":
        """Set the resolution if the config left it open (the model's native size)."""
        if self.resolution is None:
            self.resolution = int(resolution)
        return self

    # -- the pair-set interface of the image task ------------------------------------------
    has_truth = False
    named_pairs = True

    def select(self, n: int | None, generator: torch.Generator, resolution: int | None = None) -> int:
        """All pairs found (``limit`` already applied); the resolution defaults to the model's."""
        if resolution is not None:
            self.with_resolution(resolution)
        return len(self)

    def describe(self) -> str:
        return f"{len(self)} image pair(s) under {self.root} at {self.resolution} px"

    def records(self) -> list[dict]:
        return [{"pair": p, "name": name, "files": [str(f) for f in self.files[p]]} for p, name in enumerate(self.names)]

    def truth(self, batch: list[int], fractions: torch.Tensor) -> None:
        """No ground truth between two images."""
        return None

    def reference(self, n: int | None, generator: torch.Generator, tau_range: tuple[float, float]) -> None:
        """No separate reference set: FID/KID compare frames with the input images."""
        return None

    def check(self) -> None:
        """Read every file once, so a corrupt image stops the run before any model work."""
        from scoregeo_cli.io.image_files import load_image

        for pair in self.files:
            for path in pair:
                load_image(path)

    def load_image(self, path: Path) -> torch.Tensor:
        """One file as (3, R, R) in [0, 1]; a corrupt or unreadable file is named in the error."""
        from scoregeo_cli.io.image_files import load_image

        if self.resolution is None:
            raise ScoregeoError("dataset.resolution is not set and no model resolution was given")
        image = load_image(path)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return resize_center_crop(image, self.resolution)

    def load(self, indices: list[int] | range) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs ``indices`` as two batches (B, 3, R, R) float32 in [0, 1]."""
        a = torch.stack([self.load_image(self.files[i][0]) for i in indices])
        b = torch.stack([self.load_image(self.files[i][1]) for i in indices])
        return a, b
