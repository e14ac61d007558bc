"""The evaluation stage, a callable class that Ray Data's `map_batches` runs as an actor pool: each anonymized
image compared with its original (each face's square in face-region mode) by every recognizer, out-of-memory pairs
retried in halves, transient failures marked for resume, and the batch's parts written (the manifest's last)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from anonymize import (
    ImageError,
    RegionSettings,
    decode_image,
    detect_faces,
    face_jobs,
)
from pipeline.execution.anonymize_stage import NO_FACE_DETECTED, free_accelerator_memory
from pipeline.folder.layout import RunLayout
from pipeline.tables.batch_parts import finish_batch
from pipeline.tables.row_errors import RowError, classify, error_row, scrub

NO_FACE_ORIGINAL_TEXT = "no_face_original: the face detector found no face in the original"


@dataclass(frozen=True)
class EvaluateConfig:
    out: str
    max_pixels: int
    deepface_home: str | None = None
    threads: int | None = None
    region: RegionSettings = RegionSettings()
    weights_from: str | None = None  # --weights-from: this node's weights are filled from it first


class EvaluateStage:
    """Compare each anonymized image with its original; write the batch's manifest and distance parts."""

    def __init__(self, evaluation_settings, config: EvaluateConfig, read=None) -> None:
        """`read`: a function that turns a batch of pairs into one with both images' bytes (`boomerang evaluate`
        reads another tool's files in the actor itself, so that only paths cross processes)."""
        # deepface reads DEEPFACE_HOME when it loads weights; set it before the recognizers are built.
        if config.deepface_home:
            os.environ["DEEPFACE_HOME"] = config.deepface_home
        if config.weights_from:  # the node's first actor fills its weights; the others find them verified
            from pipeline.weights.store import stage_for_actor

            s, region = evaluation_settings, config.region
            stage_for_actor(
                config.weights_from,
                recognizers=s.recognizers,
                detectors=[s.detector],
                region_detector=region.detector if region.faces else None,
                engine=s.engine,
            )
        import torch

        if config.threads:
            torch.set_num_threads(config.threads)
        from evaluation import PairEvaluator

        self.settings = evaluation_settings
        self.config = config
        self.layout = RunLayout.at(config.out)
        self.evaluator = PairEvaluator(evaluation_settings)
        self.read = read

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from evaluation import Pair, error_rows

        rows = (self.read(batch) if self.read else batch).to_dict("records")
        pairs, no_face = [], []
        for row in rows:
            row["t_boom"] = None if pd.isna(row["t_boom"]) else int(row["t_boom"])
            # No level (another tool's output): Arrow may carry an all-NaN column as nulls.
            row["level"] = math.nan if pd.isna(row["level"]) else float(row["level"])
            # pandas turns a missing text into NaN when some rows of the batch failed to read and others did not.
            row["error"] = row["error"] if isinstance(row.get("error"), str) else None
            if row["status"] != "ok":
                continue
            try:
                original = decode_image(row["original"], max_pixels=self.config.max_pixels)
                anonymized = np.asarray(decode_image(row["anonymized"], max_pixels=self.config.max_pixels))
                regions = self._regions(row, original)
            except ImageError as err:  # only reachable for another tool's files (boomerang evaluate)
                row.update(error_row({}, row["level"], classify(err)))
                continue
            original = np.asarray(original)
            key = (row["anon_id"], row["level"], row["t_boom"])
            if regions is None:
                pairs.append(Pair(*key, row["source_sha256"], original, anonymized))
            elif not regions:
                no_face.append(row)
            for face, square in regions or ():
                # Both images cut at the same square; the recognizer then finds the face inside it.
                # Another tool's output may have another size: its square is scaled to it.
                scaled = _scaled(square, original.shape, anonymized.shape)
                pairs.append(
                    Pair(*key, f"{row['source_sha256']}#{face}", _cut(original, square), _cut(anonymized, scaled), face)
                )
        distance_rows, embeddings = self._evaluate(pairs)
        for row in rows:
            if row["status"] != "ok":
                status = NO_FACE_DETECTED if row["status"] == NO_FACE_DETECTED else "error"
                args = (row["anon_id"], row["level"], row["t_boom"], row["error"], self.settings)
                distance_rows += error_rows(*args, status=status)
        for row in no_face:  # boomerang evaluate in face-region mode: no face in the original to compare
            args = (row["anon_id"], row["level"], row["t_boom"], NO_FACE_ORIGINAL_TEXT, self.settings)
            distance_rows += error_rows(*args, status="no_face_original")
        _mark_transient_evaluations(rows, distance_rows)
        # deepface's words are not ours: no path or id may reach a shareable table through them.
        ids = tuple(str(row.get("image_id") or "") for row in rows)
        for distance_row in distance_rows:
            distance_row["error"] = scrub(distance_row["error"], ids)
        return finish_batch(self.layout, rows, distance_rows, embeddings)

    def _evaluate(self, pairs: list) -> tuple[list[dict], list[dict]]:
        """The evaluator's rows and embeddings for these pairs; pairs whose evaluation ran out of memory are
        evaluated again in halves of the batch (the accelerator's cache freed first), down to one pair at a
        time, before their error rows stand (and mark their pairs transient: `_mark_transient_evaluations`)."""
        rows, embeddings = self.evaluator.evaluate_with_embeddings(pairs)
        if len(pairs) <= 1:
            return rows, embeddings
        per = len(rows) // len(pairs)  # one row per recognizer, pair after pair
        failed = [i for i in range(len(pairs)) if any(_out_of_memory(r) for r in rows[i * per : (i + 1) * per])]
        if not failed:
            return rows, embeddings
        free_accelerator_memory()
        redo = [pairs[i] for i in failed]
        half = max(1, len(pairs) // 2)
        again_rows, again_embeddings = [], []
        for start in range(0, len(redo), half):
            chunk_rows, chunk_embeddings = self._evaluate(redo[start : start + half])
            again_rows += chunk_rows
            again_embeddings += chunk_embeddings
        for k, i in enumerate(failed):
            rows[i * per : (i + 1) * per] = again_rows[k * per : (k + 1) * per]
        redone = {(p.anon_id, p.level, p.face) for p in redo}
        kept = [e for e in embeddings if (e["anon_id"], e["level"], e["face"]) not in redone]
        return rows, kept + again_embeddings

    def _regions(self, row: dict, original) -> list[tuple[int, tuple[int, int, int]]] | None:
        """Face-region mode: (face index, (left, top, side)) of each face square to compare; None for a whole-image
        pair. The anonymize stage's boxes when it made the output; else (boomerang evaluate) detected here."""
        region = self.config.region
        faces = row.get("faces")
        if not region.faces or (faces is not None and not pd.isna(faces) and int(faces) == 0):
            return None  # 0 faces: a whole-image output (--no-face image)
        boxes = row.get("face_boxes")
        if isinstance(boxes, str):
            return [(f["face"], (f["left"], f["top"], f["side"])) for f in json.loads(boxes)]
        found = detect_faces(original, region.detector)
        return [
            (j.face_index, (j.region.left, j.region.top, j.region.side))
            for j in face_jobs("", found, original.size, region.margin)
        ]


# Exception names that say an evaluation failed for the machine's sake (memory, I/O, a connection), not the
# pair's: the evaluator reports a failed pair as "<name>: <message>" text in its distance rows.
_TRANSIENT_NAMES = re.compile(
    r"\b(?:MemoryError|OutOfMemoryError|OSError|IOError|TimeoutError|\w*ConnectionError|BrokenPipeError|"
    r"FileNotFoundError|PermissionError|IsADirectoryError|InterruptedError|BlockingIOError)\b"
)


def _out_of_memory(distance_row: dict) -> bool:
    text = distance_row.get("error") or ""
    return distance_row.get("status") == "error" and ("out of memory" in text.lower() or "MemoryError" in text)


def _transient_evaluation(distance_row: dict) -> RowError | None:
    """The row error of a distance row whose evaluation failed transiently (`pipeline.tables.row_errors.classify`)."""
    if distance_row.get("status") != "error":
        return None
    text = distance_row.get("error") or ""
    if _out_of_memory(distance_row):
        return classify(MemoryError(text))
    if _TRANSIENT_NAMES.search(text):
        return classify(OSError(text))
    return None


def _mark_transient_evaluations(rows: list[dict], distance_rows: list[dict]) -> None:
    """Turn the manifest row of each pair whose evaluation failed transiently into a transient error row, so
    that resume redoes the pair on every rerun (a failed distance row under an "ok" manifest row would count
    as done for good), and the shard marker counts it with the other transient errors."""
    failed: dict[tuple, RowError] = {}
    for distance_row in distance_rows:
        error = _transient_evaluation(distance_row)
        if error is not None:
            failed.setdefault(_pair_key(distance_row["anon_id"], distance_row["level"]), error)
    for row in rows:
        error = failed.get(_pair_key(row["anon_id"], row["level"])) if row["status"] == "ok" else None
        if error is not None:
            row.update(error_row({}, row["level"], error))


def _pair_key(anon_id: str, level) -> tuple[str, float]:
    # No level (another tool's output) is NaN: as a key it must equal itself.
    return str(anon_id), -1.0 if level is None or math.isnan(level) else float(level)


def _cut(image: np.ndarray, square: tuple[int, int, int]) -> np.ndarray:
    left, top, side = square
    return np.ascontiguousarray(image[top : top + side, left : left + side])


def _scaled(square: tuple[int, int, int], shape: tuple, to_shape: tuple) -> tuple[int, int, int]:
    if shape[:2] == to_shape[:2]:
        return square
    left, top, side = square
    sx, sy = to_shape[1] / shape[1], to_shape[0] / shape[0]
    return (round(left * sx), round(top * sy), max(1, round(side * min(sx, sy))))
