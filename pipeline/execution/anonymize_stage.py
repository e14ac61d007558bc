"""The anonymize stage, a callable class that Ray Data's `map_batches` runs as an actor pool: each actor loads its
model once; a batch's images are decoded, their outputs sampled at each level they still need (whole images, the
faces of face-region mode, or enhance's tiles) and written to images/. A bad image never raises out of the stage:
it becomes a row with status "error" (pipeline.tables.row_errors), so one file cannot abort the job. Also the
write-only stage that ends an `anonymize` pass (nothing evaluated)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace

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
from pipeline.execution.inputs import read_bytes
from pipeline.execution.ray_batches import arrow_ready
from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.secret import part_seed
from pipeline.tables.batch_parts import finish_batch
from pipeline.tables.row_errors import RowError, classify, error_row, problem

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


@dataclass(frozen=True)
class AnonymizeConfig:
    """What an anonymize actor needs besides the sampler settings. No secret: each row brings its outputs'
    seeds and sub-keys, derived on the driver (pipeline.folder.secret)."""

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
            from pipeline.weights.store import stage_for_actor

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
            # Per level: the output's seed and sub-key (pipeline.execution.job.work_row); dropped from the output rows.
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
        # Missing text and bytes as None (pipeline.execution.ray_batches): Ray logs what it cannot convert.
        return arrow_ready(pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS)).astype(INTEGER_COLUMNS))

    def _sample(self, chunk: list[_Decoded], level: float) -> list[dict]:
        if not chunk:
            return []
        seeds = [self._seed(entry.base, level) for entry in chunk]
        inputs = [to_model_input(entry.image, self.model.resolution) for entry in chunk]
        result, seconds, failed = self._sampled(chunk, [square for square, _ in inputs], level, seeds)
        if failed:
            return failed
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
        result, seconds, failed = self._sampled(chunk, squares, level, seeds)
        if failed:
            return failed
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
        result, seconds, failed = self._sampled(chunk, crops, level, seeds)
        if failed:
            return failed
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

    def _sampled(self, chunk: list[_Decoded], images: list, level: float, seeds: list[int]):
        """The sampler over `images` for the images of `chunk`: (result, seconds per image, []), or (None, 0, an
        error row per image) when it failed (e.g. a level too small for the grid, out of memory at batch 1)."""
        started = time.perf_counter()
        try:
            result = self._run_sampler(images, level, seeds)
        except (ValueError, RuntimeError, MemoryError) as err:
            error = classify(err)
            return None, 0.0, [self._error(entry.base, level, error) for entry in chunk]
        return result, (time.perf_counter() - started) / len(chunk), []

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
                free_accelerator_memory()
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
    """A face of face_boxes (schemas.FACE_BOX): detector box, confidence, the square resampled, the seed."""
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


def free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class WriteStage:
    """For `boomerang anonymize`: write the batch's manifest parts without evaluating."""

    def __init__(self, out: str) -> None:
        self.layout = RunLayout.at(out)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return finish_batch(self.layout, batch.to_dict("records"), None)
