"""Sampler settings, validated once where they enter, and the anonymity level check."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

SCHEDULERS = ("dpm++", "ddim", "ddpm")
LATENT_MODES = ("mode", "sample")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class SamplerSettings:
    """Everything that decides how an image is resampled, apart from the level and the seed.

    Defaults are those of the paper's reference notebook (Stable Diffusion 1.5, DPM-Solver++ with 50
    steps over the full schedule, guidance 7.5, prompt "picture of a person", latent mode encoding).

    Attributes:
        model: a Hugging Face hub id or a local diffusers pipeline folder.
        prompt, negative_prompt: text conditioning (ignored by pixel models).
        guidance_scale: classifier-free guidance weight; <= 1 turns guidance off.
        steps: inference steps over the full training schedule; a level L runs about L * steps of them.
        scheduler: "dpm++" (DPM-Solver++ multistep), "ddim", or "ddpm" (ancestral, stochastic).
        resolution: side of the square the model runs at; None = the model's native size.
        latent: "mode" encodes with the VAE posterior mode (the paper's notebook), "sample" draws
            from it (as diffusers img2img does).
        allow_pickle: allow loading pickle (.bin/.ckpt) weights, which can run code when loaded.
        device: torch device; None = "cuda" if available, else "cpu".
        dtype: "float32", "float16" or "bfloat16"; None = float16 on CUDA, float32 on CPU.
        revision: hub revision (branch, tag or commit) for hub ids.
        model_batch: None runs each call's images as one batch. An integer runs every model call on
            exactly that many images, padding the last one, so an image's bytes never depend on how
            many images came with it: batched float kernels differ by ~1e-6 between batch sizes,
            which flips a few uint8 roundings. It is part of the settings, like the device.
    """

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    prompt: str = "picture of a person"
    negative_prompt: str = ""
    guidance_scale: float = 7.5
    steps: int = 50
    scheduler: str = "dpm++"
    resolution: int | None = None
    latent: str = "mode"
    allow_pickle: bool = False
    device: str | None = None
    dtype: str | None = None
    revision: str | None = None
    model_batch: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a hub id or a folder path, got {self.model!r}")
        for name in ("prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, Real) or not math.isfinite(g) or g < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {g!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        r = self.resolution
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 8 or r % 8):
            raise ValueError(f"resolution must be None or a multiple of 8 that is >= 8, got {r!r}")
        if self.latent not in LATENT_MODES:
            raise ValueError(f"latent must be one of {', '.join(LATENT_MODES)}, got {self.latent!r}")
        if not isinstance(self.allow_pickle, bool):
            raise ValueError(f"allow_pickle must be True or False, got {self.allow_pickle!r}")
        if self.device is not None and (not isinstance(self.device, str) or not self.device):
            raise ValueError(f"device must be None or a torch device name, got {self.device!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be None or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        b = self.model_batch
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"model_batch must be None or an integer >= 1, got {b!r}")
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision):
            raise ValueError(f"revision must be None or a branch, tag or commit, got {self.revision!r}")


def validate_level(level: object) -> float:
    """Return ``level`` as a float if it is a number in (0, 1]; raise ValueError otherwise.

    The level is t_boom / T: 1 is ordinary sampling from pure noise, small levels stay close to the input.
    """
    if isinstance(level, bool) or not isinstance(level, Real):
        raise ValueError(f"level must be in (0, 1], got {level!r}")
    value = float(level)
    if not (0.0 < value <= 1.0):  # also false for NaN
        raise ValueError(f"level must be in (0, 1], got {value!r}")
    return value
