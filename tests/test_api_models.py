"""The public API with diffusers models: the UNet score helpers against the networks
themselves, noising and DDIM against diffusers' schedulers, the packaged rotated-digits UNet
against `scoregeo run`, and the README's "Use from Python" and examples/ run as written."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scoregeo_cli as sg
from helpers import assert_close_to_scale

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = Path(sg.__file__).resolve().parent / "checkpoints" / "rotated_digits_unet.safetensors"
DDIM_CONFIG = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
               "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "leading"}


def tiny_unet(channels: int = 1, size: int = 8, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def _sigma(scheduler, t):
    return float((1 - scheduler.alphas_cumprod[t].double()).sqrt())


# ----------------------------------------------------------------------------- score helpers

def test_unet_score_is_minus_eps_over_sigma(unet):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler()
    score = sg.score_from_unet(unet, scheduler, 300, chunk_size=None)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        eps = unet(x.float(), torch.full((5,), 300)).sample.double()
        s = score(x)
    assert s.shape == x.shape and s.dtype == torch.float64
    assert torch.allclose(s, -eps / _sigma(scheduler, 300), atol=1e-6)
    assert torch.allclose(score(x.reshape(5, 64)), s.reshape(5, 64))  # flat points work too
    assert score.calls == 2 and score.points == 10 and score.shape == (1, 8, 8) and score.t == 300
    chunked = sg.score_from_unet(unet, scheduler, 300, chunk_size=2)
    assert_close_to_scale(chunked(x), s)  # other batch sizes: other float32 rounding
    assert chunked.calls == 1


def test_v_prediction_is_converted_to_the_noise_it_implies(unet):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(prediction_type="v_prediction")
    abar = scheduler.alphas_cumprod[200].double()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        v = unet(x.float(), torch.full((3,), 200)).sample.double()
        s = sg.score_from_unet(unet, scheduler, 200)(x)
    assert torch.allclose(s, -(abar.sqrt() * v + (1 - abar).sqrt() * x) / (1 - abar).sqrt(), atol=1e-6)


def test_conditional_unet_score_and_denoise_use_the_conditioning():
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from sd_tiny import UNET_CONFIG

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval().requires_grad_(False)
    scheduler = DDIMScheduler(**DDIM_CONFIG)
    cond = torch.randn(1, 7, UNET_CONFIG["cross_attention_dim"])
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        eps = unet(x.float(), torch.full((2,), 400), encoder_hidden_states=cond.expand(2, -1, -1)).sample
        s = sg.score_from_conditional_unet(unet, scheduler, 400, cond[0])(x)
        other = sg.score_from_conditional_unet(unet, scheduler, 400, -cond)(x)
    assert torch.allclose(s, -eps.double() / _sigma(scheduler, 400), atol=1e-6)
    assert not torch.allclose(s, other, atol=1e-3)  # the conditioning is used
    with pytest.raises(ValueError, match=r"^unet .*score_from_conditional_unet"):
        sg.score_from_unet(unet, scheduler, 400)
    with pytest.raises(ValueError, match=r"^encoder_hidden_states "):
        sg.denoise(unet, scheduler, x, 400, steps=1)
    with pytest.raises(ValueError, match=r"^encoder_hidden_states .*cross_attention_dim"):
        sg.score_from_conditional_unet(unet, scheduler, 400, torch.randn(1, 7, 5))
    clean = sg.denoise(unet, scheduler, x, 400, steps=1, encoder_hidden_states=cond)
    assert clean.shape == x.shape and bool(torch.isfinite(clean).all())


# ----------------------------------------------------------------------------- noise and DDIM

def test_noise_is_diffusers_add_noise():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler()
    gen = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 1, 8, 8, generator=gen), torch.randn(4, 1, 8, 8, generator=gen)
    expected = scheduler.add_noise(x0, eps, torch.full((4,), 400))
    assert torch.allclose(sg.noise(x0, eps, 400, scheduler), expected, atol=1e-6)
    ends = sg.noise(torch.stack([x0[0], x0[1]]).double(), eps[:1].double().expand(2, -1, -1, -1), 400, scheduler)
    # shared noise: the two ends differ by the scaled difference of the data
    assert torch.allclose(ends[0] - ends[1], scheduler.alphas_cumprod[400].double().sqrt() * (x0[0] - x0[1]).double())


def test_denoise_is_diffusers_ddim(unet):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**DDIM_CONFIG)
    scheduler.set_timesteps(10)  # 900, 800, ..., 0 (leading)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = x.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            ref = scheduler.step(unet(ref, t).sample, t, ref, eta=0.0).prev_sample
    ours = sg.denoise(unet, scheduler, x, 900, steps=9)
    assert_close_to_scale(ours, ref)  # the random UNet's values reach ~100: relative to their size
    paths = torch.stack([x, x.flip(0)])  # (2, 3, 1, 8, 8): leading dimensions are batched
    assert_close_to_scale(sg.denoise(unet, scheduler, paths, 900, steps=9)[0], ours)


# ----------------------------------------------------------------------------- the packaged UNet against `scoregeo run`

@pytest.mark.parametrize("solver", ["gauss_newton_plain", "gauss_newton"], ids=["plain", "default"])
def test_rotated_digits_geodesic_is_the_path_of_scoregeo_run(solver, tmp_path, monkeypatch, capsys):
    """`scoregeo run experiment=rotated_mnist` (one pair, 5 nodes, 4 evaluations: Gauss-Newton at
    5 nodes, or the default solver, the same in both front doors; a 2-step rk4 shot) and the
    public API on the same inputs (the packaged checkpoint loaded with diffusers, the same clean
    images and noise): the same endpoints, the same path and the same extrapolation to 1e-6."""
    from diffusers import DDIMScheduler, UNet2DModel
    from helpers import invoke_cli
    from safetensors.torch import load_file

    from scoregeo_cli.methods.geodesic import Geodesic as GeodesicMethod
    from scoregeo_cli.spaces.diffusion import DiffusionSpace

    seen = {}
    endpoints, method_call = DiffusionSpace.endpoints, GeodesicMethod.__call__

    def record_ends(self, clean_a, clean_b, eps):
        seen["clean"], seen["eps"] = (clean_a, clean_b), eps
        return endpoints(self, clean_a, clean_b, eps)

    def record_path(self, ends, plan, generator):
        out = method_call(self, ends, plan, generator)
        seen["ends"], seen["path"], seen["ext"] = (ends.a, ends.b), out.path, out.extrapolation
        return out

    monkeypatch.setattr(DiffusionSpace, "endpoints", record_ends)
    monkeypatch.setattr(GeodesicMethod, "__call__", record_path)
    cmd = ["run", "experiment=rotated_mnist", f"score.checkpoint={CHECKPOINT}", f"solver={solver}",
           f"output_root={tmp_path}", "n_pairs=1", "method=[geodesic]",
           "solver.nodes=5", "solver.max_evals=4", "extrapolate.method=rk4", "extrapolate.steps=2",
           "extrapolate.substeps=1", "space.ddim_steps=1", "eval.fid=false", "eval.strips=0",
           f"hydra.run.dir={tmp_path / 'run'}"]
    code, _, stderr = invoke_cli(cmd, monkeypatch, capsys)
    assert code == 0, stderr[-3000:]

    meta = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    unet = UNet2DModel.from_config(meta["unet"])
    unet.load_state_dict(load_file(str(CHECKPOINT)))
    unet.eval().requires_grad_(False)
    scheduler = DDIMScheduler.from_config(meta["scheduler"])
    image = lambda x: x.reshape(-1, 1, 28, 28)  # noqa: E731
    a = sg.noise(image(seen["clean"][0]), image(seen["eps"]), 400, scheduler)
    b = sg.noise(image(seen["clean"][1]), image(seen["eps"]), 400, scheduler)
    assert torch.equal(a.reshape(1, 784), seen["ends"][0]) and torch.equal(b.reshape(1, 784), seen["ends"][1])

    score = sg.score_from_unet(unet, scheduler, 400, chunk_size=128)
    geo = sg.geodesic(score, a, b, normalize="unit", nodes=5, max_evals=4, solver=solver)
    assert geo.path.shape == (1, 5, 1, 28, 28) and 0 < geo.score_evals <= 4
    assert float((geo.path.reshape(1, 5, 784) - seen["path"]).abs().max()) < 1e-6
    assert float((geo.path - a[:, None]).abs().max()) > 1e-2  # it moved away from the straight line
    ext = sg.extrapolate(geo, 0.5, 2, method="rk4", substeps=1)
    assert ext.ok and float((ext.path.reshape(1, 3, 784) - seen["ext"]).abs().max()) < 1e-6


# ----------------------------------------------------------------------------- README and examples, as written

def readme_python() -> str:
    """The Python code blocks of the README's "Use from Python" section, in order."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Use from Python\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Use from Python' section"
    blocks = re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert len(blocks) >= 2
    return "\n".join(blocks)


