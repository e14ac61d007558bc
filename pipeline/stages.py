"""The Ray Data stages: callable classes that `map_batches` runs as actor pools.

Each actor loads its model once in `__init__`. A bad image never raises out of a stage: it becomes a
row with status "error", so one file cannot abort the job (Ray would otherwise fail the whole block).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

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

from .inputs import read_bytes
from .layout import RunLayout
from .records import write_batch

OUTPUT_COLUMNS = (
    "anon_id",
    "image_id",
    "source",
    "source_sha256",
    "level",
    "t_boom",
    "n_steps",
    "seed",
    "status",
    "error",
    "output_path",
    "sha256_output",
    "seconds",
    "original",
    "anonymized",
)


INTEGER_COLUMNS = {"seed": "Int64", "t_boom": "Int32", "n_steps": "Int32"}


@dataclass(frozen=True)
class AnonymizeConfig:
    """What an anonymize actor needs besides the sampler settings."""

    out: str
    seed: int
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
        decoded = []  # (row, source bytes, placement, model input) for images that decoded
        for item in batch.itertuples(index=False):
            levels = [float(level) for level in item.levels]
            base = {"anon_id": item.anon_id, "image_id": item.image_id, "source": item.source}
            try:
                if item.problem:
                    raise ImageError(item.problem)
                image_bytes = getattr(item, "image", None)
                data = image_bytes if image_bytes is not None else read_bytes(item.source)
                image = decode_image(data, max_pixels=self.config.max_pixels)
            except (ImageError, OSError) as err:
                rows += [self._error(base, level, err, self._seed(item.image_id, level)) for level in levels]
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
        generators = [make_generator(seed, self.model.device) for seed in seeds]
        started = time.perf_counter()
        try:
            result = self.sampler([entry[3] for entry in chunk], level, generators)
        except (ValueError, RuntimeError) as err:  # e.g. a level too small for the grid, CUDA OOM
            return [self._error(base, level, err, seed) for (base, *_), seed in zip(chunk, seeds, strict=True)]
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
                    "error": None,
                    "output_path": self.layout.relative(path),
                    "sha256_output": hashlib.sha256(png).hexdigest(),
                    "seconds": seconds,
                    "original": data,
                    "anonymized": png,
                }
            )
        return rows

    def _seed(self, image_id: str, level: float) -> int:
        return output_seed(self.config.seed, image_id, level)

    @staticmethod
    def _error(base: dict, level: float, err: Exception, seed: int | None) -> dict:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        return {**base, "level": level, "seed": seed, "status": "error", "error": message}


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
            if row["status"] != "ok":
                continue
            try:
                original = np.asarray(decode_image(row["original"], max_pixels=self.config.max_pixels))
                anonymized = np.asarray(decode_image(row["anonymized"], max_pixels=self.config.max_pixels))
            except ImageError as err:  # only reachable for another tool's files (boomerang evaluate)
                row.update(status="error", error=str(err))
                continue
            pairs.append(Pair(row["anon_id"], row["level"], row["t_boom"], row["source_sha256"], original, anonymized))
        distance_rows = self.evaluator.evaluate(pairs)
        for row in rows:
            if row["status"] != "ok":
                distance_rows += error_rows(row["anon_id"], row["level"], row["t_boom"], row["error"], self.settings)
        return finish_batch(self.layout, rows, distance_rows)


def finish_batch(layout: RunLayout, rows: list[dict], distance_rows: list[dict] | None) -> pd.DataFrame:
    """Write a batch's parts and return the small rows the driver counts progress with."""
    identities = {row["anon_id"]: row for row in rows}.values()
    write_batch(layout, rows, list(identities), distance_rows)
    progress = pd.DataFrame(
        {
            "anon_id": [r["anon_id"] for r in rows],
            "level": [r["level"] for r in rows],
            "status": [r["status"] for r in rows],
        }
    )
    return progress


class WriteStage:
    """For `boomerang anonymize`: write the batch's manifest parts without evaluating."""

    def __init__(self, out: str) -> None:
        self.layout = RunLayout.at(out)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return finish_batch(self.layout, batch.to_dict("records"), None)
