"""What a pass still has to do, read shard by shard; and compacting shards as the stream finishes them.

The driver never holds a whole table: it reads one shard's manifest keys (and, for evaluated jobs, its
distance keys) at a time, and keeps only the pairs still to do and the error rows it may retry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pandas as pd

from .layout import RunLayout
from .records import compact_finished, compact_shard, read_shard, shards_with_rows

DONE_COLUMNS = ["anon_id", "level", "status", "error_kind"]


def shard_done(layout: RunLayout, shard: int, *, evaluated: bool) -> pd.DataFrame:
    """The shard's done rows (anon_id, level, status, error_kind); evaluated jobs also need the distances."""
    manifest = read_shard(layout.manifest, shard, DONE_COLUMNS)
    if manifest is None:
        return pd.DataFrame(columns=DONE_COLUMNS)
    manifest = manifest.drop_duplicates(["anon_id", "level"], keep="last")
    manifest["level"] = manifest["level"].astype(float)
    if evaluated:
        distances = read_shard(layout.distances, shard, ["anon_id", "level"])
        if distances is None:
            return manifest.iloc[0:0]
        # Lists, not Series: iterating an Arrow-backed column is ten times slower.
        keys = set(zip(distances["anon_id"].tolist(), distances["level"].astype(float).tolist(), strict=True))
        pairs = zip(manifest["anon_id"].tolist(), manifest["level"].tolist(), strict=True)
        done = [key in keys for key in pairs]
        manifest = manifest[done]
    return manifest


def done_by_shard(layout: RunLayout, shards: Iterable[int], *, evaluated: bool):
    """(shard, done rows) for each of these shards that has rows; shards with none are skipped unread."""
    has_rows = shards_with_rows(layout)
    for shard in shards:
        if shard in has_rows:
            yield shard, shard_done(layout, shard, evaluated=evaluated)


class ShardCompactor:
    """Counts the pairs still planned per shard and compacts a shard as soon as its last one is reported.

    Ray reports a batch after its parts are written, so a shard whose count reaches zero has no writer left.
    """

    def __init__(self, layout: RunLayout, planned: Counter) -> None:
        self.layout = layout
        self.left = Counter(planned)

    def update(self, batch: pd.DataFrame) -> None:
        if "shard" not in batch:
            return
        for shard, n in batch["shard"].value_counts().items():
            self.left[int(shard)] -= int(n)
            if self.left[int(shard)] <= 0:
                del self.left[int(shard)]
                compact_shard(self.layout, int(shard))

    def finish(self) -> None:
        """Compact whatever else has finished parts (e.g. a pair counted in another shard)."""
        compact_finished(self.layout)
