"""The one way a table of the run folder is written: checked against its declaration (pipeline.tables.schemas),
then written whole through pipeline.folder.storage."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from pipeline.folder import storage
from pipeline.folder.storage import Location
from pipeline.tables.public_surface import PublicSurfaceError, check_private, check_public
from pipeline.tables.schemas import table_at


def write_private_table(table: pa.Table, path: Location, *, name: str | None = None, durable: bool = True) -> None:
    """A Parquet file of private/, written like `write_private_bytes`; only a table declared in private/
    (pipeline.tables.schemas), so this writer is never a way around the public one's checks. `durable=False`:
    one the next run makes again (not synced to disk: storage.write_table)."""
    check_private(table, table_at(path, name))
    storage.write_table(table, path, private=True, durable=durable)


def write_private_batches(tables: Iterable[pa.Table], path: Location, schema: pa.Schema) -> None:
    """A private/ table too large to hold, written a table at a time (`storage.write_table_batches`), each
    checked like `write_private_table`'s."""
    spec = table_at(path)

    def checked():
        for table in tables:
            check_private(table, spec)
            yield table

    check_private(schema.empty_table(), spec)
    storage.write_table_batches(checked(), path, schema, private=True)


def write_public_table(table: pa.Table, path: Location, *, name: str | None = None) -> None:
    """A Parquet file outside private/, written whole: the one way a shareable table is written.

    Refuses (public_surface.PublicSurfaceError) a table not declared where it is written, a column not declared
    public, and any string value that is not of its column's form or looks like a path, a file name, an input
    id or an exception's text (pipeline.tables.schemas). `name` names the declared table when it is written under
    another folder (e.g. a staging folder swapped in whole).
    """
    check_public(table, table_at(path, name))
    storage.write_table(table, path)


def write_scratch_table(
    table: pa.Table, path: Location, *, row_group_size: int | None = None, durable: bool = True
) -> None:
    """A pass's temporary table (e.g. the diversity summary's buckets), removed when the pass ends: declared
    nowhere, so written only under private/, 0600 like every private file."""
    if "/private/" not in f"/{path.as_posix()}/":
        raise PublicSurfaceError(f"{path.name}: a scratch table is written only under private/")
    storage.write_table(table, path, private=True, row_group_size=row_group_size, durable=durable)
