"""Small real inputs the tests make: face photos derived from a public-domain portrait, and bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def astronaut_variants(n: int, size: tuple[int, int] = (96, 96)) -> list[Image.Image]:
    """n distinct face photos derived from scikit-image's public-domain astronaut portrait."""
    from skimage import data

    base = Image.fromarray(data.astronaut())
    out = []
    for i in range(n):
        left, top = 110 + 7 * (i % 5), 5 * (i // 5)
        crop = base.crop((left, top, left + 260, top + 260)).resize(size, Image.LANCZOS)
        if i % 2:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(crop)
    return out


def write_faces(folder: Path, n: int, size: tuple[int, int] = (96, 96), people=("Jane_Doe", "John_Roe")) -> list[str]:
    """An LFW-style person/person_000k.jpg tree; returns the relative paths (the image ids)."""
    ids = []
    for i, image in enumerate(astronaut_variants(n, size)):
        person = people[i % len(people)]
        rel = f"{person}/{person}_{i + 1:04d}.jpg"
        (folder / person).mkdir(parents=True, exist_ok=True)
        image.save(folder / rel, quality=95)
        ids.append(rel)
    return ids


def write_bad_files(folder: Path) -> list[str]:
    """Inputs that must each become an error row: zero bytes, not an image, truncated, 1x1."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[:150])
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    return [f"{folder.name}/{name}" for name in ("empty.jpg", "notes.jpg", "truncated.jpg", "dot.png")]


# Scenes for face-region mode: the astronaut pasted at 280 px, where opencv found both copies at every
# position and background seed tried from 220 px up (it missed one of two at 180 and 200 px).
FACE_SIZE = 280


def textured_background(width: int, height: int, seed: int = 0) -> Image.Image:
    """Seeded noise, lightly blurred: texture with no face in it."""
    rng = np.random.default_rng(seed)
    noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return noise.filter(ImageFilter.GaussianBlur(2))


def astronaut(size: int) -> Image.Image:
    return Image.fromarray(_astronaut_array()).resize((size, size), Image.Resampling.LANCZOS)


def scene(width: int, height: int, size: int, at: tuple[tuple[int, int], ...], seed: int = 0) -> Image.Image:
    img = textured_background(width, height, seed)
    face = astronaut(size)
    for position in at:
        img.paste(face, position)
    return img


def _astronaut_array() -> np.ndarray:
    from skimage import data

    return data.astronaut()
