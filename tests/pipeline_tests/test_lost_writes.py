"""Writes the store acknowledged and lost: a run folder on S3 (moto over HTTP) behind tests/faultproxy.py, whose
"drop" fault answers a PUT with 200 and the body's ETag and never stores it.

Before pipeline.tables.landed, a lost shard file of the distances was followed by deleting the parts it had merged
(the rows were gone for good, and the shard's marker, which said every pair had its distances, kept resume
from redoing them), and a lost batch part or image went unnoticed: the job said it had finished. Now a
compaction reads its shard files back before deleting anything, and a pass checks that each of its pairs has
its rows and image; a pair that has not is redone by the next run.

No Ray and no model: rows are written with the product's batch writer and compacted as a job does.
"""

from __future__ import annotations

import itertools
import os

import pandas as pd
import pytest

from evaluation import DISTANCES_SCHEMA
from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.read_back import TRIES, LostWrite
from pipeline.folder.secret import load_secret
from pipeline.tables.batch_parts import write_batch
from pipeline.tables.compaction import compact_finished
from pipeline.tables.landed import check_pass
from pipeline.tables.markers import read_marker
from pipeline.tables.read import read_parts
from pipeline.tables.resume import shard_todo
from pipeline.tables.shards import batch_parts, load_shards, plan_shards

pytestmark = pytest.mark.slow
faultproxy = pytest.importorskip("faultproxy")

IDS = [f"{i:02x}" * 12 for i in range(4)]  # sorted anon_ids: one shard
LEVELS = (0.3, 0.6)
SIZE = (1000, 1.5e9)


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """The session's S3 server behind a fault proxy; s3fs clients made in the test go through it."""
    import fsspec

    with faultproxy.FaultProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        fsspec.get_filesystem_class("s3").clear_instance_cache()
        yield proxy
    fsspec.get_filesystem_class("s3").clear_instance_cache()


@pytest.fixture
def layout(s3_server, proxy, request) -> RunLayout:
    bucket = s3_server.bucket("lost-writes")
    return RunLayout.at(f"{bucket}/{request.node.name.replace('[', '-').rstrip(']')}-{os.getpid()}")


def write_pairs(layout: RunLayout) -> set[tuple[str, float]]:
    """Each (image, level) pair of IDS x LEVELS as its own batch, with its image, as the stages write them."""
    plan_shards(layout, IDS, 100)
    for aid, level in itertools.product(IDS, LEVELS):
        path = layout.image_path(level, aid)
        storage.write_bytes(path, f"png of {aid} at {level}".encode())
        row = {"anon_id": aid, "level": level, "sample": 0, "status": "ok", "output_path": layout.relative(path)}
        row |= {"source_size": SIZE[0], "source_mtime": SIZE[1]}
        distance = dict.fromkeys(DISTANCES_SCHEMA.names) | {
            "anon_id": aid,
            "level": level,
            "recognizer": "Facenet",
            "metric": "cosine",
            "threshold": 0.4,
            "face_original": True,
            "status": "ok",
        }
        write_batch(layout, [row], [distance])
    return set(itertools.product(IDS, LEVELS))


def pairs(folder) -> list[tuple[str, float]]:
    rows = read_parts(folder)
    return sorted(zip(rows["anon_id"], rows["level"].astype(float), strict=True))


def todo(layout: RunLayout) -> dict[str, list[float]]:
    return shard_todo(layout, 0, dict.fromkeys(IDS, SIZE), LEVELS, evaluated=True)[0]


@pytest.mark.parametrize("table", ["manifest", "distances"])
def test_a_lost_shard_file_is_written_again_before_its_parts_go(proxy, layout, table):
    expected = write_pairs(layout)
    lost = proxy.inject("drop", method="PUT", path=rf"/{table}\.parquet/part-00000\.parquet$", count=1)

    compact_finished(layout)

    assert lost.used == 1, proxy.requests[-20:]
    assert pairs(layout.manifest) == pairs(layout.distances) == sorted(expected)
    assert not batch_parts(layout.manifest) and not batch_parts(layout.distances)
    assert read_marker(layout, 0)["evaluated"] and todo(layout) == {}


