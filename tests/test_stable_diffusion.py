"""Stable Diffusion morphing: loader, score, data, baselines and an end-to-end run.

Everything runs on a tiny random SD (tests/sd_tiny.py) saved with save_pretrained and
loaded through the same code path as real weights. The end-to-end run needs the LPIPS
and Inception weights of `scoregeo weights` (provisioned by `make test`).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke_cli
import torch
from PIL import Image

from scoregeo_cli.methods.baselines import lerp, slerp
from scoregeo_cli.data.image_pairs import ImagePairs
from scoregeo_cli.spaces.ddim import ddim_invert
from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.methods.noisediffusion import NoiseDiffusion
from scoregeo_cli.scores.stable_diffusion import stable_diffusion_score
from scoregeo_cli.spaces import LatentDiffusionSpace
from sd_tiny import EMPTY_PROMPT_FILE, add_tiny_text_encoder, build_tiny_sd, make_image_pairs

T = 400


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "model")


@pytest.fixture(scope="module")
def score(tiny_sd):
    return stable_diffusion_score(str(tiny_sd), t=T, device="cpu", chunk_size=3)


def sd_abar(t: int) -> float:
    """abar_t of SD's scaled_linear schedule (0.00085 to 0.012, 1000 steps), written out."""
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    prod = 1.0
    for i in range(t + 1):
        beta = (lo + (hi - lo) * i / 999) ** 2
        prod *= 1 - beta
    return prod


# -- model ------------------------------------------------------------------------------

def test_score_is_minus_unet_eps_over_sigma(tiny_sd, score):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet").eval()
    cond = load_file(str(tiny_sd / EMPTY_PROMPT_FILE))["prompt_embeds"]
    abar = sd_abar(T)
    assert math.sqrt(1 - abar) == pytest.approx(0.7586, abs=1e-4)  # noisediffusion.md
    assert score.model.latent_shape == (4, 16, 16) and score.model.resolution == 64
    assert score.model.scaling_factor == pytest.approx(0.18215)

    x = torch.randn(5, score.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = score.calls
    got = score(x)  # 5 points in chunks of 3: two UNet calls, one counted evaluation
    with torch.no_grad():
        eps = unet(x.float().reshape(5, 4, 16, 16), T, encoder_hidden_states=cond.expand(5, -1, -1)).sample
    expected = -eps.double().reshape(5, -1) / math.sqrt(1 - abar)
    assert score.calls == calls + 1
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_v_prediction_is_converted_to_eps(tmp_path):
    folder = build_tiny_sd(tmp_path / "v", prediction_type="v_prediction")
    model = stable_diffusion_score(str(folder), t=T, device="cpu").model
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        v = model._raw(x, T).double()
    abar = sd_abar(T)
    torch.testing.assert_close(model.eps(x, T), math.sqrt(abar) * v + math.sqrt(1 - abar) * x,
                               rtol=1e-6, atol=1e-6)


def test_encode_decode_are_the_scaled_vae(tiny_sd, score):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sd / "vae").eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    z = score.model.encode(images)
    with torch.no_grad():
        mean = vae.encode(images * 2 - 1).latent_dist.mean
        decoded = ((vae.decode(z / 0.18215).sample + 1) / 2).clamp(0, 1)
    assert z.shape == (2, 4, 16, 16)
    torch.testing.assert_close(z, mean * 0.18215)
    torch.testing.assert_close(score.model.decode(z), decoded)


def test_missing_weights_are_one_sentence_naming_the_setting(tmp_path, tiny_sd):
    cases = {tmp_path / "absent": "does not exist",
             "nobody/no-such-model": "local Hugging Face cache"}
    partial = tmp_path / "partial"
    shutil.copytree(tiny_sd, partial)
    shutil.rmtree(partial / "unet")
    cases[partial] = "lacks unet/config.json"
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_sd, no_weights)
    for f in (no_weights / "vae").glob("diffusion_pytorch_model.*"):
        f.unlink()
    cases[no_weights] = "lacks vae/diffusion_pytorch_model.safetensors"
    for pretrained, phrase in cases.items():
        with pytest.raises(ScoregeoError) as err:
            stable_diffusion_score(str(pretrained), device="cpu")
        message = str(err.value)
        assert f"score.pretrained={pretrained}" in message and phrase in message
        assert "unet/, vae/ and scheduler/" in message and "\n" not in message
    with pytest.raises(ScoregeoError, match="^score.pretrained is not set; it accepts a packaged name \\(ldm_mnist\\), a local diffusers folder"):
        stable_diffusion_score(None, device="cpu")


