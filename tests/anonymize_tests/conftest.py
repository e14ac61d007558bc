"""Shared fixtures: the tiny models are built once per session and loaded back through ``load_model``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anonymize import (
    BoomerangSampler,
    SamplerSettings,
    build_tiny_latent_pipeline,
    build_tiny_pixel_ddpm,
    load_model,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run these tiny models on one thread, then restore the setting for other test folders.

    On a 2-core machine shared with other work, two OpenMP threads spin-wait on each other: a 10-step
    call took 8.5 s with 2 threads and 0.5 s with 1. The models are too small to gain from threads.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def latent_path(tiny_root):
    return build_tiny_latent_pipeline(tiny_root / "latent", seed=0)


@pytest.fixture(scope="session")
def pixel_path(tiny_root):
    return build_tiny_pixel_ddpm(tiny_root / "pixel", seed=0)


@pytest.fixture(scope="session")
def sampler_for(latent_path, pixel_path):
    """``sampler_for(kind, **settings)`` -> (BoomerangSampler, SamplerSettings), one load per distinct settings."""
    cache = {}

    def make(kind: str = "latent", **fields):
        fields.setdefault("steps", 10)
        key = (kind, tuple(sorted(fields.items())))
        if key not in cache:
            path = latent_path if kind == "latent" else pixel_path
            settings = SamplerSettings(model=str(path), **fields)
            cache[key] = (BoomerangSampler(load_model(settings), settings), settings)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def random_image():
    """``random_image(width, height, seed)`` -> a seeded smooth-ish RGB image (noise plus gradients)."""

    def make(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0 * xx], axis=-1) * 200
        pixels = np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels)

    return make
