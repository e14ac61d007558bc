"""A pass's work rows on disk, a shard at a time: what the driver plans for Ray Data without holding it.

Planning a fresh pass makes one row per image still to do (its source, anon_id, levels, and per level the
output's seed and sub-key, derived from the run's secret on the driver). At 10^7 images those rows are
gigabytes of Python objects; held in one list until the stream starts, they were the driver's largest
allocation. `WorkSpool` writes each shard's rows to `private/.work/part-NNNNN.parquet` (scratch: 0600, removed
when the pass ends, and by `boomerang forget`) and hands them back a shard's table at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.storage import Location
from pipeline.tables.schemas import WORK_SCHEMA
from pipeline.tables.write import write_scratch_table

WORK_FOLDER = ".work"


def work_folder(layout: RunLayout) -> Location:
    return layout.private / WORK_FOLDER


class WorkSpool:
    """The work rows of one pass, one scratch table per shard; the driver holds one shard's rows at a time."""

    def __init__(self, layout: RunLayout) -> None:
        self.folder = work_folder(layout)
        storage.remove_tree(self.folder)  # a killed pass's: planned again from the tables
        self.parts: dict[int, Location] = {}  # shard -> its table, in the order added
        self.rows = 0

    def add(self, shard: int, rows: list[dict]) -> None:
        if not rows:
            return
        path = self.folder / f"part-{shard:05d}.parquet"
        write_scratch_table(pa.Table.from_pylist(rows, schema=WORK_SCHEMA), path, durable=False)
        self.parts[shard] = path
        self.rows += len(rows)

    def tables(self) -> Iterator[pa.Table]:
        """Each shard's rows, in the order they were added."""
        for path in self.parts.values():
            yield storage.read_table(path, schema=WORK_SCHEMA)

    def pairs(self, shard: int) -> set[tuple[str, float]]:
        """The (anon_id, level) pairs this pass planned in `shard` (empty if none)."""
        if shard not in self.parts:
            return set()
        table = storage.read_table(self.parts[shard], columns=["anon_id", "levels"]).to_pydict()
        return {(a, float(v)) for a, levels in zip(table["anon_id"], table["levels"], strict=True) for v in levels}

    def remove(self) -> None:
        storage.remove_tree(self.folder)
