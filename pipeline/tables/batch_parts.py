"""A Ray batch's rows written as batch parts, one set per shard its rows fall in: private embeddings and
distances first, private outputs, the manifest part last (the batch's "done" marker); parts of a batch that
never got its manifest part are orphans, deleted before a resumed run starts."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from evaluation import distances_table
from pipeline.folder.layout import RunLayout
from pipeline.folder.lock_common import ensure_held
from pipeline.tables.schemas import EMBEDDINGS_SCHEMA, MANIFEST_SCHEMA, OUTPUTS_SCHEMA
from pipeline.tables.shards import batch_name, batch_parts, load_shards
from pipeline.tables.write import write_private_table, write_public_table


def write_batch(
    layout: RunLayout,
    rows: Sequence[dict],
    distance_rows: Sequence[dict] | None = None,
    embedding_rows: Sequence[dict] = (),
) -> list[str]:
    """Write one batch's parts, one set per shard its rows fall in, each manifest part last; returns the names.

    Ray batches ignore shard boundaries, so a batch across two shards leaves a part in each.
    """
    shards = load_shards(layout)
    by_shard: dict[int, list[dict]] = {}
    for row in rows:
        by_shard.setdefault(shards.of(row["anon_id"]) if shards else 0, []).append(row)
    names = []
    for shard, group in sorted(by_shard.items()):
        name = batch_name(shard, group)
        ids = {row["anon_id"] for row in group}
        if embedding_rows:
            mine = [e for e in embedding_rows if e["anon_id"] in ids]
            write_private_table(pa.Table.from_pylist(mine, schema=EMBEDDINGS_SCHEMA), layout.embeddings / name)
        if distance_rows is not None:
            mine = [d for d in distance_rows if d["anon_id"] in ids]
            write_public_table(distances_table(mine), layout.distances / name)
        write_private_table(rows_table([_with_boxes(row) for row in group], OUTPUTS_SCHEMA), layout.outputs / name)
        write_public_table(rows_table(group, MANIFEST_SCHEMA), layout.manifest / name)
        names.append(name)
    return names


def finish_batch(
    layout: RunLayout, rows: list[dict], distance_rows: list[dict] | None, embedding_rows: Sequence[dict] = ()
) -> pd.DataFrame:
    """Write a batch's parts and return the small rows the driver counts progress (and finished shards) with."""
    ensure_held(layout.lock_file)  # the manifest part commits the batch: never for a driver that lost the folder
    write_batch(layout, rows, distance_rows, embedding_rows)
    shards = load_shards(layout)
    return pd.DataFrame(
        {
            "level": [r["level"] for r in rows],
            "status": [r["status"] for r in rows],
            "reason": [(r.get("error") or "").split(":", 1)[0] for r in rows],
            "shard": [shards.of(r["anon_id"]) if shards else 0 for r in rows],
        }
    )


def _with_boxes(row: dict) -> dict:
    # The stages carry face boxes as JSON text: a list of structs, or None, would not survive pandas in Ray.
    boxes = row.get("face_boxes")
    return {**row, "face_boxes": json.loads(boxes) if isinstance(boxes, str) else None}


def rows_table(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts from the stages) as an Arrow table of `schema`."""
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


def remove_orphans(layout: RunLayout, *, evaluated: bool) -> int:
    """Delete batch parts of batches that did not finish; returns how many files went.

    A batch part is finished once its manifest part exists. With `evaluated`, a manifest part without
    its distances part is also unfinished (an `anonymize` run's rows are re-done with evaluation, giving
    the same image bytes). Compacted shard files are never orphans: they only ever hold finished rows.
    """
    manifest = {p.name for p in batch_parts(layout.manifest)}
    if evaluated:
        distances = {p.name for p in batch_parts(layout.distances)}
        for name in manifest - distances:
            (layout.manifest / name).unlink()
        manifest &= distances
    removed = 0
    for folder in (layout.embeddings, layout.distances, layout.outputs):
        for part in batch_parts(folder):
            if part.name not in manifest:
                part.unlink()
                removed += 1
    if not layout.local:  # an object store has no temporary files: a PUT lands whole or not at all
        return removed
    for folder in (layout.embeddings, layout.distances, layout.outputs, layout.manifest, layout.images, layout.private):
        for tmp in folder.rglob(".*.tmp"):
            tmp.unlink()
    return removed
