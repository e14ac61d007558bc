"""Small seeded random-weight diffusers models, for tests and the offline demo.

They have the architecture of the real thing (a Stable-Diffusion-class latent pipeline, a pixel DDPM) so
the real loading and sampling code runs end to end without network, but their weights are random:
outputs are noise-like and mean nothing.

Sizes, chosen to be cheap on a CPU:

- latent: AutoencoderKL with two blocks (VAE scale factor 2) and a UNet2DConditionModel on 32x32x4
  latents, so the native resolution is 64 px. A 4x VAE with 16x16 latents would make the UNet cheaper,
  but the UNet is already tiny and a third VAE block costs about as much as it saves.
- pixel: UNet2DModel on 32x32 RGB, native resolution 32 px.

Each component is built right after ``torch.manual_seed(seed)``, so a folder is reproducible from its seed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# The latent pipeline's scheduler config is that of Stable Diffusion 1.5; the loader swaps the scheduler
# class but keeps this config, as it does for the real model.
_SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}

# A few BPE merges so that the default prompt is not spelled out byte by byte.
_MERGES = [
    ("p", "e"),
    ("r", "s"),
    ("o", "n</w>"),
    ("pe", "rs"),
    ("pers", "on</w>"),
    ("o", "f</w>"),
    ("t", "u"),
    ("r", "e</w>"),
    ("p", "i"),
    ("c", "tu"),
    ("pi", "ctu"),
    ("pictu", "re</w>"),
]


def build_tiny_latent_pipeline(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build (once) a tiny Stable-Diffusion-class pipeline at ``path``; return the folder.

    If ``path`` already holds a complete pipeline it is returned untouched.
    """

    def build(folder: Path) -> None:
        # Imported here, when a model is built: a cached folder is returned without torch or diffusers.
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        ).eval()
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            sample_size=64,
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
        ).eval()
        tokenizer = build_tokenizer(folder / "_tokenizer_src")
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                hidden_size=32,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=5,
                vocab_size=1000,
                max_position_embeddings=77,
            )
        ).eval()
        save_sd_pipeline(folder, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)

    return build_once(Path(path), build)


def build_tiny_pixel_ddpm(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build (once) a tiny pixel-space DDPM (UNet2DModel + DDPMScheduler) at ``path``; return the folder.

    If ``path`` already holds a complete pipeline it is returned untouched.
    """

    def build(folder: Path) -> None:
        import torch
        from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        ).eval()
        scheduler = DDPMScheduler(num_train_timesteps=1000)
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)

    return build_once(Path(path), build)


def save_sd_pipeline(folder: Path, *, unet, vae, text_encoder, tokenizer) -> None:
    """Assemble a StableDiffusionPipeline from built components and save it (safetensors) into ``folder``.

    The scheduler is Stable Diffusion 1.5's own; the tokenizer's source files (from ``build_tokenizer``)
    are removed. Shared by the tiny model and the benchmark models.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(_SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    shutil.rmtree(folder / "_tokenizer_src", ignore_errors=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    # Stable Diffusion 1.5's own scheduler file names no timestep_spacing, so a scheduler built from it
    # takes its class default (DPM-Solver: "linspace", DDIM: "leading"); write the same file here so
    # the models' grids are those of the real one.
    config = {"_class_name": "PNDMScheduler", **_SD15_SCHEDULER, "trained_betas": None}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")


def build_tokenizer(folder: Path):
    """A CLIP BPE tokenizer from a hand-made vocabulary (transformers ships no CLIP vocab files).

    Written as vocab.json/merges.txt and read back with ``from_pretrained``, which works on
    transformers 4 and 5 alike (transformers 5 ignores ``vocab_file=`` in the constructor).
    """
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2's ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return list(symbols.values())


def _is_complete(folder: Path) -> bool:
    """True when model_index.json exists and every component it names has its folder with a config."""
    index = folder / "model_index.json"
    if not index.is_file():
        return False
    spec = json.loads(index.read_text(encoding="utf-8"))
    components = [k for k, v in spec.items() if not k.startswith("_") and isinstance(v, list) and v[0]]
    return all(any((folder / name).glob("*.json")) for name in components)


# Marks a model folder this module made: outputs made with it carry a "not meaningful" notice.
RANDOM_WEIGHTS_MARKER = "BOOMERANG_RANDOM_WEIGHTS.txt"


def made_by_boomerang(folder: str | os.PathLike) -> bool:
    """True for a model folder with the seeded random weights this module builds."""
    return (Path(folder) / RANDOM_WEIGHTS_MARKER).is_file()


def _mark(folder: Path) -> Path:
    marker = folder / RANDOM_WEIGHTS_MARKER
    if not marker.exists():
        marker.write_text("Seeded random weights made by boomerang for tests and the demo; not a real model.\n")
    return folder


def build_once(folder: Path, build) -> Path:
    """Build into a temporary sibling and rename it into place, so a folder is either complete or absent.

    Several processes (Ray actors, test workers) may race to build the same folder; the loser of the
    rename uses the winner's copy.
    """
    if _is_complete(folder):
        return _mark(folder)
    from anonymize.loading import quiet_progress_bars

    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists but does not hold a complete model; remove it or pick another")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with quiet_progress_bars():
            build(staging)
        _mark(staging)
        if folder.exists():
            folder.rmdir()  # empty, checked above
        os.replace(staging, folder)
    except OSError:
        if not _is_complete(folder):
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
