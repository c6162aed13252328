"""The latent diffusion path on a trained model: the packaged ``ldm_mnist`` (diffusers
AutoencoderKL + UNet2DConditionModel trained on rotated MNIST by ``scoregeo train
experiment=ldm_mnist``), loaded through ``score=stable_diffusion``'s ``from_pretrained`` path.

On the random tiny SD of tests/sd_tiny.py every frame is noise, so a bug that turned every
morph into noise (the VAE's scaling factor, encode/decode, DDIM, the conditioning, the score's
sign or scale on latents) would pass its tests; these fail instead. Digits are held-out test
digits of mnist5k (provisioned by ``scoregeo weights``).

PSNR baselines on MNIST (dark backgrounds): an all-black frame scores about 10-11 dB against a
digit and uniform noise about 5 dB, so thresholds below are stated against those.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import assert_close_to_scale, invoke_cli

from scoregeo_cli.data.rotated_mnist import RotatedDigits
from scoregeo_cli.evaluation.images import psnr
from scoregeo_cli.methods.baselines import lerp
from scoregeo_cli.scores.stable_diffusion import PACKAGED_NAMES, stable_diffusion_score
from scoregeo_cli.spaces import LatentDiffusionSpace

RECORD = PACKAGED_NAMES["ldm_mnist"] / "training.json"


@pytest.fixture(scope="module")
def ldm():
    """The packaged model's score at the paper's t = 400."""
    return stable_diffusion_score("ldm_mnist", t=400, device="cpu", chunk_size=64)


@pytest.fixture(scope="module")
def digits():
    return RotatedDigits(source="mnist5k")


def read_png(path) -> torch.Tensor:
    """A greyscale PNG as (1, H, W) in [0, 1]."""
    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0)[None]


def black_and_noise_psnr(truth: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR against ``truth`` (N, 1, H, W) of an all-black frame and of uniform noise."""
    noise = torch.rand(truth.shape, generator=torch.Generator().manual_seed(9))
    return float(psnr(torch.zeros_like(truth), truth).mean()), float(psnr(noise, truth).mean())


def test_packaged_model_is_a_diffusers_folder_with_its_record(ldm):
    model = ldm.model
    assert model.latent_shape == (4, 7, 7) and model.resolution == 28 and model.channels == 1
    assert model.prediction_type == "epsilon"
    record = json.loads(RECORD.read_text())
    assert record["weights_dtype"] == "float16"
    assert record["vae_psnr"] >= 25.0 and record["vae_psnr_target_met"]
    assert record["fid_ratio"] == pytest.approx(record["sample_fid"] / record["real_vs_real_fid"])
    for key in ("command", "train_seconds", "device", "sample_fid", "sample_kid", "real_vs_real_fid", "fid_samples"):
        assert record[key] is not None, key
    # SD's schedule: abar at t = 400 is 0.4245 (shared/noisediffusion.md)
    assert float(model.alphas_cumprod[400]) == pytest.approx(0.4245, abs=1e-4)
    # the scaling factor was set so that scaled latents of training digits have unit variance
    assert model.scaling_factor == pytest.approx(record["vae"]["scaling_factor"])


def test_vae_round_trip_of_held_out_digits(ldm, digits):
    """Encode and decode 128 rotated test digits: mean PSNR >= 25 dB (the model's target; the
    record measured it on 1,000), every digit well above an all-black frame."""
    real = digits.rotated_batch("test", 128, torch.Generator().manual_seed(11))
    values = psnr(ldm.model.decode(ldm.model.encode(real)), real)
    black, _ = black_and_noise_psnr(real)
    assert float(values.mean()) >= 25.0
    assert float(values.min()) >= black + 5.0
    record = json.loads(RECORD.read_text())
    assert float(values.mean()) == pytest.approx(record["vae_psnr"], abs=1.0)


def test_ddim_on_latents_equals_diffusers_ddim_scheduler(ldm):
    """The space's DDIM (t = 400 to 0 in 20 steps, the last to the predicted x_0) on the model's
    own noise predictor equals diffusers' DDIMScheduler stepping the same latents with the same
    predictor: a 50-step scheduler steps by 20 levels, its timesteps 400, 380, ..., 0 given one
    by one, and ``set_alpha_to_one`` for the last step."""
    from diffusers import DDIMScheduler

    space = LatentDiffusionSpace(ldm, ddim_steps=20)
    x = torch.randn(3, *ldm.model.latent_shape, generator=torch.Generator().manual_seed(12))
    ours = space.denoise(x.reshape(3, -1)).reshape(x.shape)

    sampler = DDIMScheduler.from_config({**ldm.model.scheduler_config, "set_alpha_to_one": True})
    sampler.set_timesteps(50)
    ref = x.clone()
    with torch.no_grad():
        for t in range(400, -1, -20):
            ref = sampler.step(ldm.model.eps(ref, t), t, ref, eta=0.0).prev_sample
    assert_close_to_scale(ours.float(), ref, rel=1e-4)
    # and the clean latents decode to digit-like images, not to noise: mostly dark, some strokes
    images = ldm.model.decode(ref)
    assert 0.02 < float(images.mean()) < 0.35 and float(images.amax((1, 2, 3)).min()) > 0.5


