"""PairEvaluator rows: statuses, counts, the originals cache, failures as rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evaluation import EvaluationSettings, Pair, PairEvaluator, error_rows, summarize
from evaluation.evaluator import ROW_KEYS

RECOGNIZERS = ("VGG-Face", "Facenet")


def _count_embeds(evaluator: PairEvaluator) -> list[tuple[str, int, bool]]:
    """Record (recognizer, images, enforce_detection) of every embed call; the real embed still runs."""
    calls = []
    for name, recognizer in evaluator.recognizers.items():

        def counting(images, enforce_detection, _real=recognizer.embed, _name=name, **options):
            calls.append((_name, len(images), enforce_detection))
            return _real(images, enforce_detection, **options)

        recognizer.embed = counting
    return calls


def test_identical_images_give_zero_distance_and_are_not_cleared(evaluators, portrait):
    rows = evaluators("opencv").evaluate([Pair("same", 0.1, 100, "p", portrait, portrait.copy())])
    assert [row["recognizer"] for row in rows] == list(RECOGNIZERS)
    for row in rows:
        assert tuple(row) == ROW_KEYS
        assert row["distance"] == pytest.approx(0.0, abs=1e-6)
        assert row["cleared"] is False
        assert row | {"distance": None} == {
            "anon_id": "same",
            "level": 0.1,
            "t_boom": 100,
            "face": None,
            "recognizer": row["recognizer"],
            "metric": "cosine",
            "distance": None,
            "threshold": 0.4,
            "cleared": False,
            "face_original": True,
            "face_anonymized": True,
            "compared_at": "detected",
            "status": "ok",
            "error": None,
        }


def test_an_original_is_embedded_once_for_all_its_levels(weights, face_variants):
    evaluator = PairEvaluator(EvaluationSettings(detector="skip"), cache_size=2)
    calls = _count_embeds(evaluator)
    original = face_variants["same"]
    levels = [Pair(f"a{i}", level, 0, "orig-1", original, face_variants["flip"]) for i, level in enumerate((0.3, 0.6))]
    evaluator.evaluate(levels)
    evaluator.evaluate([Pair("a3", 0.9, 0, "orig-1", original, face_variants["crop"])])
    originals = [(name, n) for name, n, enforce in calls if enforce]
    assert originals == [("VGG-Face", 1), ("Facenet", 1), ("VGG-Face", 0), ("Facenet", 0)]

    # The cache is bounded (2 entries here: one original for two recognizers); the oldest goes.
    evaluator.evaluate([Pair("b", 0.5, 0, "orig-2", face_variants["dark"], face_variants["flip"])])
    calls.clear()
    evaluator.evaluate([Pair("a4", 0.5, 0, "orig-1", original, face_variants["flip"])])
    assert [(name, n) for name, n, enforce in calls if enforce] == [("VGG-Face", 1), ("Facenet", 1)]


def test_no_face_original_bad_images_and_no_face_anonymized_become_rows(evaluators, portrait, coffee):
    evaluator = evaluators("opencv")
    calls = _count_embeds(evaluator)
    blank = np.zeros((120, 120, 3), np.uint8)
    pairs = [
        Pair("ok", 0.5, 500, "p", portrait, np.ascontiguousarray(portrait[:, ::-1])),
        Pair("cup-original", 0.5, 500, "cup", coffee, portrait),
        Pair("gray", 0.5, 500, "p", portrait, portrait[:, :, 0]),
        Pair("float", 0.5, 500, "p", portrait, portrait.astype(np.float32)),
        Pair("cup-anonymized", 0.5, 500, "p", portrait, coffee),
        Pair("blank", 0.5, 500, "p", portrait, blank),
    ]
    try:
        rows = evaluator.evaluate(pairs)
    finally:
        for recognizer in evaluator.recognizers.values():
            del recognizer.embed  # back to the class's method
    by = {(row["anon_id"], row["recognizer"]): row for row in rows}
    assert len(rows) == len(pairs) * 2

    for name in RECOGNIZERS:
        assert by[("ok", name)]["status"] == "ok"
        cup = by[("cup-original", name)]
        assert (cup["status"], cup["face_original"], cup["face_anonymized"]) == ("no_face_original", False, None)
        assert cup["compared_at"] is None
        assert cup["distance"] is None and cup["cleared"] is None and cup["error"] is None
        for bad in ("gray", "float"):
            row = by[(bad, name)]
            assert row["status"] == "error" and row["distance"] is None and row["cleared"] is None
            assert "anonymized" in row["error"] and "uint8" in row["error"]
            assert row["face_original"] is True
            assert row["face_anonymized"] is None and row["compared_at"] is None
        row = by[("cup-anonymized", name)]
        assert (row["status"], row["face_anonymized"], row["compared_at"]) == ("ok", False, "original_box")
        row = by[("blank", name)]
        # A blank image gives random-weight VGG-Face a zero embedding (no biases): no distance.
        assert row["status"] in ("ok", "error")
        assert (row["status"] == "ok") == (row["distance"] is not None and math.isfinite(row["distance"]))
        assert row["face_anonymized"] is False and row["compared_at"] == "original_box"

    # The anonymized image of an original without a face is never embedded.
    anonymized_counts = [n for _, n, enforce in calls if not enforce]
    assert anonymized_counts == [len(pairs) - 1] * 2

    summary = summarize(pd.DataFrame(rows), evaluator.settings).set_index("recognizer")
    for name in RECOGNIZERS:
        s = summary.loc[name]
        blank_error = int(by[("blank", name)]["status"] == "error")
        assert s["n_images"] == len(pairs)
        assert s["n_no_face_original"] == 1
        assert s["n_errors"] == 2 + blank_error
        assert s["n_evaluated"] == 3 - blank_error
        assert s["n_no_face_anonymized"] == 2 - blank_error
        assert s["n_compared_at_original_box"] == 2 - blank_error


def test_per_recognizer_thresholds_decide_cleared(evaluators, face_variants):
    evaluator = evaluators("skip", thresholds=(("Facenet", 0.0),), threshold=2.0)
    rows = evaluator.evaluate([Pair("f", 0.5, 0, "p", face_variants["same"], face_variants["flip"])])
    by = {row["recognizer"]: row for row in rows}
    assert (by["VGG-Face"]["threshold"], by["VGG-Face"]["cleared"]) == (2.0, False)
    assert (by["Facenet"]["threshold"], by["Facenet"]["cleared"]) == (0.0, True)


def test_empty_batch_gives_no_rows(evaluators):
    assert evaluators("skip").evaluate([]) == []


def test_error_rows_one_per_recognizer():
    settings = EvaluationSettings(thresholds=(("Facenet", 0.3),))
    rows = error_rows("x", 0.7, None, "anonymizer failed: CUDA out of memory", settings)
    assert [row["recognizer"] for row in rows] == list(RECOGNIZERS)
    for row in rows:
        assert tuple(row) == ROW_KEYS
        assert row["status"] == "error" and row["error"] == "anonymizer failed: CUDA out of memory"
        assert row["distance"] is None and row["cleared"] is None and row["t_boom"] is None
        assert row["face_anonymized"] is None and row["compared_at"] is None
    assert [row["threshold"] for row in rows] == [0.4, 0.3]
