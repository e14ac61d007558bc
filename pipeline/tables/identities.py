"""private/identities.parquet: each output name once (anon_id -> image id, source, identity label, sample),
written by the driver and merged with earlier runs'."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import pyarrow as pa

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.tables.schemas import IDENTITY_SCHEMA
from pipeline.tables.write import write_private_table


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
