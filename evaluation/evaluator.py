"""Compare (original, anonymized) pairs with every recognizer: one row per (pair, recognizer).

Where the anonymized image's faces were taken is recorded in the ``compared_at`` column:

- "detected": the detector found a face in the anonymized image; the distance is
  ``DeepFace.verify``'s.
- "original_box": it found none, so the anonymized image was cut at the original's face box(es)
  (scaled when the two images differ in size) and aligned with the original's eyes, exactly as
  deepface cut and aligned the original's face (``Recognizer.faces_at``), then embedded as verify
  embeds a detected face. The images are aligned, so this is where the face is, and where an
  attacker who knows the original would look; comparing the whole image instead would reward an
  anonymizer that merely defeats the detector (a blur).
- "whole_image": the whole anonymized image was the face: deepface's own no-face fallback
  (``verify(enforce_detection=False)``), only with ``no_face_anonymized="whole_image"``, or
  detector "skip" (every image is taken whole, the original too).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.distances import closest_pair, is_cleared
from evaluation.engine import use_engine
from evaluation.recognizers import DETECTED, GIVEN_AREAS, WHOLE_IMAGE, FaceEmbeddings, Recognizer
from evaluation.settings import EvaluationSettings

# Column order of a distances row (evaluation/distances.parquet).
ROW_KEYS = (
    "anon_id",
    "level",
    "t_boom",
    "face",
    "recognizer",
    "metric",
    "distance",
    "threshold",
    "cleared",
    "face_original",
    "face_anonymized",
    "compared_at",
    "status",
    "error",
)

# compared_at values, by how the recognizer took the anonymized image's faces.
COMPARED_AT = {DETECTED: "detected", GIVEN_AREAS: "original_box", WHOLE_IMAGE: "whole_image"}

DEFAULT_CACHE_SIZE = 4096
# The key under which a row carries its embeddings until evaluate_with_embeddings takes them out.
_EMBEDDINGS = "_embeddings"


@dataclass(frozen=True, eq=False)
class Pair:
    """An original image and one anonymized version of it.

    Attributes:
        anon_id: the pseudonymous id of the output.
        level: anonymity level, t_boom / T.
        t_boom: the timestep actually used.
        original_key: identifies the original's pixels (e.g. the source sha256); pairs with the
            same key share one embedding of the original.
        original, anonymized: RGB uint8 (H, W, 3) arrays.
        face: in face-region mode, the face's index in its image (the arrays are that face's square,
            cut from both images); None when the pair is the whole image.
    """

    anon_id: str
    level: float
    t_boom: int
    original_key: str
    original: np.ndarray
    anonymized: np.ndarray
    face: int | None = None


class PairEvaluator:
    """Distances between originals and anonymized images, as ``DeepFace.verify`` computes them.

    Builds one :class:`Recognizer` per model in ``settings.recognizers`` (weights load once).
    Embeddings of originals, with their face areas, are kept in a bounded LRU cache keyed by
    ``original_key``, so the levels of one image embed the original once. An anonymized image with
    no detected face is compared at its original's face areas, or on the whole image, as
    ``settings.no_face_anonymized`` says (see the module's docstring).
    """

    def __init__(self, settings: EvaluationSettings, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size: must be >= 0, got {cache_size!r}")
        use_engine(settings.engine)
        self.settings = settings
        self.recognizers = {
            name: Recognizer(name, settings.detector, settings.align, settings.engine) for name in settings.recognizers
        }
        self._cache_size = cache_size
        self._originals: OrderedDict[tuple[str, str], FaceEmbeddings] = OrderedDict()

    def evaluate(self, pairs: Sequence[Pair]) -> list[dict]:
        """One row per (pair, recognizer), pairs in order; never raises for a bad pair."""
        return self.evaluate_with_embeddings(pairs)[0]

    def evaluate_with_embeddings(self, pairs: Sequence[Pair]) -> tuple[list[dict], list[dict]]:
        """`evaluate`'s rows, and for each "ok" row the two face embeddings its distance was taken
        between: {anon_id, level, recognizer, original, anonymized} (float32 vectors). They are what a
        linkage attacker ranks (evaluation.attacks); embeddings of originals are biometric data."""
        columns = {name: self._evaluate_safely(name, pairs) for name in self.recognizers}
        rows = [columns[name][i] for i in range(len(pairs)) for name in self.recognizers]
        embeddings = []
        for row in rows:
            pair = row.pop(_EMBEDDINGS, None)
            if pair is not None:
                embeddings.append(
                    {
                        "anon_id": row["anon_id"],
                        "level": row["level"],
                        "face": row["face"],
                        "recognizer": row["recognizer"],
                        "original": pair[0],
                        "anonymized": pair[1],
                    }
                )
        return rows, embeddings

    def _evaluate_safely(self, name: str, pairs: Sequence[Pair]) -> list[dict]:
        # Recognizer.embed already turns the errors deepface raises on odd images into per-image
        # errors. Anything else escaping a batch would lose every row of it (and abort a Ray
        # stage), so the batch is redone pair by pair and only the pair that fails is an error row.
        try:
            return self._evaluate_with(name, pairs)
        except Exception:  # noqa: BLE001 - see above
            pass
        rows = []
        for pair in pairs:
            try:
                rows.extend(self._evaluate_with(name, [pair]))
            except Exception as err:  # noqa: BLE001 - see above
                message = " ".join(f"{type(err).__name__}: {err}".split())
                rows.append(
                    _base_row(pair.anon_id, pair.level, pair.t_boom, name, self.settings, pair.face)
                    | {"error": message}
                )
        return rows

    def _evaluate_with(self, name: str, pairs: Sequence[Pair]) -> list[dict]:
        recognizer = self.recognizers[name]
        originals = self._original_embeddings(name, recognizer, pairs)
        # Anonymized images of originals without a usable face are never compared: skip them.
        wanted = [i for i, pair in enumerate(pairs) if originals[i].embeddings is not None]
        at_original = self.settings.no_face_anonymized == "original_box"
        embedded = recognizer.embed(
            [pairs[i].anonymized for i in wanted],
            enforce_detection=False,
            areas_if_no_face=[originals[i].areas for i in wanted] if at_original else None,
        )
        anonymized: dict[int, FaceEmbeddings] = dict(zip(wanted, embedded, strict=True))
        return [self._row(name, pair, originals[i], anonymized.get(i)) for i, pair in enumerate(pairs)]

    def _original_embeddings(self, name: str, recognizer: Recognizer, pairs: Sequence[Pair]) -> list[FaceEmbeddings]:
        todo: dict[str, np.ndarray] = {}
        for pair in pairs:
            if (name, pair.original_key) not in self._originals and pair.original_key not in todo:
                todo[pair.original_key] = pair.original
        fresh = dict(zip(todo, recognizer.embed(list(todo.values()), enforce_detection=True), strict=True))
        found = []
        for pair in pairs:
            key = (name, pair.original_key)
            if pair.original_key in fresh:
                result = fresh[pair.original_key]
                # Errors are not cached: a later batch may hold a good copy of the same original.
                if result.error is None:
                    self._remember(key, result)
            else:
                result = self._originals[key]
                self._originals.move_to_end(key)
            found.append(result)
        return found

    def _remember(self, key: tuple[str, str], result: FaceEmbeddings) -> None:
        if self._cache_size == 0:
            return
        self._originals[key] = result
        self._originals.move_to_end(key)
        while len(self._originals) > self._cache_size:
            self._originals.popitem(last=False)

    def _row(self, name: str, pair: Pair, original: FaceEmbeddings, anonymized: FaceEmbeddings | None) -> dict:
        row = _base_row(pair.anon_id, pair.level, pair.t_boom, name, self.settings, pair.face)
        if original.error is not None:
            return row | {"error": f"original: {original.error}"}
        if original.embeddings is None:
            return row | {"status": "no_face_original", "error": None}
        row["face_original"] = True
        if anonymized is None or anonymized.error is not None:
            reason = "not embedded" if anonymized is None else anonymized.error
            return row | {"error": f"anonymized: {reason}"}
        i, j, distance = closest_pair(original.embeddings, anonymized.embeddings)
        embedded = {"face_anonymized": anonymized.face_found, "compared_at": COMPARED_AT[anonymized.taken_at]}
        if not math.isfinite(distance):
            # Only a zero embedding does this (verify reports inf); there is no distance to count.
            return row | embedded | {"error": "zero embedding: distance undefined"}
        outcome = {
            "distance": distance,
            "cleared": is_cleared(distance, row["threshold"]),
            "status": "ok",
            "error": None,
            _EMBEDDINGS: (
                np.asarray(original.embeddings[i], dtype=np.float32),
                np.asarray(anonymized.embeddings[j], dtype=np.float32),
            ),
        }
        return row | embedded | outcome


def error_rows(
    anon_id: str,
    level: float,
    t_boom: int | None,
    message: str,
    settings: EvaluationSettings,
    status: str = "error",
) -> list[dict]:
    """Rows for a pair that could not be evaluated at all (e.g. the anonymizer failed on it).

    One row per recognizer, ``status`` ("error", or an outcome such as "no_face_detected" in face-region
    mode), ``message`` as the error; ``face_anonymized`` and ``compared_at`` are None.
    """
    return [
        _base_row(anon_id, level, t_boom, name, settings) | {"status": status, "error": str(message)}
        for name in settings.recognizers
    ]


def _base_row(
    anon_id: str, level: float, t_boom: int | None, name: str, settings: EvaluationSettings, face: int | None = None
) -> dict:
    # An error row until proven otherwise; face_original is False unless a face was found.
    return {
        "anon_id": str(anon_id),
        "level": float(level),
        "t_boom": None if t_boom is None else int(t_boom),
        "face": None if face is None else int(face),
        "recognizer": name,
        "metric": settings.metric,
        "distance": None,
        "threshold": settings.threshold_for(name),
        "cleared": None,
        "face_original": False,
        "face_anonymized": None,
        "compared_at": None,
        "status": "error",
        "error": None,
    }
