"""A tiny, randomly initialised Stable Diffusion saved in diffusers' folder layout.

``build_tiny_sd(folder)`` builds a UNet2DConditionModel, an AutoencoderKL and a scheduler
configuration from config dicts and writes them with ``save_pretrained`` into
``folder/{unet,vae,scheduler}``, exactly the layout of a real diffusers checkpoint, so that
the code under test loads it through the same ``from_pretrained`` path as real weights.
Shapes: 64x64 RGB images, 4x16x16 latents (the VAE downsamples by 4), SD's own noise
schedule (scaled_linear, 0.00085 to 0.012, 1000 steps) and a PNDM scheduler config as
shipped with SD 2.1-base.

The folder has no text encoder (transformers is an optional extra and a CLIP model would
dwarf the rest). Instead it holds ``empty_prompt_embeds.safetensors``: the conditioning
that a text encoder would produce for the empty prompt, here a random tensor of the shape
a CLIP encoder gives, (1, 77, cross_attention_dim). It is random rather than zero on
purpose: zero keys and values would switch the cross-attention layers off (the value
projection has no bias), so a bug that dropped or mis-shaped the conditioning would go
unnoticed; a zero-free embedding makes every cross-attention layer contribute.

``make_image_pairs(root, names)`` writes small, structured test images (coloured discs
and squares on gradients, 80x64 so that the centre crop matters) in MorphBench's layout.

Run as a script to set up the tiny experiment on a fresh clone:

    python tests/sd_tiny.py /tmp/sd_tiny
    scoregeo run experiment=sd_tiny score.pretrained=/tmp/sd_tiny/model dataset.root=/tmp/sd_tiny/pairs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import scoregeo_cli  # noqa: F401  (repairs the torchvision import before diffusers)

EMPTY_PROMPT_FILE = "empty_prompt_embeds.safetensors"
CROSS_ATTENTION_DIM = 16
TEXT_LENGTH = 77

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
    cross_attention_dim=CROSS_ATTENTION_DIM, attention_head_dim=4,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)


def build_tiny_sd(folder: str | Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a random tiny SD (unet/, vae/, scheduler/, empty-prompt embedding) to folder."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    vae = AutoencoderKL(**VAE_CONFIG)
    scheduler = PNDMScheduler(**{**SCHEDULER_CONFIG, "prediction_type": prediction_type})
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    scheduler.save_pretrained(folder / "scheduler")
    g = torch.Generator().manual_seed(seed + 1)
    embeds = torch.randn(1, TEXT_LENGTH, CROSS_ATTENTION_DIM, generator=g)
    save_file({"prompt_embeds": embeds.contiguous()}, str(folder / EMPTY_PROMPT_FILE))
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "note": "tiny random test model, not trained"}) + "\n")
    return folder


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2, CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def add_tiny_text_encoder(folder: str | Path, seed: int = 0) -> Path:
    """Add a random tiny CLIP text encoder and tokenizer (needs transformers) to a tiny SD folder.

    The tokenizer knows single bytes only (no merges), enough to turn any prompt into ids;
    the encoder is a 2-layer CLIPTextModel with hidden size CROSS_ATTENTION_DIM.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    tok_dir = folder / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"),
                  model_max_length=TEXT_LENGTH).save_pretrained(tok_dir)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=CROSS_ATTENTION_DIM, intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=TEXT_LENGTH,
                            bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    return folder


def _image(rng: np.random.Generator, width: int, height: int, shape: str) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ramp = (xx / width)[..., None]
    img = (1 - ramp) * c0 + ramp * c1
    cx, cy = rng.uniform(0.35, 0.65) * width, rng.uniform(0.3, 0.7) * height
    r = rng.uniform(0.15, 0.3) * height
    mask = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) if shape == "disc" else \
        ((abs(xx - cx) <= r) & (abs(yy - cy) <= r))
    img[mask] = rng.uniform(0, 255, 3)
    return img.clip(0, 255).astype(np.uint8)


def make_image_pairs(root: str | Path, names: tuple[str, ...] = ("Metamorphosis/disc", "Animation/square"),
                     width: int = 80, height: int = 64, seed: int = 0) -> Path:
    """Write <root>/<name>_0.png and <name>_1.png for each name (MorphBench layout)."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in names:
        shape = "disc" if "disc" in name else "square"
        for side in (0, 1):
            path = root / f"{name}_{side}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(rng, width, height, shape)).save(path)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random SD and two image pairs.")
    parser.add_argument("out", type=Path, help="folder; gets model/ and pairs/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = build_tiny_sd(args.out / "model", seed=args.seed)
    pairs = make_image_pairs(args.out / "pairs", seed=args.seed)
    print(f"scoregeo run experiment=sd_tiny score.pretrained={model} dataset.root={pairs}")


if __name__ == "__main__":
    main()
