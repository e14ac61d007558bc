"""private/identities.parquet: each output name once (anon_id -> image id, source, identity label, sample),
written by the driver and merged with earlier runs'."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.tables.input_lists import InputIndex
from pipeline.tables.schemas import IDENTITY_SCHEMA
from pipeline.tables.write import write_private_batches, write_private_table


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


class _Unchanged(Exception):
    """The merged table equals the file: the write is abandoned, the file (and its mtime) left alone."""


def write_identities_from(layout: RunLayout, index: InputIndex) -> None:
    """`write_identities` of a job's listed inputs (pipeline.tables.input_lists), a shard at a time: the file is
    sorted by anon_id and the shards are ranges of it, so each shard's rows are merged with the earlier runs'
    rows of its range (read from the old file in order) and written, never the whole table held."""
    old = _old_rows(layout)
    changed = not layout.identities.is_file()
    held = IDENTITY_SCHEMA.empty_table()

    def merged():
        nonlocal changed, held
        starts = index.shards.starts
        for shard in range(index.shards.count):
            upper = starts[shard] if shard < len(starts) else None
            while old is not None and (upper is None or not len(held) or held["anon_id"][-1].as_py() < upper):
                batch = next(old, None)
                if batch is None:
                    break
                held = pa.concat_tables([held, batch])
            before = held if upper is None else held.filter(pc.less(held["anon_id"], upper))
            held = held.slice(len(before))  # sorted: the rows of later shards
            fresh = index.shard_list(shard).select(IDENTITY_SCHEMA.names).cast(IDENTITY_SCHEMA)
            kept = before.filter(pc.invert(pc.is_in(before["anon_id"], fresh["anon_id"])))
            rows = pa.concat_tables([kept, fresh]).sort_by("anon_id")
            changed = changed or not rows.equals(before)
            yield rows
        if not changed:
            raise _Unchanged

    with contextlib.suppress(_Unchanged):
        write_private_batches(merged(), layout.identities, IDENTITY_SCHEMA)


def _old_rows(layout: RunLayout) -> Iterator[pa.Table] | None:
    """The earlier runs' rows in file order (anon_id order), a batch at a time, in today's columns."""
    if not layout.identities.is_file():
        return None

    def batches():
        for batch in storage.parquet_file(layout.identities).iter_batches(batch_size=1 << 16):
            table = pa.Table.from_batches([batch])
            if "identity" not in table.column_names:  # written before identities were kept
                table = table.append_column("identity", pa.nulls(len(table), pa.string()))
            if "sample" not in table.column_names:  # written before --samples: every output was sample 0
                table = table.append_column("sample", pa.array([0] * len(table), pa.int32()))
            yield table.select(IDENTITY_SCHEMA.names).cast(IDENTITY_SCHEMA)

    return batches()
