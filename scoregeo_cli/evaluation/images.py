"""Image metrics with real pretrained networks: LPIPS, PSNR, SSIM, FID and KID.

Images are float tensors of shape (B, C, H, W) with values in [0, 1] and C = 1 (grayscale)
or 3 (RGB); grayscale is repeated to three channels where a network needs RGB. The
networks' weights come from ``scoregeo weights``; a missing file raises ScoregeoError.
Nothing here downloads anything.

Conventions (each follows the reference implementation of its metric by default):

* FID/KID: images become uint8 as ``round(255 x)`` and are resized to 299x299 with
  TensorFlow 1's legacy bilinear resize (no antialiasing), as the 2015 TF graph, TTUR,
  pytorch-fid and torch-fidelity do; ``resize="antialiased_bilinear"`` gives torchmetrics'
  default (torch bilinear with antialiasing) instead.
* SSIM: 11x11 Gaussian window, sigma 1.5, data range 1, K1 = 0.01, K2 = 0.03, averaged
  over the valid region only (no padding), as scikit-image and the original MATLAB code;
  ``border="reflect"`` gives torchmetrics 1.9's reflect-padded average.
* LPIPS: computed at the input size unless the trunk cannot run there (AlexNet below
  31 px, VGG16 below 16 px on the shorter side); only then both images are upsampled
  bilinearly so that the shorter side is 64 px, LPIPS's training patch size.
* KID: 100 subsets of min(1000, N // 2, M // 2) images (at least 2), so that subsets
  differ and ``kid_std`` measures a spread even for sets of tens of images.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io import progress, weights
from scoregeo_cli.io.image_files import list_images, load_image

# Smallest shorter side, in pixels, at which each LPIPS trunk runs: AlexNet's stride-4 conv
# and two 3x3 stride-2 max-pools leave no spatial extent below 31 px; VGG16's four 2x2
# max-pools need 16 px.
LPIPS_NATIVE_MIN_SIDE = {"alex": 31, "vgg": 16}
LPIPS_UPSAMPLE_SIDE = 64  # shorter side after upsampling an image too small for its trunk
INCEPTION_FEATURES = 2048
KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000  # torchmetrics' and torch-fidelity's default subset size
# Inception input resize: TF1's legacy bilinear (the FID reference) or torch's antialiased
# bilinear (torchmetrics' default).
INCEPTION_RESIZES = ("tf1_bilinear", "antialiased_bilinear")
SSIM_WINDOW = 11  # Gaussian window side: 2 * int(3.5 * sigma + 0.5) + 1 for sigma 1.5
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_BORDERS = ("valid", "reflect")
_LPIPS_CHUNK = 32  # pairs per LPIPS forward pass, bounding memory for large batches
RANGE_TOLERANCE = 1e-3  # round-off of resampling; values this far outside [0, 1] are clamped

_lpips_models: dict[tuple[str, str], torch.nn.Module] = {}
_inception_models: dict[tuple[str, str], torch.nn.Module] = {}


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


def lpips_size(height: int, width: int, net: str = "alex") -> tuple[int, int]:
    """The (height, width) at which :func:`lpips_distance` scores images of this size.

    The input size itself when the trunk runs there (shorter side at least 31 px for
    ``"alex"``, 16 px for ``"vgg"``); otherwise the bilinear upsampling, aspect ratio kept,
    whose shorter side is 64 px. A 28x28 digit is scored at 64x64 by AlexNet and at 28x28
    by VGG16.
    """
    if net not in LPIPS_NATIVE_MIN_SIDE:
        weights.lpips_path(net)  # raises the error that names the available trunks
    if min(height, width) >= LPIPS_NATIVE_MIN_SIDE[net]:
        return height, width
    scale = LPIPS_UPSAMPLE_SIDE / min(height, width)
    return (max(LPIPS_UPSAMPLE_SIDE, round(height * scale)),
            max(LPIPS_UPSAMPLE_SIDE, round(width * scale)))


def lpips_distance(a: Tensor, b: Tensor, net: str = "alex") -> Tensor:
    """LPIPS v0.1 distance between paired images, one value per pair.

    Args:
        a, b: (B, C, H, W) float images in [0, 1], same shape, C = 1 or 3; grayscale is
            repeated to three channels.
        net: trunk, ``"alex"`` (AlexNet, the LPIPS default) or ``"vgg"`` (VGG16).

    Returns:
        (B,) float32 tensor on ``a``'s device, computed without gradients; 0 for identical
        images.

    Inputs are scaled to [-1, 1] as LPIPS expects. LPIPS is computed at the input size
    whenever the trunk can run there: a shorter side of at least 31 px for AlexNet (its
    stride-4 conv and two stride-2 max-pools leave nothing of smaller images) and 16 px for
    VGG16 (four 2x2 max-pools). Only smaller images are upsampled first, both of the pair,
    bilinearly (``align_corners=False``, no antialiasing), keeping the aspect ratio, so that
    the shorter side is 64 px, the size of LPIPS's training patches. So a 28x28 digit is
    scored at 64x64 with ``"alex"`` and at 28x28 with ``"vgg"``; see :func:`lpips_size`.
    The networks are loaded once per trunk and kept.
    """
    a, b = _pair(a, b)
    model = _lpips_model(net, a.device)
    x, y = _rgb(a).float(), _rgb(b).float()  # the networks are float32
    size = lpips_size(*x.shape[-2:], net=net)
    if size != tuple(x.shape[-2:]):
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


def ssim(a: Tensor, b: Tensor, border: str = "valid") -> Tensor:
    """Structural similarity per image: 11x11 Gaussian window, sigma 1.5, data range 1.

    Args:
        a, b: (B, C, H, W) float images in [0, 1], same shape, H and W at least 11.
        border: ``"valid"`` (default) averages the SSIM map over the positions where the
            whole window lies inside the image, an (H - 10) x (W - 10) region, as
            scikit-image's ``structural_similarity`` (``gaussian_weights=True``,
            ``sigma=1.5``, ``use_sample_covariance=False``, ``data_range=1``) and the
            original MATLAB code do. ``"reflect"`` is torchmetrics 1.9's convention: the
            images are reflect-padded by 5 px and the map is averaged over all H x W
            positions, border included.

    Returns:
        (B,) tensor in [-1, 1] of ``a``'s dtype; 1 for identical images. With C = 3 the
        map is averaged over the channels too.

    SSIM = (2 mu_a mu_b + C1)(2 cov_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2)),
    C1 = 0.01^2, C2 = 0.03^2, with local Gaussian-weighted means, variances and covariance
    (population weights) computed in float64.
    """
    a, b = _pair(a, b)
    if border not in SSIM_BORDERS:
        raise ScoregeoError(f"SSIM border must be one of {', '.join(SSIM_BORDERS)}; got "
                            f"'{border}'.")
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ScoregeoError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels; "
                            f"got {a.shape[-1]}x{a.shape[-2]}.")
    if border == "reflect":
        return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    x, y = a.double(), b.double()
    channels = x.shape[1]
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=x.device) - SSIM_WINDOW // 2
    gauss = torch.exp(-offsets**2 / (2 * SSIM_SIGMA**2))
    gauss = gauss / gauss.sum()
    rows = gauss.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1)
    cols = gauss.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def local_mean(z: Tensor) -> Tensor:  # separable Gaussian filter, valid positions only
        return F.conv2d(F.conv2d(z, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    similarity = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
                  / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
    return similarity.flatten(1).mean(1).to(a.dtype)


def check_inception_resize(resize: str) -> str:
    """``resize`` if it names an Inception input resize, else ScoregeoError listing them."""
    if resize not in INCEPTION_RESIZES:
        raise ScoregeoError(f"Inception resize must be one of {', '.join(INCEPTION_RESIZES)}; "
                            f"got '{resize}'.")
    return resize


def _inception(device: torch.device, resize: str) -> torch.nn.Module:
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = str(weights.require_inception())  # checked on every call: never random weights
    key = (path, resize)
    if key not in _inception_models:
        _inception_models[key] = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"],
            feature_extractor_weights_path=path, antialias=resize == "antialiased_bilinear")
    # channels_last: the same features (within 2e-6 relative) about a third faster on CPU
    # (benchmarks/bench_inception_layout.py)
    return _inception_models[key].to(device).to(memory_format=torch.channels_last)


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] as uint8, rounded to the nearest level: ``round(255 x)``.

    Rounding (not truncation) makes an 8-bit file read as k / 255 come back as k.
    """
    return (images * 255).round().clamp(0, 255).to(torch.uint8)


