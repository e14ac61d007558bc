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

from anonymize.imaging import ImageError, Placement, decode_image, encode_png, from_model_output, to_model_input
from anonymize.loading import LoadedModel, PickleRefused, WeightsNotFound, load_model, resolve_model, weights_sha256
from anonymize.regions import (
    DEFAULT_FEATHER,
    DEFAULT_MARGIN,
    FACE_DETECTORS,
    FaceBox,
    FaceJob,
    Region,
    RegionSettings,
    blend_mask,
    cut_region,
    detect_faces,
    face_jobs,
    pack_faces,
    paste_regions,
    region_for,
)
from anonymize.sampler import BoomerangOutput, BoomerangSampler, planned_steps
from anonymize.seeding import make_generator, output_seed
from anonymize.settings import SamplerSettings, validate_level
from anonymize.tiling import EnhanceSettings, blend_tiles, cut_tiles, degrade, pad_to, tile_grid, upsample
from anonymize.tiny_models import build_tiny_latent_pipeline, build_tiny_pixel_ddpm, made_by_boomerang

__all__ = [
    "BoomerangOutput",
    "BoomerangSampler",
    "DEFAULT_FEATHER",
    "DEFAULT_MARGIN",
    "EnhanceSettings",
    "FACE_DETECTORS",
    "FaceBox",
    "FaceJob",
    "ImageError",
    "LoadedModel",
    "PickleRefused",
    "Placement",
    "Region",
    "RegionSettings",
    "SamplerSettings",
    "WeightsNotFound",
    "blend_mask",
    "blend_tiles",
    "build_tiny_latent_pipeline",
    "build_tiny_pixel_ddpm",
    "cut_region",
    "cut_tiles",
    "degrade",
    "decode_image",
    "detect_faces",
    "encode_png",
    "face_jobs",
    "from_model_output",
    "load_model",
    "made_by_boomerang",
    "make_generator",
    "output_seed",
    "pack_faces",
    "pad_to",
    "paste_regions",
    "planned_steps",
    "region_for",
    "resolve_model",
    "tile_grid",
    "to_model_input",
    "upsample",
    "validate_level",
    "weights_sha256",
]
