"""The run's row files: manifest, private outputs and identities; per-batch part files; what is done.

One batch of work writes its parts under one part name: first the distances (if evaluated), then the
private outputs (seeds, source hashes, full error texts), and the manifest part last. A manifest part is
the "done" marker: resume reads the manifest parts and skips the (image, level) pairs in them. Parts of
an interrupted batch that never got its manifest part are orphans and are deleted before a resumed run
starts. private/identities.parquet (anon_id -> image id, source) is one file the driver writes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from evaluation import distances_table, write_parquet_atomic

from .layout import RunLayout, write_private_table

# Shareable: no source id, no path, no per-image seed; `error` is a reason code and a fixed text.
MANIFEST_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("level", pa.float64()),
        ("t_boom", pa.int32()),
        ("n_steps", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("error_kind", pa.string()),  # "input" | "transient" | null
        ("output_path", pa.string()),
        ("sha256_output", pa.string()),
        ("seconds", pa.float64()),
    ]
)

# private/: per (image, level) what must never be shared.
OUTPUTS_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("level", pa.float64()),
        ("seed", pa.int64()),
        ("source_sha256", pa.string()),
        ("source_size", pa.int64()),
        ("source_mtime", pa.float64()),
        ("error_detail", pa.string()),
    ]
)

IDENTITY_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("image_id", pa.string()),
        ("source", pa.string()),
    ]
)


def part_name(manifest_rows: Sequence[dict]) -> str:
    """A batch's part name, from the (anon_id, level) pairs it holds: a retried task (Ray retries the
    tasks of a lost actor) rewrites its own files instead of adding a second copy of its rows."""
    pairs = sorted(f"{row['anon_id']}@{float(row['level']):.9g}" for row in manifest_rows)
    return f"part-{hashlib.sha256(chr(10).join(pairs).encode()).hexdigest()[:32]}.parquet"


def write_batch(layout: RunLayout, rows: Sequence[dict], distance_rows: Sequence[dict] | None = None) -> str:
    """Write one batch's parts, the manifest last; returns the part name."""
    name = part_name(rows)
    if distance_rows is not None:
        write_parquet_atomic(distances_table(distance_rows), layout.distances / name)
    write_private_table(table(rows, OUTPUTS_SCHEMA), layout.outputs / name)
    write_parquet_atomic(table(rows, MANIFEST_SCHEMA), layout.manifest / name)
    return name


def finish_batch(layout: RunLayout, rows: list[dict], distance_rows: list[dict] | None) -> pd.DataFrame:
    """Write a batch's parts and return the small rows the driver counts progress with."""
    write_batch(layout, rows, distance_rows)
    return pd.DataFrame(
        {
            "level": [r["level"] for r in rows],
            "status": [r["status"] for r in rows],
            "reason": [(r.get("error") or "").split(":", 1)[0] for r in rows],
        }
    )


def table(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
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
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default").to_pandas()


def read_manifest(layout: RunLayout) -> pd.DataFrame:
    return read_parts(layout.manifest, MANIFEST_SCHEMA)


def write_identities(layout: RunLayout, items: Iterable[tuple[str, str, str]]) -> None:
    """private/identities.parquet: each image once, (anon_id, image id, source), merged with earlier runs'."""
    fresh = pd.DataFrame(list(items), columns=IDENTITY_SCHEMA.names)
    if layout.identities.is_file():
        old = pd.read_parquet(layout.identities)
        fresh = pd.concat([old[~old["anon_id"].isin(fresh["anon_id"])], fresh], ignore_index=True)
    fresh = fresh.sort_values("anon_id", ignore_index=True)
    write_private_table(pa.Table.from_pandas(fresh, schema=IDENTITY_SCHEMA, preserve_index=False), layout.identities)


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
    for folder in (layout.distances, layout.outputs):
        for part in folder.glob("part-*.parquet"):
            if part.name not in manifest:
                part.unlink()
                removed += 1
    for folder in (layout.distances, layout.outputs, layout.manifest, layout.images, layout.private):
        for tmp in folder.rglob(".*.tmp"):
            tmp.unlink()
    return removed


def forget_pairs(layout: RunLayout, pairs: set[tuple[str, float]]) -> int:
    """Remove these (anon_id, level) rows from every part, so that a rerun redoes them; returns parts changed.

    Distances and private rows go first and the manifest last: a job killed in between leaves the pair
    "done" with an error row that the next run retries again.
    """
    if not pairs:
        return 0
    changed = set()
    for folder, private in ((layout.distances, False), (layout.outputs, True), (layout.manifest, False)):
        for part in sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []:
            data = pq.read_table(part)
            keys = zip(data.column("anon_id").to_pylist(), data.column("level").to_pylist(), strict=True)
            keep = [(a, float(lv)) not in pairs for a, lv in keys]
            if all(keep):
                continue
            changed.add(part.name)
            if not any(keep):
                part.unlink()
                continue
            kept = data.filter(pa.array(keep))
            if private:
                write_private_table(kept, part)
            else:
                write_parquet_atomic(kept, part)
    return len(changed)
