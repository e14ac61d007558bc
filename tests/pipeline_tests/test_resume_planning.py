"""Resume planning from shard markers: what it skips unread must be exactly what reading would have found done.

No Ray and no model: the rows are written with the product's own batch writer and compacted as a job does.
"""

from __future__ import annotations

import itertools

import pyarrow.parquet as pq
import pytest

from evaluation import DISTANCES_SCHEMA, EvaluationSettings
from pipeline.folder.layout import RunLayout
from pipeline.tables.batch_parts import write_batch
from pipeline.tables.compaction import compact_finished
from pipeline.tables.markers import MARKER_KEY, read_marker
from pipeline.tables.resume import shard_todo
from pipeline.tables.row_errors import INPUT, TRANSIENT
from pipeline.tables.shards import plan_shards, shard_name

IDS = [f"{i:02x}" * 12 for i in range(8)]  # sorted anon_ids: one shard of 8
SIZE = (1000, 1.5e9)  # what discovery saw of each input file: (size, mtime)


def finished_shard(tmp_path, *, errors=None, levels=(0.5,), evaluated=True) -> RunLayout:
    """A folder whose shard 0 holds IDS at `levels`, compacted; `errors`: anon_id -> error_kind."""
    layout = RunLayout.at(str(tmp_path / "out"))
    layout.prepare(overwrite=False)
    plan_shards(layout, IDS, 8)
    errors = errors or {}
    for aid, level in itertools.product(IDS, levels):
        failed = aid in errors
        row = {
            "anon_id": aid,
            "level": level,
            "status": "error" if failed else "ok",
            "error": "corrupt: image is truncated or corrupt" if failed else None,
            "error_kind": errors.get(aid),
            "source_size": SIZE[0],
            "source_mtime": SIZE[1],
        }
        distance = dict.fromkeys(DISTANCES_SCHEMA.names) | {
            "anon_id": aid,
            "level": level,
            "recognizer": "VGG-Face",
            "metric": "cosine",
            "threshold": 0.4,
            "face_original": True,
            "status": row["status"],
        }
        distances = [distance] if evaluated else None
        write_batch(layout, [row], distances)
    compact_finished(layout)
    return layout


def seen(ids=IDS, size=SIZE) -> dict:
    return dict.fromkeys(ids, size)


def strip_marker(layout: RunLayout) -> None:
    """Rewrite shard 0's manifest without its marker: planning must then read the rows."""
    path = layout.manifest / shard_name(0)
    table = pq.read_table(path)
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != MARKER_KEY}
    pq.write_table(table.replace_schema_metadata(metadata), path)


def test_a_finished_shard_is_planned_from_its_marker_alone(tmp_path):
    layout = finished_shard(tmp_path)
    marker = read_marker(layout, 0)
    assert marker["ids"] == len(IDS) and marker["grid"] and marker["evaluated"] and marker["levels"] == [0.5]
    # Its other tables are not opened: garbage in their place changes nothing.
    for folder in (layout.distances, layout.outputs):
        (folder / shard_name(0)).write_bytes(b"not parquet")

    assert shard_todo(layout, 0, seen(), [0.5], evaluated=True) == ({}, set())


@pytest.mark.parametrize(
    ("case", "ids", "levels", "evaluated"),
    [
        ("an image added to the shard", [*IDS, "ff" * 12], [0.5], True),
        ("an image gone from the input", IDS[:-1], [0.5], True),
        ("a new level", IDS, [0.5, 0.7], True),
        ("same images, fewer levels", IDS, [], True),
    ],
)
def test_the_marker_plans_what_reading_the_rows_plans(tmp_path, case, ids, levels, evaluated):
    layout = finished_shard(tmp_path)
    fast = shard_todo(layout, 0, seen(ids), levels, evaluated=evaluated)
    strip_marker(layout)
    slow = shard_todo(layout, 0, seen(ids), levels, evaluated=evaluated)

    assert fast == slow, case
    expected = {aid: [lv for lv in levels if aid not in IDS or lv != 0.5] for aid in ids}
    assert fast[0] == {aid: todo for aid, todo in expected.items() if todo}, case


