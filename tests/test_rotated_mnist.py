"""Rotated digits: data, rotation ground truth, the UNet backbone (training, resume, the
packaged checkpoint) and an end-to-end run with a tiny UNet."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import invoke_cli

from scoregeo_cli.data.rotated_mnist import RotatedDigits, read_idx, rotate
from scoregeo_cli.errors import ScoregeoError

TINY_MODEL = {"block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4}


# ----------------------------------------------------------------------------- data

def test_rotation_by_multiples_of_90_degrees_is_exact():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 28, 28, generator=gen, dtype=torch.float64)
    for k in range(-4, 5):
        expected = torch.rot90(images, k, dims=(-2, -1))
        assert torch.allclose(rotate(images, 90.0 * k), expected, rtol=0, atol=1e-12), k
        assert torch.allclose(rotate(images.float(), 90.0 * k), expected.float(), rtol=0, atol=1e-5), k
    # counter-clockwise as displayed: the top-centre pixel moves to the left-centre
    bar = torch.zeros(1, 1, 5, 5)
    bar[0, 0, 0, 2] = 1
    assert rotate(bar, 90.0)[0, 0, 2, 0] == pytest.approx(1.0)
    assert rotate(bar, -90.0)[0, 0, 2, 4] == pytest.approx(1.0)


def test_ground_truth_frames_follow_each_pairs_angles():
    data = RotatedDigits()
    digits, theta_a, theta_b, index = data.pairs(3, torch.Generator().manual_seed(1))
    assert digits.shape == (3, 1, 28, 28) and len(set(index.tolist())) == 3
    assert bool(((theta_a >= -45) & (theta_a <= -15) & (theta_b >= 15) & (theta_b <= 45)).all())
    angles = torch.tensor([[0.0, 90.0, 180.0], [90.0, -90.0, 360.0], [270.0, 0.0, 90.0]], dtype=torch.float64)
    frames = data.frames(digits.double(), angles)
    for p in range(3):
        for j in range(3):
            expected = torch.rot90(digits[p].double(), int(angles[p, j]) // 90, dims=(-2, -1))
            assert torch.allclose(frames[p, j], expected, atol=1e-12)


def test_digits_source_is_mnist_like_and_split_without_overlap():
    data = RotatedDigits(source="digits", test_fraction=0.2)
    train, test = data.images("train"), data.images("test")
    assert train.shape == (1438, 1, 28, 28) and test.shape == (359, 1, 28, 28)
    assert float(train.min()) >= 0 and float(train.max()) == pytest.approx(1.0)
    assert float(train[..., :4, :].abs().max()) == 0  # the 20x20 box is centred in 28x28
    flat_train = {tuple(x.flatten().tolist()) for x in train[:200]}
    assert not any(tuple(x.flatten().tolist()) in flat_train for x in test)


def _write_idx_images(path: Path, images: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, 3]) + np.array(images.shape, dtype=">i4").tobytes()
    data = header + images.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def test_mnist_reader_and_missing_file_message(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (5, 28, 28))
    test = rng.integers(0, 256, (3, 28, 28))
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_images(raw / "train-images-idx3-ubyte", train)
    _write_idx_images(raw / "t10k-images-idx3-ubyte", test, gz=True)
    data = RotatedDigits(source="mnist", root=str(tmp_path))
    assert torch.equal(data.images("train")[:, 0], torch.from_numpy(train.astype(np.float32) / 255))
    assert torch.equal(data.images("test")[:, 0], torch.from_numpy(test.astype(np.float32) / 255))
    assert read_idx(raw / "train-images-idx3-ubyte").dtype == np.uint8

    with pytest.raises(ScoregeoError) as err:
        RotatedDigits(source="fashion_mnist", root=str(tmp_path)).images("test")
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "t10k-images-idx3-ubyte" in message
    assert "dataset.root" in message and "\n" not in message

    (raw / "train-images-idx3-ubyte").write_bytes(b"\x08\x03\x00\x00garbage")
    with pytest.raises(ScoregeoError, match="not an IDX file"):
        RotatedDigits(source="mnist", root=str(tmp_path)).images("train")


def test_bad_dataset_values_are_one_sentence_errors():
    with pytest.raises(ScoregeoError, match="dataset.source"):
        RotatedDigits(source="cifar")
    with pytest.raises(ScoregeoError, match="theta_a < theta_b"):
        RotatedDigits(angle_a=(0, 30), angle_b=(20, 40))


# ----------------------------------------------------------------------------- the packaged UNet

@pytest.fixture(scope="module")
def packaged_score():
    from scoregeo_cli.scores.unet import load_unet_score

    return load_unet_score(None, t=400)


def _rotated_training_digits(n: int, seed: int) -> torch.Tensor:
    return RotatedDigits(source="digits").training_batch(n, torch.Generator().manual_seed(seed))


def test_packaged_score_points_back_to_the_data(packaged_score):
    """On noised training digits the score is anti-aligned with the added noise: the score of
    a well-trained model at level t is about -eps / sqrt(1 - abar_t)."""
    from scoregeo_cli.schedule import noise_to

    score = packaged_score
    x0 = (_rotated_training_digits(64, 3) * 2 - 1).flatten(1).double()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        s = score(noise_to(x0, eps, score.t, score.alphas_cumprod))
    cosine = (s * eps).sum(-1) / (s.norm(dim=-1) * eps.norm(dim=-1))
    assert float(cosine.mean()) < -0.9
    assert bool((cosine < -0.5).all())
    # its size matches |s|^2 ~ D / (1 - abar_t) (about 970 at t = 400, noisediffusion.md)
    assert float((s * s).sum(-1).mean()) == pytest.approx(784 / (1 - float(score.alphas_cumprod[400])), rel=0.15)


def test_ddim_denoises_a_lightly_noised_digit_back(packaged_score):
    from scoregeo_cli.schedule import noise_to
    from scoregeo_cli.spaces.ddim import ddim_denoise

    score = packaged_score
    x0 = _rotated_training_digits(8, 5) * 2 - 1
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(6))
    noisy = noise_to(x0, eps, 50, score.alphas_cumprod)
    clean = ddim_denoise(score.eps_model, noisy, 50, score.alphas_cumprod, steps=10)
    err_noisy = (noisy - x0).pow(2).mean().sqrt()
    err_clean = (clean - x0).pow(2).mean().sqrt()
    assert float(err_clean) < 0.5 * float(err_noisy)
    assert float(err_clean) < 0.1  # on the [-1, 1] scale


def test_missing_checkpoint_is_a_one_sentence_error(tmp_path):
    from scoregeo_cli.scores.unet import load_unet_score

    with pytest.raises(ScoregeoError) as err:
        load_unet_score(str(tmp_path / "nowhere.safetensors"))
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- training and a full run

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny UNet trained for a few steps by the real trainer: (checkpoint path, composed cfg)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from scoregeo_cli.app import CONF_DIR
    from scoregeo_cli.training.unet import train_unet

    out = tmp_path_factory.mktemp("tiny_unet")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["experiment=rotated_mnist", f"output_root={out}"])
    GlobalHydra.instance().clear()
    kwargs = dict(steps=4, batch_size=4, checkpoint_every=2, warmup=1, model=TINY_MODEL, fid_samples=0,
                  test_loss_samples=16, threads=None)
    path = train_unet(cfg, out / "straight", **kwargs)
    return path, cfg, kwargs


def test_training_resumes_exactly_after_an_interruption(tiny_checkpoint, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from scoregeo_cli.training.unet import STATE_FILE, train_unet

    straight, cfg, kwargs = tiny_checkpoint
    meta = json.loads(straight.with_suffix(".json").read_text())
    assert meta["training"]["steps"] == 4 and meta["unet"]["block_out_channels"] == [8, 8]

    calls = {"n": 0}
    original = RotatedDigits.training_batch

    def interrupted(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4: the interrupt saves the state after step 3
            raise KeyboardInterrupt
        return original(self, *args, **kw)

    monkeypatch.setattr(RotatedDigits, "training_batch", interrupted)
    with pytest.raises(ScoregeoError, match="interrupted at step 3"):
        train_unet(cfg, tmp_path, **kwargs)
    assert torch.load(tmp_path / STATE_FILE, weights_only=False)["step"] == 3
    monkeypatch.setattr(RotatedDigits, "training_batch", original)
    resumed = train_unet(cfg, tmp_path, **kwargs)
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_snapshots_leave_the_run_unchanged_and_float16_export_is_the_same_weights(tiny_checkpoint, tmp_path):
    """score.train.snapshots exports the EMA weights at a step without touching the run: the
    final weights equal an unsnapshotted run's; export_dtype=float16 stores those weights
    rounded to float16; out-of-range snapshots and unknown dtypes are one sentence."""
    from safetensors.torch import load_file

    from scoregeo_cli.scores.unet import load_checkpoint
    from scoregeo_cli.training.unet import train_unet

    straight, cfg, kwargs = tiny_checkpoint
    final = train_unet(cfg, tmp_path, **kwargs, snapshots=[2], export_dtype="float16")
    snapshot = tmp_path / "unet_step2.safetensors"
    a, b, c = load_file(str(straight)), load_file(str(final)), load_file(str(snapshot))
    assert all(b[k].dtype == torch.float16 and c[k].dtype == torch.float16 for k in a)
    assert all(torch.equal(a[k].half(), b[k]) for k in a)  # the snapshot changed nothing
    assert any(not torch.equal(b[k], c[k]) for k in a)      # and is another step's weights
    _, _, meta = load_checkpoint(snapshot)
    assert meta["weights_dtype"] == "float16" and meta["training"]["steps"] == 2
    for bad, match in (({"snapshots": [4]}, "snapshots must be steps between 1 and steps - 1 = 3"),
                       ({"export_dtype": "bfloat16"}, "export_dtype must be float32 or float16")):
        with pytest.raises(ScoregeoError, match=match):
            train_unet(cfg, tmp_path / "bad", **{**kwargs, **bad})


def test_training_levels_are_drawn_only_from_their_range():
    """score.train.levels: the sampling function draws every level of [lo, hi] and nothing
    outside it; the whole schedule (the default) draws exactly what the trainer drew before."""
    from scoregeo_cli.training.unet import check_levels, draw_levels

    assert check_levels(None, 1000) == (0, 999)
    assert check_levels([0, 250], 1000) == (0, 250)
    drawn = draw_levels(20_000, check_levels([25, 250], 1000), torch.Generator().manual_seed(0))
    assert drawn.dtype == torch.long and int(drawn.min()) == 25 and int(drawn.max()) == 250
    assert len(torch.unique(drawn)) == 226  # every level of the range, both ends included
    single = draw_levels(100, check_levels([7, 7], 1000), torch.Generator().manual_seed(1))
    assert torch.equal(single, torch.full((100,), 7))
    before = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(draw_levels(64, (0, 999), torch.Generator().manual_seed(2)), before)


@pytest.mark.parametrize("bad", [[-1, 10], [10, 5], [0, 1000], [1.5, 3], [1, 2, 3], [5], "0-250", [True, 3]])
def test_bad_training_levels_are_refused_in_one_sentence_before_any_work(bad, tiny_checkpoint, tmp_path):
    from scoregeo_cli.training.unet import train_unet

    _, cfg, kwargs = tiny_checkpoint
    with pytest.raises(ScoregeoError, match="score.train.levels must be") as err:
        train_unet(cfg, tmp_path / "bad", **kwargs, levels=bad)
    message = str(err.value)
    assert "\n" not in message and message.count(". ") == 0 and "999" in message
    assert not (tmp_path / "bad").exists()  # refused before the run folder or the data


def test_a_model_trained_on_a_range_of_levels_says_so(tiny_checkpoint, tmp_path):
    """The record of the final weights and of each snapshot holds the range; a run of the
    whole schedule records [0, T - 1]; a training state of one range does not resume as another."""
    from scoregeo_cli.scores.unet import load_checkpoint
    from scoregeo_cli.training.unet import train_unet

    straight, cfg, kwargs = tiny_checkpoint
    assert load_checkpoint(straight)[2]["training"]["levels"] == [0, 999]
    final = train_unet(cfg, tmp_path, **kwargs, levels=[0, 250], snapshots=[2])
    for path in (final, tmp_path / "unet_step2.safetensors"):
        record = load_checkpoint(path)[2]["training"]
        assert record["levels"] == [0, 250] and "0..250" in record["levels_note"], path
        assert set(record["eps_mse_per_t"]) == {"50", "100", "200", "400", "800"}
        assert record["train_seconds"] > 0 and record["device"].startswith("cpu (")
    assert "(levels 0..250)" in load_checkpoint(final)[2]["training"]["ema_test_loss_note"]
    with pytest.raises(ScoregeoError, match="training state of a different model"):
        train_unet(cfg, tmp_path, **{**kwargs, "steps": 6}, levels=[0, 100])


def test_end_to_end_run_on_two_pairs(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    checkpoint = tiny_checkpoint[0]
    cmd = ["run", "experiment=rotated_mnist", f"output_root={tmp_path}",
           f"score.checkpoint={checkpoint}", "n_pairs=2", "solver.nodes=5", "solver.max_evals=3",
           "extrapolate.method=rk4", "extrapolate.steps=2", "extrapolate.substeps=1", "space.ddim_steps=2",
           "eval.fid_frames=3", "eval.fid_real=3", "eval.strips=1",
           "metric.lam=1",  # a UNet trained for 4 steps makes shooting diverge at lam 1000 (tested below)
           f"hydra.run.dir={tmp_path / 'run'}"]  # the override-keyed folder name would pass 255 characters
    code, stdout, stderr = invoke_cli(cmd, monkeypatch, capsys)
    assert code == 0, stderr[-3000:]
    run_dir = tmp_path / "run"
    assert (run_dir / "DONE").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"geodesic", "lerp", "slerp", "pixel_lerp", "roundtrip"} <= set(summary)
    for method in ("geodesic", "lerp", "slerp", "pixel_lerp"):
        for metric in ("psnr", "ssim", "lpips", "ppl", "pdv", "smoothness", "consistency", "score_evals", "seconds",
                       "extrapolation_psnr", "extrapolation_ssim", "extrapolation_lpips", "extrapolation_ppl"):
            assert summary[method][metric]["n"] == 2, (method, metric)
        for metric in ("fid", "kid", "extrapolation_fid", "extrapolation_kid"):
            assert summary[method][metric]["n"] == 1 and summary[method][metric]["mean"] >= 0, (method, metric)
    assert 0 < summary["geodesic"]["score_evals"]["mean"] <= 3
    assert summary["lerp"]["score_evals"]["mean"] == 0
    # the pixel-space blend is scored against the true rotations: its frames are real images
    # of the right digit, so it beats nothing-like-a-digit (PSNR > 10 dB, SSIM > 0.2)
    assert summary["pixel_lerp"]["psnr"]["mean"] > 10 and summary["pixel_lerp"]["ssim"]["mean"] > 0.2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    energy = {(r["method"], r["pair"]): r["value"] for r in rows if r["metric"] == "energy"}
    for p in range(2):  # the solver only accepts steps that lower the curve energy from LERP's
        assert energy[("geodesic", p)] <= energy[("lerp", p)] * (1 + 1e-9)
    pairs = json.loads((run_dir / "pairs.json").read_text())
    assert len(pairs) == 2 and all(-45 <= q["theta_a"] <= -15 and 15 <= q["theta_b"] <= 45 for q in pairs)
    from PIL import Image

    with Image.open(run_dir / "strips" / "pair_00.png") as strip:
        assert strip.size[1] == 2 * 14 + 5 * (56 + 2)  # title, angles, truth + four methods, frames drawn at 2x
    assert "psnr" in stdout and "geodesic" in stdout


def test_failed_shooting_is_recorded_as_nan_not_hidden(tiny_checkpoint):
    """A shot that runs out of its evaluation budget leaves NaN for the geodesic's
    extrapolation only; the interpolation and the baselines' extrapolations are kept."""
    from scoregeo_cli.geometry.shooting import GeodesicShooter
    from scoregeo_cli.geometry.solvers import FixedPointSolver
    from scoregeo_cli.geometry.stein import SteinMetric
    from scoregeo_cli.scores.unet import load_unet_score
    from scoregeo_cli.methods import Plan, run_methods
    from scoregeo_cli.methods.baselines import Lerp, Slerp
    from scoregeo_cli.methods.geodesic import Geodesic
    from scoregeo_cli.spaces import IdentitySpace

    score = load_unet_score(str(tiny_checkpoint[0]), t=400)
    metric = SteinMetric(score, lam=1000.0)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 784, generator=gen, dtype=torch.float64), torch.randn(2, 784, generator=gen, dtype=torch.float64)
    plan = Plan(5, metric, FixedPointSolver(5, 2), GeodesicShooter(0.5, 2, "rk4", substeps=1, max_evals=3))
    results = run_methods({"geodesic": Geodesic(), "lerp": Lerp(), "slerp": Slerp()},
                          IdentitySpace().endpoints(a, b), plan, gen)
    paths = {m: r.path for m, r in results.items()}
    ext = {m: r.extrapolation for m, r in results.items()}
    cost = {m: (r.score_evals, r.seconds, r.ext_score_evals, r.ext_seconds) for m, r in results.items()}
    assert bool(torch.isnan(ext["geodesic"]).all()) and ext["geodesic"].shape == (2, 3, 784)
    assert bool(torch.isfinite(paths["geodesic"]).all()) and bool(torch.isfinite(ext["lerp"]).all())
    assert cost["geodesic"][0] == 2 and cost["geodesic"][2] == 3  # solver evals; shooting stopped at its budget
    assert torch.allclose(ext["lerp"][:, 1], b + 0.25 * (b - a))