def test_readme_use_from_python_runs_without_hydra(tmp_path):
    """The README's example, run as a script in a fresh interpreter; afterwards Hydra is not
    among its modules."""
    script = tmp_path / "readme_example.py"
    script.write_text(readme_python() + "\n\nimport sys\nprint('hydra loaded:', sorted(m for m in sys.modules "
                                        "if m.split('.')[0] in ('hydra', 'omegaconf')))\n")
    threads = os.environ.get("SCOREGEO_TEST_THREADS", "1")
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "SCOREGEO_PROGRESS": "0"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch.Size([2, 8, 1, 16, 16]) torch.Size([2, 8, 1, 16, 16])" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "hydra loaded: []"


def test_example_analytic_score():
    result = runpy.run_path(str(REPO / "examples" / "analytic_score.py"))["main"]([])
    geo, ext, lerp = result["geodesic"], result["extrapolation"], result["lerp"]
    assert bool(geo.converged.all())
    assert float((geo.path.norm(dim=-1) - 1).abs().max()) < 0.02 < float((lerp.norm(dim=-1) - 1).abs().max())
    assert ext.ok and float((ext.path.norm(dim=-1) - 1).abs().max()) < 0.03


def test_example_diffusers_checkpoint(tmp_path, capsys):
    from diffusers import DDPMPipeline, DDPMScheduler
    from PIL import Image

    folder = tmp_path / "ddpm"
    DDPMPipeline(unet=tiny_unet(channels=3, size=16), scheduler=DDPMScheduler()).save_pretrained(folder)
    images = []
    for k, colour in enumerate([(250, 20, 20), (20, 20, 250)]):
        images.append(tmp_path / f"img{k}.png")
        Image.new("RGB", (24, 24), colour).save(images[-1])
    out = tmp_path / "strip.png"
    main = runpy.run_path(str(REPO / "examples" / "diffusers_checkpoint.py"))["main"]
    result = main([str(folder), "--images", *map(str, images), "--nodes", "5", "--max-evals", "3",
                   "--ddim-steps", "2", "--out", str(out)])
    assert result["frames"].shape == (2, 5, 3, 16, 16)
    assert float(result["geodesic"].energy[0]) < result["energy_lerp"]
    with Image.open(out) as strip:
        assert strip.size == (5 * 16, 2 * 16)
    assert "geodesic at t = 400" in capsys.readouterr().out
