"""Distances: deepface's formulas, verify's rounding and minimum over faces, the cleared rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation import cosine_distance, is_cleared, min_pair_distance


def test_cosine_distance_is_deepfaces_formula(weights):
    from deepface.modules.verification import find_cosine_distance

    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.normal(size=(2, 128))
        assert cosine_distance(a, b) == pytest.approx(float(find_cosine_distance(a, b)), abs=1e-15)
    assert cosine_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    assert cosine_distance([1.0, 2.0], [-1.0, -2.0]) == pytest.approx(2.0)


def test_min_pair_distance_is_the_smallest_rounded_pair_distance(weights):
    from deepface.modules.verification import find_distance

    rng = np.random.default_rng(1)
    e1, e2 = rng.normal(size=(3, 16)), rng.normal(size=(2, 16))
    expected = min(float(find_distance(a, b, "cosine")) for a in e1 for b in e2)
    assert min_pair_distance(e1, e2) == expected
    assert min_pair_distance(e1[0], e1[0]) == 0.0


def test_a_zero_embedding_never_wins_and_alone_gives_inf():
    with np.errstate(invalid="ignore", divide="ignore"):
        assert min_pair_distance(np.zeros((1, 4)), np.ones((1, 4))) == math.inf
        assert min_pair_distance([[0, 0, 0, 0], [1, 0, 0, 0]], [[1, 0, 0, 0]]) == 0.0


def test_min_pair_distance_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="min_pair_distance"):
        min_pair_distance(np.ones((1, 4)), np.ones((1, 5)))
    with pytest.raises(ValueError, match="min_pair_distance"):
        min_pair_distance(np.ones((0, 4)), np.ones((1, 4)))


def test_cleared_is_strictly_above_the_threshold():
    assert is_cleared(0.400001, 0.4) is True
    assert is_cleared(0.4, 0.4) is False
    assert is_cleared(0.399999, 0.4) is False
    assert is_cleared(np.float64(0.7), 0.4) is True