def test_an_anonymize_only_shard_is_not_done_for_an_evaluated_job(tmp_path):
    layout = finished_shard(tmp_path, evaluated=False)
    assert not read_marker(layout, 0)["evaluated"]

    assert shard_todo(layout, 0, seen(), [0.5], evaluated=False) == ({}, set())
    todo, _ = shard_todo(layout, 0, seen(), [0.5], evaluated=True)
    assert todo == {aid: [0.5] for aid in IDS}


@pytest.mark.parametrize("use_marker", [True, False])
def test_error_rows_are_retried_as_their_kind_says(tmp_path, use_marker):
    transient, broken = IDS[0], IDS[1]
    layout = finished_shard(tmp_path, errors={transient: TRANSIENT, broken: INPUT})
    if not use_marker:
        strip_marker(layout)
    marker = read_marker(layout, 0)
    assert marker is None or (marker["transient_errors"], marker["other_errors"]) == (1, 1)

    # A transient error is retried; an input error only once its file has changed, or with --retry-errors.
    todo, forget = shard_todo(layout, 0, seen(), [0.5], evaluated=True)
    assert todo == {transient: [0.5]} and forget == {(transient, 0.5)}
    changed = seen() | {broken: (SIZE[0] + 1, SIZE[1])}
    todo, forget = shard_todo(layout, 0, changed, [0.5], evaluated=True)
    assert todo == {transient: [0.5], broken: [0.5]} and forget == {(transient, 0.5), (broken, 0.5)}
    todo, _ = shard_todo(layout, 0, seen(), [0.5], evaluated=True, retry_errors=True)
    assert todo == {transient: [0.5], broken: [0.5]}


def test_a_kill_between_a_shard_file_and_deleting_its_parts_counts_no_row_twice(tmp_path):
    """The state a kill leaves after compaction wrote the shard files and before it deleted the parts."""
    import shutil

    from pipeline.outputs.finalize import ManifestOverview, restate_thresholds
    from pipeline.tables.compaction import compact_shard
    from pipeline.tables.read import read_shard, table_files
    from pipeline.tables.shards import batch_parts

    layout = RunLayout.at(str(tmp_path / "out"))
    layout.prepare(overwrite=False)
    plan_shards(layout, IDS, 8)
    for aid in IDS:
        row = {"anon_id": aid, "level": 0.5, "status": "ok", "output_path": f"images/level=0.50/{aid}.png"}
        distance = dict.fromkeys(DISTANCES_SCHEMA.names) | {
            "anon_id": aid,
            "level": 0.5,
            "recognizer": "VGG-Face",
            "metric": "cosine",
            "distance": 0.5,
            "threshold": 0.4,
            "cleared": True,
            "face_original": True,
            "status": "ok",
        }
        write_batch(layout, [row], [distance])
    folders = (layout.manifest, layout.outputs, layout.distances)
    kept = tmp_path / "parts"
    for folder in folders:
        (kept / folder.name).mkdir(parents=True)
        for part in batch_parts(folder):
            shutil.copy2(part, kept / folder.name / part.name)
    assert compact_shard(layout, 0)
    for folder in folders:  # the parts back, as if their deletion never happened
        for part in (kept / folder.name).iterdir():
            shutil.copy2(part, folder / part.name)
        assert len(batch_parts(folder)) == len(IDS)

    # Every reader of the product sees each row once.
    for folder in folders:
        assert table_files(folder) == [folder / shard_name(0)]
        assert sorted(read_shard(folder, 0)["anon_id"]) == IDS
    assert ManifestOverview.read(layout).counts["rows"] == len(IDS)
    partials, *_ = restate_thresholds(layout.distances, EvaluationSettings(recognizers=("VGG-Face",)))
    assert partials[(0.5, "VGG-Face")].n_images == len(IDS)
    # The next run's compaction deletes the parts and leaves the same rows.
    assert compact_finished(layout) == [0]
    for folder in folders:
        assert not batch_parts(folder) and sorted(read_shard(folder, 0)["anon_id"]) == IDS
