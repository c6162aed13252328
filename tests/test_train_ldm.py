"""``scoregeo train experiment=ldm_mnist`` at a few steps: it writes a diffusers folder that
``score=stable_diffusion`` loads like a real SD checkpoint, with its record, and resumes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.scores.stable_diffusion import EMPTY_PROMPT_FILE, stable_diffusion_score
from scoregeo_cli.training.ldm import MODEL_DIR, RECORD_FILE, UNET_STATE, VAE_STATE, train_ldm

TINY = {"vae": {"steps": 2, "batch_size": 4, "model": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8}},
        "unet": {"steps": 2, "batch_size": 4,
                 "model": {"block_out_channels": [16, 16], "norm_num_groups": 8, "cross_attention_dim": 8,
                           "attention_head_dim": 4}},
        "prompt_length": 5, "checkpoint_every": 1, "psnr_samples": 4, "fid_samples": 0, "threads": None}


def test_trains_writes_a_loadable_folder_and_resumes(compose_cfg, tmp_path, capsys):
    cfg = compose_cfg(["experiment=ldm_mnist"])
    assert cfg.score.train._target_ == "scoregeo_cli.training.ldm.train_ldm"
    out = tmp_path / "train"
    folder = train_ldm(cfg, out, **TINY)
    assert folder == out / MODEL_DIR
    for sub in ("vae/config.json", "unet/config.json", "scheduler/scheduler_config.json", EMPTY_PROMPT_FILE,
                RECORD_FILE):
        assert (folder / sub).is_file(), sub
    weights = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values())  # export_dtype float16
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["beta_schedule"] == "scaled_linear" and scheduler["beta_start"] == 0.00085
    assert scheduler["beta_end"] == 0.012 and scheduler["num_train_timesteps"] == 1000
    assert scheduler["clip_sample"] is False and scheduler["prediction_type"] == "epsilon"

    record = json.loads((folder / RECORD_FILE).read_text())
    assert record["vae"]["steps"] == 2 and record["unet"]["steps"] == 2
    assert record["latent_shape"] == [4, 7, 7] and record["weights_dtype"] == "float16"
    assert record["vae_psnr_samples"] == 4 and "sample_fid" not in record

    # loaded through the same from_pretrained path as a real SD checkpoint
    model = stable_diffusion_score(str(folder), t=400, device="cpu").model
    assert model.latent_shape == (4, 7, 7) and model.resolution == 28 and model.channels == 1
    assert model.prompt_embeds.shape == (1, 5, 8)
    assert model.scaling_factor == pytest.approx(record["vae"]["scaling_factor"])
    z = model.encode(torch.rand(2, 1, 28, 28))
    assert z.shape == (2, 4, 7, 7) and model.decode(z).shape == (2, 1, 28, 28)

    # the same command with more UNet steps resumes both phases from their states
    capsys.readouterr()
    more = {**TINY, "unet": {**TINY["unet"], "steps": 3}}
    train_ldm(cfg, out, **more)
    printed = capsys.readouterr().out
    assert "vae: resuming from step 2 of 2" in printed and "unet: resuming from step 2 of 3" in printed
    assert json.loads((folder / RECORD_FILE).read_text())["unet"]["steps"] == 3
    assert (out / VAE_STATE).is_file() and (out / UNET_STATE).is_file()

    # another architecture in the same folder is refused, not mixed
    other = {**TINY, "vae": {**TINY["vae"], "model": {"block_out_channels": [8, 8, 16], "norm_num_groups": 8}}}
    with pytest.raises(ScoregeoError, match="holds the training state of a different model"):
        train_ldm(cfg, out, **other)


def test_settings_out_of_range_are_refused(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=ldm_mnist"])
    with pytest.raises(ScoregeoError, match="score.train.vae.steps must be at least 1"):
        train_ldm(cfg, tmp_path, **{**TINY, "vae": {"steps": 0}})
    with pytest.raises(ScoregeoError, match="score.train.export_dtype must be float32 or float16"):
        train_ldm(cfg, tmp_path, **{**TINY, "export_dtype": "bfloat16"})
    with pytest.raises(ScoregeoError, match="score.train.unet.model.block_out_channels must be multiples"):
        train_ldm(cfg, tmp_path, **{**TINY, "vae": {**TINY["vae"], "steps": 1},
                                    "unet": {"steps": 1, "model": {"block_out_channels": [12, 16]}}})
