"""Streaming discovery (pipeline.execution.discovery, pipeline.tables.input_lists) and the gate's bounded decision
(pipeline.release.gate_decision): the same items, anon_ids, shards and released set as the whole-list versions,
with the driver holding counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from samples import write_faces

import pipeline.tables.input_lists as input_lists
import pipeline.tables.read as read
from evaluation import DISTANCES_SCHEMA
from pipeline.execution.discovery import KeyedIds, ListedIds, ListedItems, index_inputs, listed_items
from pipeline.execution.inputs import describe, discover
from pipeline.folder.layout import RunLayout
from pipeline.folder.secret import anon_id, output_key
from pipeline.outputs.report_document import input_digest
from pipeline.tables.schemas import MANIFEST_SCHEMA
from pipeline.tables.shards import Shards, plan_shards, shard_name

SECRET = b"s" * 32


@pytest.fixture
def small_steps(monkeypatch):
    """Spool files, row groups, ranges and decision steps of a few rows: every boundary is crossed."""
    monkeypatch.setattr(input_lists, "SPOOL_ROWS", 16)
    monkeypatch.setattr(input_lists, "SPOOL_GROUP", 4)
    monkeypatch.setattr(input_lists, "RANGE_ROWS", 8)
    monkeypatch.setattr(read, "ROWS_PER_STEP", 10)


def _folder_input(root):
    for i in range(60):
        folder = root / f"p{i % 5}" if i % 3 else root
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img-{i}.png").write_bytes(b"x")
    (root / "p-1").mkdir()
    (root / "p-1" / "z.jpg").write_bytes(b"y")  # "p-1/" sorts before "p0/" but after "p/..." nothing: path order
    (root / "notes.txt").write_text("not an image")
    excluded = root / "out" / "images"
    excluded.mkdir(parents=True)
    (excluded / "a.png").write_bytes(b"z")  # the job's own --out inside the input: never discovered
    return root / "out"


def _assert_same(tmp_path, uri, samples, size, exclude=None, **columns):
    """The lists equal the whole-list discovery: same items, anon_ids, cut, shards, and input order within each."""
    old = discover(uri, exclude=exclude, **columns)
    layout = RunLayout.at(str(tmp_path / f"run-{samples}-{size}"))
    layout.prepare(overwrite=False)
    index = index_inputs(
        layout, describe(uri, exclude=exclude, **columns), SECRET, shard_size=size, samples=samples, exclude=exclude
    )
    keys = [output_key(i.image_id, s) if samples > 1 else i.image_id for i in old.items for s in range(samples)]
    cut = Shards.cut((anon_id(SECRET, k) for k in keys), size)
    assert index.shards == cut
    by_shard: dict[int, list[str]] = {}
    for key in keys:
        by_shard.setdefault(cut.of(anon_id(SECRET, key)), []).append(key)
    assert {shard: table.column("key").to_pylist() for shard, table in index.lists()} == by_shard
    assert index.counts == {shard: len(found) for shard, found in by_shard.items()}
    old_items = {key: item for item in old.items for key in keys if key.split("\x00")[0] == item.image_id}
    for item, row in listed_items(index):
        assert row["anon_id"] == anon_id(SECRET, row["key"])
        expected = old_items[row["key"]]
        assert (item.source, item.size, item.mtime, item.problem) == (
            expected.source,
            expected.size,
            expected.mtime,
            expected.problem,
        )
    assert not (layout.private / ".inputs-spool").exists()  # the spool is gone once the lists are written
    return index


@pytest.mark.parametrize(("samples", "size"), [(1, 7), (2, 10), (1, 1000)])
def test_a_folder_streamed_gives_the_same_items_anon_ids_and_shards(tmp_path, small_steps, samples, size):
    out = _folder_input(tmp_path / "in")
    index = _assert_same(tmp_path, str(tmp_path / "in"), samples, size, exclude=out)
    assert index.total == 61 * samples  # 60 + p-1/z.jpg; not the excluded output, not the text file


def test_a_parquet_input_streamed_gives_the_same_items_with_its_twins(tmp_path, small_steps):
    ids = [f"id{i}" if i % 13 else "id5" for i in range(100)]  # id5 nine times: error rows "id5#k"
    pq.write_table(pa.table({"ident": ids, "img": [b"x"] * 100}), tmp_path / "in.parquet")
    for samples in (1, 3):
        index = _assert_same(tmp_path, str(tmp_path / "in.parquet"), samples, 9, id_column="ident", image_column="img")
        problems = [row["key"] for _, row in listed_items(index) if row["problem"] == "duplicate_id"]
        assert len(problems) == 9 * samples and {p.split("#")[0] for p in problems} == {"id5"}


def test_discovery_keeps_the_folders_cut_and_a_rerun_lists_new_images_into_it(tmp_path, small_steps):
    _folder_input(tmp_path / "in")
    layout = RunLayout.at(str(tmp_path / "run"))
    layout.prepare(overwrite=False)
    cut = plan_shards(layout, [anon_id(SECRET, f"x{i}") for i in range(40)], 8)
    index = index_inputs(layout, describe(str(tmp_path / "in")), SECRET, shard_size=3)
    assert index.shards == cut  # the folder's first cut holds: shards grow, names never move
    for shard, table in index.lists():
        assert {cut.of(a) for a in table.column("anon_id").to_pylist()} == {shard}


def test_the_job_holds_counts_and_reads_its_items_from_the_lists(tmp_path, tiny_sd):
    from pipeline.execution.job import prepare
    from pipeline.settings.config import build_settings

    write_faces(tmp_path / "in", 5, size=(32, 32))
    values = {"input": str(tmp_path / "in"), "out": str(tmp_path / "out"), "model": str(tiny_sd), "shard_size": 2}
    job = prepare(build_settings({**values, "samples": 2}), "anonymize")
    try:
        assert isinstance(job.inputs.items, ListedItems) and isinstance(job.anon_ids, KeyedIds)
        assert job.inputs.items and not isinstance(job.inputs.items, tuple)
        assert job.index.total == 10 and sum(job.index.counts.values()) == 10 and not job.samples
        files = sorted(p.name for p in (job.layout.private / "inputs").iterdir())
        assert files == [shard_name(s) for s in sorted(job.index.counts)]
        for item in job.inputs.items:
            image, sample = job.sample_of(item.image_id)
            assert job.anon_ids[item.image_id] == anon_id(job.secret, output_key(image, sample))
        identities = pq.read_table(job.layout.identities).to_pandas()
        assert sorted(identities["anon_id"]) == sorted(job.anon_ids.values()) and len(identities) == 10
        # The report's input digest, from the lists in order, equals the digest of the whole list sorted.
        streamed = input_digest(job.secret, job.index.sorted_anon_ids(), ordered=True)
        assert streamed == input_digest(job.secret, list(job.anon_ids.values()))
    finally:
        job.close()
    assert not (tmp_path / "out" / "private" / "inputs").exists()  # the lists end with the job


def _gate_folder(tmp_path, n=60, size=7):
    """A finished gate folder's manifest and distances, one file per shard (ladder 0.3, 0.6)."""
    layout = RunLayout.at(str(tmp_path / "gate"))
    layout.prepare(overwrite=False)
    ids = sorted(anon_id(SECRET, f"img{i}") for i in range(n))
    shards = plan_shards(layout, ids, size)
    rng = np.random.default_rng(3)
    for shard in range(shards.count):
        aids = [a for a in ids if shards.of(a) == shard]
        rows, distances = [], []
        for a in aids:
            for level in (0.3, 0.6):
                ok = rng.random() > 0.1
                status = "ok" if ok else "error"
                rows.append({"anon_id": a, "level": level, "t_boom": 3, "n_steps": 5, "status": status})
                rows[-1].update(error=None if ok else "corrupt: x", output_path=f"images/level={level:.2f}/{a}.png")
                for recognizer in ("VGG-Face", "Facenet"):
                    distance = float(rng.random())
                    distances.append({"anon_id": a, "level": level, "recognizer": recognizer, "metric": "cosine"})
                    distances[-1].update(distance=distance, status=status, threshold=0.4, face_original=True)
        manifest = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        pq.write_table(manifest, layout.manifest / shard_name(shard))
        layout.distances.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(distances, schema=DISTANCES_SCHEMA), layout.distances / shard_name(shard))
    return layout, ids


