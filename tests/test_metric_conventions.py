"""Each image-metric convention against an independent implementation of its reference.

* FID/KID input: TF1's legacy bilinear resize to 299 px, written here in NumPy, feeding
  the same Inception layers; and ``scoregeo fid`` against torch-fidelity on 512 px folders.
* SSIM: scikit-image's ``structural_similarity`` (valid region, Gaussian window).
* LPIPS: the ``lpips`` package's own forward at the size the trunk needs.
* KID: the unbiased polynomial-kernel MMD written here in NumPy, on the same subsets.

Needs the converted weights (`scoregeo weights`) and scikit-image (test extra).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from sklearn.datasets import load_digits
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import rotate

from scoregeo_cli.io import weights
from scoregeo_cli.cli import main
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.evaluation.images import (
    inception_features,
    kid_from_features,
    kid_subset_size_for,
    lpips_distance,
    lpips_size,
    ssim,
)

skimage_data = pytest.importorskip("skimage.data")
skimage_metrics = pytest.importorskip("skimage.metrics")

FEATURE_RTOL = 1e-4  # max |ours - reference| / max |reference| over the 2048 pool features

# torch-fidelity's / torchmetrics' Inception after the input resize, in forward order
_INCEPTION_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c",
                     "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")


def _tf1_resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """TF1 ``tf.image.resize_bilinear(align_corners=False)`` (legacy: no half-pixel centres,
    no antialiasing) of an (H, W, C) array: output pixel i samples the input at i * in/out."""
    in_h, in_w = image.shape[:2]
    ys, xs = np.arange(height) * (in_h / height), np.arange(width) * (in_w / width)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, in_h - 1), np.minimum(x0 + 1, in_w - 1)
    dy, dx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    image = image.astype(np.float64)
    top = image[y0][:, x0] + (image[y0][:, x1] - image[y0][:, x0]) * dx
    bottom = image[y1][:, x0] + (image[y1][:, x1] - image[y1][:, x0]) * dx
    return top + (bottom - top) * dy


@cache
def _inception_network() -> torch.nn.Module:
    return weights.load_inception()


def _reference_features(images_uint8: list[np.ndarray]) -> torch.Tensor:
    """FID features as the 2015 TF graph computes them: (H, W, 3) uint8 images resized to
    299 px with TF1 bilinear, scaled to [-1, 1) as (x - 128) / 128, through the network."""
    model = _inception_network()
    batch = np.stack([_tf1_resize_bilinear(image, 299, 299) for image in images_uint8])
    x = torch.from_numpy((batch - 128) / 128).float().permute(0, 3, 1, 2)
    with torch.no_grad():
        for name in _INCEPTION_LAYERS:
            x = getattr(model, name)(x)
    return x.flatten(1)


def _relative(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def _as_float(image_uint8: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(image_uint8).permute(2, 0, 1)[None].float() / 255


def _digit_28(index: int = 0) -> torch.Tensor:
    """(1, 1, 28, 28) sklearn digit: the 8x8 scan upsampled to 20x20 and centred, as MNIST."""
    scan = torch.tensor(load_digits().images[index], dtype=torch.float32)[None, None] / 16
    box = F.interpolate(scan, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    return F.pad(box, (4, 4, 4, 4))


# --- FID/KID: TF1 legacy bilinear resize, uint8 by rounding ---------------------------


def test_inception_features_match_independent_tf1_bilinear_pipeline():
    astronaut = skimage_data.astronaut()  # 512 x 512: downsampled to 299
    coffee = skimage_data.coffee()  # 400 x 600: aspect ratio not kept, as in every FID code
    digit = np.repeat(np.rint(_digit_28(3)[0, 0].numpy() * 255).astype(np.uint8)[..., None], 3, 2)
    for images in ([astronaut, np.ascontiguousarray(astronaut[:, ::-1])], [coffee], [digit]):
        ours = inception_features(torch.cat([_as_float(image) for image in images]))
        assert _relative(ours, _reference_features(images)) < FEATURE_RTOL


def test_antialiased_resize_is_kept_as_an_option_and_differs():
    astronaut = skimage_data.astronaut()
    x = _as_float(astronaut)
    stock = _inception_network()  # torchmetrics' default: antialiased bilinear
    with torch.no_grad():
        stock_features = stock((x * 255).round().to(torch.uint8))
    antialiased = inception_features(x, resize="antialiased_bilinear")
    assert _relative(antialiased, stock_features) < 1e-6
    # the two resizes give different features on a 512 px image (measured: 0.27)
    assert _relative(antialiased, inception_features(x)) > 0.05
    with pytest.raises(ScoregeoError, match="tf1_bilinear, antialiased_bilinear"):
        inception_features(x, resize="bicubic")


def test_inception_input_is_rounded_to_the_nearest_uint8_level():
    camera = skimage_data.camera()  # 512 x 512 grayscale
    reference = _reference_features([np.repeat(camera[..., None], 3, 2)])
    # every level k shown as (k - 0.3) / 255: rounding restores k, truncation gives k - 1
    shifted = torch.from_numpy(np.maximum(camera - 0.3, 0) / 255).float()[None, None]
    assert _relative(inception_features(shifted), reference) < FEATURE_RTOL
    truncated = _reference_features([np.repeat(np.maximum(camera.astype(int) - 1, 0)[..., None],
                                               3, 2).astype(np.uint8)])
    assert _relative(truncated, reference) > 10 * FEATURE_RTOL  # the test can tell them apart


def _write_512px_folders(root, count: int) -> tuple[str, str]:
    """Two folders of ``count`` 512 px RGB crops of scikit-image's photographs; the second
    set is drawn independently and blurred (Gaussian, radius 2)."""
    sources = [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee(),
               skimage_data.rocket()]
    rng = np.random.default_rng(0)
    folders = (root / "real", root / "blurred")
    for folder in folders:
        folder.mkdir()
    for i in range(count):
        for folder in folders:
            source = sources[rng.integers(len(sources))]
            height, width = source.shape[:2]
            side = int(rng.integers(160, min(height, width)))
            top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
            crop = Image.fromarray(source[top:top + side, left:left + side])
            image = crop.resize((512, 512), Image.BICUBIC)
            if folder.name == "blurred":
                image = image.filter(ImageFilter.GaussianBlur(2))
            image.save(folder / f"{i:03d}.png")
    return str(folders[0]), str(folders[1])


def _cli_values(argv, capsys) -> dict[str, float]:
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return {key: float(value) for key, value in (line.split(": ") for line in lines)}


@pytest.mark.slow
def test_cli_fid_on_512px_folders_matches_torch_fidelity(tmp_path, capsys):
    """`scoregeo fid` against torch-fidelity 0.4.0 (its own image loading, resize, network
    code and FID), offline with the converted weights; 40 + 40 images (about a minute)."""
    torch_fidelity = pytest.importorskip("torch_fidelity")
    real, blurred = _write_512px_folders(tmp_path, 40)
    ours = _cli_values(["fid", real, blurred, "--kid"], capsys)
    reference = torch_fidelity.calculate_metrics(
        input1=real, input2=blurred, fid=True, kid=True, kid_subset_size=20, cuda=False,
        cache=False, verbose=False, save_cpu_ram=True,
        feature_extractor_weights_path=str(weights.require_inception()))
    assert ours["fid"] == pytest.approx(reference["frechet_inception_distance"], rel=5e-3)
    # KID: 40 images per set give subsets of 20 that differ, hence a real spread; the two
    # codes draw different subsets, so the means agree within the spread only
    assert ours["kid_subset_size"] == 20
    assert ours["kid_std"] > 0.1 * reference["kernel_inception_distance_std"] > 0
    assert abs(ours["kid"] - reference["kernel_inception_distance_mean"]) < ours["kid_std"]


# --- SSIM: valid region ---------------------------------------------------------------


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """scikit-image's SSIM of one (C, H, W) pair, the settings of Wang et al. 2004."""
    return skimage_metrics.structural_similarity(
        a.permute(1, 2, 0).double().numpy(), b.permute(1, 2, 0).double().numpy(),
        channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0)


