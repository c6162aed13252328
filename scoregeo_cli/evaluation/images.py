"""Image metrics with real pretrained networks: LPIPS, PSNR, SSIM, FID and KID.

Images are float tensors of shape (B, C, H, W) with values in [0, 1] and C = 1 (grayscale)
or 3 (RGB); grayscale is repeated to three channels where a network needs RGB. The
networks' weights come from ``scoregeo weights``; a missing file raises ScoregeoError.
Nothing here downloads anything.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from scoregeo_cli import weights
from scoregeo_cli.errors import ScoregeoError

LPIPS_MIN_SIDE = 64  # shorter side, in pixels, below which LPIPS inputs are upsampled
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
INCEPTION_FEATURES = 2048
KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000  # torchmetrics' default subset size
_LPIPS_CHUNK = 32  # pairs per LPIPS forward pass, bounding memory for large batches
RANGE_TOLERANCE = 1e-3  # round-off of resampling; values this far outside [0, 1] are clamped

_lpips_models: dict[tuple[str, str], torch.nn.Module] = {}
_inception_models: dict[str, torch.nn.Module] = {}


def _checked(images: Tensor, name: str) -> Tensor:
    """Validate a (B, C, H, W) float batch in [0, 1] with C in {1, 3}.

    Values within RANGE_TOLERANCE of [0, 1] are clamped into it; further out is an error.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ScoregeoError(f"{name} must have shape (B, C, H, W) with C = 1 or 3; "
                            f"got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ScoregeoError(f"{name} must be a float tensor with values in [0, 1]; "
                            f"got dtype {images.dtype}.")
    if images.numel() == 0:
        return images
    low, high = float(images.min()), float(images.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ScoregeoError(f"{name} has values outside [0, 1] (min {low:.4g}, max {high:.4g}); "
                            "clamp or rescale them first.")
    return images.clamp(0, 1) if low < 0 or high > 1 else images


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise ScoregeoError(f"a and b must have the same shape; got {tuple(a.shape)} and "
                            f"{tuple(b.shape)}.")
    return _checked(a, "a"), _checked(b, "b")


def _rgb(images: Tensor) -> Tensor:
    """(B, 1, H, W) grayscale repeated to (B, 3, H, W); RGB unchanged."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _lpips_model(net: str, device: torch.device) -> torch.nn.Module:
    path = weights.require_lpips(net)  # checked on every call: the cache folder may change
    key = (net, str(path))
    if key not in _lpips_models:
        _lpips_models[key] = weights.load_lpips(net)
    return _lpips_models[key].to(device)


def lpips_distance(a: Tensor, b: Tensor, net: str = "alex") -> Tensor:
    """LPIPS v0.1 distance between paired images, one value per pair.

    Args:
        a, b: (B, C, H, W) float images in [0, 1], same shape, C = 1 or 3; grayscale is
            repeated to three channels.
        net: trunk, ``"alex"`` (AlexNet, the LPIPS default) or ``"vgg"`` (VGG16).

    Returns:
        (B,) float32 tensor on ``a``'s device, computed without gradients; 0 for identical
        images.

    Inputs are scaled to [-1, 1] as LPIPS expects. If the shorter side is below 64 px,
    both images are first upsampled with bilinear interpolation (``align_corners=False``,
    no antialiasing), keeping the aspect ratio, so that the shorter side is 64 px: AlexNet's
    strided stages would otherwise leave no spatial extent (a 28x28 digit is scored at
    64x64). The networks are loaded once per trunk and kept.
    """
    a, b = _pair(a, b)
    model = _lpips_model(net, a.device)
    x, y = _rgb(a).float(), _rgb(b).float()  # the networks are float32
    height, width = x.shape[-2:]
    if min(height, width) < LPIPS_MIN_SIDE:
        scale = LPIPS_MIN_SIDE / min(height, width)
        size = (max(LPIPS_MIN_SIDE, round(height * scale)),
                max(LPIPS_MIN_SIDE, round(width * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        chunks = [model(x[i:i + _LPIPS_CHUNK] * 2 - 1, y[i:i + _LPIPS_CHUNK] * 2 - 1)
                  for i in range(0, x.shape[0], _LPIPS_CHUNK)]
    if not chunks:
        return torch.zeros(0, device=a.device)
    return torch.cat(chunks).flatten().float()


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, data range 1 (torchmetrics).

    Args:
        a, b: (B, C, H, W) float images in [0, 1], same shape (a: estimate, b: reference).

    Returns:
        (B,) tensor; ``inf`` for identical images.
    """
    a, b = _pair(a, b)
    return peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Structural similarity per image, data range 1 (torchmetrics; 11x11 Gaussian, sigma 1.5).

    Args:
        a, b: (B, C, H, W) float images in [0, 1], same shape, H and W at least 11.

    Returns:
        (B,) tensor in [-1, 1]; 1 for identical images.
    """
    a, b = _pair(a, b)
    return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")


def _inception(device: torch.device) -> torch.nn.Module:
    path = str(weights.require_inception())
    if path not in _inception_models:
        _inception_models[path] = weights.load_inception()
    return _inception_models[path].to(device)


def inception_features(images: Tensor, batch_size: int = 32) -> Tensor:
    """2048-d Inception pool features, the representation of FID and KID.

    Args:
        images: (N, C, H, W) float images in [0, 1], C = 1 or 3 (grayscale repeated).
        batch_size: images per forward pass.

    Returns:
        (N, 2048) float32 tensor on ``images``' device.

    As torchmetrics' FID with ``normalize=True``: images become uint8 as ``(x * 255)``
    truncated, are resized to 299x299 (bilinear, antialiased) and pass the converted 2015
    TensorFlow Inception.
    """
    images = _checked(images, "images")
    if batch_size < 1:
        raise ScoregeoError(f"batch_size must be at least 1; got {batch_size}.")
    model = _inception(images.device)
    with torch.no_grad():
        features = [model((_rgb(images[i:i + batch_size]) * 255).to(torch.uint8))
                    for i in range(0, images.shape[0], batch_size)]
    if not features:
        return torch.zeros(0, INCEPTION_FEATURES, device=images.device)
    return torch.cat(features)


class _Precomputed(torch.nn.Module):
    """A torchmetrics 'feature extractor' that receives features already computed."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # FID reads this instead of probing a dummy image

    def forward(self, features: Tensor) -> Tensor:
        return features


def check_set_sizes(n_real: int, n_fake: int) -> None:
    """ScoregeoError unless both sets hold at least 2 images (FID needs covariances)."""
    if n_real < 2 or n_fake < 2:
        raise ScoregeoError(f"FID and KID need at least 2 images in each set; got {n_real} real "
                            f"and {n_fake} generated.")


def _check_features(real: Tensor, fake: Tensor) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ScoregeoError(f"features must be (N, D) with one D for both sets; got "
                            f"{tuple(real.shape)} and {tuple(fake.shape)}.")
    check_set_sizes(real.shape[0], fake.shape[0])


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between two feature sets, computed by torchmetrics' FID.

    Args:
        real, fake: (N, D) and (M, D) features (D = 2048 for Inception), N, M >= 2.

    FID is invariant under orthogonal changes of feature coordinates, and every mean and
    covariance lives in the span of the N + M feature vectors. When N + M < D the features
    are therefore first written in an orthonormal basis of that span (a QR factorisation,
    float64): the value is unchanged, but torchmetrics' eigenvalue problem shrinks from
    D x D (about 8 s at D = 2048 on two CPU cores) to (N + M) x (N + M). Round-off can
    leave identical sets at about -1e-7; the result is clamped at 0.
    """
    _check_features(real, fake)
    real, fake = real.double(), fake.double()
    stacked = torch.cat([real, fake])
    if stacked.shape[0] < stacked.shape[1]:
        basis, _ = torch.linalg.qr(stacked.T)  # (D, N + M), orthonormal columns
        real, fake = real @ basis, fake @ basis
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1])).to(real.device)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return max(float(metric.compute()), 0.0)


def kid_from_features(real: Tensor, fake: Tensor,
                      subset_size: int | None = None) -> tuple[float, float]:
    """Kernel Inception distance (mean, std over 100 subsets) by torchmetrics' KID.

    Args:
        real, fake: (N, D) and (M, D) features, N, M >= 2.
        subset_size: images per subset; default 1000, capped at min(N, M).

    The cubic polynomial kernel scales by 1/D, so the raw features are used. Subsets are
    drawn from a generator seeded with 0 (the global RNG is left untouched), so the value
    is reproducible.
    """
    _check_features(real, fake)
    size = min(subset_size or KID_MAX_SUBSET_SIZE, real.shape[0], fake.shape[0])
    if size < 2:
        raise ScoregeoError(f"KID needs subsets of at least 2 images; got {subset_size}.")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Kernel Inception Distance.*")
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=KID_SUBSETS,
                                         subset_size=size).to(real.device)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid_kid(real: Tensor, fake: Tensor, kid_subset_size: int | None = None,
            batch_size: int = 32) -> dict[str, float]:
    """FID and KID between two image sets through torchmetrics and the 2048-d Inception pool.

    Args:
        real, fake: (N, C, H, W) and (M, C, H, W) float images in [0, 1], C = 1 or 3
            (grayscale repeated), N, M >= 2; sizes may differ between the sets.
        kid_subset_size: KID subset size; default 1000, capped at min(N, M).
        batch_size: images per Inception forward pass.

    Returns:
        ``{"fid": float, "kid": float, "kid_std": float}``.

    Each set passes the network once, in batches; both metrics use the same features. See
    :func:`inception_features`, :func:`fid_from_features` and :func:`kid_from_features`.
    """
    check_set_sizes(real.shape[0], fake.shape[0])
    real_features = inception_features(real, batch_size)
    fake_features = inception_features(fake, batch_size)
    kid, kid_std = kid_from_features(real_features, fake_features, kid_subset_size)
    return {"fid": fid_from_features(real_features, fake_features), "kid": kid, "kid_std": kid_std}


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


def _batches_by_size(files: list[Path], batch_size: int) -> Iterator[Tensor]:
    """Load ``files`` batch_size at a time; yield (B, 3, H, W) stacks of equal size."""
    for start in range(0, len(files), batch_size):
        groups: dict[tuple[int, int], list[Tensor]] = {}
        for file in files[start:start + batch_size]:
            image = load_image(file)
            groups.setdefault(tuple(image.shape[1:]), []).append(_rgb(image[None])[0])
        for group in groups.values():
            yield torch.stack(group)


def folder_features(folder: str | Path, batch_size: int = 32) -> Tensor:
    """(N, 2048) Inception features of the N images in ``folder`` (sizes may differ)."""
    files = list_images(folder)
    return torch.cat([inception_features(batch, batch_size)
                      for batch in _batches_by_size(files, batch_size)])