def test_the_gate_decides_step_by_step_and_releases_the_same_set(tmp_path, small_steps):
    from pipeline.execution.job import Job
    from pipeline.release.gate_decision import GATE_DISTANCE_COLUMNS, GATE_MANIFEST_COLUMNS, decide, decide_shard
    from pipeline.settings.config import build_settings
    from pipeline.settings.gate_policy import gate_thresholds

    layout, ids = _gate_folder(tmp_path)
    settings = build_settings({"input": "unused", "out": str(layout.root), "gate": True, "ladder": "0.3,0.6"})
    job = Job(settings, "run", layout, None, SECRET, None)
    current = set(ids[5:])  # images deleted from the input since are never released
    manifest = pq.read_table(layout.manifest, columns=GATE_MANIFEST_COLUMNS).to_pandas()
    distances = pq.read_table(layout.distances, columns=GATE_DISTANCE_COLUMNS).to_pandas()
    manifest, distances = manifest[manifest["anon_id"].isin(current)], distances[distances["anon_id"].isin(current)]
    whole_released, whole_withheld = decide_shard(manifest, distances, gate_thresholds(settings))
    assert 0 < len(whole_released) < len(current)

    class Listed(ListedIds):  # the lists of an input without the first five images
        def covering(self, *frames):
            return super().covering(*frames) & current

    index = _index_of(layout, ids)
    for given in (current, Listed(index)):
        decision = decide(job, given)
        assert decision.steps > 2  # several steps, each kept on disk, not in the driver
        assert (layout.private / ".gate-decision").is_dir()
        released, withheld = decision.released, decision.withheld
        key = ["anon_id", "level"]
        assert released.sort_values(key)[key].values.tolist() == whole_released.sort_values(key)[key].values.tolist()
        assert sorted(withheld["anon_id"]) == sorted(whole_withheld["anon_id"])
        assert decision.n_released == len(whole_released) and decision.n_withheld == len(whole_withheld)
        assert dict(decision.per_level) == whole_released["level"].astype(float).value_counts().to_dict()
        decision.remove()
        assert not (layout.private / ".gate-decision").exists()


