"""Summary statistics against independent computations; partial results merge exactly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluation import EvaluationSettings, PartialStats, merge_partials, partial_stats, summarize, wilson_interval
from evaluation.summary import SUMMARY_COLUMNS, summary_from_partials

SETTINGS = EvaluationSettings(thresholds=(("Facenet", 0.3),))


def random_rows(seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    status = rng.choice(["ok", "ok", "ok", "ok", "no_face_original", "error"], size=n)
    ok = status == "ok"
    distance = np.where(ok, rng.uniform(0.0, 0.9, size=n), np.nan)
    face_anonymized = np.where(ok, rng.random(n) < 0.85, None)
    compared_at = np.where(
        face_anonymized == True,  # noqa: E712 - object array
        "detected",
        np.where(ok, rng.choice(["original_box", "whole_image"], size=n, p=[0.8, 0.2]), None),
    )
    return pd.DataFrame(
        {
            "anon_id": [f"id{i}" for i in range(n)],
            "level": rng.choice([0.5, 0.7, 1.0], size=n),
            "t_boom": 0,
            "recognizer": rng.choice(["VGG-Face", "Facenet"], size=n),
            "metric": "cosine",
            "distance": distance,
            "status": status,
            "face_anonymized": face_anonymized,
            "compared_at": compared_at,
        }
    )


@pytest.mark.parametrize("n", [1, 2, 7, 30, 101, 1000])
def test_wilson_interval_matches_scipy(n):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = wilson_interval(k, n)
        assert low == pytest.approx(expected.low, abs=1e-6)
        assert high == pytest.approx(expected.high, abs=1e-6)
        assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_interval_edges():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(0, 5)[0] == 0.0
    assert wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match="wilson_interval"):
        wilson_interval(6, 5)


def test_summary_equals_an_independent_computation():
    rows = random_rows(0)
    summary = summarize(rows, SETTINGS)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert list(zip(summary["level"], summary["recognizer"], strict=True)) == [
        (level, name) for level in (0.5, 0.7, 1.0) for name in ("VGG-Face", "Facenet")
    ]
    for row in summary.itertuples(index=False):
        group = rows[(rows["level"] == row.level) & (rows["recognizer"] == row.recognizer)]
        ok = group[group["status"] == "ok"]
        d = ok["distance"].to_numpy()
        threshold = 0.3 if row.recognizer == "Facenet" else 0.4
        k = int((d > threshold).sum())
        ci = stats.binomtest(k, len(d)).proportion_ci(method="wilson")
        assert row.metric == "cosine"
        assert row.n_images == len(group)
        assert row.n_evaluated == len(d)
        assert row.n_no_face_original == (group["status"] == "no_face_original").sum()
        assert row.n_errors == (group["status"] == "error").sum()
        assert row.n_no_face_anonymized == (ok["face_anonymized"] == False).sum()  # noqa: E712
        assert row.n_compared_at_original_box == (ok["compared_at"] == "original_box").sum()
        assert row.n_cleared == k
        assert row.fraction_cleared == pytest.approx(k / len(d), abs=1e-12)
        assert (row.ci_low, row.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-6)
        assert row.distance_mean == pytest.approx(np.mean(d), abs=1e-12)
        assert row.distance_std == pytest.approx(np.std(d, ddof=1), abs=1e-12)
        assert row.distance_sem == pytest.approx(stats.sem(d), abs=1e-12)
        assert row.distance_median == pytest.approx(np.median(d), abs=1e-12)
        assert row.threshold == threshold
    assert summary.set_index("recognizer")["deepface_threshold"].to_dict() == {"VGG-Face": 0.68, "Facenet": 0.40}


@pytest.mark.parametrize("seed", range(5))
def test_merged_partials_of_random_splits_equal_the_whole(seed):
    rows = random_rows(seed, n=300)
    rng = np.random.default_rng(100 + seed)
    shard = rng.integers(0, 4, size=len(rows))
    parts = [partial_stats(rows[shard == i], SETTINGS) for i in range(4)]
    merged = summary_from_partials(merge_partials(*parts), SETTINGS)
    whole = summarize(rows, SETTINGS)
    pd.testing.assert_frame_equal(merged, whole, check_exact=False, rtol=0, atol=1e-12)


def test_edge_cases_zero_and_one_evaluated():
    rows = pd.DataFrame(
        {
            "level": [0.5, 0.5, 0.9, 0.9],
            "recognizer": ["Facenet"] * 4,
            "distance": [None, None, 0.61, None],
            "status": ["no_face_original", "error", "ok", "error"],
            "face_anonymized": [None, None, True, None],
        }
    )
    summary = summarize(rows, EvaluationSettings(recognizers=("Facenet",))).set_index("level")
    none, one = summary.loc[0.5], summary.loc[0.9]
    assert (none["n_images"], none["n_evaluated"], none["n_cleared"]) == (2, 0, 0)
    for column in ("fraction_cleared", "ci_low", "ci_high", "distance_mean", "distance_std", "distance_sem"):
        assert math.isnan(none[column]), column
    assert math.isnan(none["distance_median"])
    assert (one["n_evaluated"], one["n_cleared"], one["fraction_cleared"]) == (1, 1, 1.0)
    assert one["distance_mean"] == one["distance_median"] == 0.61
    assert math.isnan(one["distance_std"]) and math.isnan(one["distance_sem"])
    assert math.isnan(
        summarize(rows.assign(recognizer="NoSuchNet"), EvaluationSettings(recognizers=("NoSuchNet",)))[
            "deepface_threshold"
        ].iloc[0]
    )


def test_rows_without_compared_at_count_none_at_the_original_box():
    # Distance rows written before the column existed.
    rows = random_rows(1).drop(columns="compared_at")
    summary = summarize(rows, SETTINGS)
    assert (summary["n_compared_at_original_box"] == 0).all()
    assert (summary["n_no_face_anonymized"] > 0).all()


def test_partial_stats_merge_with_empty():
    empty = PartialStats()
    stats_ = PartialStats.from_rows(random_rows(3).query("recognizer == 'Facenet'"), 0.4)
    for merged in (empty.merge(stats_), stats_.merge(empty)):
        assert merged.mean == pytest.approx(stats_.mean, abs=1e-15)
        assert merged.m2 == pytest.approx(stats_.m2, abs=1e-12)
        assert merged.n_images == stats_.n_images


def test_empty_distances_give_an_empty_summary():
    rows = random_rows(0).iloc[0:0]
    summary = summarize(rows, SETTINGS)
    assert summary.empty and list(summary.columns) == list(SUMMARY_COLUMNS)


def test_a_missing_output_counts_as_not_cleared_and_no_level_is_one_labelled_group():
    rows = pd.DataFrame(
        {
            "anon_id": ["a", "b", "c", "d"],
            "level": [math.nan] * 4,
            "t_boom": None,
            "recognizer": "Facenet",
            "metric": "cosine",
            "distance": [0.9, 0.8, 0.1, math.nan],
            "status": ["ok", "ok", "ok", "missing_output"],
            "face_anonymized": [True, True, True, None],
            "compared_at": ["detected", "detected", "detected", None],
        }
    )
    settings = EvaluationSettings(recognizers=("Facenet",))
    summary = summarize(rows, settings, label="other-tool")
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["label"] == "other-tool" and math.isnan(row["level"])
    assert (row["n_evaluated"], row["n_missing_output"], row["n_cleared"]) == (3, 1, 2)
    assert row["fraction_cleared"] == 0.5  # 2 of 4 originals: the skipped one is not cleared
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson_interval(2, 4))
    assert row["distance_mean"] == pytest.approx(0.6)
    # Partial results of the NaN-level group merge into one group.
    merged = merge_partials(partial_stats(rows.iloc[:2], settings), partial_stats(rows.iloc[2:], settings))
    assert len(merged) == 1
    assert summary_from_partials(merged, settings, "other-tool").iloc[0]["fraction_cleared"] == 0.5
