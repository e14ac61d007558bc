"""`boomerang demo`: the whole job offline, on sample faces with tiny random-weight models.

Everything it needs is made on first use under a cache folder ($BOOMERANG_CACHE, default
~/.cache/boomerang/demo): sample faces derived from scikit-image's public-domain astronaut photo, a tiny
seeded Stable-Diffusion-class pipeline, and seeded random-weight deepface recognizers. Every artifact of a
demo run says that its numbers are not meaningful.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from anonymize import build_tiny_latent_pipeline
from evaluation import write_random_weights
from pipeline.settings.config import JobSettings, build_settings

DEMO_LEVELS = (0.3, 0.6, 0.9)
DEMO_RECOGNIZERS = ("VGG-Face", "Facenet")


def cache_dir() -> Path:
    return Path(os.environ.get("BOOMERANG_CACHE", Path.home() / ".cache" / "boomerang")).expanduser() / "demo"


def demo_settings(out: str, *, address: str | None = None, overwrite: bool = False) -> JobSettings:
    root = cache_dir()
    faces = write_sample_faces(root / "faces")
    model = build_tiny_latent_pipeline(root / "tiny-sd")
    write_random_weights(root / "deepface", DEMO_RECOGNIZERS, engine="pytorch")
    return build_settings(
        {
            "input": str(faces),
            "out": out,
            "address": address,
            "overwrite": overwrite,
            "levels": DEMO_LEVELS,
            "model": str(model),
            "steps": 20,
            "recognizers": DEMO_RECOGNIZERS,
            "deepface_home": str(root / "deepface"),
            "demo": True,
            "batch_size": 4,
        }
    )


def write_sample_faces(folder: Path) -> Path:
    """An LFW-style person/image tree of face photos, one photo with no face, and one broken file."""
    marker = folder / ".complete"
    if marker.exists():
        return folder
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    face_box = (120, 0, 370, 250)  # the portrait's head and shoulders, 250x250 like LFW
    variants = {
        "Sample_Person_A/Sample_Person_A_0001.jpg": astronaut.crop(face_box),
        "Sample_Person_A/Sample_Person_A_0002.jpg": ImageOps.mirror(astronaut.crop(face_box)),
        "Sample_Person_A/Sample_Person_A_0003.jpg": ImageEnhance.Brightness(astronaut.crop((100, 0, 400, 300))).enhance(
            1.2
        ),
        "Sample_Person_B/Sample_Person_B_0001.jpg": astronaut.crop((130, 10, 360, 240)).resize((317, 411)),
        "Sample_Person_B/Sample_Person_B_0002.png": ImageEnhance.Color(astronaut.crop(face_box)).enhance(0.3),
        "Sample_Person_C/Sample_Person_C_0001.jpg": astronaut.resize((256, 256)),
    }
    coffee = Image.fromarray(data.coffee()).resize((300, 200))
    for rel, image in variants.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.convert("RGB").save(path)
    (folder / "No_Face").mkdir(parents=True, exist_ok=True)
    coffee.save(folder / "No_Face" / "coffee_cup.jpg")
    (folder / "Broken").mkdir(parents=True, exist_ok=True)
    (folder / "Broken" / "truncated.jpg").write_bytes((folder / "No_Face" / "coffee_cup.jpg").read_bytes()[:200])
    marker.write_text(str(np.__version__))
    return folder


def cmd_demo(args) -> int:
    """`boomerang demo --out DIR`: the whole job on bundled sample faces with tiny models, offline."""
    from pipeline.commands.common import run_job
    from pipeline.commands.run import default_work
    from pipeline.settings.fingerprint import ANONYMIZE_AND_EVALUATE

    return run_job(
        demo_settings(args.out, address=args.address, overwrite=args.overwrite), ANONYMIZE_AND_EVALUATE, default_work
    )
