"""The run's row files: manifest, private outputs, private embeddings and identities, one file per shard per
table; what is done.

Rows are kept per shard of the input (pipeline.shards). While a shard is worked on, each Ray batch writes
small batch parts in it: first the private embeddings and the distances (if evaluated), then the private
outputs (seeds, source hashes, full error texts), and the manifest part last, the batch's "done" marker.
When a shard's pairs are all done the driver compacts its parts into one file per table, the manifest's
last: a shard's manifest file is its marker, and resume reads shard files (a killed run's finished parts
are compacted first).
Parts of an interrupted batch that never got its manifest part are orphans, deleted before a resumed run
starts. private/identities.parquet (anon_id -> image id, source, identity label) is one file the driver
writes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from evaluation import distances_table

from . import storage
from .errors import TRANSIENT
from .landed import write_table_checked
from .layout import RunLayout, write_private_table, write_public_table
from .lock import ensure_held
from .schemas import EMBEDDINGS_SCHEMA, FACE_BOX, IDENTITY_SCHEMA, MANIFEST_SCHEMA, OUTPUTS_SCHEMA
from .shards import batch_name, batch_parts, load_shards, shard_files, shard_name, shard_of_name
from .storage import Location

# The tables' schemas (and which columns are public) are declared once, in pipeline.schemas.


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
        write_private_table(table([_with_boxes(row) for row in group], OUTPUTS_SCHEMA), layout.outputs / name)
        write_public_table(table(group, MANIFEST_SCHEMA), layout.manifest / name)
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


def read_parts(folder: Location, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """All part files of a Parquet folder as one frame (empty with the schema's columns if none)."""
    parts = table_files(folder)
    if not parts:
        empty = schema.empty_table().to_pandas() if schema is not None else pd.DataFrame()
        return empty[columns] if columns and schema is not None else empty
    return pa.concat_tables(read_files(parts, columns), promote_options="default").to_pandas()


def read_manifest(layout: RunLayout, columns: list[str] | None = None) -> pd.DataFrame:
    return read_parts(layout.manifest, MANIFEST_SCHEMA, columns)


def write_identities(layout: RunLayout, items: Iterable[tuple[str, str, str, str | None, int]]) -> None:
    """private/identities.parquet: each output name once, (anon_id, image id, source, identity, sample), merged
    with earlier runs'."""
    fresh = pd.DataFrame(list(items), columns=IDENTITY_SCHEMA.names)
    old = storage.read_table(layout.identities).to_pandas() if layout.identities.is_file() else fresh.iloc[0:0]
    if "identity" not in old:  # written before identities were kept
        old = old.assign(identity=None)
    if "sample" not in old:  # written before --samples: every output was sample 0
        old = old.assign(sample=0)
    fresh = pd.concat([old[~old["anon_id"].isin(fresh["anon_id"])], fresh], ignore_index=True)
    fresh = fresh.sort_values("anon_id", ignore_index=True)
    table = pa.Table.from_pandas(fresh, schema=IDENTITY_SCHEMA, preserve_index=False)
    if len(old) == len(fresh) and table.equals(pa.Table.from_pandas(old, schema=IDENTITY_SCHEMA, preserve_index=False)):
        return  # a resume of the same inputs: leave the file (and its mtime) alone
    write_private_table(table, layout.identities)


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


# (table folder, key columns of one row, private) in the order a shard's files are written: manifest last.
def _tables(layout: RunLayout) -> tuple[tuple[Location, tuple[str, ...], bool], ...]:
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
    for folder, keys, private in _tables(layout):
        sources = [folder / name] if (folder / name).is_file() else []
        sources += [folder / n for n in sorted(done) if (folder / n).is_file()]
        if not sources:
            continue
        merged = _newest_rows(read_files(sources))
        merged = merged.sort_by([(k, "ascending") for k in keys if k in merged.column_names])
        # The parts it holds, so that until they are deleted no reader counts their rows twice.
        merged = _with_metadata(merged, {ABSORBED_KEY: json.dumps(sorted(done)).encode()})
        if folder == layout.distances:
            evaluated_pairs = pair_keys(merged)
            failed_evaluations = len(failed_pairs(merged))
        elif folder == layout.manifest:
            evaluated = evaluated_pairs is not None and pair_keys(merged) <= evaluated_pairs
            merged = with_marker(merged, evaluated, failed_evaluations)
        # Read back before the parts go: a store that lost this write must not take the rows with it.
        write_table_checked(write_private_table if private else write_public_table, merged, folder / name)
    for folder, _, _ in _tables(layout):
        for n in done:
            (folder / n).unlink(missing_ok=True)
    return True


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
    return _with_metadata(manifest, {MARKER_KEY: json.dumps(marker).encode()})


def failed_pairs(distances: pa.Table) -> set[tuple[str, float]]:
    """(anon_id, level) of the pairs with a distance row whose evaluation failed (status "error")."""
    return pair_keys(distances.filter(pc.equal(distances.column("status"), "error")))


def _with_metadata(table: pa.Table, entries: dict[bytes, bytes]) -> pa.Table:
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
    levels = [_level_key(v) for v in table.column("level").to_pylist()]
    return set(zip(table.column("anon_id").to_pylist(), levels, strict=True))


def _level_key(level) -> float:
    return -1.0 if level is None or math.isnan(level) else float(level)


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


def read_files(paths: Sequence[Location], columns: list[str] | None = None) -> list[pa.Table]:
    """Small Parquet files, read a few at a time: a shard's hundreds of batch parts are mostly per-file cost.

    `ParquetFile.read` skips the dataset layer of `pq.read_table`, three times faster on files of a few
    rows; reading releases the GIL, so threads overlap the opens.
    """
    if len(paths) < 8:
        return [storage.parquet_file(p).read(columns=columns) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda p: storage.parquet_file(p).read(columns=columns), paths))


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


def forget_pairs(layout: RunLayout, pairs: set[tuple[str, float]]) -> int:
    """Remove these (anon_id, level) rows from their shards' files, so that a rerun redoes them; returns
    files changed.

    Distances and private rows go first and the manifest last: a job killed in between leaves the pair
    "done" with an error row that the next run retries again.
    """
    if not pairs:
        return 0
    pairs = {(a, _level_key(lv)) for a, lv in pairs}
    shards = load_shards(layout)
    touched = sorted({shards.of(a) if shards else 0 for a, _ in pairs})
    changed = 0
    failed: dict[int, int] = {}  # per shard, the pairs whose evaluation failed, once the distances are rewritten
    for folder, _, private in _tables(layout):
        for shard in touched:
            for part in shard_sources(folder, shard):
                data = storage.read_table(part)
                keys = zip(data.column("anon_id").to_pylist(), data.column("level").to_pylist(), strict=True)
                keep = [(a, _level_key(lv)) not in pairs for a, lv in keys]
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