def test_ssim_matches_scikit_image_on_the_valid_region():
    digit = _digit_28(0)
    turned = rotate(digit, 45.0, interpolation=InterpolationMode.BILINEAR).clamp(0, 1)
    generator = torch.Generator().manual_seed(0)
    noisy = (digit + 0.1 * torch.randn(digit.shape, generator=generator)).clamp(0, 1)
    photo = _as_float(skimage_data.astronaut()[100:164, 200:280])  # 64 x 80 RGB
    darker = (photo * 0.8 + 0.05 * torch.rand(photo.shape, generator=generator)).clamp(0, 1)
    pairs = [(digit, turned), (digit, noisy), (turned, noisy), (photo, darker)]
    for a, b in pairs:
        assert float(ssim(a, b)[0]) == pytest.approx(_skimage_ssim(a[0], b[0]), abs=1e-4)
    batch = ssim(torch.cat([digit, digit]), torch.cat([turned, digit]))
    assert batch.tolist() == pytest.approx([_skimage_ssim(digit[0], turned[0]), 1.0], abs=1e-4)
    # torchmetrics 1.9's reflect-padded border is kept as an option, and differs
    reflect = ssim(digit, turned, border="reflect")
    assert float(reflect[0]) == pytest.approx(float(structural_similarity_index_measure(
        digit, turned, data_range=1.0)), abs=1e-6)
    assert abs(float(reflect[0]) - float(ssim(digit, turned)[0])) > 0.01
    with pytest.raises(ScoregeoError, match="at least 11x11"):
        ssim(digit[..., :10, :], digit[..., :10, :])


