"""FID and KID with the converted Inception on real handwritten digits (sklearn's load_digits).

Needs the converted weights (`scoregeo weights`; `make test` runs it first). Sets are kept
to tens of images: the Inception costs about 0.15-0.3 s per image on two CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.kid import KernelInceptionDistance
from torchvision.transforms.v2.functional import gaussian_blur

from scoregeo_cli.io import weights
from scoregeo_cli.cli import main
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.evaluation.images import (
    fid_from_features,
    fid_kid,
    inception_features,
    kid_from_features,
)

N = 16
BLURS = (1.0, 2.0)  # Gaussian sigmas in pixels of the 32x32 images


def _digits(start: int, count: int) -> torch.Tensor:
    """(count, 1, 32, 32) real digits in [0, 1]: the 8x8 scans upsampled bilinearly."""
    scans = torch.tensor(load_digits().images[start:start + count], dtype=torch.float32)
    return F.interpolate(scans[:, None] / 16, size=(32, 32), mode="bilinear",
                         align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def features() -> dict[str, torch.Tensor]:
    """Inception features of set A, a disjoint sample B, and A blurred progressively."""
    a, b = _digits(0, N), _digits(N, N)
    out = {"a": inception_features(a), "b": inception_features(b)}
    for sigma in BLURS:
        out[sigma] = inception_features(gaussian_blur(a, kernel_size=9, sigma=sigma))
    return out


def test_fid_of_a_set_with_itself_is_zero():
    a = _digits(100, 6)
    result = fid_kid(a, a)
    assert set(result) == {"fid", "kid", "kid_std", "kid_subset_size"}
    assert result["kid_subset_size"] == 3  # half of each set of 6
    assert result["fid"] == pytest.approx(0.0, abs=1e-3)
    # KID(A, A) is not 0: the unbiased estimate subtracts the kernel's diagonal, k(x, x)


def test_fid_grows_as_the_set_is_blurred(features):
    values = [fid_from_features(features["a"], features["a"])]
    values += [fid_from_features(features["a"], features[sigma]) for sigma in BLURS]
    assert values[0] == pytest.approx(0.0, abs=1e-3)
    assert all(later > earlier + 10 for earlier, later in zip(values, values[1:])), values


def test_kid_near_zero_for_two_samples_of_one_distribution(features):
    same, same_std = kid_from_features(features["a"], features["b"])
    blurred, _ = kid_from_features(features["a"], features[2.0])
    # the unbiased MMD estimate scatters around 0 for one distribution (measured -0.003)
    assert abs(same) < 0.02 < 0.1 < blurred
    assert same_std >= 0
    kids = [kid_from_features(features["a"], features[sigma])[0] for sigma in BLURS]
    assert kids == sorted(kids)


def test_kid_subset_size_is_capped_at_half_the_set_and_reproducible(features):
    capped = kid_from_features(features["a"], features["b"], subset_size=10_000)
    assert capped == kid_from_features(features["a"], features["b"], subset_size=N // 2)
    assert capped == kid_from_features(features["a"], features["b"])
    assert capped[1] > 0  # subsets of half the set differ
    small = kid_from_features(features["a"], features["b"], subset_size=5)
    assert small == kid_from_features(features["a"], features["b"], subset_size=5)
    assert small[1] > 0


def test_fid_projection_matches_direct_computation():
    # 20 + 20 vectors in 64 dimensions: fid_from_features works in their 40-d span
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(20, 64, generator=generator, dtype=torch.float64)
    fake = 0.8 * torch.randn(20, 64, generator=generator, dtype=torch.float64) + 0.3
    direct = FrechetInceptionDistance(feature=torch.nn.Identity(), input_img_size=(64,))
    direct.update(real, real=True)
    direct.update(fake, real=False)
    mu1, mu2 = real.mean(0).numpy(), fake.mean(0).numpy()
    s1, s2 = np.cov(real.numpy(), rowvar=False), np.cov(fake.numpy(), rowvar=False)
    scipy_value = (((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2)
                   - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
    ours = fid_from_features(real, fake)
    assert ours == pytest.approx(float(direct.compute()), rel=1e-6)
    assert ours == pytest.approx(scipy_value, rel=1e-6)


def test_sets_too_small_are_refused(features):
    with pytest.raises(ScoregeoError, match="at least 2 images in each set; got 1 real"):
        fid_kid(_digits(0, 1), _digits(1, 4))
    with pytest.raises(ScoregeoError, match="at least 2 images"):
        fid_from_features(features["a"], features["b"][:1])
    with pytest.raises(ScoregeoError, match="subsets of at least 2"):
        kid_from_features(features["a"], features["b"], subset_size=1)


def test_missing_inception_weights_name_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREGEO_CACHE", str(tmp_path))
    with pytest.raises(ScoregeoError, match="Inception weights are missing.*`scoregeo weights`"):
        fid_kid(_digits(0, 2), _digits(2, 2))


def _write_folder(folder, images: torch.Tensor) -> None:
    folder.mkdir()
    for i, image in enumerate(images):
        array = (image[0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array, mode="L").save(folder / f"{i:03d}.png")


def test_cli_fid_on_folders(tmp_path, capsys):
    _write_folder(tmp_path / "real", _digits(0, 2))
    _write_folder(tmp_path / "same", _digits(0, 2))
    Image.new("RGB", (40, 48), color=(10, 200, 30)).save(tmp_path / "same" / "extra.jpg")
    (tmp_path / "same" / "notes.txt").write_text("not an image")
    code = main(["fid", str(tmp_path / "real"), str(tmp_path / "same"), "--kid"])
    assert code == 0
    lines = dict(line.split(": ") for line in capsys.readouterr().out.strip().splitlines())
    assert set(lines) == {"fid", "kid", "kid_std", "kid_subset_size"}
    assert float(lines["fid"]) > 0
    assert lines["kid_subset_size"] == "2"  # 2 and 3 images: subsets of 2, the least

    code = main(["fid", str(tmp_path / "real"), str(tmp_path / "real")])
    assert code == 0
    assert capsys.readouterr().out.strip() == "fid: 0.0000"


def test_cli_fid_errors_name_the_problem(tmp_path, capsys):
    _write_folder(tmp_path / "real", _digits(0, 2))
    _write_folder(tmp_path / "bad", _digits(2, 2))
    (tmp_path / "bad" / "000_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["fid", str(tmp_path / "bad"), str(tmp_path / "real")]) == 2
    assert "000_corrupt.png" in capsys.readouterr().err

    (tmp_path / "single").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "single" / "one.png")
    assert main(["fid", str(tmp_path / "real"), str(tmp_path / "single")]) == 2
    assert "at least 2 images" in capsys.readouterr().err
    assert main(["fid", str(tmp_path / "real"), str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_fid_kid_match_stock_torchmetrics():
    """Same numbers as torchmetrics' own FID/KID classes fed images (2048x2048 eigenproblem),
    set to the reference conventions: TF1 bilinear resize (antialias=False), rounded uint8."""
    real, fake = _digits(0, 12), gaussian_blur(_digits(12, 12), kernel_size=9, sigma=1.0)
    ours = fid_kid(real, fake)
    path = str(weights.require_inception())
    fid = FrechetInceptionDistance(antialias=False, feature_extractor_weights_path=path)
    kid = KernelInceptionDistance(
        feature=NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                   feature_extractor_weights_path=path, antialias=False),
        subsets=100, subset_size=6)
    for images, is_real in ((real, True), (fake, False)):
        uint8 = (images.expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)
        fid.update(uint8, real=is_real)
        kid.update(uint8, real=is_real)
    torch.manual_seed(0)
    kid_mean, kid_std = kid.compute()
    assert ours["kid_subset_size"] == 6
    assert ours["fid"] == pytest.approx(float(fid.compute()), rel=1e-4)
    assert ours["kid"] == pytest.approx(float(kid_mean), rel=1e-4)
    assert ours["kid_std"] == pytest.approx(float(kid_std), rel=1e-4)
