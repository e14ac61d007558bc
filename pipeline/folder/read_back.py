"""Writes read back: a store may answer a write and never keep it (an object store behind a faulty gateway or
proxy, a misbehaving S3-compatible server). The commits later steps build on are written through these: the run's
secret and the shard cut (their bytes read back) and each shard file's compaction (its Parquet footer read back
before the parts it merged are deleted; pipeline.tables.compaction). A write that did not land is made again, and
after `TRIES` the job stops in one line (`LostWrite`). The end-of-pass check is pipeline.tables.landed."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from pipeline.folder import storage
from pipeline.folder.storage import Location

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