def test_a_store_that_keeps_losing_the_distances_stops_the_compaction_and_keeps_the_rows(proxy, layout):
    # On main the parts were deleted after the lost write and the marker said "evaluated": 8 pairs lost for good.
    expected = write_pairs(layout)
    proxy.inject("drop", method="PUT", path=r"/distances\.parquet/part-00000\.parquet$", count=TRIES)

    with pytest.raises(LostWrite, match="acknowledged distances.parquet/part-00000.parquet 3 times"):
        compact_finished(layout)

    assert len(batch_parts(layout.manifest)) == len(batch_parts(layout.distances)) == len(expected)
    assert read_marker(layout, 0) is None  # the manifest, written last, was not reached
    # The next run: the store keeps writes again; its first compaction merges the kept parts.
    proxy.clear()
    compact_finished(layout)
    assert pairs(layout.manifest) == pairs(layout.distances) == sorted(expected)
    assert todo(layout) == {}


@pytest.mark.parametrize(("table", "level"), [("manifest", 0.3), ("distances", 0.6)])
def test_a_lost_batch_part_fails_the_pass_and_the_next_run_redoes_its_pair(proxy, layout, table, level):
    # Pairs are written in order (IDS[0], 0.3), (IDS[0], 0.6), ...: the first PUT of a batch part of `table`
    # for shard 0 after `skip` such PUTs is that of (IDS[0], level).
    skip = LEVELS.index(level)
    if skip:
        proxy.inject("slow", method="PUT", path=rf"/{table}\.parquet/part-00000-", count=skip)
    lost = proxy.inject("drop", method="PUT", path=rf"/{table}\.parquet/part-00000-", count=1)
    expected = write_pairs(layout)
    assert lost.used == 1
    compact_finished(layout)

    with pytest.raises(LostWrite, match=r"^1 pair\(s\) finished but the store does not have"):
        check_pass(layout, [(0, expected)], evaluated=True)

    assert todo(layout) == {IDS[0]: [level]}
    left = pairs(layout.manifest if table == "distances" else layout.distances)
    assert left == sorted(expected)  # the other table's row stays; the redo replaces it (newest rows win)


def test_an_ok_row_whose_image_was_lost_is_forgotten_and_redone(proxy, layout):
    lost = proxy.inject("drop", method="PUT", path=rf"/images/level(=|%3D)0\.60*/{IDS[2]}\.png$", count=1)
    expected = write_pairs(layout)
    assert lost.used == 1, [r for r in proxy.requests if "png" in r]
    compact_finished(layout)
    assert (IDS[2], 0.6) in pairs(layout.manifest)

    with pytest.raises(LostWrite, match=r"^1 pair\(s\)"):
        check_pass(layout, [(0, expected)], evaluated=True)

    assert (IDS[2], 0.6) not in pairs(layout.manifest) and (IDS[2], 0.6) not in pairs(layout.distances)
    assert todo(layout) == {IDS[2]: [0.6]}


def test_a_pass_whose_writes_all_landed_passes_the_check(proxy, layout):
    expected = write_pairs(layout)
    compact_finished(layout)

    check_pass(layout, [(0, expected)], evaluated=True)

    manifest = read_parts(layout.manifest)
    assert len(manifest) == len(expected) and not manifest.duplicated(["anon_id", "level"]).any()
    assert isinstance(manifest, pd.DataFrame)


def test_a_lost_write_of_the_secret_or_the_shard_cut_is_made_again(proxy, layout):
    # Either lost, the next run could not resume: no secret (it refuses the folder), or another shard cut.
    secret = proxy.inject("drop", method="PUT", path=r"/private/secret$", count=1)
    cut = proxy.inject("drop", method="PUT", path=r"/manifest\.parquet/_shards\.json$", count=1)

    value = load_secret(layout)
    shards = plan_shards(layout, IDS, 2)

    assert secret.used == cut.used == 1
    assert bytes.fromhex(layout.secret_file.read_text()) == value
    assert load_shards(layout) == shards and shards.count == 2
