"""Manifest and identity rows: their Arrow schemas, atomic part files, and what is already done.

One batch of work writes its parts under one part name: first the distances (if evaluated), then the
private identities, and the manifest part last. A manifest part is the "done" marker: resume reads the
manifest parts and skips the (image, level) pairs in them. Parts of an interrupted batch that never got
its manifest part are orphans and are deleted before a resumed run starts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from evaluation import distances_table, write_parquet_atomic

from .layout import RunLayout

MANIFEST_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("level", pa.float64()),
        ("t_boom", pa.int32()),
        ("n_steps", pa.int32()),
        ("seed", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("output_path", pa.string()),
        ("sha256_output", pa.string()),
        ("seconds", pa.float64()),
    ]
)

IDENTITY_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("source_sha256", pa.string()),
    ]
)


def part_name(manifest_rows: Sequence[dict]) -> str:
    """A batch's part name, from the (anon_id, level) pairs it holds: a retried task (Ray retries the
    tasks of a lost actor) rewrites its own files instead of adding a second copy of its rows."""
    pairs = sorted(f"{row['anon_id']}@{float(row['level']):.9g}" for row in manifest_rows)
    return f"part-{hashlib.sha256(chr(10).join(pairs).encode()).hexdigest()[:32]}.parquet"


def write_batch(
    layout: RunLayout,
    manifest_rows: Sequence[dict],
    identity_rows: Sequence[dict],
    distance_rows: Sequence[dict] | None = None,
) -> str:
    """Write one batch's parts, the manifest last; returns the part name."""
    name = part_name(manifest_rows)
    if distance_rows is not None:
        write_parquet_atomic(distances_table(distance_rows), layout.distances / name)
    write_parquet_atomic(_table(identity_rows, IDENTITY_SCHEMA), layout.identities / name)
    write_parquet_atomic(_table(manifest_rows, MANIFEST_SCHEMA), layout.manifest / name)
    return name


def _table(rows: Sequence[dict], schema: pa.Schema) -> pa.Table:
    # Rows pass through pandas inside Ray, where a missing integer turns into NaN: make it null again.
    clean = [{k: _plain(row.get(k)) for k in schema.names} for row in rows]
    return pa.Table.from_pylist(clean, schema=schema)


def _plain(value):
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return value


def read_parts(folder: Path, schema: pa.Schema | None = None) -> pd.DataFrame:
    """All part files of a Parquet folder as one frame (empty with the schema's columns if none)."""
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return schema.empty_table().to_pandas() if schema is not None else pd.DataFrame()
    return pa.concat_tables([pq.read_table(p) for p in parts]).to_pandas()


def remove_orphans(layout: RunLayout, *, evaluated: bool) -> int:
    """Delete parts of batches that did not finish; returns how many files went.

    With `evaluated`, a manifest part without its distances part is also unfinished (an `anonymize`
    run's rows are re-done with evaluation, giving the same image bytes).
    """
    manifest = {p.name for p in layout.manifest.glob("part-*.parquet")}
    if evaluated:
        distances = {p.name for p in layout.distances.glob("part-*.parquet")}
        for name in manifest - distances:
            (layout.manifest / name).unlink()
        manifest &= distances
    removed = 0
    for folder in (layout.distances, layout.identities):
        for part in folder.glob("part-*.parquet"):
            if part.name not in manifest:
                part.unlink()
                removed += 1
    for folder in (layout.distances, layout.identities, layout.manifest, layout.images):
        for tmp in folder.rglob(".*.tmp"):
            tmp.unlink()
    return removed


def done_pairs(layout: RunLayout) -> set[tuple[str, float]]:
    """(anon_id, level) pairs that have a manifest row."""
    frame = read_parts(layout.manifest, MANIFEST_SCHEMA)
    return set(zip(frame["anon_id"], frame["level"].astype(float), strict=True))
