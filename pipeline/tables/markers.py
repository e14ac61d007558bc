"""A shard's marker: the few numbers a shard's manifest file carries in its Parquet metadata, so that resume
planning can skip a finished shard unread (pipeline.tables.resume), and the names of the batch parts a shard file
absorbed; the (anon_id, level) keys the tables are compared by."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.tables.row_errors import TRANSIENT
from pipeline.tables.shards import shard_name

# A shard's manifest file carries, in its Parquet metadata, what resume planning needs to skip it unread.
MARKER_KEY = b"boomerang.shard"

# Every shard file names the batch parts its last compaction merged (deleted right after it is written).
ABSORBED_KEY = b"boomerang.absorbed"


def shard_marker(manifest: pa.Table, evaluated: bool, evaluation_errors: int = 0) -> dict:
    """What a shard's manifest file holds, in a few numbers: its images (count and a digest of their
    anon_ids), its levels, whether every image has a row at every level, its error rows by kind, whether
    every row has its distances, and how many pairs have a distance row that failed (`evaluation_errors`,
    which --retry-errors redoes). Nothing that is not already in the public tables."""
    ids = sorted(set(manifest.column("anon_id").to_pylist()))
    pairs = pair_keys(manifest)
    levels = sorted({level for _, level in pairs})
    status = np.asarray(manifest.column("status").to_pylist(), dtype=object)
    kind = np.asarray(manifest.column("error_kind").to_pylist(), dtype=object)
    failed = status != "ok"
    return {
        "ids": len(ids),
        "ids_sha256": ids_digest(ids),
        "levels": levels,
        "grid": len(pairs) == len(ids) * len(levels) and -1.0 not in levels,
        "transient_errors": int((failed & (kind == TRANSIENT)).sum()),
        "other_errors": int((failed & (kind != TRANSIENT)).sum()),
        "evaluated": bool(evaluated),
        "evaluation_errors": int(evaluation_errors),
    }


def with_marker(manifest: pa.Table, evaluated: bool, evaluation_errors: int = 0) -> pa.Table:
    marker = shard_marker(manifest, evaluated, evaluation_errors)
    return with_metadata(manifest, {MARKER_KEY: json.dumps(marker).encode()})


def failed_pairs(distances: pa.Table) -> set[tuple[str, float]]:
    """(anon_id, level) of the pairs with a distance row whose evaluation failed (status "error")."""
    return pair_keys(distances.filter(pc.equal(distances.column("status"), "error")))


def with_metadata(table: pa.Table, entries: dict[bytes, bytes]) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **entries})


def read_marker(layout: RunLayout, shard: int) -> dict | None:
    """The marker of a shard's manifest file; None if the shard has no file (or one from before markers)."""
    path = layout.manifest / shard_name(shard)
    try:
        metadata = storage.read_schema(path).metadata or {}
    except FileNotFoundError:
        return None
    return json.loads(metadata[MARKER_KEY]) if MARKER_KEY in metadata else None


def ids_digest(sorted_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted_ids).encode()).hexdigest()


def pair_keys(table: pa.Table) -> set[tuple[str, float]]:
    """(anon_id, level) of every row; no level (another tool's output) is -1.0, one key as NaN is not."""
    levels = [level_key(v) for v in table.column("level").to_pylist()]
    return set(zip(table.column("anon_id").to_pylist(), levels, strict=True))


def level_key(level) -> float:
    return -1.0 if level is None or math.isnan(level) else float(level)
