"""A job's discovery, streamed: its inputs listed in batches (pipeline.execution.inputs.input_batches), each item
keyed (its anon_id, an HMAC under the run's secret; one item per local sample with --samples), labelled with who
is in it where the user said how to know (--identity-from folder, --identity-column), and spooled to disk, then
written as one list per shard under private/inputs/ (pipeline.tables.input_lists). The driver keeps the index:
the shard cut and a count per shard. Passes read one shard's list at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import PurePosixPath

import pyarrow as pa

from pipeline.execution.inputs import InputError, InputItem, InputSet, input_batches
from pipeline.folder.layout import RunLayout
from pipeline.folder.secret import anon_id, output_key
from pipeline.tables.input_lists import InputIndex, InputSpool, build_index
from pipeline.tables.schemas import INPUT_LIST_SCHEMA


def index_inputs(
    layout: RunLayout,
    inputs: InputSet,
    secret: bytes,
    *,
    shard_size: int,
    samples: int = 1,
    exclude=None,
    identity_from: str | None = None,
    identity_column: str | None = None,
) -> InputIndex:
    """List, key and shard the inputs; return the index of the per-shard lists (pipeline.tables.input_lists)."""
    labels_from = label_column(inputs, identity_column)
    spool = InputSpool(layout)
    try:
        position = 0
        for items, labels in input_batches(inputs, exclude, label_column=labels_from):
            rows = keyed_rows(items, labels, secret, samples, position if inputs.kind == "parquet" else None)
            spool.add(rows if identity_from != "folder" else rows.set_column(8, "identity", folder_labels(rows)))
            position += len(items)
        return build_index(layout, spool, shard_size)
    finally:
        spool.remove()


def label_column(inputs: InputSet, identity_column: str | None) -> str | None:
    """The Parquet column that says who is in each image, checked as pipeline.execution.inputs.identity_labels
    checks it."""
    if not identity_column:
        return None
    if inputs.kind != "parquet":
        raise InputError("--identity-column needs a Parquet input; for a folder pass --identity-from folder")
    import fsspec
    import pyarrow.dataset as pads

    fs, root = fsspec.core.url_to_fs(inputs.uri)
    if identity_column not in pads.dataset(root, filesystem=fs, format="parquet").schema.names:
        raise InputError(f"Parquet input has no column {identity_column!r}; pass --identity-column")
    return identity_column


def keyed_rows(
    items: list[InputItem],
    labels: list | None,
    secret: bytes,
    samples: int,
    position: int | None,
) -> pa.Table:
    """One INPUT_LIST_SCHEMA row per (item, local sample): sample 0 keeps the image's id as its key, sample s > 0
    is keyed by `output_key(id, s)` (pipeline.execution.job's keys); `position` is the first item's row in a
    Parquet input, None for a folder's (ordered by path: position 0)."""
    rows = [(n, item, sample) for n, item in enumerate(items) for sample in range(samples)]
    keys = [output_key(item.image_id, sample) if samples > 1 else item.image_id for _, item, sample in rows]
    # A twin's key is "id#k", which no label names.
    named = [
        None if labels is None or v is None or item.problem else str(v)
        for v, item in zip(labels or [None] * len(items), items, strict=True)
    ]
    columns = {
        "key": keys,
        "image_id": [item.image_id for _, item, _ in rows],
        "sample": [sample for _, _, sample in rows],
        "anon_id": [anon_id(secret, key) for key in keys],
        "source": [item.source for _, item, _ in rows],
        "size": [item.size for _, item, _ in rows],
        "mtime": [item.mtime for _, item, _ in rows],
        "problem": [item.problem for _, item, _ in rows],
        "identity": [named[n] for n, _, _ in rows],
        "position": [0] * len(rows) if position is None else [position + n for n, _, _ in rows],
    }
    return pa.table(columns, schema=INPUT_LIST_SCHEMA)


def folder_labels(rows: pa.Table) -> pa.Array:
    """--identity-from folder: the parent folder of each image (none for images at the top)."""
    parents = (PurePosixPath(i).parent.as_posix() for i in rows.column("image_id").to_pylist())
    return pa.array([None if p == "." else p for p in parents], pa.string())


def listed_items(index: InputIndex) -> Iterator[tuple[InputItem, dict]]:
    """Every listed item and its row (anon_id, image id, sample, identity), a shard at a time."""
    for _, table in index.lists():
        yield from items_of(table)


def items_of(table: pa.Table) -> Iterator[tuple[InputItem, dict]]:
    for row in table.to_pylist():
        yield InputItem(row["key"], row["source"], row["problem"], row["size"], row["mtime"]), row


class ListedItems:
    """A job's input items, read from its lists a shard at a time whenever iterated (shard order, then input
    order): what `InputSet.items` holds for a job that discovered its inputs."""

    def __init__(self, index: InputIndex) -> None:
        self.index = index

    def __iter__(self) -> Iterator[InputItem]:
        return (item for item, _ in listed_items(self.index))

    def __len__(self) -> int:
        return self.index.total


class KeyedIds(Mapping):
    """item key -> anon_id, computed (an HMAC under the run's secret) rather than held; iterating reads the
    lists (pipeline.tables.input_lists), whose anon_ids also come from the same HMAC."""

    def __init__(self, secret: bytes, index: InputIndex) -> None:
        self.secret, self.index = secret, index

    def __getitem__(self, key: str) -> str:
        return anon_id(self.secret, key)

    def __iter__(self) -> Iterator[str]:
        for _, table in self.index.lists():
            yield from table.column("key").to_pylist()

    def __len__(self) -> int:
        return self.index.total

    def values(self) -> Iterator[str]:  # in anon_id order by shard, not sorted within a shard
        for _, table in self.index.lists():
            yield from table.column("anon_id").to_pylist()


def attach_index(job, index: InputIndex, samples: int) -> None:
    """Give a pipeline.execution.job.Job its discovered inputs: the index, its items and anon_ids read through it."""
    job.index = index
    job.inputs = replace(job.inputs, items=ListedItems(index))
    job.anon_ids = KeyedIds(job.secret, index)
    job.sampled = samples > 1


class ListedIds:
    """The anon_ids of a job's inputs, for the gate's decision (pipeline.release.gate_decision): per step, those of
    the shards its rows fall in, read from the lists."""

    def __init__(self, index: InputIndex) -> None:
        self.index = index

    def covering(self, *frames) -> set[str]:
        """The listed anon_ids of every shard whose range holds an anon_id of these frames' rows."""
        found = [f["anon_id"] for f in frames if len(f)]
        if not found:
            return set()
        low = min(min(ids) for ids in found)
        high = max(max(ids) for ids in found)
        listed: set[str] = set()
        for shard in range(self.index.shards.of(low), self.index.shards.of(high) + 1):
            if self.index.counts.get(shard):
                listed.update(self.index.shard_list(shard).column("anon_id").to_pylist())
        return listed
