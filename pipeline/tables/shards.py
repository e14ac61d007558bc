"""Units of work fixed by the input: shards of anon_ids in the run's keyed order, and their file names.

A folder's first run sorts every input's anon_id (an HMAC of the image id with the run's secret) and cuts
that order every --shard-size ids; shard k holds the ids from `starts[k-1]` up to `starts[k]`. The cut is
kept in manifest.parquet/_shards.json (pyarrow and pandas skip names starting with "_"), so it holds for
every later run of the folder: images added to the input later fall into the shard whose anon_id range
holds them (shards grow, names never move), and neither the file order nor Ray's batching changes which
shard a pair belongs to. The names and boundaries are anon_ids and numbers: nothing about source order or
names (docs/privacy.md).

Every table has, per shard, one file `part-00042.parquet` (written whole; the manifest's last, which makes
it the shard's "done" marker) and, while the shard is being worked on, small batch parts
`part-00042-<hash>.parquet` that the driver compacts into it (pipeline.tables.compaction).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.read_back import write_bytes_checked
from pipeline.folder.storage import Location

SHARDS_FILE = "_shards.json"
# The compacted file of a shard, and a batch part of it; anything else in a table folder is not ours.
SHARD_NAME = re.compile(r"^part-(\d{5,})\.parquet$")
BATCH_NAME = re.compile(r"^part-(\d{5,})-[0-9a-f]{32}\.parquet$")


@dataclass(frozen=True)
class Shards:
    size: int
    starts: tuple[str, ...]  # the first anon_id of shards 1, 2, ... in sorted order

    @classmethod
    def cut(cls, anon_ids: Iterable[str], size: int) -> Shards:
        ordered = sorted(set(anon_ids))
        return cls(size, tuple(ordered[size::size]))

    @property
    def count(self) -> int:
        return len(self.starts) + 1

    def of(self, anon_id: str) -> int:
        return bisect.bisect_right(self.starts, anon_id)


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def batch_name(shard: int, rows: Sequence[dict]) -> str:
    """A batch part's name, from the (anon_id, level) pairs it holds: a retried Ray task rewrites its own
    file instead of adding a second copy of its rows."""
    pairs = sorted(f"{row['anon_id']}@{float(row['level']):.9g}" for row in rows)
    return f"part-{shard:05d}-{hashlib.sha256(chr(10).join(pairs).encode()).hexdigest()[:32]}.parquet"


def shard_of_name(name: str) -> int | None:
    match = SHARD_NAME.match(name) or BATCH_NAME.match(name)
    return int(match.group(1)) if match else None


def batch_parts(folder: Location, shard: int | None = None) -> list[Location]:
    """Batch parts in a table folder (of one shard, or all), by name."""
    if not folder.is_dir():
        return []
    pattern = f"part-{shard:05d}-*.parquet" if shard is not None else "part-*-*.parquet"
    return sorted(p for p in folder.glob(pattern) if BATCH_NAME.match(p.name))


def shard_files(folder: Location) -> dict[int, Location]:
    """The compacted file of each shard that has one."""
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.glob("part-*.parquet") if (m := SHARD_NAME.match(p.name))}


def plan_shards(layout: RunLayout, anon_ids: Iterable[str], size: int, cut: Shards | None = None) -> Shards:
    """The folder's shards: those its first run cut, or a new cut of these ids (written before any row); `cut`:
    that new cut, made already (pipeline.tables.input_lists)."""
    found = load_shards(layout)
    if found is not None:
        return found
    shards = cut if cut is not None else Shards.cut(anon_ids, size)
    cut = json.dumps({"size": shards.size, "starts": list(shards.starts)}).encode()
    write_bytes_checked(storage.write_bytes, layout.manifest / SHARDS_FILE, cut)  # read back: workers need it
    _cache.clear()
    return shards


_cache: dict[tuple, Shards] = {}


def load_shards(layout: RunLayout) -> Shards | None:
    """The folder's shards (cached per file version: every batch of every actor asks)."""
    path = layout.manifest / SHARDS_FILE
    found = storage.version(path)
    if found is None:
        return None
    key = (str(path), found)
    if key not in _cache:
        data = json.loads(path.read_text())
        _cache.clear()
        _cache[key] = Shards(int(data["size"]), tuple(data["starts"]))
    return _cache[key]
