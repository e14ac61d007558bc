"""Image bytes in, model-sized squares, and clean PNG bytes out.

Decoding (``decode_image``): any format Pillow reads, to 8-bit RGB.

- EXIF orientation is applied, so the image is upright as a viewer shows it.
- Transparency (RGBA, LA, PA, palette or RGB/L with a transparent colour) is composited onto white:
  transparent pixels have no defined colour, and white is what most viewers show behind them.
- CMYK and other colour modes go through Pillow's own conversion; embedded ICC profiles are not applied.
- 16-bit and 32-bit integer greys ("I;16*", "I") are read as 0..65535 and scaled to 0..255; float greys
  ("F") as 0..1 if all values lie there, else 0..255 (clipped).
- An animated image gives its first frame.
- Rejected with ``ImageError`` (one line): empty or non-image bytes, truncated or corrupt files, images
  smaller than 8x8, and images with more than ``max_pixels`` pixels (checked from the header, before the
  pixels are decoded, against decompression bombs).

Size rule (``to_model_input`` / ``from_model_output``): the image is scaled, aspect ratio kept, with
Lanczos, so that its longer side equals the model resolution; the shorter side is then padded
symmetrically to a square by reflecting the image at its edges (reflection, unlike a flat colour, gives
the model a plausible continuation rather than a border to reproduce). After sampling the padded bands
are cropped away and the rest is resized with Lanczos back to the input's exact width and height.

Encoding (``encode_png``): PNG with no metadata at all (no EXIF, ICC profile or text chunks).
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 8


class ImageError(ValueError):
    """An input that cannot be used as an image; the message is one line and says why.

    ``reason`` is a short code and ``summary`` a fixed text for it, with no detail from the file (sizes,
    decoder messages): what a shareable table may say about the failure.
    """

    SUMMARIES = {
        "empty": "image file is empty",
        "not_an_image": "not an image (format not recognised)",
        "too_large": "image is larger than the pixel limit",
        "corrupt": "image is truncated or corrupt",
        "too_small": f"image is smaller than {MIN_SIDE}x{MIN_SIDE} pixels",
        "bad_mode": "image mode cannot be converted to RGB",
    }

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason if reason in self.SUMMARIES else "corrupt"

    @property
    def summary(self) -> str:
        return self.SUMMARIES[self.reason]


@dataclass(frozen=True)
class Placement:
    """Where an input image sits inside the model's square, to undo it after sampling."""

    width: int  # the input's size
    height: int
    scaled_width: int  # the input's size after scaling, before padding
    scaled_height: int
    left: int  # padding before the image, in model pixels
    top: int
    resolution: int


def decode_image(data: bytes, max_pixels: int = 50_000_000) -> Image.Image:
    """Decode image bytes to an upright 8-bit RGB ``PIL.Image`` (rules in the module docstring).

    Raises:
        ImageError: the bytes are empty, not an image, truncated, too small or too large.
    """
    if not data:
        raise ImageError("image is empty (0 bytes)", "empty")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its own limit and twice that; make every bomb an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height}, more than the limit of {max_pixels} pixels", "too_large")
            img.load()  # first frame only for animations: Image.open leaves it on frame 0
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (format not recognised)", "not_an_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image is too large to decode safely: {_one_line(e)}", "too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        # Pillow reports truncated and corrupt files with any of these, depending on the format.
        raise ImageError(f"image is truncated or corrupt: {_one_line(e)}", "corrupt") from None
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"image is {width}x{height}; at least {MIN_SIDE}x{MIN_SIDE} pixels are needed", "too_small")
    # A broken EXIF block should not cost the image: keep it as stored.
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        img = ImageOps.exif_transpose(img)
    try:
        return _to_rgb(img)
    except (OSError, ValueError) as e:
        raise ImageError(f"image mode {img.mode} cannot be converted to RGB: {_one_line(e)}", "bad_mode") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (rules in the module docstring)."""
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
            scale = 255.0 if values.min() >= 0.0 and values.max() <= 1.0 else 1.0
            grey = np.clip(values * scale, 0, 255)
        else:
            grey = np.clip(values, 0, 65535) / 257.0
        return Image.fromarray(np.rint(grey).astype(np.uint8)).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img.copy()  # detached from the file, without its info dict
    return img.convert("RGB")


def to_model_input(img: Image.Image, resolution: int) -> tuple[Image.Image, Placement]:
    """Scale ``img`` so its longer side is ``resolution`` and reflect-pad it to a square.

    Returns the ``resolution`` x ``resolution`` RGB image and the ``Placement`` that undoes it.
    """
    width, height = img.size
    scale = resolution / max(width, height)
    scaled_w = max(1, min(resolution, round(width * scale)))
    scaled_h = max(1, min(resolution, round(height * scale)))
    scaled = img.convert("RGB")
    if (scaled_w, scaled_h) != (width, height):
        scaled = scaled.resize((scaled_w, scaled_h), Image.Resampling.LANCZOS)
    left = (resolution - scaled_w) // 2
    top = (resolution - scaled_h) // 2
    pad = ((top, resolution - scaled_h - top), (left, resolution - scaled_w - left), (0, 0))
    # numpy reflects repeatedly when a pad is wider than the image (a 40x9 strip at 64 px).
    square = np.pad(np.asarray(scaled), pad, mode="reflect")
    placement = Placement(width, height, scaled_w, scaled_h, left, top, resolution)
    return Image.fromarray(square), placement


def from_model_output(img: Image.Image, placement: Placement) -> Image.Image:
    """Crop the padding away from a model-sized output and resize it to the input's width and height."""
    p = placement
    if img.size != (p.resolution, p.resolution):
        raise ValueError(f"expected a {p.resolution}x{p.resolution} model output, got {img.size[0]}x{img.size[1]}")
    cropped = img.convert("RGB").crop((p.left, p.top, p.left + p.scaled_width, p.top + p.scaled_height))
    if cropped.size == (p.width, p.height):
        return cropped
    return cropped.resize((p.width, p.height), Image.Resampling.LANCZOS)


def encode_png(img: Image.Image) -> bytes:
    """Encode ``img`` as PNG bytes with no metadata (no EXIF, ICC profile, text or time chunks)."""
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGB")
    # A fresh image from raw pixels carries no info dict, so nothing from the source can leak through.
    clean = Image.frombytes(img.mode, img.size, img.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
