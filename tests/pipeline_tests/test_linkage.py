"""Sizes as a linkage route: a released image whose size no other input has can be matched by size alone."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from anonymize import encode_png
from pipeline.release.image_sizes import png_size, unique_size_ids


def test_released_images_of_a_unique_size_are_found(tmp_path):
    sizes = {"a": (64, 48), "b": (64, 48), "c": (50, 70), "d": (33, 33)}
    rows = []
    for anon_id, size in sizes.items():
        path = tmp_path / f"{anon_id}.png"
        path.write_bytes(encode_png(Image.new("RGB", size)))
        assert png_size(path) == size
        rows.append({"anon_id": anon_id, "status": "ok", "output_path": path.name})
    rows.append({"anon_id": "e", "status": "error", "output_path": None})  # never decoded: no size known
    manifest = pd.DataFrame(rows)
    released = pd.DataFrame({"anon_id": ["a", "c", "e"]})
    # a shares its size with b; c is the only 50x70 image; d is unique but withheld.
    assert unique_size_ids(tmp_path, manifest, released) == ["c"]
    (tmp_path / "junk.png").write_bytes(b"not a png")
    assert png_size(tmp_path / "junk.png") is None
