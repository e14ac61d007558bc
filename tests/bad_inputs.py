"""A corpus of bad and unusual input files, made on the fly, each with what the pipeline must do with it.

`write_corpus(folder)` returns {image id: expected}, where expected is "error" (the file must become
its own error row) or the (width, height) the anonymized output must have (a correct output: the
input's upright size, whatever its mode, rotation or animation).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from samples import astronaut_variants


def _face(size=(80, 60), mode: str = "RGB") -> Image.Image:
    return astronaut_variants(1, size)[0].convert(mode)


def _bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height, with no pixel data (a lying header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _exif_rotated(orientation: int) -> bytes:
    """An 80x40 JPEG whose EXIF orientation says to rotate it (viewers show it 40x80 for 6 and 8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _bytes(_face((80, 40)), "JPEG", exif=exif.tobytes())


def write_corpus(folder: Path) -> dict[str, str | tuple[int, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    jpeg, png = _bytes(_face(), "JPEG", quality=90), _bytes(_face(), "PNG")
    files: dict[str, tuple[bytes, str | tuple[int, int]]] = {
        "good.jpg": (jpeg, (80, 60)),
        "zero_bytes.jpg": (b"", "error"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "error"),
        "truncated.png": (png[: len(png) // 2], "error"),
        "text_named.jpg": (b"just some text, not an image\n" * 10, "error"),
        # 1-bit 12000x12000: 144 Mpx (over the 50 Mpx default limit) in a few kB of PNG.
        "bomb.png": (_bytes(Image.new("1", (12000, 12000)), "PNG"), "error"),
        "one_pixel.png": (_bytes(Image.new("RGB", (1, 1)), "PNG"), "error"),
        "huge_header.png": (png_header_only(20000, 20000), "error"),
        "cmyk.jpg": (_bytes(_face(mode="CMYK"), "JPEG"), (80, 60)),
        "sixteen_bit.png": (_bytes(_sixteen_bit(), "PNG"), (80, 60)),
        "palette_transparent.png": (_bytes(_palette_transparent(), "PNG", transparency=0), (80, 60)),
        "animated.gif": (_animated_gif(), (80, 60)),
        "exif_rotate_90.jpg": (_exif_rotated(6), (40, 80)),
        "exif_rotate_270.jpg": (_exif_rotated(8), (40, 80)),
        "exif_rotate_180.jpg": (_exif_rotated(3), (80, 40)),
        "long_" + "n" * 240 + ".jpg": (jpeg, (80, 60)),  # 249 bytes: near the 255-byte name limit
    }
    expected = {}
    for name, (data, outcome) in files.items():
        (folder / name).write_bytes(data)
        expected[name] = outcome
    # A name that is not UTF-8 (bytes path): its own error row, under an escaped id.
    with open(os.fsencode(folder) + b"/latin1_\xe9.jpg", "wb") as handle:
        handle.write(jpeg)
    expected["latin1_\\xe9.jpg"] = "error"
    # Symlinks: a directory loop (must not be followed forever), a file linking to itself, a dangling one.
    (folder / "loop").symlink_to(".", target_is_directory=True)
    (folder / "self_loop.jpg").symlink_to("self_loop.jpg")
    (folder / "dangling.jpg").symlink_to("does_not_exist.jpg")
    expected["self_loop.jpg"] = "error"
    expected["dangling.jpg"] = "error"
    return expected


def _sixteen_bit() -> Image.Image:
    grey = np.asarray(_face(mode="L"), dtype=np.uint16) * 257
    return Image.fromarray(grey)  # mode "I;16"


def _palette_transparent() -> Image.Image:
    return _face().quantize(16)  # saved with transparency=0: palette entry 0 is see-through


def _animated_gif() -> bytes:
    frames = [_face().quantize(32), _face().transpose(Image.FLIP_TOP_BOTTOM).quantize(32)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def duplicate_id_parquet(path: Path) -> dict[str, str | tuple[int, int]]:
    """A Parquet input with ids a, b, b, c: the twins must each become an error row, a and c outputs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    jpeg = _bytes(_face(), "JPEG")
    table = pa.table({"id": ["a", "b", "b", "c"], "image": [jpeg, jpeg, jpeg, jpeg]})
    pq.write_table(table, path)
    return {"a": (80, 60), "b#1": "error", "b#2": "error", "c": (80, 60)}