def _index_of(layout, ids):
    """The index a discovery of these anon_ids would leave (their lists written with the product's own builder)."""
    spool = input_lists.InputSpool(layout)
    keys = [f"k{i}" for i in range(len(ids))]
    columns = {"key": keys, "image_id": keys, "sample": [0] * len(ids), "anon_id": ids, "source": [""] * len(ids)}
    schema = input_lists.INPUT_LIST_SCHEMA
    spool.add(pa.table({f.name: columns.get(f.name, pa.nulls(len(ids), f.type)) for f in schema}, schema=schema))
    try:
        return input_lists.build_index(layout, spool, 7)
    finally:
        spool.remove()


def test_identities_written_a_shard_at_a_time_equal_the_whole_merge(tmp_path, small_steps):
    from pipeline.tables.identities import write_identities, write_identities_from

    _folder_input(tmp_path / "in")
    tables = []
    for name, write in (("whole", None), ("shards", write_identities_from)):
        layout = RunLayout.at(str(tmp_path / name))
        layout.prepare(overwrite=False)
        index = index_inputs(layout, describe(str(tmp_path / "in")), SECRET, shard_size=4, identity_from="folder")
        # An earlier run's rows: two images no longer in the input, and one still in it, from elsewhere then.
        kept = next(row for _, row in listed_items(index))
        earlier = [(anon_id(SECRET, f"gone{i}"), f"gone{i}", f"/old/gone{i}", None, 0) for i in range(2)]
        write_identities(layout, [*earlier, (kept["anon_id"], kept["image_id"], "/old/place", "someone", 0)])
        if write is None:
            rows = (
                (r["anon_id"], r["image_id"], r["source"], r["identity"], r["sample"]) for _, r in listed_items(index)
            )
            write_identities(layout, rows)
        else:
            write(layout, index)
            before = layout.identities.stat().st_mtime_ns
            write(layout, index)  # a resume of the same inputs leaves the file (and its mtime) alone
            assert layout.identities.stat().st_mtime_ns == before
        tables.append(pq.read_table(layout.identities).to_pylist())
    assert tables[0] == tables[1]
    assert len(tables[0]) == 62 + 2  # no --exclude here: out/images/a.png is an input
    assert {r["identity"] for r in tables[0]} >= {"p0", "p4", None}
