"""The evaluator's distances are DeepFace.verify's, for real photos and real deepface code."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import Pair

RECOGNIZERS = ("VGG-Face", "Facenet")


@pytest.mark.parametrize("detector", ["opencv", "skip"])
def test_distances_equal_deepface_verify(detector, evaluators, face_variants, verify):
    evaluator = evaluators(detector)
    original = face_variants["same"]
    pairs = [Pair(f"anon-{name}", 0.5, 500, "astronaut", original, image) for name, image in face_variants.items()]
    rows = evaluator.evaluate(pairs)
    assert len(rows) == len(pairs) * len(RECOGNIZERS)
    assert all(row["status"] == "ok" for row in rows), [row["error"] for row in rows]
    if detector == "opencv":
        # The variants are face photos: the detector must actually find the face in most of them.
        assert sum(row["face_anonymized"] for row in rows) >= len(rows) - 2
        assert all(row["compared_at"] == ("detected" if row["face_anonymized"] else "original_box") for row in rows)
    else:
        # "skip" takes every image whole, the original too.
        assert all(row["compared_at"] == "whole_image" for row in rows)

    for pair, index in zip(pairs, range(0, len(rows), len(RECOGNIZERS)), strict=True):
        for row, model_name in zip(rows[index : index + len(RECOGNIZERS)], RECOGNIZERS, strict=True):
            assert (row["anon_id"], row["recognizer"]) == (pair.anon_id, model_name)
            if row["compared_at"] == "original_box":
                # verify has no such comparison: test_no_face_anonymized.py checks these rows.
                continue
            expected = verify(original, pair.anonymized, model_name, detector)
            assert row["distance"] == pytest.approx(expected, abs=1e-5), (pair.anon_id, model_name)


def test_no_face_in_the_anonymized_image_is_compared_on_the_whole_image_on_request(
    evaluators, portrait, coffee, verify
):
    whole = evaluators("opencv", no_face_anonymized="whole_image").evaluate(
        [Pair("cup", 0.9, 900, "portrait", portrait, coffee)]
    )
    at_box = evaluators("opencv").evaluate([Pair("cup", 0.9, 900, "portrait", portrait, coffee)])
    for row, boxed, model_name in zip(whole, at_box, RECOGNIZERS, strict=True):
        assert (row["status"], row["face_original"], row["face_anonymized"]) == ("ok", True, False)
        assert row["compared_at"] == "whole_image"
        expected = verify(portrait, coffee, model_name, "opencv", enforce_detection=False)
        assert row["distance"] == pytest.approx(expected, abs=1e-5)
        # By default the cup is compared at the portrait's face box instead: another distance.
        assert (boxed["status"], boxed["face_anonymized"], boxed["compared_at"]) == ("ok", False, "original_box")
        assert abs(boxed["distance"] - row["distance"]) > 1e-4


def test_several_levels_of_one_original_and_batching_do_not_change_distances(evaluators, face_variants):
    evaluator = evaluators("skip")
    original = face_variants["same"]
    names = ["flip", "crop", "bright"]
    together = evaluator.evaluate(
        [Pair(name, level, 0, "key-batch", original, face_variants[name]) for level, name in enumerate(names)]
    )
    alone = [evaluator.evaluate([Pair(name, 0, 0, f"key-{name}", original, face_variants[name])]) for name in names]
    for i, rows in enumerate(alone):
        for a, b in zip(together[2 * i : 2 * i + 2], rows, strict=True):
            assert a["distance"] == pytest.approx(b["distance"], abs=2e-6)


def test_random_weight_embeddings_spread_distances(evaluators, face_variants, coffee):
    """Guards the random init: near-constant embeddings would make every test above trivial."""
    original = face_variants["same"]
    rows = evaluators("skip").evaluate(
        [Pair(name, 0.5, 0, "astronaut", original, face_variants[name]) for name in ("flip", "crop")]
        + [Pair("cup", 0.5, 0, "astronaut", original, coffee)]
    )
    for model_name in RECOGNIZERS:
        distances = np.array([row["distance"] for row in rows if row["recognizer"] == model_name])
        assert distances.min() > 0.01, (model_name, distances)
        assert distances.max() > 0.2, (model_name, distances)
        assert distances.max() < 1.0, (model_name, distances)
