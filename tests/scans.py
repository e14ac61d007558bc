"""What an attacker reads: every byte and every Parquet cell outside private/, and the images in a page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pyarrow.parquet as pq


def public_files(out: Path) -> list[Path]:
    """Every file of a run folder outside private/ (Parquet part files included)."""
    return [p for p in out.rglob("*") if p.is_file() and "private" not in p.relative_to(out).parts]


def leaks(out: Path, needles: list[str]) -> list[tuple[str, str]]:
    """(file, needle) for each needle found in the raw bytes of a public file or in any Parquet cell.

    Parquet pages are compressed, so a byte search alone could miss a string: cells are read too.
    """
    found = []
    for path in public_files(out):
        blob = path.read_bytes()
        texts = [blob.decode("utf-8", "replace")]
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            texts += [str(v) for column in table.columns for v in column.to_pylist()]
            texts += [str(table.schema.metadata or "")]
        for needle in needles:
            if any(needle in text for text in texts) or needle.encode() in blob:
                found.append((str(path.relative_to(out)), needle))
    return found


_DATA_URI = re.compile(r"data:image/([a-z+]+);base64,([A-Za-z0-9+/=]+)")


def embedded_images(html: str) -> list[tuple[str, bytes]]:
    """(format, bytes) of every image embedded in an HTML page as a data URI."""
    return [(kind, base64.b64decode(data)) for kind, data in _DATA_URI.findall(html)]
