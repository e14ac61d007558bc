"""Boomerang local sampling for anonymizing face images (Luzi et al., TMLR 2024).

The library half of boomerang: model loading, the sampler, seeding and image handling. It never imports
``pipeline`` or ``evaluation``.

Typical use::

    settings = SamplerSettings(model="/models/sd15", steps=50)
    model = load_model(settings)
    sampler = BoomerangSampler(model, settings)
    img = decode_image(data)
    square, placement = to_model_input(img, model.resolution)
    seed = output_seed(secret, run_seed, image_id, 0.7)  # secret: the run's private random key
    out = sampler([square], 0.7, [make_generator(seed)])
    png = encode_png(from_model_output(out.images[0], placement))
"""

import importlib

# Public name -> the module that defines it, imported on first use: torch and diffusers load only where a model
# runs, so a driver that names models, checks weights and computes seeds starts without them.
_EXPORTS = {
    "ImageError": "imaging",
    "Placement": "imaging",
    "decode_image": "imaging",
    "encode_png": "imaging",
    "from_model_output": "imaging",
    "to_model_input": "imaging",
    "LoadedModel": "loading",
    "PickleRefused": "loading",
    "WeightsNotFound": "loading",
    "load_model": "loading",
    "resolve_model": "loading",
    "weights_sha256": "loading",
    "DEFAULT_FEATHER": "regions",
    "DEFAULT_MARGIN": "regions",
    "FACE_DETECTORS": "regions",
    "FaceBox": "regions",
    "FaceJob": "regions",
    "Region": "regions",
    "RegionSettings": "regions",
    "blend_mask": "regions",
    "cut_region": "regions",
    "detect_faces": "regions",
    "face_jobs": "regions",
    "pack_faces": "regions",
    "paste_regions": "regions",
    "region_for": "regions",
    "BoomerangOutput": "sampler",
    "BoomerangSampler": "sampler",
    "planned_steps": "sampler",
    "make_generator": "seeding",
    "output_seed": "seeding",
    "SamplerSettings": "settings",
    "validate_level": "settings",
    "EnhanceSettings": "tiling",
    "blend_tiles": "tiling",
    "cut_tiles": "tiling",
    "degrade": "tiling",
    "pad_to": "tiling",
    "tile_grid": "tiling",
    "upsample": "tiling",
    "build_tiny_latent_pipeline": "tiny_models",
    "build_tiny_pixel_ddpm": "tiny_models",
    "made_by_boomerang": "tiny_models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anonymize' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"anonymize.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
