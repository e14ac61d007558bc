"""A finished shard's batch parts compacted into one file per table (the manifest's last, with the shard's
marker), and rows taken out of a shard's files so that a rerun redoes them (`forget_pairs`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.read_back import write_table_checked
from pipeline.folder.storage import Location
from pipeline.tables.markers import (
    ABSORBED_KEY,
    failed_pairs,
    level_key,
    pair_keys,
    read_marker,
    with_marker,
    with_metadata,
)
from pipeline.tables.read import read_files, read_shard, shard_sources
from pipeline.tables.shards import batch_parts, load_shards, shard_name, shard_of_name
from pipeline.tables.write import write_private_table, write_public_table


# (table folder, key columns of one row, private) in the order a shard's files are written: manifest last.
def table_folders(layout: RunLayout) -> tuple[tuple[Location, tuple[str, ...], bool], ...]:
    return (
        (layout.embeddings, ("anon_id", "level", "recognizer", "face"), True),
        (layout.distances, ("anon_id", "level", "recognizer", "face"), False),
        (layout.outputs, ("anon_id", "level"), True),
        (layout.manifest, ("anon_id", "level"), False),
    )


def compact_shard(layout: RunLayout, shard: int) -> bool:
    """Merge a shard's finished batch parts into its one file per table, then delete the parts.

    Each table's shard file is rewritten whole (atomically), the manifest's last, with the shard's marker
    (`shard_marker`) in its metadata; the parts go only after that, so a kill at any point leaves every
    finished row in a part or a shard file. A pair in several sources keeps the rows of the newest (a
    retried pair ends with one row).
    """
    done = {p.name for p in batch_parts(layout.manifest, shard)}
    if not done:
        return False
    name = shard_name(shard)
    evaluated_pairs: set | None = None
    failed_evaluations = 0
    for folder, keys, private in table_folders(layout):
        sources = [folder / name] if (folder / name).is_file() else []
        sources += [folder / n for n in sorted(done) if (folder / n).is_file()]
        if not sources:
            continue
        merged = _newest_rows(read_files(sources))
        merged = merged.sort_by([(k, "ascending") for k in keys if k in merged.column_names])
        # The parts it holds, so that until they are deleted no reader counts their rows twice.
        merged = with_metadata(merged, {ABSORBED_KEY: json.dumps(sorted(done)).encode()})
        if folder == layout.distances:
            evaluated_pairs = pair_keys(merged)
            failed_evaluations = len(failed_pairs(merged))
        elif folder == layout.manifest:
            evaluated = evaluated_pairs is not None and pair_keys(merged) <= evaluated_pairs
            merged = with_marker(merged, evaluated, failed_evaluations)
        # Read back before the parts go: a store that lost this write must not take the rows with it.
        write_table_checked(write_private_table if private else write_public_table, merged, folder / name)
    for folder, _, _ in table_folders(layout):
        for n in done:
            (folder / n).unlink(missing_ok=True)
    return True


def _newest_rows(tables: list[pa.Table]) -> pa.Table:
    """Concatenate; where an (anon_id, level) pair is in several tables, keep only the last table's rows."""
    merged = pa.concat_tables(tables, promote_options="default")
    if len(tables) == 1:
        return merged
    source = np.concatenate([np.full(len(t), i) for i, t in enumerate(tables)])
    # No level (another tool's output) is null/NaN: one key, as in evaluate_only._key.
    frame = pd.DataFrame({"a": merged.column("anon_id").to_numpy(zero_copy_only=False), "s": source})
    frame["l"] = pd.Series(merged.column("level").to_numpy(zero_copy_only=False), dtype=float).fillna(-1.0)
    newest = frame.groupby(["a", "l"])["s"].transform("max")
    return merged.filter(pa.array((frame["s"] == newest).to_numpy()))


def compact_finished(layout: RunLayout) -> list[int]:
    """Compact every shard that has finished batch parts (a killed run's); returns those shards."""
    shards = sorted({shard_of_name(p.name) for p in batch_parts(layout.manifest)})
    return [s for s in shards if compact_shard(layout, s)]


def forget_pairs(layout: RunLayout, pairs: set[tuple[str, float]]) -> int:
    """Remove these (anon_id, level) rows from their shards' files, so that a rerun redoes them; returns
    files changed.

    Distances and private rows go first and the manifest last: a job killed in between leaves the pair
    "done" with an error row that the next run retries again.
    """
    if not pairs:
        return 0
    pairs = {(a, level_key(lv)) for a, lv in pairs}
    shards = load_shards(layout)
    touched = sorted({shards.of(a) if shards else 0 for a, _ in pairs})
    changed = 0
    failed: dict[int, int] = {}  # per shard, the pairs whose evaluation failed, once the distances are rewritten
    for folder, _, private in table_folders(layout):
        for shard in touched:
            for part in shard_sources(folder, shard):
                data = storage.read_table(part)
                keys = zip(data.column("anon_id").to_pylist(), data.column("level").to_pylist(), strict=True)
                keep = [(a, level_key(lv)) not in pairs for a, lv in keys]
                if all(keep):
                    continue
                changed += 1
                if not any(keep):
                    part.unlink()
                    continue
                kept = data.filter(pa.array(keep))
                if folder == layout.manifest and part.name == shard_name(shard):
                    marker = read_marker(layout, shard)
                    errors = failed.get(shard, 0)
                    kept = with_marker(kept, bool(marker and marker["evaluated"]), errors)
                (write_private_table if private else write_public_table)(kept, part)
        if folder == layout.distances:
            for shard in touched:
                rows = read_shard(layout.distances, shard, ["anon_id", "level", "status"])
                failed[shard] = 0 if rows is None else len(failed_pairs(pa.Table.from_pandas(rows)))
    return changed