def inception_features(images: Tensor, batch_size: int = 32,
                       resize: str = "tf1_bilinear", show_progress: bool = True) -> Tensor:
    """2048-d Inception pool features, the representation of FID and KID.

    Args:
        images: (N, C, H, W) float images in [0, 1], C = 1 or 3 (grayscale repeated).
        batch_size: images per forward pass.
        resize: how images reach 299x299. ``"tf1_bilinear"`` (default): TensorFlow 1's
            legacy ``resize_bilinear`` (``align_corners=False``, no half-pixel centres, no
            antialiasing), the resize of the 2015 TF FID graph, TTUR, pytorch-fid,
            torch-fidelity and fid-helper. ``"antialiased_bilinear"``: torch's bilinear
            resize with antialiasing, torchmetrics' default, which gives different (lower,
            for large images) FID and KID values.

    Returns:
        (N, 2048) float32 tensor on ``images``' device.

    Images become uint8 as ``round(255 x)`` (:func:`to_uint8`), are resized to 299x299 as
    float and pass the converted 2015 TensorFlow Inception as ``(x - 128) / 128``.
    """
    images = _checked(images, "images")
    check_inception_resize(resize)
    if batch_size < 1:
        raise ScoregeoError(f"batch_size must be at least 1; got {batch_size}.")
    model = _inception(images.device, resize)
    features = []
    with torch.no_grad(), progress.bar(images.shape[0], "Inception features", "image",
                                       disable=not show_progress) as bar:
        for i in range(0, images.shape[0], batch_size):
            features.append(model(to_uint8(_rgb(images[i:i + batch_size]))))
            bar.update(len(features[-1]))
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