# --- LPIPS: upsample only when the trunk needs it -------------------------------------


@cache
def _lpips_network(net: str) -> torch.nn.Module:
    return weights.load_lpips(net)


def _lpips_reference(a: torch.Tensor, b: torch.Tensor, net: str, size: tuple[int, int]):
    """The lpips package's forward on the pair, bilinearly resized to ``size`` if needed."""
    model = _lpips_network(net)
    if tuple(a.shape[-2:]) != size:
        a, b = (F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in (a, b))
    with torch.no_grad():
        return model(a.expand(-1, 3, -1, -1) * 2 - 1, b.expand(-1, 3, -1, -1) * 2 - 1).flatten()


def test_lpips_upsamples_only_when_the_trunk_needs_it():
    digit = _digit_28(0)
    turned = rotate(digit, 45.0, interpolation=InterpolationMode.BILINEAR).clamp(0, 1)
    # VGG16 runs on 28 px: scored natively; AlexNet cannot (below 31 px): scored at 64 px
    assert lpips_size(28, 28, "vgg") == (28, 28)
    assert lpips_size(28, 28, "alex") == (64, 64)
    assert lpips_size(31, 40, "alex") == (31, 40)
    assert lpips_size(15, 30, "vgg") == (64, 128)
    cases = [(digit, turned, "vgg", (28, 28)), (digit, turned, "alex", (64, 64))]
    photo = _as_float(skimage_data.astronaut()[200:240, 220:260])  # 40 x 40
    photo_shifted = _as_float(skimage_data.astronaut()[202:242, 220:260])
    cases += [(photo, photo_shifted, "alex", (40, 40)), (photo, photo_shifted, "vgg", (40, 40))]
    for a, b, net, size in cases:
        reference = _lpips_reference(a, b, net, size)
        assert float(lpips_distance(a, b, net=net)[0]) == pytest.approx(float(reference[0]),
                                                                       abs=1e-5)
    # the old convention (VGG on the 64 px upsampling) gives another number
    native = float(lpips_distance(digit, turned, net="vgg")[0])
    assert abs(native - float(_lpips_reference(digit, turned, "vgg", (64, 64))[0])) > 0.01


# --- KID: subsets of half the smaller set ---------------------------------------------


def _numpy_kid(real: np.ndarray, fake: np.ndarray, subset_size: int, subsets: int = 100):
    """Unbiased MMD^2 with the kernel (x.y / D + 1)^3 (Binkowski et al. 2018), over subsets
    drawn as torchmetrics draws them (torch.randperm per set, seed 0); (mean, population std)."""
    torch.manual_seed(0)
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real)).numpy()[:subset_size]]
        y = fake[torch.randperm(len(fake)).numpy()[:subset_size]]
        m, d = subset_size, x.shape[1]
        k_xx, k_yy, k_xy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        values.append((k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                      - 2 * k_xy.sum() / m**2)
    return float(np.mean(values)), float(np.std(values))


def test_kid_subsets_of_half_the_set_give_a_real_spread():
    generator = torch.Generator().manual_seed(1)
    # two different 40-element sets of non-negative 2048-d "pool features"
    real = torch.rand(40, 2048, generator=generator, dtype=torch.float64)
    fake = 1.1 * torch.rand(40, 2048, generator=generator, dtype=torch.float64)
    assert kid_subset_size_for(40, 40) == 20
    assert kid_subset_size_for(40, 60, 8) == 8
    assert kid_subset_size_for(3, 5000) == 2
    mean, std = kid_from_features(real, fake)
    expected_mean, expected_std = _numpy_kid(real.numpy(), fake.numpy(), 20)
    assert mean == pytest.approx(expected_mean, rel=1e-6)
    assert std == pytest.approx(expected_std, rel=1e-6)
    assert std > 0.05 * mean > 0
    # the old rule, subsets of min(1000, N, M) = the whole set: every subset is the same
    _, whole_set_std = _numpy_kid(real.numpy(), fake.numpy(), 40, subsets=5)
    assert whole_set_std < 1e-9 * mean
