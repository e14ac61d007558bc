"""Whether the run folder's commits landed: a store may answer a write and never keep it.

An object store behind a faulty gateway or proxy, or a misbehaving S3-compatible server, can acknowledge a PUT
(200, an ETag) and lose it. A batch's parts and a shard's compaction are commits that later steps build on, so
a lost one must be noticed before it is built on:

- The run's secret, the shard cut and each shard file are read back once written (pipeline.folder.read_back).
- At the end of a pass (`check_pass`) every pair the pass planned must have its manifest row, its distance
  rows (evaluated jobs) and, for an `ok` row, its image. A pair without its distances, or whose image is
  missing (its manifest row is then forgotten), is redone by the next run; the pass stops in one line (exit
  status 1, resumable), never reporting a finished job with rows missing.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.read_back import LostWrite
from pipeline.folder.storage import Location
from pipeline.tables.compaction import forget_pairs
from pipeline.tables.markers import level_key
from pipeline.tables.read import read_shard


def check_pass(layout: RunLayout, expected: Iterable[tuple[int, set[tuple[str, float]]]], *, evaluated: bool) -> None:
    """Raise LostWrite, in one line, when pairs this pass planned have no manifest row, no distance rows
    (evaluated jobs) or, with an `ok` row, no image: their writes were lost. Pairs whose image is missing
    lose their rows (pipeline.tables.compaction.forget_pairs), so that the next run redoes every such pair.
    `expected`: (shard, its pairs) in shard order, one shard's pairs held at a time."""
    missing: set[tuple[str, float]] = set()
    no_image: set[tuple[str, float]] = set()
    images: dict[str, set[str]] = {}  # a folder of outputs (relative to the run) -> its file names
    for shard, pairs in expected:
        pairs = {(a, level_key(lv)) for a, lv in pairs}
        manifest = read_shard(layout.manifest, shard, ["anon_id", "level", "status", "output_path"])
        rows = _keys(manifest) if manifest is not None else {}
        missing |= pairs - set(rows)
        if evaluated:
            distances = read_shard(layout.distances, shard, ["anon_id", "level"])
            missing |= pairs - (set(_keys(distances)) if distances is not None else set())
        for key in pairs & set(rows):
            status, output = rows[key]
            if status != "ok" or not output:
                continue
            if not _has_image(layout, output, images):
                no_image.add(key)
    if no_image:
        forget_pairs(layout, no_image)
    lost = missing | no_image
    if lost:
        raise LostWrite(
            f"{len(lost)} pair(s) finished but the store does not have all their rows or images (lost writes); "
            "run the same command again to redo them"
        )


def _keys(frame) -> dict[tuple[str, float], tuple[str | None, str | None]]:
    """(anon_id, level) -> (status, output path) of each row (None where the frame lacks the column)."""
    levels = [level_key(v) for v in frame["level"].tolist()]
    none = [None] * len(levels)
    status = frame["status"].tolist() if "status" in frame else none
    output = frame["output_path"].tolist() if "output_path" in frame else none
    keys = zip(frame["anon_id"].tolist(), levels, strict=True)
    return dict(zip(keys, zip(status, output, strict=True), strict=True))


def _has_image(layout: RunLayout, output: str, listings: dict[str, set[str]]) -> bool:
    """Whether the output file is there: on a local disk asked file by file (a level's folder can hold 10^7
    names); on an object store from one listing per folder, kept in `listings` (a HEAD per key costs more)."""
    if storage.is_local(layout.root):
        return (layout.root / output).is_file()
    folder, _, name = output.rpartition("/")
    if folder not in listings:
        listings[folder] = _names(layout.root / folder if folder else layout.root)
    return name in listings[folder]


def _names(folder: Location) -> set[str]:
    """The file names in a folder (one listing; none if it is not there)."""
    if storage.is_local(folder):
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    try:
        return {name.rsplit("/", 1)[-1] for name in folder.fs.ls(folder.path, detail=False)}
    except FileNotFoundError:
        return set()