def kid_subset_size_for(n_real: int, n_fake: int, subset_size: int | None = None) -> int:
    """Images per KID subset for sets of ``n_real`` and ``n_fake`` images.

    ``min(subset_size, n_real // 2, n_fake // 2)``, ``subset_size`` defaulting to 1000
    (torch-fidelity's and torchmetrics' default), and at least 2. Capping at half of each
    set keeps the 100 subsets different from one another, so their spread (``kid_std``) is
    real; with a subset as large as the set every subset is the whole set and the spread
    is 0. Sets of 2 or 3 images still give subsets of 2 (for 2 images: the whole set).
    """
    if subset_size is not None and subset_size < 2:
        raise ScoregeoError(f"KID needs subsets of at least 2 images; got {subset_size}.")
    check_set_sizes(n_real, n_fake)
    requested = KID_MAX_SUBSET_SIZE if subset_size is None else int(subset_size)
    return max(2, min(requested, n_real // 2, n_fake // 2))


def kid_from_features(real: Tensor, fake: Tensor,
                      subset_size: int | None = None) -> tuple[float, float]:
    """Kernel Inception distance (mean, std over 100 subsets) by torchmetrics' KID.

    Args:
        real, fake: (N, D) and (M, D) features, N, M >= 2.
        subset_size: largest number of images per subset (default 1000); the size used is
            :func:`kid_subset_size_for`, ``min(subset_size, N // 2, M // 2)`` and at least 2.

    The cubic polynomial kernel scales by 1/D, so the raw features are used. Each of the
    100 subsets draws its images without replacement, independently for the two sets;
    ``std`` is the population standard deviation of the 100 subset values. Subsets are
    drawn from a generator seeded with 0 (the global RNG is left untouched), so the value
    is reproducible.
    """
    _check_features(real, fake)
    size = kid_subset_size_for(real.shape[0], fake.shape[0], subset_size)
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
            batch_size: int = 32, resize: str = "tf1_bilinear") -> dict[str, float]:
    """FID and KID between two image sets through torchmetrics and the 2048-d Inception pool.

    Args:
        real, fake: (N, C, H, W) and (M, C, H, W) float images in [0, 1], C = 1 or 3
            (grayscale repeated), N, M >= 2; sizes may differ between the sets.
        kid_subset_size: largest KID subset size (default 1000); the size used is
            ``min(kid_subset_size, N // 2, M // 2)``, at least 2.
        batch_size: images per Inception forward pass.
        resize: Inception input resize, ``"tf1_bilinear"`` (default, the FID reference) or
            ``"antialiased_bilinear"``; see :func:`inception_features`.

    Returns:
        ``{"fid": float, "kid": float, "kid_std": float, "kid_subset_size": int}``.

    Each set passes the network once, in batches; both metrics use the same features. See
    :func:`inception_features`, :func:`fid_from_features` and :func:`kid_from_features`.
    """
    check_set_sizes(real.shape[0], fake.shape[0])
    size = kid_subset_size_for(real.shape[0], fake.shape[0], kid_subset_size)
    real_features = inception_features(real, batch_size, resize)
    fake_features = inception_features(fake, batch_size, resize)
    kid, kid_std = kid_from_features(real_features, fake_features, size)
    return {"fid": fid_from_features(real_features, fake_features), "kid": kid,
            "kid_std": kid_std, "kid_subset_size": size}


def _batches_by_size(files: list[Path], batch_size: int) -> Iterator[Tensor]:
    """Load ``files`` batch_size at a time; yield (B, 3, H, W) stacks of equal size."""
    for start in range(0, len(files), batch_size):
        groups: dict[tuple[int, int], list[Tensor]] = {}
        for file in files[start:start + batch_size]:
            image = load_image(file)
            groups.setdefault(tuple(image.shape[1:]), []).append(_rgb(image[None])[0])
        for group in groups.values():
            yield torch.stack(group)


def folder_features(folder: str | Path, batch_size: int = 32,
                    resize: str = "tf1_bilinear") -> Tensor:
    """(N, 2048) Inception features of the N images in ``folder`` (sizes may differ).

    8-bit files reach the network with their own pixel values (``round(255 x)`` undoes
    :func:`~scoregeo_cli.io.image_files.load_image`'s division by 255); see :func:`inception_features` for ``resize``.
    """
    files = list_images(folder)
    features = []
    with progress.bar(len(files), f"Inception features of {folder}", "image") as bar:
        for batch in _batches_by_size(files, batch_size):
            features.append(inception_features(batch, batch_size, resize, show_progress=False))
            bar.update(len(batch))
    return torch.cat(features)