def test_conditioning_is_never_made_up(tmp_path, tiny_sd, monkeypatch):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_sd, bare)
    (bare / EMPTY_PROMPT_FILE).unlink()
    with pytest.raises(ScoregeoError, match="no text_encoder/ and no empty_prompt_embeds.safetensors"):
        stable_diffusion_score(str(bare), device="cpu")
    with pytest.raises(ScoregeoError, match="score.prompt needs text_encoder/ and tokenizer/"):
        stable_diffusion_score(str(bare), prompt="a cat", device="cpu")
    # a checkpoint with a text encoder but no transformers: say how to install it
    with_text = tmp_path / "with_text"
    shutil.copytree(bare, with_text)
    (with_text / "text_encoder").mkdir()
    (with_text / "tokenizer").mkdir()
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(ScoregeoError, match=r"needs transformers: pip install -e '\.\[text\]'"):
        stable_diffusion_score(str(with_text), device="cpu")
    # a precomputed embedding file is taken as given, and its shape is checked
    embeds = torch.randn(77, 16)
    torch.save(embeds, tmp_path / "embeds.pt")
    model = stable_diffusion_score(str(bare), prompt_embeds=str(tmp_path / "embeds.pt"), device="cpu").model
    torch.testing.assert_close(model.prompt_embeds, embeds[None])
    torch.save(torch.randn(1, 77, 8), tmp_path / "wrong.pt")
    with pytest.raises(ScoregeoError, match=r"needs \(1, L, 16\)"):
        stable_diffusion_score(str(bare), prompt_embeds=str(tmp_path / "wrong.pt"), device="cpu")


