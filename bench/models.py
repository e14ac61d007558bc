"""Benchmark models: seeded random-weight Stable-Diffusion-class pipelines, saved like real ones.

- ``medium``: a Stable-Diffusion-class pipeline at 128 px, sized so that one batch takes seconds on a
  2-core CPU (UNet block_out_channels (64, 128, 256) on 32x32x4 latents, a 4x VAE, a 4-layer CLIP
  text encoder). Timings of the pipeline around it are then dominated by the model, as with the real one.
- ``sd15``: the real Stable Diffusion 1.5 architecture (the UNet, VAE and CLIP text encoder configs of
  stable-diffusion-v1-5) with random weights, about 1.07 B parameters and 4.3 GB in float32: realistic
  timings and FLOP counts without the real weights. ``sd15_components(meta=True)`` builds it on the
  meta device, for counting FLOPs without memory or time.

Both reuse the tiny model's scheduler config and hand-made CLIP tokenizer (``anonymize.tiny_models``),
and are written through ``save_pretrained`` with safetensors, so ``boomerang --model FOLDER`` loads
them through the same code path as a real model.

    .venv/bin/python -m bench.models medium   # -> .cache/bench/medium-sd
    .venv/bin/python -m bench.models sd15     # -> .cache/bench/sd15-random (4.3 GB)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from anonymize.tiny_models import build_once, build_tokenizer, save_sd_pipeline

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "bench"

# Stable Diffusion 1.5's component configs (unet/config.json, vae/config.json, text_encoder/config.json
# of stable-diffusion-v1-5), written out because they cannot be downloaded here.
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}

MEDIUM_UNET = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (64, 128, 256),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 256,
    "attention_head_dim": 8,
}
MEDIUM_VAE = {
    "sample_size": 128,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "latent_channels": 4,
}
MEDIUM_TEXT = {
    "vocab_size": 1000,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-5,
}

SPECS = {"medium": (MEDIUM_UNET, MEDIUM_VAE, MEDIUM_TEXT), "sd15": (SD15_UNET, SD15_VAE, SD15_TEXT)}


def components(name: str, seed: int = 0, meta: bool = False, tokenizer=None):
    """(unet, vae, text_encoder) of ``name`` with seeded random weights (or on the meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg, text_cfg = SPECS[name]
    ids = {}
    if tokenizer is not None:
        ids = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    device = torch.device("meta") if meta else torch.device("cpu")
    with device:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_cfg).eval()  # built from a config: starts in train mode
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_cfg).eval()
        torch.manual_seed(seed)
        text = CLIPTextModel(CLIPTextConfig(**text_cfg, **ids)).eval()
    return unet, vae, text


def build(name: str, folder: str | Path | None = None, seed: int = 0) -> Path:
    """Build (once) the ``name`` pipeline in ``folder`` (default .cache/bench/<name>); return the folder."""

    target = Path(folder) if folder else CACHE / {"medium": "medium-sd", "sd15": "sd15-random"}[name]

    def write(staging: Path) -> None:
        tokenizer = build_tokenizer(staging / "_tokenizer_src")
        unet, vae, text = components(name, seed, tokenizer=tokenizer)
        save_sd_pipeline(staging, unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer)

    return build_once(target, write)


def parameter_count(name: str) -> dict[str, int]:
    """Parameters per component, counted on the meta device (no memory, no time)."""
    unet, vae, text = components(name, meta=True)
    return {k: sum(p.numel() for p in m.parameters()) for k, m in (("unet", unet), ("vae", vae), ("text", text))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(SPECS))
    parser.add_argument("--out", help="folder (default .cache/bench/<name>)")
    parser.add_argument("--smoke", action="store_true", help="count the parameters on the meta device only (no build)")
    args = parser.parse_args()
    if not args.smoke:
        print(build(args.name, args.out))
    print(json.dumps(parameter_count(args.name)))


if __name__ == "__main__":
    main()
