"""Attack ranks against an independent brute force; hit rates and chance rates against hand counts."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from evaluation import (
    chance_rate,
    cosine_distance,
    hit_rates,
    rank_of_true,
    reid_chance_rate,
    reid_rank,
    wilson_interval,
)


def exact_distance(a: np.ndarray, b: np.ndarray) -> float:
    """deepface's 1 - cos, with correctly rounded sums: a function of the two vectors' values only,
    so that equal embeddings give equal distances however they are stored."""
    dot = math.fsum(a * b)
    return 1.0 - dot / (math.sqrt(math.fsum(a * a)) * math.sqrt(math.fsum(b * b)))


def distance_matrix(queries, gallery) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float64)
    gallery = np.asarray(gallery, dtype=np.float64)
    return np.array([[exact_distance(q, g) for g in gallery] for q in queries])


def brute_linkage(queries, gallery, true_index) -> np.ndarray:
    d = distance_matrix(queries, gallery)
    return np.array([1 + int((row < row[t]).sum()) for row, t in zip(d, true_index, strict=True)])


def brute_reid(queries, gallery, identity, source) -> np.ndarray:
    d = distance_matrix(queries, gallery)
    ranks = []
    for row, s in zip(d, source, strict=True):
        others = [j for j in range(len(gallery)) if j != s]
        same = [row[j] for j in others if identity[j] == identity[s]]
        if not same:
            ranks.append(math.nan)
            continue
        ranks.append(1 + sum(row[j] < min(same) for j in others))
    return np.array(ranks, dtype=np.float64)


def dataset(seed: int, m: int = 60, d: int = 24, n: int = 45, noise: float = 2.5):
    """Originals with planted exact duplicates, identities (some with one photo), noisy outputs."""
    rng = np.random.default_rng(seed)
    people = rng.normal(size=(m // 3, d))
    identity = rng.integers(0, m // 3, size=m)
    gallery = people[identity] + 0.8 * rng.normal(size=(m, d))
    # Exact duplicates: copies of rows 0, 1 and 2 elsewhere, one of them labelled another person.
    gallery[10], gallery[11], gallery[12] = gallery[0], gallery[0], gallery[1]
    identity[10], identity[11], identity[12] = identity[0], (identity[0] + 1) % (m // 3), identity[1]
    gallery[13] = gallery[2]
    # People with a single photo.
    identity[50:55] = np.arange(1000, 1005)
    source = rng.integers(0, m, size=n)
    source[:8] = [0, 1, 2, 10, 11, 12, 50, 51]
    queries = gallery[source] + noise * rng.normal(size=(n, d))
    return queries, gallery, identity, source


def test_the_oracle_is_deepfaces_cosine_distance():
    queries, gallery, _, _ = dataset(0)
    for q in queries[:5]:
        for g in gallery[:5]:
            assert exact_distance(q, g) == pytest.approx(cosine_distance(q, g), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linkage_ranks_equal_brute_force(seed, dtype):
    queries, gallery, _, source = dataset(seed)
    expected = brute_linkage(queries, gallery, source)
    ranks = rank_of_true(queries.astype(dtype), gallery.astype(dtype), source)
    assert ranks.dtype == np.int64
    np.testing.assert_array_equal(ranks, expected)
    # The data is not trivial: ranks spread, and duplicates sit in the gallery.
    assert len(set(ranks.tolist())) > 5


def test_a_duplicate_of_the_answer_ties_with_it_and_is_not_ahead():
    queries, gallery, _, _ = dataset(3)
    # The answer (row 0) has byte-identical copies at rows 10 and 11: same rank whichever is asked for.
    ranks = rank_of_true(queries[:3], gallery, [0, 0, 0])
    np.testing.assert_array_equal(ranks, rank_of_true(queries[:3], gallery, [10, 10, 11]))
    np.testing.assert_array_equal(ranks, brute_linkage(queries[:3], gallery, [0, 0, 0]))
    # A query equal to a duplicated original is at rank 1 although two others are as close.
    assert rank_of_true(gallery[[0, 11, 1, 12]], gallery, [0, 11, 1, 12]).tolist() == [1, 1, 1, 1]


def test_duplicates_ahead_of_the_answer_count_once_each():
    # 2-D: the query is at angle 0; two copies of a point at 10 degrees, the answer at 20 degrees.
    def at(deg):
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    gallery = np.array([at(10), at(20), at(10), at(90), at(-20), at(-10)])
    queries = np.array([at(0), at(0), at(0)])
    # Answer at 20 degrees: both copies at 10 and the one at -10 are closer; -20 ties (not ahead).
    assert rank_of_true(queries, gallery, [1, 4, 3]).tolist() == [4, 4, 6]
    assert rank_of_true(queries, gallery, [0, 2, 5]).tolist() == [1, 1, 1]


def test_exact_copies_are_all_found_at_rank_one():
    _, gallery, _, _ = dataset(4)
    for dtype in (np.float64, np.float32):
        g = gallery.astype(dtype)
        ranks = rank_of_true(g, g, np.arange(len(g)))
        assert ranks.tolist() == [1] * len(g)
        rates = hit_rates(ranks)
        assert rates["hits"][1]["rate"] == 1.0
        assert rates["hits"][1]["ci_high"] == 1.0


def test_a_gallery_of_one():
    rng = np.random.default_rng(5)
    queries, gallery = rng.normal(size=(4, 8)), rng.normal(size=(1, 8))
    assert rank_of_true(queries, gallery, [0, 0, 0, 0]).tolist() == [1, 1, 1, 1]
    assert np.isnan(reid_rank(queries, gallery, ["a"], [0, 0, 0, 0])).all()
    assert chance_rate(1, 1) == 1.0 == chance_rate(1, 5)
    assert math.isnan(reid_chance_rate(["a"], [0, 0], 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reid_ranks_equal_brute_force(seed, dtype):
    queries, gallery, identity, source = dataset(seed)
    expected = brute_reid(queries, gallery, identity, source)
    ranks = reid_rank(queries.astype(dtype), gallery.astype(dtype), identity, source)
    assert ranks.dtype == np.float64
    np.testing.assert_array_equal(ranks, expected)
    # Some identities have a single photo, so some queries cannot be attacked, and some can.
    assert 0 < np.isnan(ranks).sum() < len(ranks)
    # String labels give the same ranks as the integers they name.
    names = np.array([f"person_{i:03d}" for i in identity])
    np.testing.assert_array_equal(reid_rank(queries.astype(dtype), gallery.astype(dtype), names, source), ranks)


def test_reid_leaves_the_source_photo_out_and_ties_count_for_the_attacker():
    def at(deg):
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    gallery = np.array([at(0), at(30), at(15), at(-30), at(-15), at(60)])
    identity = ["a", "a", "b", "c", "a", "d"]
    queries = np.array([at(0), at(0), at(60), at(0)])
    # Query 0, source 0 (a): gallery 1..5; the closest other "a" is row 4 at -15, tied with "b" at 15.
    # Query 1, source 4 (a): the closest other "a" is row 0 itself at 0 degrees: rank 1.
    # Query 2, source 5 (d): "d" has no other photo.
    # Query 3, source 2 (b): "b" has no other photo.
    ranks = reid_rank(queries, gallery, identity, [0, 4, 5, 2])
    assert ranks[:2].tolist() == [1.0, 1.0]
    assert np.isnan(ranks[2:]).all()
    # Source 1 (a at 30 degrees), query at 0: other "a" are 0 (rank 1) ...
    assert reid_rank(queries[[0]], gallery, identity, [1]).tolist() == [1.0]
    # ... and with row 0 relabelled "e", the closest "a" is row 4 at -15, with row 0 ahead of it.
    assert reid_rank(queries[[0]], gallery, ["e", "a", "b", "c", "a", "d"], [1]).tolist() == [2.0]


def test_a_copy_of_the_source_photo_stays_in_the_reid_gallery():
    queries, gallery, identity, _ = dataset(6)
    # Rows 0 and 10 are one photo with one identity: the query made from row 0 finds row 10 first.
    assert identity[0] == identity[10]
    assert reid_rank(gallery[[0]], gallery, identity, [0]).tolist() == [1.0]


@pytest.mark.parametrize("chunk", [1, 7, 45, 1000])
def test_chunked_search_gives_the_same_ranks(chunk):
    queries, gallery, identity, source = dataset(7)
    np.testing.assert_array_equal(
        rank_of_true(queries, gallery, source, chunk=chunk), rank_of_true(queries, gallery, source)
    )
    np.testing.assert_array_equal(
        reid_rank(queries, gallery, identity, source, chunk=chunk), reid_rank(queries, gallery, identity, source)
    )
    expected = brute_linkage(queries, gallery, source)
    np.testing.assert_array_equal(rank_of_true(queries, gallery, source, chunk=chunk), expected)


def test_the_inputs_are_left_unchanged():
    queries, gallery, identity, source = dataset(8)
    before = queries.copy(), gallery.copy()
    rank_of_true(queries, gallery, source, chunk=4)
    reid_rank(queries, gallery, identity, source, chunk=4)
    np.testing.assert_array_equal(queries, before[0])
    np.testing.assert_array_equal(gallery, before[1])


def test_a_read_only_memory_mapped_gallery_is_searched_in_place(tmp_path):
    queries, gallery, identity, source = dataset(12)
    np.save(tmp_path / "gallery.npy", gallery.astype(np.float32))
    mapped = np.load(tmp_path / "gallery.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ranks = rank_of_true(queries.astype(np.float32), mapped, source)
    np.testing.assert_array_equal(ranks, brute_linkage(queries, gallery, source))


def test_no_queries_give_no_ranks():
    _, gallery, identity, _ = dataset(9)
    assert rank_of_true(np.empty((0, gallery.shape[1])), gallery, []).shape == (0,)
    assert reid_rank(np.empty((0, gallery.shape[1])), gallery, identity, []).shape == (0,)


def test_bad_inputs_are_refused():
    rng = np.random.default_rng(10)
    queries, gallery = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    zero = gallery.copy()
    zero[2] = 0.0
    with pytest.raises(ValueError, match="finite and nonzero"):
        rank_of_true(queries, zero, [0, 1, 2])
    nan = queries.copy()
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="finite and nonzero"):
        rank_of_true(nan, gallery, [0, 1, 2])
    inf = gallery.copy()
    inf[4, 0] = np.inf
    with pytest.raises(ValueError, match="gallery: embeddings must be finite and nonzero"):
        reid_rank(queries, inf, [1, 1, 2, 2, 3], [0, 1, 2])
    with pytest.raises(ValueError, match="gallery"):
        rank_of_true(queries, gallery[:, :3], [0, 1, 2])
    with pytest.raises(ValueError, match="true_index"):
        rank_of_true(queries, gallery, [0, 1, 5])
    with pytest.raises(ValueError, match="true_index"):
        rank_of_true(queries, gallery, [0, 1])
    with pytest.raises(ValueError, match="chunk"):
        rank_of_true(queries, gallery, [0, 1, 2], chunk=0)
    with pytest.raises(ValueError, match="gallery_identity"):
        reid_rank(queries, gallery, [1, 2, 3], [0, 1, 2])


def test_reduced_precision_float32_products_are_refused():
    rng = np.random.default_rng(11)
    queries, gallery = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with pytest.raises(RuntimeError, match="full precision"):
            rank_of_true(queries, gallery, [0, 1, 2])
        # float64 has no reduced mode.
        assert len(rank_of_true(queries.astype(np.float64), gallery, [0, 1, 2])) == 3
    finally:
        torch.set_float32_matmul_precision(before)


def test_hit_rates_by_hand():
    rates = hit_rates([1, 2, 5, 6, math.nan, 1, None], ks=(1, 5, 10))
    assert rates["n_attacked"] == 5
    assert rates["n_not_attackable"] == 2
    assert {k: v["n_hits"] for k, v in rates["hits"].items()} == {1: 2, 5: 4, 10: 5}
    assert rates["hits"][1]["rate"] == 2 / 5
    assert rates["hits"][5]["rate"] == 4 / 5
    assert rates["hits"][10]["rate"] == 1.0
    for k, hits in ((1, 2), (5, 4), (10, 5)):
        assert (rates["hits"][k]["ci_low"], rates["hits"][k]["ci_high"]) == wilson_interval(hits, 5)
    assert list(hit_rates(np.array([3, 1]))["hits"]) == [1, 5]


def test_hit_rates_with_nothing_attackable():
    rates = hit_rates([math.nan, math.nan])
    assert rates["n_attacked"] == 0
    assert rates["n_not_attackable"] == 2
    assert all(math.isnan(rates["hits"][1][key]) for key in ("rate", "ci_low", "ci_high"))
    assert rates["hits"][1]["n_hits"] == 0


def test_hit_rates_refuses_what_is_not_a_rank():
    for bad in ([0, 1], [1.5], [-1]):
        with pytest.raises(ValueError, match="ranks"):
            hit_rates(bad)
    for ks in ((), (0,), (1.0,), (True,)):
        with pytest.raises(ValueError, match="ks"):
            hit_rates([1], ks=ks)


def test_chance_rates():
    assert chance_rate(100, 1) == 0.01
    assert chance_rate(100, 5) == 0.05
    assert chance_rate(3, 5) == 1.0
    with pytest.raises(ValueError, match="chance_rate"):
        chance_rate(0, 1)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_reid_chance_rate_equals_the_mean_over_every_ordering(k):
    identity = ["a", "a", "a", "b", "b", "c", "d"]
    source = [0, 3, 5, 1, 6]
    expected = []
    for s in source:
        others = [j for j in range(len(identity)) if j != s]
        if not any(identity[j] == identity[s] for j in others):
            continue
        orders = list(itertools.permutations(others))
        expected.append(np.mean([any(identity[j] == identity[s] for j in order[:k]) for order in orders]))
    assert reid_chance_rate(identity, source, k) == pytest.approx(np.mean(expected), abs=1e-12)
