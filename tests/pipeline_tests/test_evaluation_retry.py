"""Evaluation errors are classified like anonymize errors: a transient one (a read that failed, out of memory) is
redone on every rerun, and every evaluation error with --retry-errors; the shard marker counts them, so planning
from the marker and from the rows agree."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
from PIL import Image, ImageFilter
from samples import write_faces

from evaluation import DISTANCES_SCHEMA
from pipeline.execution.evaluate_stage import _mark_transient_evaluations
from pipeline.folder.layout import RunLayout
from pipeline.tables.batch_parts import write_batch
from pipeline.tables.compaction import compact_finished, forget_pairs
from pipeline.tables.markers import read_marker
from pipeline.tables.resume import shard_todo
from pipeline.tables.row_errors import TRANSIENT
from pipeline.tables.shards import plan_shards, shard_name

IDS = [f"{i:02x}" * 12 for i in range(8)]  # sorted anon_ids: one shard of 8
SIZE = (1000, 1.5e9)  # what discovery saw of each input file: (size, mtime)


def test_a_read_that_fails_in_the_evaluation_stage_is_retried_on_rerun_and_every_pair_is_evaluated_once(cli, tmp_path):
    originals, theirs, out = tmp_path / "orig", tmp_path / "theirs", tmp_path / "out"
    ids = write_faces(originals, 4, size=(64, 64))
    for rel in ids:
        target = theirs / rel.replace(".jpg", ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(originals / rel).filter(ImageFilter.GaussianBlur(3)).save(target)
    # Two outputs that the evaluation actor cannot read: discovery sees a file, reading it is an I/O error (EIO
    # from /proc/self/mem at offset 0, in the reading process itself).
    broken = [theirs / rel.replace(".jpg", ".png") for rel in ids[:2]]
    saved = {path: path.read_bytes() for path in broken}
    for path in broken:
        path.unlink()
        path.symlink_to("/proc/self/mem")
    argv = ("evaluate", "--originals", str(originals), "--anonymized", str(theirs), "--out", str(out))

    status, _, err = cli(*argv)

    assert status == 0, err
    manifest = pd.read_parquet(out / "manifest.parquet")
    failed = manifest[manifest["status"] != "ok"]
    assert len(manifest) == 4 and len(failed) == 2
    assert (failed["error_kind"] == TRANSIENT).all() and failed["error"].str.startswith("read_failed").all()
    assert read_marker(RunLayout.at(str(out)), 0)["transient_errors"] == 2

    for path, data in saved.items():
        path.unlink()
        path.write_bytes(data)
    status, _, err = cli(*argv)

    assert status == 0, err
    assert "evaluate: 2/2 outputs done" in err  # only the two that failed: the others were done
    manifest = pd.read_parquet(out / "manifest.parquet")
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    assert len(manifest) == 4 and (manifest["status"] == "ok").all()
    assert manifest["anon_id"].is_unique
    assert sorted(distances["anon_id"]) == sorted(manifest["anon_id"])  # one recognizer: one row per pair
    assert (distances["status"] != "error").all()
    assert read_marker(RunLayout.at(str(out)), 0)["transient_errors"] == 0


def failed_evaluation_shard(tmp_path) -> RunLayout:
    """Shard 0 with every pair done at level 0.5, written with the product's batch writer and compacted as a job
    does; IDS[3] has an "ok" manifest row but a distance row whose evaluation failed (not transiently)."""
    layout = RunLayout.at(str(tmp_path / "out"))
    layout.prepare(overwrite=False)
    plan_shards(layout, IDS, 8)
    for aid in IDS:
        row = {"anon_id": aid, "level": 0.5, "status": "ok", "source_size": SIZE[0], "source_mtime": SIZE[1]}
        failed = aid == IDS[3]
        distance = dict.fromkeys(DISTANCES_SCHEMA.names) | {
            "anon_id": aid,
            "level": 0.5,
            "recognizer": "VGG-Face",
            "metric": "cosine",
            "threshold": 0.4,
            "face_original": not failed,
            "status": "error" if failed else "ok",
            "error": "original: ValueError" if failed else None,
        }
        write_batch(layout, [row], [distance])
    compact_finished(layout)
    return layout


def seen() -> dict:
    return dict.fromkeys(IDS, SIZE)


def strip_marker(layout: RunLayout) -> None:
    """Rewrite shard 0's manifest without its marker: planning must then read the rows."""
    path = layout.manifest / shard_name(0)
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({}), path)


def test_retry_errors_redoes_failed_evaluations_and_the_marker_counts_them(tmp_path):
    layout = failed_evaluation_shard(tmp_path)
    assert read_marker(layout, 0)["evaluation_errors"] == 1
    for use_marker in (True, False):
        if not use_marker:
            strip_marker(layout)
        # Not transient: done on a plain rerun, redone with --retry-errors.
        assert shard_todo(layout, 0, seen(), [0.5], evaluated=True) == ({}, set())
        todo, forget = shard_todo(layout, 0, seen(), [0.5], evaluated=True, retry_errors=True)
        assert todo == {IDS[3]: [0.5]} and forget == {(IDS[3], 0.5)}, use_marker
        # An anonymize-only job does not redo evaluations.
        assert shard_todo(layout, 0, seen(), [0.5], evaluated=False, retry_errors=True) == ({}, set())


def test_forgetting_a_failed_evaluation_updates_the_marker(tmp_path):
    layout = failed_evaluation_shard(tmp_path)
    forget_pairs(layout, {(IDS[3], 0.5)})
    marker = read_marker(layout, 0)
    assert marker["evaluation_errors"] == 0 and marker["ids"] == len(IDS) - 1


def test_out_of_memory_and_io_failures_of_an_evaluation_are_transient_other_failures_are_not():
    def distance(aid, error):
        return {"anon_id": aid, "level": 0.5, "status": "error", "error": error}

    rows = [{"anon_id": aid, "level": 0.5, "status": "ok"} for aid in "abcd"]
    distances = [
        distance("a", "original: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"),
        distance("b", "OSError: [Errno 5] Input/output error"),
        distance("c", "anonymized: ValueError: Face could not be detected"),
        {"anon_id": "d", "level": 0.5, "status": "ok", "error": None},
    ]
    _mark_transient_evaluations(rows, distances)

    assert [(r["status"], r.get("error_kind")) for r in rows] == [
        ("error", TRANSIENT),
        ("error", TRANSIENT),
        ("ok", None),
        ("ok", None),
    ]
    assert rows[0]["error"].startswith("out_of_memory") and rows[1]["error"].startswith("read_failed")
    # The public text is the reason's fixed one; the failure's own words are only the private detail.
    assert "Errno" not in rows[1]["error"] and "Errno 5" in rows[1]["error_detail"]
