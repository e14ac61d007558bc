"""Whether the run folder's commits landed: a store may answer a write and never keep it.

An object store behind a faulty gateway or proxy, or a misbehaving S3-compatible server, can acknowledge a PUT
(200, an ETag) and lose it. A batch's parts and a shard's compaction are commits that later steps build on, so
a lost one must be noticed before it is built on:

- The run's secret and the shard cut (`_shards.json`), which every later run needs, are read back once written.
- A shard file (pipeline.records.compact_shard) is read back (its Parquet footer: rows and metadata, which
  names the batch parts it absorbed and, for the manifest, the shard's marker) before the parts it merged are
  deleted; a write that did not land is made again, and after `TRIES` the job stops with its parts kept.
- At the end of a pass (`check_pass`) every pair the pass planned must have its manifest row, its distance
  rows (evaluated jobs) and, for an `ok` row, its image. A pair without its distances, or whose image is
  missing (its manifest row is then forgotten), is redone by the next run; the pass stops in one line (exit
  status 1, resumable), never reporting a finished job with rows missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyarrow as pa

from . import storage
from .layout import RunLayout
from .storage import Location

TRIES = 3


class LostWrite(OSError):
    """The store acknowledged a write of the run folder and does not have it."""


def _landed(path: Location, table: pa.Table) -> bool:
    try:
        found = storage.parquet_file(path)
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return False
    return found.metadata.num_rows == table.num_rows and (found.schema_arrow.metadata or {}) == (
        table.schema.metadata or {}
    )


def write_table_checked(write: Callable[[pa.Table, Location], None], table: pa.Table, path: Location) -> None:
    """`write(table, path)`, then read its footer back; written again up to TRIES times if it did not land."""
    for _ in range(TRIES):
        write(table, path)
        if _landed(path, table):
            return
    raise LostWrite(
        f"the store acknowledged {path.parent.name}/{path.name} {TRIES} times and does not have it; "
        "the store loses writes (check it, or the proxy or gateway in front of it)"
    )


def write_bytes_checked(write: Callable[[Location, bytes], None], path: Location, data: bytes) -> None:
    """`write(path, data)` for a small file a later run cannot do without (the run's secret, the shard cut),
    then read it back; written again up to TRIES times if it did not land."""
    for _ in range(TRIES):
        write(path, data)
        try:
            if path.read_bytes() == data:
                return
        except FileNotFoundError:
            pass
    raise LostWrite(
        f"the store acknowledged {path.parent.name}/{path.name} {TRIES} times and does not have it; "
        "the store loses writes (check it, or the proxy or gateway in front of it)"
    )


def check_pass(layout: RunLayout, expected: dict[int, set[tuple[str, float]]], *, evaluated: bool) -> None:
    """Raise LostWrite, in one line, when pairs this pass planned have no manifest row, no distance rows
    (evaluated jobs) or, with an `ok` row, no image: their writes were lost. Pairs whose image is missing
    lose their rows (pipeline.records.forget_pairs), so that the next run redoes every such pair."""
    from .records import forget_pairs, read_shard

    missing: set[tuple[str, float]] = set()
    no_image: set[tuple[str, float]] = set()
    images: dict[str, set[str]] = {}  # a folder of outputs (relative to the run) -> its file names
    for shard, pairs in sorted(expected.items()):
        pairs = {(a, _level_key(lv)) for a, lv in pairs}
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
            folder, _, name = output.rpartition("/")
            if folder not in images:
                images[folder] = _names(layout.root / folder if folder else layout.root)
            if name not in images[folder]:
                no_image.add(key)
    if no_image:
        forget_pairs(layout, no_image)
    lost = missing | no_image
    if lost:
        raise LostWrite(
            f"{len(lost)} pair(s) finished but the store does not have all their rows or images (lost writes); "
            "run the same command again to redo them"
        )


def _level_key(level) -> float:
    return -1.0 if level is None or math.isnan(level) else float(level)


def _keys(frame) -> dict[tuple[str, float], tuple[str | None, str | None]]:
    """(anon_id, level) -> (status, output path) of each row (None where the frame lacks the column)."""
    levels = [_level_key(v) for v in frame["level"].tolist()]
    none = [None] * len(levels)
    status = frame["status"].tolist() if "status" in frame else none
    output = frame["output_path"].tolist() if "output_path" in frame else none
    keys = zip(frame["anon_id"].tolist(), levels, strict=True)
    return dict(zip(keys, zip(status, output, strict=True), strict=True))


def _names(folder: Location) -> set[str]:
    """The file names in a folder (one listing; none if it is not there)."""
    if storage.is_local(folder):
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    try:
        return {name.rsplit("/", 1)[-1] for name in folder.fs.ls(folder.path, detail=False)}
    except FileNotFoundError:
        return set()