def test_lerp_at_small_t_decodes_to_the_blend_of_the_ends(digits):
    """At t = 10 (abar 0.991), shared-noise LERP between two rotations of a digit (3 pairs, 5
    nodes), brought back by 4 DDIM steps and decoded, gives the blend of the two ends' decodings:
    every interior frame within 14.5 dB PSNR of the pixel blend (1 - w) D(z_a) + w D(z_b), 18.5 dB
    on average (measured: 16.0 and 19.6; an all-black frame scores 11.8). The decoder is not
    linear (the clean latents' own LERP decodes to within 18.7 dB of that pixel blend, 22.0 on
    average), and the frames are closer to that decoded latent LERP: 21 dB on average (measured
    22.8). Each end, noised and brought back, stays within 23.5 dB of its decoding on average
    (measured 25.5). A noise predictor of the wrong sign fails three of these (17.4, 17.6, 19.6)."""
    score = stable_diffusion_score("ldm_mnist", t=10, device="cpu", chunk_size=64)
    space = LatentDiffusionSpace(score, ddim_steps=4)
    gen = torch.Generator().manual_seed(13)
    digits.select(3, gen)
    a, b = digits.load([0, 1, 2])
    za, zb = space.encode(a), space.encode(b)
    ends = space.endpoints(za, zb, torch.randn(za.shape, generator=gen, dtype=torch.float64))
    nodes, d = 5, za.shape[1]
    frames = space.to_data(lerp(ends.a, ends.b, nodes).reshape(-1, d)).reshape(3, nodes, 1, 28, 28)
    decoded_ends = space.decode(torch.cat([za, zb])).reshape(2, 3, 1, 28, 28)
    w = torch.linspace(0, 1, nodes)[None, :, None, None, None]
    blend = (1 - w) * decoded_ends[0][:, None] + w * decoded_ends[1][:, None]
    latent_lerp = space.decode(lerp(za, zb, nodes).reshape(-1, d)).reshape(3, nodes, 1, 28, 28)

    def psnr_of(x, y):
        return psnr(x.flatten(0, 1), y.flatten(0, 1)).reshape(x.shape[:2])

    to_blend = psnr_of(frames, blend)[:, 1:-1]
    black, noise = black_and_noise_psnr(blend[:, 1:-1].flatten(0, 1))
    assert float(to_blend.min()) >= 14.5 and float(to_blend.mean()) >= 18.5, to_blend
    assert float(to_blend.mean()) >= black + 6.0 and black > noise
    assert float(psnr_of(frames, latent_lerp)[:, 1:-1].mean()) >= 21.0
    assert float(psnr_of(frames, blend)[:, [0, -1]].mean()) >= 23.5


def test_score_on_latents_points_to_the_clean_latents(ldm, digits):
    """Held-out digits' latents (scaled to unit variance by the VAE's scaling factor) noised to t
    with a known eps: the model predicts that eps (MSE 0.027 at t = 400 and 0.084 at t = 100 as
    measured; a wrong scaling factor or timestep raises it, a wrong sign makes it about 4), and
    its score points from x_t to sqrt(abar_t) z_0 (cosine 0.986 and 0.957 on average)."""
    from scoregeo_cli.schedule import noise_to

    real = digits.rotated_batch("test", 64, torch.Generator().manual_seed(14))
    z = ldm.model.encode(real)
    assert float(z.std()) == pytest.approx(1.0, abs=0.1)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    for t, mse_bound, cos_bound in ((400, 0.05, 0.95), (100, 0.15, 0.9)):
        score = stable_diffusion_score("ldm_mnist", t=t, device="cpu", chunk_size=64) if t != ldm.t else ldm
        x_t = noise_to(z.double().flatten(1), eps.flatten(1), t, ldm.model.alphas_cumprod)
        s = score(x_t)
        abar = float(ldm.model.alphas_cumprod[t])
        predicted_eps = -s * math.sqrt(1 - abar)
        assert float(((predicted_eps - eps.flatten(1)) ** 2).mean()) <= mse_bound
        cos = torch.nn.functional.cosine_similarity(s, math.sqrt(abar) * z.double().flatten(1) - x_t, dim=1)
        assert float(cos.mean()) >= cos_bound, (t, cos)


