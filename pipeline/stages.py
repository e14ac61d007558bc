"""The Ray Data stages: callable classes that `map_batches` runs as actor pools.

Each actor loads its model once in `__init__`. A bad image never raises out of a stage: it becomes a
row with status "error", so one file cannot abort the job (Ray would otherwise fail the whole block).
Error rows carry a public reason and a private detail (pipeline.errors).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from anonymize import (
    BoomerangSampler,
    EnhanceSettings,
    FaceJob,
    ImageError,
    RegionSettings,
    SamplerSettings,
    blend_tiles,
    cut_region,
    cut_tiles,
    decode_image,
    degrade,
    detect_faces,
    encode_png,
    face_jobs,
    from_model_output,
    load_model,
    make_generator,
    pad_to,
    paste_regions,
    tile_grid,
    to_model_input,
    upsample,
)

from . import storage
from .errors import RowError, classify, error_row, problem, scrub
from .inputs import read_bytes
from .layout import RunLayout
from .records import finish_batch
from .secret import part_seed

OUTPUT_COLUMNS = (
    "anon_id",
    "image_id",
    "level",
    "sample",
    "t_boom",
    "n_steps",
    "seed",
    "status",
    "error",
    "error_kind",
    "error_detail",
    "faces",
    "face_boxes",
    "output_path",
    "sha256_output",
    "seconds",
    "source_sha256",
    "source_size",
    "source_mtime",
    "original",
    "anonymized",
)


INTEGER_COLUMNS = {
    "seed": "Int64",
    "sample": "Int32",
    "t_boom": "Int32",
    "n_steps": "Int32",
    "source_size": "Int64",
    "faces": "Int32",
}

# Face-region mode: the row of an image in which the detector found no face (never a copy of the original).
NO_FACE_DETECTED = "no_face_detected"
NO_FACE_TEXT = "no_face_detected: the face detector found no face in the image; no output was made"
NO_FACE_ORIGINAL_TEXT = "no_face_original: the face detector found no face in the original"


@dataclass(frozen=True)
class AnonymizeConfig:
    """What an anonymize actor needs besides the sampler settings. No secret: each row brings its outputs'
    seeds and sub-keys, derived on the driver (pipeline.secret)."""

    out: str
    max_pixels: int
    threads: int | None = None
    region: RegionSettings = RegionSettings()
    enhance: EnhanceSettings | None = None  # boomerang enhance: upsample, then Boomerang in tiles
    weights_from: str | None = None  # --weights-from: this node's weights are filled from it first


@dataclass
class _Decoded:
    """An input image that decoded, and what its model work needs."""

    base: dict  # the columns every row of the image shares
    data: bytes
    image: object  # PIL image, at its own size
    levels: list[float]
    faces: list[FaceJob] | None = None  # face-region mode, with faces found
    boxes: list = None  # their detector boxes (FaceBox), same order


class AnonymizeStage:
    """Boomerang-process a batch of images at each level it still needs."""

    def __init__(self, sampler_settings: SamplerSettings, config: AnonymizeConfig) -> None:
        import torch

        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.layout = RunLayout.at(config.out)
        if config.weights_from:  # the node's first actor fills its weights; the others find them verified
            from .weights import stage_for_actor

            region = config.region.detector if config.region.faces else None
            s = sampler_settings
            stage_for_actor(config.weights_from, model=s.model, revision=s.revision, region_detector=region)
        self.model = load_model(sampler_settings)
        self.sampler = BoomerangSampler(self.model, sampler_settings)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows: list[dict] = []
        decoded: list[_Decoded] = []
        for item in batch.to_dict("records"):
            levels = [float(level) for level in item["levels"]]
            base = {key: item.get(key) for key in ("anon_id", "image_id", "source_size", "source_mtime")}
            base["sample"] = int(item.get("sample") or 0)
            # Per level: the output's seed and sub-key (pipeline.job.work_row); dropped from the output rows.
            base["_seeds"] = {lv: int(seed) for lv, seed in zip(levels, item["seeds"], strict=True)}
            base["_subkeys"] = {lv: str(key) for lv, key in zip(levels, item["subkeys"], strict=True)}
            if item.get("problem"):
                rows += [self._error(base, level, problem(item["problem"])) for level in levels]
                continue
            try:
                image_bytes = item.get("image")
                data = image_bytes if image_bytes is not None else read_bytes(item["source"])
                image = decode_image(data, max_pixels=self.config.max_pixels)
            except (ImageError, OSError) as err:
                rows += [self._error(base, level, classify(err)) for level in levels]
                continue
            base["source_sha256"] = hashlib.sha256(data).hexdigest()
            entry = _Decoded(base, data, image, levels)
            if self.config.region.faces:
                try:
                    entry.boxes = detect_faces(image, self.config.region.detector)
                except Exception as err:  # noqa: BLE001 - a detector failing on one image must not lose the batch
                    rows += [self._error(base, level, classify(err)) for level in levels]
                    continue
                entry.faces = face_jobs(base["image_id"], entry.boxes, image.size, self.config.region.margin)
                if not entry.faces and self.config.region.no_face == "withhold":
                    rows += [self._no_face(base, level) for level in levels]
                    continue
                base["faces"] = len(entry.faces)
            decoded.append(entry)

        for level in sorted({level for entry in decoded for level in entry.levels}):
            here = [entry for entry in decoded if level in entry.levels]
            # The sampler splits each call into fixed-size model calls (SamplerSettings.model_batch): the faces
            # of many images fill one model batch, so images cost what their faces cost.
            if self.config.enhance is not None:
                rows += self._enhance(here, level)
                continue
            rows += self._sample([e for e in here if not e.faces], level)
            rows += self._sample_faces([e for e in here if e.faces], level)
        # Nullable integer columns: with NaN for an error row, pandas would turn 63-bit seeds into
        # floats (rounding them) and Ray could not join the batch with an all-integer one.
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS)).astype(INTEGER_COLUMNS)

    def _sample(self, chunk: list[_Decoded], level: float) -> list[dict]:
        if not chunk:
            return []
        seeds = [self._seed(entry.base, level) for entry in chunk]
        inputs = [to_model_input(entry.image, self.model.resolution) for entry in chunk]
        started = time.perf_counter()
        try:
            result = self._run_sampler([square for square, _ in inputs], level, seeds)
        except (ValueError, RuntimeError, MemoryError) as err:  # e.g. a level too small for the grid, OOM
            error = classify(err)
            return [self._error(entry.base, level, error) for entry in chunk]
        seconds = (time.perf_counter() - started) / len(chunk)
        outputs = [
            from_model_output(image, placement) for image, (_, placement) in zip(result.images, inputs, strict=True)
        ]
        return [
            self._output_row(entry, level, result, output, seconds) | {"seed": seed}
            for entry, seed, output in zip(chunk, seeds, outputs, strict=True)
        ]

    def _sample_faces(self, chunk: list[_Decoded], level: float) -> list[dict]:
        """Face-region mode: every face of these images in one sampler call, each pasted back into its image."""
        if not chunk:
            return []
        jobs = [job for entry in chunk for job in entry.faces]
        bases = [entry.base for entry in chunk for _ in entry.faces]
        seeds = [self._seed(base, level, job.face_index) for base, job in zip(bases, jobs, strict=True)]
        resolution = self.model.resolution
        squares = [cut_region(entry.image, job.region, resolution) for entry in chunk for job in entry.faces]
        started = time.perf_counter()
        try:
            result = self._run_sampler(squares, level, seeds)
        except (ValueError, RuntimeError, MemoryError) as err:
            error = classify(err)
            return [self._error(entry.base, level, error) for entry in chunk]
        seconds = (time.perf_counter() - started) / len(chunk)
        rows, faces_out, seeds_left = [], iter(result.images), iter(seeds)
        for entry in chunk:
            pieces, records = [], []
            for job, box in zip(entry.faces, entry.boxes, strict=True):
                pieces.append((job.region, next(faces_out)))
                records.append(_face_record(job, box, next(seeds_left)))
            output = paste_regions(entry.image, pieces, self.config.region.feather)
            row = self._output_row(entry, level, result, output, seconds)
            rows.append(row | {"seed": None, "face_boxes": json.dumps(records)})
        return rows

    def _enhance(self, chunk: list[_Decoded], level: float) -> list[dict]:
        """Enhance mode: each image upsampled, cut into overlapping tiles of the model's size (edge-padded up to
        one tile where smaller), all tiles of the chunk in one sampler call (one generator per tile, its index
        in the face slot of the seed), blended back: outputs are exactly `scale` times the input's size."""
        if not chunk:
            return []
        settings, resolution = self.config.enhance, self.model.resolution
        overlap = settings.overlap_pixels(resolution)
        plans = []
        for entry in chunk:
            image = degrade(entry.image, settings.scale)[1] if settings.degrade else entry.image
            big = upsample(image, settings.scale, settings.filter)
            padded = pad_to(big, resolution)
            plans.append((entry, big.size, padded, tile_grid(padded.size, resolution, overlap)))
        crops = [crop for _, _, padded, tiles in plans for crop in cut_tiles(padded, tiles)]
        seeds = [self._seed(entry.base, level, i) for entry, _, _, tiles in plans for i in range(len(tiles))]
        started = time.perf_counter()
        try:
            result = self._run_sampler(crops, level, seeds)
        except (ValueError, RuntimeError, MemoryError) as err:
            error = classify(err)
            return [self._error(entry.base, level, error) for entry in chunk]
        seconds = (time.perf_counter() - started) / len(chunk)
        rows, outputs = [], iter(result.images)
        for entry, size, padded, tiles in plans:
            blended = blend_tiles(padded.size, tiles, [next(outputs) for _ in tiles], overlap)
            output = blended.crop((0, 0, *size))
            rows.append(self._output_row(entry, level, result, output, seconds) | {"seed": None})
        return rows

    def _output_row(self, entry: _Decoded, level: float, result, output, seconds: float) -> dict:
        png = encode_png(output)
        path = self.layout.image_path(level, entry.base["anon_id"])
        storage.write_bytes(path, png)
        return {
            **entry.base,
            "level": level,
            "t_boom": result.t_boom,
            "n_steps": result.n_steps,
            "status": "ok",
            "output_path": self.layout.relative(path),
            "sha256_output": hashlib.sha256(png).hexdigest(),
            "seconds": seconds,
            "original": entry.data,
            "anonymized": png,
        }

    def _run_sampler(self, images: list, level: float, seeds: list[int]):
        """The sampler call; on out-of-memory, again with half the model batch, down to 1."""
        while True:
            generators = [make_generator(seed, self.model.device) for seed in seeds]
            try:
                return self.sampler(images, level, generators)
            except (RuntimeError, MemoryError) as err:
                model_batch = self.sampler.settings.model_batch or len(images)
                if not is_out_of_memory(err) or model_batch <= 1:
                    raise
                _free_accelerator_memory()
                self.sampler.settings = replace(self.sampler.settings, model_batch=model_batch // 2)

    def _seed(self, base: dict, level: float, part: int | None = None) -> int:
        """One output's seed, as the driver derived it; or the seed of one of its parts (a face in face-region
        mode, a tile in enhance), derived from the output's sub-key."""
        if part is None:
            return base["_seeds"][float(level)]
        return part_seed(base["_subkeys"][float(level)], part)

    def _error(self, base: dict, level: float, error: RowError) -> dict:
        return error_row(base, level, error) | {"seed": self._seed(base, level)}

    def _no_face(self, base: dict, level: float) -> dict:
        return {
            **base,
            "level": level,
            "status": NO_FACE_DETECTED,
            "error": NO_FACE_TEXT,
            "error_kind": "input",
            "faces": 0,
        }


def _face_record(job: FaceJob, box, seed: int) -> dict:
    """A face of face_boxes (records.FACE_BOX): detector box, confidence, the square resampled, the seed."""
    region = job.region
    return {
        "face": job.face_index,
        "x": box.x,
        "y": box.y,
        "w": box.w,
        "h": box.h,
        "confidence": box.confidence,
        "left": region.left,
        "top": region.top,
        "side": region.side,
        "seed": seed,
    }


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower()


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
            from .weights import stage_for_actor

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
        _free_accelerator_memory()
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
    """The row error of a distance row whose evaluation failed transiently (see `pipeline.errors.classify`)."""
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


class WriteStage:
    """For `boomerang anonymize`: write the batch's manifest parts without evaluating."""

    def __init__(self, out: str) -> None:
        self.layout = RunLayout.at(out)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return finish_batch(self.layout, batch.to_dict("records"), None)
