"""private/inputs/: a running job's discovered inputs, one file per shard in input order, so that the driver
holds per-shard counts and reads one shard's list at a time (pipeline.execution.discovery fills it).

Built like an external sort on anon_id. The discovery's batches are spooled, each sorted by anon_id
(`InputSpool`: files of about SPOOL_ROWS rows in private/.inputs-spool/, row groups of SPOOL_GROUP rows whose
first and last anon_id it remembers), then read back a range of anon_ids at a time (about RANGE_ROWS rows: the
ranges are cut at row groups' first anon_ids, and each range reads only the row groups that overlap it). Each
range's rows get their shard: the folder's cut when it has one, else a new cut every `size` distinct anon_ids,
exactly as pipeline.tables.shards.Shards.cut would cut the sorted whole; a shard's list is written once its last
row is seen. Only a spool file, a range and one shard are held.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.storage import Location
from pipeline.tables.schemas import INPUT_LIST_SCHEMA
from pipeline.tables.shards import Shards, load_shards, shard_name
from pipeline.tables.write import write_private_table, write_scratch_table

SPOOL_FOLDER = ".inputs-spool"
SPOOL_ROWS = 1 << 18
SPOOL_GROUP = 1 << 12
RANGE_ROWS = 1 << 18
# A list's rows in input order: a Parquet input's row, a folder's path (image id), then the sample.
INPUT_ORDER = [("position", "ascending"), ("image_id", "ascending"), ("sample", "ascending")]


def lists_folder(layout: RunLayout) -> Location:
    return layout.private / "inputs"


class InputSpool:
    """Keyed input rows (INPUT_LIST_SCHEMA), spooled sorted by anon_id; `ranges` reads them back in order."""

    def __init__(self, layout: RunLayout) -> None:
        self.folder = layout.private / SPOOL_FOLDER
        storage.remove_tree(self.folder)
        self.pending: list[pa.Table] = []
        self.files: list[tuple[Location, list[tuple[str, str]]]] = []  # (file, (first, last) per row group)
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += len(table)
        if sum(len(t) for t in self.pending) >= SPOOL_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending).sort_by("anon_id")
        self.pending = []
        path = self.folder / f"spool-{len(self.files):05d}.parquet"
        write_scratch_table(table, path, row_group_size=SPOOL_GROUP, durable=False)
        ids, rows = table.column("anon_id"), len(table)
        groups = [(ids[i].as_py(), ids[min(i + SPOOL_GROUP, rows) - 1].as_py()) for i in range(0, rows, SPOOL_GROUP)]
        self.files.append((path, groups))

    def ranges(self) -> Iterator[pa.Table]:
        """The spooled rows a range of anon_ids at a time, in anon_id order (ties in spool order)."""
        self._flush()
        # Cut where the spool's row groups begin: about RANGE_ROWS rows per range (at most one row group per
        # spool file more), whatever the anon_ids look like.
        firsts = sorted(first for _, groups in self.files for first, _ in groups)
        step = max(1, RANGE_ROWS // SPOOL_GROUP)
        bounds = ["", *firsts[step::step], None]
        for low, high in zip(bounds[:-1], bounds[1:], strict=True):
            pieces = [INPUT_LIST_SCHEMA.empty_table()]
            for path, groups in self.files:
                wanted = [g for g, (first, last) in enumerate(groups) if last >= low and (high is None or first < high)]
                if not wanted:
                    continue
                table = storage.parquet_file(path).read_row_groups(wanted)
                keep = pc.greater_equal(table["anon_id"], low)
                if high is not None:
                    keep = pc.and_(keep, pc.less(table["anon_id"], high))
                pieces.append(table.filter(keep))
            yield pa.concat_tables(pieces).sort_by("anon_id")

    def remove(self) -> None:
        storage.remove_tree(self.folder)


@dataclass(frozen=True)
class InputIndex:
    """The job's inputs on disk: the shard cut and the number of items in each shard's list."""

    folder: Location
    shards: Shards
    counts: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def shard_list(self, shard: int) -> pa.Table:
        """Shard `shard`'s items (INPUT_LIST_SCHEMA) in input order; none for a shard without items."""
        if not self.counts.get(shard):
            return INPUT_LIST_SCHEMA.empty_table()
        return storage.read_table(self.folder / shard_name(shard))

    def sorted_anon_ids(self) -> Iterator[str]:
        """Every listed anon_id in sorted order (the shards are ranges of it): one shard's at a time."""
        for shard in sorted(self.counts):
            yield from sorted(self.shard_list(shard).column("anon_id").to_pylist())

    def lists(self) -> Iterator[tuple[int, pa.Table]]:
        """(shard, its items) in shard order: anon_id order across shards, input order within one."""
        for shard in sorted(self.counts):
            yield shard, self.shard_list(shard)


def build_index(layout: RunLayout, spool: InputSpool, size: int) -> InputIndex:
    """Write each shard's list from the spool and return the index (see the module's docstring)."""
    folder = lists_folder(layout)
    storage.remove_tree(folder)
    storage.make_dirs(folder, private=True)
    cut = load_shards(layout)
    starts: list[str] = []
    counts: dict[int, int] = {}
    distinct = 0  # distinct anon_ids before this range (a new cut)
    held: list[pa.Table] = []
    held_shard = -1
    for table in spool.ranges():
        if not len(table):
            continue
        ids = np.asarray(table.column("anon_id").to_pylist(), dtype=object)
        if cut is not None:
            shard_of = np.searchsorted(np.asarray(cut.starts, dtype=object), ids, side="right")
        else:
            new = np.ones(len(ids), dtype=bool)
            new[1:] = ids[1:] != ids[:-1]
            rank = distinct + np.cumsum(new) - 1
            shard_of = rank // size
            starts += ids[new & (rank % size == 0) & (rank > 0)].tolist()
            distinct += int(new.sum())
        edges = np.flatnonzero(np.diff(shard_of)) + 1
        for begin, end in zip([0, *edges.tolist()], [*edges.tolist(), len(ids)], strict=True):
            shard = int(shard_of[begin])
            if shard != held_shard and held:
                counts[held_shard] = _write_list(folder, held_shard, held)
                held = []
            held.append(table.slice(begin, end - begin))
            held_shard = shard
    if held:
        counts[held_shard] = _write_list(folder, held_shard, held)
    return InputIndex(folder, cut if cut is not None else Shards(size, tuple(starts)), counts)


def _write_list(folder: Location, shard: int, pieces: list[pa.Table]) -> int:
    table = pa.concat_tables(pieces).sort_by(INPUT_ORDER)
    write_private_table(table, folder / shard_name(shard), durable=False)  # rebuilt by every run
    return len(table)


def remove_lists(layout: RunLayout) -> None:
    """The job is over (or its inputs are forgotten): its lists and any spool a killed discovery left go; the
    next run lists its inputs again."""
    storage.remove_tree(lists_folder(layout))
    storage.remove_tree(layout.private / SPOOL_FOLDER)