def test_latent_geodesic_run_on_two_pairs_gives_digits(tmp_path, monkeypatch):
    """``scoregeo run experiment=latent_rotations`` on 2 pairs with both ends reached by DDIM
    inversion (9 nodes, 10 DDIM steps each way, a 30-evaluation geodesic): the ends come back
    (round trip >= 24 dB), and the geodesic's and LERP's frames are the rotating digit, well above
    an all-black frame and uniform noise and closer to their own pair's truth than to the other
    pair's. (With shared noise at t = 400, the paper's protocol, the frames are digits too, but
    not the pair's own: README, "Rotations through the latent diffusion pipeline".)"""
    run = tmp_path / "run"
    code, _, _ = invoke_cli(["run", "experiment=latent_rotations", "n_pairs=2", "solver.nodes=9",
                             "solver.max_evals=30", "space.ddim_steps=10", "space.inversion=true",
                             "space.inversion_steps=10", "eval.fid=false", "task.save_frames=true",
                             f"output_root={tmp_path}", f"hydra.run.dir={run}"], monkeypatch)
    assert code == 0 and (run / "DONE").exists()
    summary = json.loads((run / "summary.json").read_text())
    pairs = json.loads((run / "pairs.json").read_text())
    data = RotatedDigits(source="mnist5k")
    data.select(2, torch.Generator().manual_seed(0))
    assert [p["source_index"] for p in pairs] == [p["source_index"] for p in data.records()]
    truth = data.truth([0, 1], torch.linspace(0, 1, 9, dtype=torch.float64))[:, 1:-1]
    black, noise = black_and_noise_psnr(truth.flatten(0, 1))
    assert summary["roundtrip"]["psnr"]["mean"] >= 24.0
    for method in ("geodesic", "lerp", "slerp", "noisediffusion"):
        assert set(summary[method]) >= {"psnr", "ssim", "lpips", "ppl", "angle_error"}
        assert summary[method]["lpips"]["mean"] <= 0.3  # uniform-noise frames: about 0.6
    for method, margin in (("geodesic", GEODESIC_MARGIN), ("lerp", LERP_MARGIN)):
        assert summary[method]["psnr"]["mean"] >= max(black + margin, noise + 6.0), (method, summary, black)
        for pair in (0, 1):
            frames = torch.stack([read_png(run / "frames" / method / f"pair_{pair:02d}" / f"{i:02d}.png")
                                  for i in range(1, 8)])
            own, other = float(psnr(frames, truth[pair]).mean()), float(psnr(frames, truth[1 - pair]).mean())
            assert own >= other + OWN_MARGIN, (method, pair, own, other)
    assert summary["geodesic"]["energy"]["mean"] <= summary["lerp"]["energy"]["mean"]


# measured: black 9.6 dB, noise 5.3; geodesic 14.9 (own pair vs the other's: +3.8, +6.8), LERP 19.2
# (+7.5, +11.3); round trip 26.3
GEODESIC_MARGIN, LERP_MARGIN, OWN_MARGIN = 3.0, 6.0, 2.0


def test_table2_morphbench_runs_offline_on_held_out_digit_pairs(tmp_path, monkeypatch, capsys):
    """The paper's Table 2 recipe end to end, offline: ``python -m scoregeo_cli.data.digit_pairs``
    writes held-out digits in MorphBench's layout and ``scoregeo reproduce table2_morphbench``
    runs it with ``score.pretrained=ldm_mnist`` (fewer nodes and steps here) and renders the table."""
    from scoregeo_cli.data.digit_pairs import main as write_pairs

    root = tmp_path / "MorphBench"
    write_pairs([str(root), "--metamorphosis", "1", "--animation", "1"])
    assert "scoregeo reproduce table2_morphbench score.pretrained=ldm_mnist" in capsys.readouterr().out
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(names) == 4 and names[0].startswith("Animation/00_") and names[-1].endswith("_1.png")
    out = tmp_path / "out"
    code, stdout, stderr = invoke_cli(["reproduce", "table2_morphbench", "score.pretrained=ldm_mnist",
                                       f"dataset.root={root}", "--seeds", "0", "solver.nodes=5",
                                       "space.ddim_steps=4", "solver.max_evals=6", f"output_root={out}"],
                                      monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    table = (out / "tables" / "table2_morphbench.md").read_text()
    for method in ("geodesic", "lerp", "slerp", "noisediffusion"):
        assert f"| {method} |" in table or f"| **{method}** |" in table, table
    summary = json.loads(next((out / "sd_morphbench").rglob("summary.json")).read_text())
    assert summary["lerp"]["lpips"]["n"] == 2 and math.isfinite(summary["geodesic"]["fid"]["mean"])
