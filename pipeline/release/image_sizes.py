"""What a linker holding the originals could still use in a release besides the pixels: image sizes.

Outputs keep their input's width and height (product spec). In a dataset of one size that says nothing;
in a dataset of mixed sizes, a released image whose size no other input has is matched to its source by
its size alone. The gate counts those and says so in both reports.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from pathlib import Path

import pandas as pd

from pipeline.folder import storage

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, without decoding the image; None if it cannot be read."""
    try:
        with open(path, "rb") if storage.is_local(path) else path.open("rb") as handle:
            head = handle.read(24)
    except FileNotFoundError:
        return None
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def image_sizes(root: Path, manifest: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """anon_id -> (width, height) of the images with an ok output among these manifest rows.

    Every image that decoded has an ok output of its own size; one per image is enough to know the sizes.
    """
    ok = manifest[(manifest["status"] == "ok") & manifest["output_path"].notna()].drop_duplicates("anon_id")
    paths = zip(ok["anon_id"].tolist(), ok["output_path"].tolist(), strict=True)
    if storage.is_local(root):
        # Plain strings, not Path objects: pathlib's parsing cost more than the reads at 10^6 images.
        base = os.fspath(root)
        sizes = {a: png_size(os.path.join(base, path)) for a, path in paths}
    else:
        sizes = {a: png_size(root / path) for a, path in paths}
    return {a: size for a, size in sizes.items() if size is not None}


class SizeCounts:
    """Image sizes counted a few shards at a time (all rows of an image are in one shard): `add` each shard's
    manifest rows and the ids it releases, then `unique` says which released images no other input matches.
    Held: a count per size and one released image per size (a size of its own has only one image), not an
    entry per image."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.released: dict[tuple[int, int], str] = {}  # size -> a released image of that size

    def add(self, root: Path, manifest: pd.DataFrame, released_ids) -> None:
        # Every image that decoded has an ok output of its own size: one per image is enough.
        sizes = image_sizes(root, manifest)
        self.counts.update(sizes.values())
        for a in released_ids:
            if a in sizes:
                self.released.setdefault(sizes[a], a)

    def unique(self) -> list[str]:
        """anon_ids of released images whose width and height no other decoded input has."""
        return sorted(a for size, a in self.released.items() if self.counts[size] == 1)


def unique_size_ids(root: Path, manifest: pd.DataFrame, released: pd.DataFrame) -> list[str]:
    """anon_ids of released images whose width and height no other decoded input has (one pass: `SizeCounts`)."""
    counts = SizeCounts()
    counts.add(root, manifest, released["anon_id"])
    return counts.unique()