def test_prompts_go_through_the_checkpoint_text_encoder(tmp_path, tiny_sd):
    pytest.importorskip("transformers", reason="the text extra: pip install -e '.[text]'")
    from transformers import AutoTokenizer, CLIPTextModel

    folder = tmp_path / "with_text"
    shutil.copytree(tiny_sd, folder)
    (folder / EMPTY_PROMPT_FILE).unlink()  # the text encoder must be the source
    add_tiny_text_encoder(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    for prompt in ("a cat", ""):
        kwargs = {"prompt": prompt} if prompt else {}
        model = stable_diffusion_score(str(folder), device="cpu", **kwargs).model
        ids = tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert ids[0, 0] != ids[0, -1] and ids.shape == (1, 77)
        with torch.no_grad():
            expected = encoder(ids).last_hidden_state
        torch.testing.assert_close(model.prompt_embeds, expected)
        assert ("text encoder" in model.source) and (repr(prompt) in model.source or not prompt)


# -- data -------------------------------------------------------------------------------

def test_pairs_are_found_resized_and_centre_cropped(tmp_path):
    strip = np.zeros((40, 80, 3), np.uint8)  # 80 wide, 40 high: red | blue | green
    strip[:, :20] = (255, 0, 0)
    strip[:, 20:60] = (0, 0, 255)
    strip[:, 60:] = (0, 255, 0)
    (tmp_path / "Animation").mkdir()
    Image.fromarray(strip).save(tmp_path / "Animation" / "flag_0.png")
    Image.fromarray(strip).convert("L").save(tmp_path / "Animation" / "flag_1.jpg")
    make_image_pairs(tmp_path, names=("Metamorphosis/disc",))
    pairs = ImagePairs(tmp_path, resolution=20)
    assert pairs.names == ["Animation/flag", "Metamorphosis/disc"]
    a, b = pairs.load([0])
    assert a.shape == (1, 3, 20, 20) and b.shape == (1, 3, 20, 20)
    centre = a[0, :, :, 4:16]  # the crop keeps the blue middle; the resampling blurs its edges
    torch.testing.assert_close(centre, torch.tensor([0.0, 0.0, 1.0])[:, None, None].expand_as(centre),
                               atol=0.02, rtol=0)
    assert torch.allclose(b[0, 0], b[0, 1]) and torch.allclose(b[0, 1], b[0, 2])  # grayscale to RGB
    assert len(ImagePairs(tmp_path, limit=1)) == 1


def test_bad_images_and_layouts_are_named(tmp_path):
    make_image_pairs(tmp_path, names=("Metamorphosis/disc",))
    corrupt = tmp_path / "Metamorphosis" / "disc_1.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ScoregeoError, match=f"cannot read image {corrupt}"):
        ImagePairs(tmp_path, resolution=32).check()
    lonely = tmp_path / "Animation" / "cat_0.png"
    lonely.parent.mkdir()
    shutil.copy(tmp_path / "Metamorphosis" / "disc_0.png", lonely)
    with pytest.raises(ScoregeoError, match=f"{lonely} has no partner cat_1.png"):
        ImagePairs(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoregeoError, match="holds no image pairs; it must hold <name>_0.png"):
        ImagePairs(tmp_path / "empty")
    with pytest.raises(ScoregeoError, match="is not a folder"):
        ImagePairs(tmp_path / "nowhere")


# -- paths at level t -------------------------------------------------------------------

def test_every_baseline_returns_the_endpoints_at_its_ends():
    g = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(2, 1024, generator=g, dtype=torch.float64), torch.randn(2, 1024, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 1024, generator=g, dtype=torch.float64)
    abar = 0.4245
    x_a, x_b = abar**0.5 * z_a + (1 - abar) ** 0.5 * eps, abar**0.5 * z_b + (1 - abar) ** 0.5 * eps
    paths = {"lerp": lerp(x_a, x_b, 17), "slerp": slerp(x_a, x_b, 17),
             "noisediffusion": NoiseDiffusion(gamma=0.3).frames(z_a, z_b, x_a, x_b, abar, 17, generator=g).path}
    for name, path in paths.items():
        assert path.shape == (2, 17, 1024), name
        torch.testing.assert_close(path[:, 0], x_a, rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(path[:, -1], x_b, rtol=1e-12, atol=1e-12, msg=name)
        assert not torch.allclose(path[:, 8], x_a), name


def test_noisediffusion_matches_a_hand_computation():
    # one pair of 3-dimensional latents, 4 frames: l = 1/3 and 2/3 inside
    z_a, z_b = [1.0, -2.0, 0.5], [-1.5, 3.0, 0.2]
    x_a, x_b = [2.5, -0.4, 1.0], [0.3, 1.9, -3.2]
    noise = [[0.7, -1.1, 2.0], [-0.3, 0.9, 1.4]]
    abar, bound, gamma = 0.36, 1.5, 0.6  # sqrt(abar) = 0.6, sqrt(1 - abar) = 0.8

    def clip(v):
        return max(-bound, min(bound, v))

    expected, clipped = [], 0
    for frame, ell in enumerate((1 / 3, 2 / 3)):
        c, s = math.cos(math.pi * ell / 2), math.sin(math.pi * ell / 2)
        alpha, beta = 0.8 * c, 0.8 * s  # sqrt(1 - 0.36) = 0.8, so alpha^2 + beta^2 = 0.64
        mu, nu = 1.2 * alpha / (alpha + beta), 1.2 * beta / (alpha + beta)
        values = []
        for k in range(3):
            raw = (alpha * clip(x_a[k]) + beta * clip(x_b[k]) + (mu - alpha) * 0.6 * z_a[k]
                   + (nu - beta) * 0.6 * z_b[k] + gamma * 0.8 * noise[frame][k])
            clipped += abs(raw) > bound
            values.append(clip(raw))
        expected.append(values)

    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    out = NoiseDiffusion(bound=bound, gamma=gamma, boost=1.2).frames(
        t(z_a), t(z_b), t(x_a), t(x_b), abar, 4, noise=torch.tensor([noise], dtype=torch.float64))
    torch.testing.assert_close(out.path[0, 1:3], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(out.path[0, 0], t(x_a)[0])
    assert float(out.clipped_fraction[0]) == pytest.approx(clipped / 6)
    assert float(out.clipped_fraction_endpoints[0]) == pytest.approx(3 / 6)  # 2.5, 1.9, -3.2 exceed 1.5


def test_endpoints_share_the_noise_or_come_from_ddim_inversion(score):
    model = score.model
    g = torch.Generator().manual_seed(4)
    z_a, z_b, eps = (torch.randn(1, 4, 16, 16, generator=g, dtype=torch.float64) for _ in range(3))
    space = LatentDiffusionSpace(score, inversion_steps=3)
    ends = space.endpoints(z_a.flatten(1), z_b.flatten(1), eps.flatten(1))
    x_a, x_b = ends.a.reshape(z_a.shape), ends.b.reshape(z_b.shape)
    abar = sd_abar(T)  # diffusers builds the schedule in float32: agreement to about 1e-5
    torch.testing.assert_close(x_a, math.sqrt(abar) * z_a + math.sqrt(1 - abar) * eps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x_a - x_b, math.sqrt(float(model.alphas_cumprod[T])) * (z_a - z_b))
    inverted = LatentDiffusionSpace(score, inversion=True, inversion_steps=3).endpoints(
        z_a.flatten(1), z_b.flatten(1), eps.flatten(1))
    i_a, i_b = inverted.a.reshape(z_a.shape), inverted.b.reshape(z_b.shape)
    # the UNet runs in float32 and batches the two ends together: agreement to float32 round-off
    torch.testing.assert_close(i_b, ddim_invert(model.eps, z_b, T, model.alphas_cumprod, 3), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(i_a, x_a)


# -- end to end -------------------------------------------------------------------------

def run_cli(argv: list[str], monkeypatch) -> None:
    assert invoke_cli(argv, monkeypatch)[0] == 0


def test_cli_reports_missing_weights_before_any_work(tmp_path, monkeypatch, capsys):
    pairs = make_image_pairs(tmp_path / "pairs")
    code, _, err = invoke_cli(["run", "experiment=sd_morphbench", f"score.pretrained={tmp_path}/nothing",
                               f"dataset.root={pairs}", f"hydra.run.dir={tmp_path}/run"], monkeypatch, capsys)
    assert code == 2
    err = err.strip().splitlines()
    assert err[-1].startswith(f"scoregeo: error: score.pretrained={tmp_path}/nothing does not exist")
    assert not (tmp_path / "run" / "strips").exists()


def test_morphbench_run_end_to_end(tmp_path, tiny_sd, monkeypatch):
    pairs = make_image_pairs(tmp_path / "MorphBench")
    run = tmp_path / "run"
    run_cli(["run", "experiment=sd_morphbench", f"score.pretrained={tiny_sd}", f"dataset.root={pairs}",
             "solver.nodes=4", "space.ddim_steps=2", "solver.max_evals=3", "score.device=cpu",
             "score.chunk_size=16",
             f"output_root={tmp_path}", f"hydra.run.dir={run}"], monkeypatch)

    assert (run / "DONE").exists()
    summary = json.loads((run / "summary.json").read_text())
    metrics = ["lpips", "ppl", "pdv", "smoothness", "consistency", "fid", "kid", "seconds", "score_evals", "energy"]
    assert set(summary) == {"geodesic", "lerp", "slerp", "noisediffusion"}
    for method, entry in summary.items():
        for name in metrics:
            assert math.isfinite(entry[name]["mean"]), (method, name)
        assert entry["lpips"]["n"] == 2 and entry["fid"]["n"] == 1
        assert entry["fid"]["mean"] >= 0 and 0 <= entry["smoothness"]["mean"] <= 1
    assert 1 <= summary["geodesic"]["score_evals"]["mean"] <= 3
    assert summary["lerp"]["score_evals"]["mean"] == 0
    assert 0 <= summary["noisediffusion"]["clipped_fraction"]["mean"] <= 1

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    value = {(r["method"], r["pair"], r["metric"]): r["value"] for r in rows}
    for pair in (0, 1):
        # 3 consecutive distances: PPL is their sum, lpips their mean
        assert value[("geodesic", pair, "ppl")] == pytest.approx(3 * value[("geodesic", pair, "lpips")])
        # the solver only accepts steps that lower the energy of its straight-line start
        assert value[("geodesic", pair, "energy")] <= value[("lerp", pair, "energy")] * (1 + 1e-9)

    for name in ("Animation/square", "Metamorphosis/disc"):
        strip = np.asarray(Image.open(run / "strips" / f"{name}.png"))
        # a title line and a line of column labels (14 px each) above inputs + 4 methods, 4 frames
        assert strip.shape[0] == 2 * 14 + 5 * (64 + 2) and strip.shape[1] > 4 * 64
        frames = {m: [np.asarray(Image.open(run / "frames" / m / name / f"{i:02d}.png")) for i in range(4)]
                  for m in summary}
        assert not (run / "frames" / "lerp" / name / "04.png").exists()
        for m, seq in frames.items():
            assert seq[0].shape == (64, 64, 3)
            # every method starts and ends at the same noisy latents and denoises deterministically
            assert np.array_equal(seq[0], frames["lerp"][0]) and np.array_equal(seq[-1], frames["lerp"][-1]), m
        assert not np.array_equal(frames["noisediffusion"][1], frames["lerp"][1])
