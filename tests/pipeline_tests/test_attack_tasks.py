"""The attacks as Ray tasks over shards (pipeline.outputs.attack_tasks) against brute force, on a real Ray runtime."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from evaluation.attacks import rank_of_true, reid_rank
from pipeline.folder.layout import RunLayout
from pipeline.outputs.attack_tasks import error_bound, sharded_ranks
from pipeline.tables.identities import write_identities
from pipeline.tables.schemas import EMBEDDINGS_SCHEMA
from pipeline.tables.shards import plan_shards, shard_name
from pipeline.tables.write import write_private_table

LEVELS = (0.3, 0.8)
N, SHARD, DIMS = 30, 8, 12  # 4 shards: the gallery is split across blocks


def _folder(tmp_path, seed=0):
    """A finished run's private embeddings over 4 shards, with byte-identical originals in different shards
    and in one shard, a query that equals another image's original, people with 1-4 photos and unknown ones."""
    rng = np.random.default_rng(seed)
    layout = RunLayout.at(str(tmp_path / "out"))
    layout.prepare(overwrite=False)
    ids = sorted(f"{v:016x}" for v in rng.integers(0, 2**62, N))
    shards = plan_shards(layout, ids, SHARD)
    originals = rng.normal(size=(N, DIMS)).astype(np.float32)
    originals[20] = originals[3]  # a copy in another shard: ties with 3 for every query
    originals[5] = originals[4]  # a copy in the same shard
    queries = {
        lv: (originals + rng.normal(scale=s, size=(N, DIMS))).astype(np.float32)
        for lv, s in zip(LEVELS, (0.6, 1.5), strict=True)
    }
    queries[0.3][9] = originals[12]  # 9's output is another image's original: 12 is strictly ahead of 9's own
    queries[0.8][3] = originals[3]  # an exact copy: rank 1, its copy 20 tying with it
    people = [f"p{i % 7}" if i % 5 else None for i in range(N)]  # 7 people; every fifth image unknown
    people[29] = "solo"
    rows = {k: [] for k in range(shards.count)}
    for i, anon_id in enumerate(ids):
        for lv in LEVELS:
            rows[shards.of(anon_id)].append(
                {"anon_id": anon_id, "level": lv, "face": None, "recognizer": "Facenet",
                 "original": originals[i].tolist(), "anonymized": queries[lv][i].tolist()}
            )  # fmt: skip
    for shard, found in rows.items():
        write_private_table(
            pa.Table.from_pylist(found, schema=EMBEDDINGS_SCHEMA), layout.embeddings / shard_name(shard)
        )
    write_identities(layout, [(a, f"img{i}", f"/d/img{i}", people[i], 0) for i, a in enumerate(ids)])
    return layout, ids, originals, queries, people


def _by_query(found):
    (ranked,) = found
    return ranked, {(a, float(lv)): i for i, (a, lv) in enumerate(zip(ranked.anon_id, ranked.level, strict=True))}


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_sharded_ranks_equal_brute_force_with_ties_and_a_split_gallery(ray_runtime, tmp_path, precision):
    layout, ids, originals, queries, people = _folder(tmp_path)

    ranked, at = _by_query(sharded_ranks(layout, None, reid=True, precision=precision))

    assert len(at) == N * len(LEVELS) and ranked.gallery == N
    known = np.array([p is not None for p in people])
    for lv in LEVELS:
        rows = [at[(a, lv)] for a in ids]
        # Brute force in float64: every original, ties for the attacker.
        expected = rank_of_true(queries[lv].astype(np.float64), originals.astype(np.float64), np.arange(N), chunk=7)
        np.testing.assert_array_equal(ranked.linkage[rows], expected)
        where = np.cumsum(known) - 1
        asked = np.flatnonzero(known)
        expected_reid = reid_rank(
            queries[lv][asked].astype(np.float64), originals[known].astype(np.float64),
            np.array(people, dtype=object)[known].astype(str), where[asked],
        )  # fmt: skip
        got = ranked.reid[[at[(ids[i], lv)] for i in asked]]
        np.testing.assert_array_equal(got, expected_reid)
        assert list(ranked.reid_asked[rows]) == list(known)
    # The cases the folder was built for: an exact copy is rank 1 though its copy ties; a foreign original ahead.
    assert ranked.linkage[at[(ids[3], 0.8)]] == 1
    assert ranked.linkage[at[(ids[9], 0.3)]] >= 2
    assert np.isnan(ranked.reid[at[(ids[29], 0.3)]])  # "solo" has one photo
    assert ranked.people_single == 1 and ranked.people_attackable == 7 and ranked.reid_gallery == known.sum()


def test_capped_and_gate_queries(ray_runtime, tmp_path):
    layout, ids, originals, queries, _ = _folder(tmp_path, seed=1)
    full, at = _by_query(sharded_ranks(layout, None, reid=False))

    capped, _ = _by_query(sharded_ranks(layout, 3, reid=False))
    close, _ = _by_query(sharded_ranks(layout, None, reid=False, within=2))

    # The capped attack asks the 3 smallest anon_ids of each level, ranked against every original.
    assert sorted(zip(capped.anon_id, capped.level, strict=True)) == sorted((a, lv) for a in ids[:3] for lv in LEVELS)
    assert all(
        r == full.linkage[at[(a, lv)]] for a, lv, r in zip(capped.anon_id, capped.level, capped.linkage, strict=True)
    )
    assert capped.gallery == N and capped.reid is None
    # The gate receives exactly the outputs within the rank.
    expected = {key for key, i in at.items() if full.linkage[i] <= 2}
    assert set(zip(close.anon_id, close.level.astype(float), strict=True)) == expected and expected


def test_error_bound_covers_the_fast_products():
    rng = np.random.default_rng(2)
    for dims in (8, 128, 4096):
        a = rng.normal(size=(64, dims))
        b = rng.normal(size=(64, dims))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        exact = a @ b.T
        fast32 = a.astype(np.float32) @ b.astype(np.float32).T
        fast16 = (a.astype(np.float16).astype(np.float32) @ b.astype(np.float16).astype(np.float32).T).astype(
            np.float16
        )
        assert np.abs(fast32 - exact).max() <= error_bound(dims, "float32")
        assert np.abs(fast16.astype(np.float64) - exact).max() <= error_bound(dims, "float16")
