"""Distances between face embeddings, and the cleared rule. Pure numpy."""

from __future__ import annotations

import numpy as np

# deepface's find_distance rounds every distance to 6 decimals before verify compares it.
DEEPFACE_DECIMALS = 6


def cosine_distance(a, b) -> float:
    """``1 - a.b / (|a| |b|)``, the formula of deepface's ``find_cosine_distance`` for two vectors."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"cosine_distance: two vectors of one length, got shapes {a.shape} and {b.shape}")
    # A zero vector gives NaN, as in deepface; min_pair_distance decides what that means.
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(1.0 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def closest_pair(embeddings_1, embeddings_2) -> tuple[int, int, float]:
    """(i, j, distance): the face pair ``DeepFace.verify`` compares two images at, and its distance.

    ``embeddings_1`` is (n1, d), ``embeddings_2`` is (n2, d): one row per face found. As verify
    does, each pair's cosine distance is rounded to 6 decimals (deepface's ``find_distance``), and
    the smallest is kept (the first such pair); a NaN pair (a zero embedding) never wins, so all-NaN
    gives ``inf`` (at pair (0, 0)).
    """
    e1 = np.atleast_2d(np.asarray(embeddings_1, dtype=np.float64))
    e2 = np.atleast_2d(np.asarray(embeddings_2, dtype=np.float64))
    if e1.ndim != 2 or e2.ndim != 2 or 0 in (e1.shape[0], e2.shape[0]) or e1.shape[1] != e2.shape[1]:
        raise ValueError(f"min_pair_distance: (n1, d) and (n2, d) with n >= 1, got {e1.shape} and {e2.shape}")
    best, smallest = (0, 0), float("inf")
    for i, a in enumerate(e1):
        for j, b in enumerate(e2):
            # Rounded like find_distance, so that cleared agrees with verify's decision even at
            # the threshold; compared with "<" like verify's loop, which skips NaN.
            distance = float(np.round(cosine_distance(a, b), DEEPFACE_DECIMALS))
            if distance < smallest:
                best, smallest = (i, j), distance
    return (*best, smallest)


def min_pair_distance(embeddings_1, embeddings_2) -> float:
    """The distance ``DeepFace.verify`` reports for two images, from their face embeddings (see
    ``closest_pair``)."""
    return closest_pair(embeddings_1, embeddings_2)[2]


def is_cleared(distance: float, threshold: float) -> bool:
    """True when a recognizer would not match the pair: ``distance > threshold``.

    deepface's verify says "same person" when ``distance <= threshold``; cleared is its negation.
    """
    return bool(distance > threshold)
