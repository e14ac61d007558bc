"""What a pass still has to do, shard by shard; and compacting shards as the stream finishes them.

The driver never holds a whole table. A shard whose manifest marker (pipeline.tables.markers.shard_marker) says
it holds exactly this pass's images at every level it asks for is done without being read, but for its
error rows (a filtered read), which a rerun may retry. Any other shard is read: its manifest keys and, for
evaluated jobs, its distance keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pandas as pd

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.lock_common import ensure_held
from pipeline.tables.compaction import compact_finished, compact_shard
from pipeline.tables.markers import ids_digest, read_marker
from pipeline.tables.read import read_shard, shards_with_rows
from pipeline.tables.row_errors import TRANSIENT
from pipeline.tables.shards import shard_name

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
        # Lists, not Series: iterating an Arrow-backed column is ten times slower. No level (another tool's
        # output) is NaN, which equals nothing: -1.0 as a key.
        keys = set(zip(distances["anon_id"].tolist(), _levels(distances["level"]), strict=True))
        pairs = zip(manifest["anon_id"].tolist(), _levels(manifest["level"]), strict=True)
        done = [key in keys for key in pairs]
        manifest = manifest[done]
    return manifest


def _levels(levels: pd.Series) -> list[float]:
    return levels.astype(float).fillna(-1.0).tolist()


def done_by_shard(layout: RunLayout, shards: Iterable[int], *, evaluated: bool):
    """(shard, done rows) for each of these shards that has rows; shards with none are skipped unread."""
    has_rows = shards_with_rows(layout)
    for shard in shards:
        if shard in has_rows:
            yield shard, shard_done(layout, shard, evaluated=evaluated)


def shard_todo(
    layout: RunLayout,
    shard: int,
    seen_now: dict[str, tuple | None],
    levels: Iterable[float],
    *,
    evaluated: bool,
    retry_errors: bool = False,
) -> tuple[dict[str, list[float]], set[tuple[str, float]]]:
    """The levels each of this shard's images still needs, by anon_id (images with none left are absent),
    and the error rows among them to forget before they are redone.

    `seen_now`: the shard's images in this pass, anon_id -> (size, mtime) of the input now (None if not
    known), so that an input error is retried once the file has changed. Call after `compact_finished`:
    each shard is then at most one file per table.
    """
    levels = [float(level) for level in levels]
    marker = read_marker(layout, shard)
    if _complete(marker, seen_now, levels, evaluated):
        # A marker from before evaluation errors were counted may hide some: --retry-errors then reads.
        failed_evaluations = evaluated and retry_errors and marker.get("evaluation_errors", 1)
        if (
            not marker["transient_errors"]
            and not (marker["other_errors"] and (retry_errors or _any_known(seen_now)))
            and not failed_evaluations
        ):
            return {}, set()
        path = layout.manifest / shard_name(shard)
        rows = storage.read_table(path, columns=DONE_COLUMNS, filters=[("status", "!=", "ok")]).to_pandas()
        rows["level"] = rows["level"].astype(float)
        retry = pairs_to_retry(layout, shard, rows, seen_now, retry_errors, evaluated=evaluated)
        retry = {(a, lv) for a, lv in retry if a in seen_now}
        retry = {(a, lv) for a, lv in retry if lv in levels}
        todo: dict[str, list[float]] = {}
        for aid, level in sorted(retry):
            todo.setdefault(aid, []).append(level)
        return todo, retry
    rows = shard_done(layout, shard, evaluated=evaluated)
    if rows.empty:
        return {aid: list(levels) for aid in seen_now}, set()
    retry = pairs_to_retry(layout, shard, rows, seen_now, retry_errors, evaluated=evaluated)
    retry = {(a, lv) for a, lv in retry if a in seen_now and lv in levels}
    done = set(zip(rows["anon_id"].tolist(), rows["level"].tolist(), strict=True)) - retry
    todo = {}
    for aid in seen_now:
        need = [level for level in levels if (aid, level) not in done]
        if need:
            todo[aid] = need
    return todo, retry


def _complete(marker: dict | None, seen_now: dict, levels: list[float], evaluated: bool) -> bool:
    """Whether the marked shard has a row for every one of these images at every one of these levels."""
    return (
        marker is not None
        and marker["grid"]
        and marker["ids"] == len(seen_now)
        and (marker["evaluated"] or not evaluated)
        and set(levels) <= set(marker["levels"])
        and marker["ids_sha256"] == ids_digest(sorted(seen_now))
    )


def _any_known(seen_now: dict) -> bool:
    return any(v is not None for v in seen_now.values())


def pairs_to_retry(
    layout: RunLayout,
    shard: int,
    manifest: pd.DataFrame,
    seen_now: dict[str, tuple | None],
    retry_errors: bool,
    *,
    evaluated: bool = False,
) -> set[tuple[str, float]]:
    """Error rows of a shard that a rerun redoes: transient ones (an evaluation that failed transiently has a
    transient manifest row: pipeline.execution.evaluate_stage), those of inputs that changed since, or all with
    --retry-errors, which in an evaluated job includes pairs whose evaluation failed. `manifest`: the shard's done
    rows (or just its error rows)."""
    errors = manifest[manifest["status"] != "ok"]
    keys = list(zip(errors["anon_id"].tolist(), errors["level"].astype(float).tolist(), strict=True))
    if retry_errors:
        return set(keys) | (failed_evaluations(layout, shard) if evaluated else set())
    if errors.empty:
        return set()
    transient = (errors["error_kind"] == TRANSIENT).tolist()
    retry = {key for key, t in zip(keys, transient, strict=True) if t}
    # An input error is worth another try only if the file is no longer what failed.
    check = [key for key, t in zip(keys, transient, strict=True) if not t and seen_now.get(key[0]) is not None]
    if not check:
        return retry
    ids = sorted({aid for aid, _ in check})
    private = read_shard(
        layout.outputs, shard, ["anon_id", "level", "source_size", "source_mtime"], filters=[("anon_id", "in", ids)]
    )
    if private is None or private.empty:
        return retry
    columns = [private[c].tolist() for c in ("anon_id", "level", "source_size", "source_mtime")]
    seen_then = {(a, float(lv)): (size, mtime) for a, lv, size, mtime in zip(*columns, strict=True)}
    for key in check:
        if key in seen_then and seen_then[key] != seen_now[key[0]]:
            retry.add(key)
    return retry


def failed_evaluations(layout: RunLayout, shard: int) -> set[tuple[str, float]]:
    """(anon_id, level) of a shard's pairs with a distance row whose evaluation failed (status "error")."""
    rows = read_shard(layout.distances, shard, ["anon_id", "level", "status"], filters=[("status", "==", "error")])
    if rows is None or rows.empty:
        return set()
    return set(zip(rows["anon_id"].tolist(), rows["level"].astype(float).tolist(), strict=True))


class ShardCompactor:
    """Counts the pairs still planned per shard and compacts a shard as soon as its last one is reported.

    Ray reports a batch after its parts are written, so a shard whose count reaches zero has no writer left.
    """

    def __init__(self, layout: RunLayout, planned: Counter) -> None:
        self.layout = layout
        self.left = Counter(planned)

    def update(self, batch: pd.DataFrame) -> None:
        ensure_held(self.layout.lock_file)  # before counting (and compacting) what the actors wrote
        if "shard" not in batch:
            return
        for shard, n in batch["shard"].value_counts().items():
            self.left[int(shard)] -= int(n)
            if self.left[int(shard)] <= 0:
                del self.left[int(shard)]
                compact_shard(self.layout, int(shard))

    def finish(self) -> None:
        """Compact whatever else has finished parts (e.g. a pair counted in another shard)."""
        ensure_held(self.layout.lock_file)
        compact_finished(self.layout)
