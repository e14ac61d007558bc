"""The Ray Data stages: callable classes that `map_batches` runs as actor pools.

Each actor loads its model once in `__init__`. A bad image never raises out of a stage: it becomes a
row with status "error", so one file cannot abort the job (Ray would otherwise fail the whole block).
Error rows carry a public reason and a private detail (pipeline.errors).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from anonymize import (
    BoomerangSampler,
    ImageError,
    SamplerSettings,
    decode_image,
    encode_png,
    from_model_output,
    load_model,
    make_generator,
    output_seed,
    to_model_input,
)

from .errors import RowError, classify, problem, scrub
from .inputs import read_bytes
from .layout import RunLayout
from .records import finish_batch

OUTPUT_COLUMNS = (
    "anon_id",
    "image_id",
    "level",
    "t_boom",
    "n_steps",
    "seed",
    "status",
    "error",
    "error_kind",
    "error_detail",
    "output_path",
    "sha256_output",
    "seconds",
    "source_sha256",
    "source_size",
    "source_mtime",
    "original",
    "anonymized",
)


INTEGER_COLUMNS = {"seed": "Int64", "t_boom": "Int32", "n_steps": "Int32", "source_size": "Int64"}


@dataclass(frozen=True)
class AnonymizeConfig:
    """What an anonymize actor needs besides the sampler settings. `secret` keys every output's seed."""

    out: str
    seed: int
    secret: bytes
    max_pixels: int
    threads: int | None = None


class AnonymizeStage:
    """Boomerang-process a batch of images at each level it still needs."""

    def __init__(self, sampler_settings: SamplerSettings, config: AnonymizeConfig) -> None:
        import torch

        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.layout = RunLayout.at(config.out)
        self.model = load_model(sampler_settings)
        self.sampler = BoomerangSampler(self.model, sampler_settings)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows: list[dict] = []
        decoded = []  # (row, source bytes, placement, model input, levels) for images that decoded
        for item in batch.to_dict("records"):
            levels = [float(level) for level in item["levels"]]
            base = {key: item.get(key) for key in ("anon_id", "image_id", "source_size", "source_mtime")}
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
            model_input, placement = to_model_input(image, self.model.resolution)
            decoded.append((base, data, placement, model_input, levels))

        for level in sorted({level for *_, levels in decoded for level in levels}):
            # The sampler splits this into fixed-size model calls (SamplerSettings.model_batch).
            rows += self._sample([entry for entry in decoded if level in entry[4]], level)
        # Nullable integer columns: with NaN for an error row, pandas would turn 63-bit seeds into
        # floats (rounding them) and Ray could not join the batch with an all-integer one.
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS)).astype(INTEGER_COLUMNS)

    def _sample(self, chunk: list, level: float) -> list[dict]:
        seeds = [self._seed(base["image_id"], level) for base, *_ in chunk]
        started = time.perf_counter()
        try:
            result = self._run_sampler([entry[3] for entry in chunk], level, seeds)
        except (ValueError, RuntimeError, MemoryError) as err:  # e.g. a level too small for the grid, OOM
            error = classify(err)
            return [self._error(base, level, error) for base, *_ in chunk]
        seconds = (time.perf_counter() - started) / len(chunk)
        rows = []
        for (base, data, placement, _, _), seed, image in zip(chunk, seeds, result.images, strict=True):
            png = encode_png(from_model_output(image, placement))
            path = self.layout.image_path(level, base["anon_id"])
            _write_atomic(path, png)
            rows.append(
                {
                    **base,
                    "level": level,
                    "t_boom": result.t_boom,
                    "n_steps": result.n_steps,
                    "seed": seed,
                    "status": "ok",
                    "output_path": self.layout.relative(path),
                    "sha256_output": hashlib.sha256(png).hexdigest(),
                    "seconds": seconds,
                    "original": data,
                    "anonymized": png,
                }
            )
        return rows

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

    def _seed(self, image_id: str, level: float) -> int:
        return output_seed(self.config.secret, self.config.seed, image_id, level)

    def _error(self, base: dict, level: float, error: RowError) -> dict:
        return error_row(base, level, error) | {"seed": self._seed(base["image_id"], level)}


def error_row(base: dict, level: float, error: RowError) -> dict:
    """An (image, level) row that failed: the public reason, its kind, and the detail for private/."""
    return {
        **base,
        "level": level,
        "status": "error",
        "error": error.public,
        "error_kind": error.kind,
        "error_detail": error.detail or None,
    }


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower()


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _write_atomic(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a file behind


@dataclass(frozen=True)
class EvaluateConfig:
    out: str
    max_pixels: int
    deepface_home: str | None = None
    threads: int | None = None


class EvaluateStage:
    """Compare each anonymized image with its original; write the batch's manifest and distance parts."""

    def __init__(self, evaluation_settings, config: EvaluateConfig) -> None:
        # deepface reads DEEPFACE_HOME when it loads weights; set it before the recognizers are built.
        if config.deepface_home:
            os.environ["DEEPFACE_HOME"] = config.deepface_home
        import torch

        if config.threads:
            torch.set_num_threads(config.threads)
        from evaluation import PairEvaluator

        self.settings = evaluation_settings
        self.config = config
        self.layout = RunLayout.at(config.out)
        self.evaluator = PairEvaluator(evaluation_settings)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from evaluation import Pair, error_rows

        rows = batch.to_dict("records")
        pairs = []
        for row in rows:
            row["t_boom"] = None if pd.isna(row["t_boom"]) else int(row["t_boom"])
            # No level (another tool's output): Arrow may carry an all-NaN column as nulls.
            row["level"] = math.nan if pd.isna(row["level"]) else float(row["level"])
            if row["status"] != "ok":
                continue
            try:
                original = np.asarray(decode_image(row["original"], max_pixels=self.config.max_pixels))
                anonymized = np.asarray(decode_image(row["anonymized"], max_pixels=self.config.max_pixels))
            except ImageError as err:  # only reachable for another tool's files (boomerang evaluate)
                row.update(error_row({}, row["level"], classify(err)))
                continue
            pairs.append(Pair(row["anon_id"], row["level"], row["t_boom"], row["source_sha256"], original, anonymized))
        distance_rows, embeddings = self.evaluator.evaluate_with_embeddings(pairs)
        for row in rows:
            if row["status"] != "ok":
                distance_rows += error_rows(row["anon_id"], row["level"], row["t_boom"], row["error"], self.settings)
        # deepface's words are not ours: no path or id may reach a shareable table through them.
        ids = tuple(str(row.get("image_id") or "") for row in rows)
        for distance_row in distance_rows:
            distance_row["error"] = scrub(distance_row["error"], ids)
        return finish_batch(self.layout, rows, distance_rows, embeddings)


class WriteStage:
    """For `boomerang anonymize`: write the batch's manifest parts without evaluating."""

    def __init__(self, out: str) -> None:
        self.layout = RunLayout.at(out)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return finish_batch(self.layout, batch.to_dict("records"), None)
