"""Reading the run's row tables: each row once (a shard's compacted file and the batch parts not merged into it
yet), a few small files at a time, whole tables in steps of consecutive shards (the driver's memory stays bounded),
the manifest, face-region mode's faces."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.storage import Location
from pipeline.tables.markers import ABSORBED_KEY
from pipeline.tables.schemas import FACE_BOX, MANIFEST_SCHEMA
from pipeline.tables.shards import batch_parts, shard_files, shard_name, shard_of_name


def read_files(paths: Sequence[Location], columns: list[str] | None = None) -> list[pa.Table]:
    """Small Parquet files, read a few at a time: a shard's hundreds of batch parts are mostly per-file cost.

    `ParquetFile.read` skips the dataset layer of `pq.read_table`, three times faster on files of a few
    rows; reading releases the GIL, so threads overlap the opens.
    """
    if len(paths) < 8:
        return [storage.parquet_file(p).read(columns=columns) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda p: storage.parquet_file(p).read(columns=columns), paths))


def read_parts(folder: Location, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """All part files of a Parquet folder as one frame (empty with the schema's columns if none)."""
    parts = table_files(folder)
    if not parts:
        empty = schema.empty_table().to_pandas() if schema is not None else pd.DataFrame()
        return empty[columns] if columns and schema is not None else empty
    return pa.concat_tables(read_files(parts, columns), promote_options="default").to_pandas()


def read_manifest(layout: RunLayout, columns: list[str] | None = None) -> pd.DataFrame:
    return read_parts(layout.manifest, MANIFEST_SCHEMA, columns)


def read_shard(folder: Location, shard: int, columns: list[str] | None = None, filters=None):
    """One shard's rows of a table (its compacted file and any batch parts), or None if it has none."""
    paths = shard_sources(folder, shard)
    if not paths:
        return None
    if filters is None:
        tables = read_files(paths, columns)
    else:
        tables = [storage.read_table(p, columns=columns, filters=filters) for p in paths]
    return pa.concat_tables(tables, promote_options="default").to_pandas()


# Rows handled together when a pass goes over a whole table: one shard at a time would spend more on
# per-call overhead (pandas, Arrow) than on the rows; a fixed number keeps the driver's memory bounded.
ROWS_PER_STEP = 1 << 18


def table_steps(shards: Iterable[int], sources: Sequence[tuple[Location, list[str] | None]]):
    """Tables read in lockstep, in steps of consecutive shards of about ROWS_PER_STEP rows of the first.

    `sources`: (table folder, columns) pairs; each step is a tuple with one Arrow table per source (None
    where that table has no rows in the step's shards). Shards split the anon_ids, so every row of an
    image (at every level, in every table) comes in the same step.
    """
    pending: list[list[pa.Table]] = [[] for _ in sources]
    rows = 0
    for shard in shards:
        for found, (folder, columns) in zip(pending, sources, strict=True):
            found += read_files(shard_sources(folder, shard), columns)
        rows = sum(len(t) for t in pending[0])
        if rows >= ROWS_PER_STEP:
            yield _joined(pending)
            pending = [[] for _ in sources]
    if any(pending):
        yield _joined(pending)


def _joined(pending: list[list[pa.Table]]) -> tuple[pa.Table | None, ...]:
    return tuple(pa.concat_tables(t, promote_options="default") if t else None for t in pending)


def table_files(folder: Location) -> list[Location]:
    """Every file a reader of a table folder should read, each row once: per shard, `shard_sources`."""
    if not folder.is_dir():
        return []
    shards = set(shard_files(folder)) | {shard_of_name(p.name) for p in batch_parts(folder)}
    # Parts named otherwise (written before shards, or by another tool) are read as they are.
    others = sorted(p for p in folder.glob("part-*.parquet") if shard_of_name(p.name) is None)
    return [path for shard in sorted(shards) for path in shard_sources(folder, shard)] + others


def shard_sources(folder: Location, shard: int) -> list[Location]:
    """A shard's files in a table folder: its compacted file (if any), then its batch parts not merged into
    it yet (a job killed between writing a shard file and deleting its parts leaves both)."""
    compacted = folder / shard_name(shard)
    parts = batch_parts(folder, shard)
    if not compacted.is_file():
        return parts
    if parts:
        absorbed = set(json.loads((storage.read_schema(compacted).metadata or {}).get(ABSORBED_KEY, b"[]")))
        parts = [p for p in parts if p.name not in absorbed]
    return [compacted, *parts]


def shards_with_rows(layout: RunLayout) -> set[int]:
    """Shards that have a manifest file or part: the others have nothing done."""
    found = set(shard_files(layout.manifest))
    found |= {shard_of_name(p.name) for p in batch_parts(layout.manifest)}
    return found


def read_faces(layout: RunLayout, anon_ids: set[str] | None = None) -> pd.DataFrame:
    """Face-region mode's faces table, from private/outputs: one row per (anon_id, level, face) with the box
    in the original's pixels, the detector's confidence, the square resampled and the face's seed; only
    the images in `anon_ids` when given."""
    columns = ["anon_id", "level", *FACE_BOX.names]
    frames = []
    for path in table_files(layout.outputs):
        if "face_boxes" not in storage.read_schema(path).names:
            continue
        filters = [("anon_id", "in", sorted(anon_ids))] if anon_ids is not None else None
        data = storage.read_table(path, columns=["anon_id", "level", "face_boxes"], filters=filters)
        counts = pc.list_value_length(data["face_boxes"]).fill_null(0)
        flat = pc.list_flatten(data["face_boxes"])
        if not len(flat):
            continue
        index = np.repeat(np.arange(len(data)), counts.to_numpy())
        frame = pa.table({name: flat.combine_chunks().field(name) for name in FACE_BOX.names}).to_pandas()
        frame.insert(0, "level", data["level"].to_numpy()[index])
        frame.insert(0, "anon_id", data["anon_id"].to_numpy(zero_copy_only=False)[index])
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns].sort_values(["anon_id", "level", "face"], ignore_index=True)
