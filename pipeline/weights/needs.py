"""What a job needs on a node (deepface's files for its recognizers and detectors, its diffusers model), and where
each is looked for; the errors of pipeline.weights."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from anonymize.loading import UNUSED_COMPONENTS
from evaluation import MissingWeights

MANIFEST = "weights.json"

MIRROR_ENV = "BOOMERANG_WEIGHTS_MIRROR"

ATTEMPTS = 3

CHUNK = 1 << 20


class WeightsError(MissingWeights):
    """A weight file cannot be had or does not match its recorded sha256; ``str()`` is one line naming the file."""


class Broken(Exception):
    """One download attempt went wrong (short, bad status, wrong sha256): try again."""


@dataclass(frozen=True)
class Needs:
    """What a job with given settings loads: deepface files and a diffusers model."""

    deepface: tuple = ()  # evaluation.sources.WeightSource
    model: str | None = None
    revision: str | None = None
    allow_pickle: bool = False
    variant: str | None = None
    # The flags that name these needs, for the `boomerang weights fetch` line in refusals.
    flags: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def fetch_command(self, source: str | None = None) -> str:
        words = ["boomerang", "weights", "fetch"]
        for flag, value in self.flags:
            words += [flag, value]
        if source:
            words += ["--from", source]
        return " ".join(shlex.quote(w) for w in words)


def needs(
    *,
    recognizers: Iterable[str] = (),
    detectors: Iterable[str | None] = (),
    engine: str = "pytorch",
    model: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    variant: str | None = None,
    urls: bool = True,
    region_detector: str | None = None,
) -> Needs:
    """The files a job with these settings loads (ValueError for a recognizer or detector deepface cannot fetch).
    ``detectors``: the evaluation's (one, or none); ``region_detector``: face-region mode's."""
    from evaluation.sources import job_sources

    recognizers, detectors = tuple(recognizers), [d for d in detectors if d]
    flags = []
    if recognizers:
        flags.append(("--recognizers", ",".join(recognizers)))
    for name in detectors:
        flags.append(("--detector", name))
    if region_detector:
        flags.append(("--region-detector", region_detector))
        detectors.append(region_detector)
    if engine != "pytorch" and recognizers:
        flags.append(("--engine", engine))
    if model:
        flags.append(("--model", model))
    if os.environ.get("DEEPFACE_HOME"):
        flags.append(("--deepface-home", os.environ["DEEPFACE_HOME"]))
    return Needs(
        deepface=tuple(job_sources(recognizers, detectors, engine, urls=urls)),
        model=model,
        revision=revision,
        allow_pickle=allow_pickle,
        variant=variant,
        flags=tuple(flags),
    )


def job_needs(settings, mode: str) -> Needs:
    """What a job of ``mode`` ("run", "anonymize", "evaluate", ...) with JobSettings ``settings`` loads."""
    anonymizes, evaluates = mode != "evaluate", mode not in ("anonymize",)
    try:
        return needs(
            recognizers=settings.evaluation.recognizers if evaluates else (),
            detectors=[settings.evaluation.detector] if evaluates else [],
            region_detector=settings.region.detector if settings.region.faces else None,
            engine=settings.evaluation.engine,
            model=settings.sampler.model if anonymizes else None,
            revision=settings.sampler.revision,
            allow_pickle=settings.sampler.allow_pickle,
            urls=False,
        )
    except ValueError as err:
        raise WeightsError(str(err)) from None


def deepface_folder() -> Path:
    from evaluation.weights import deepface_home

    return deepface_home() / ".deepface" / "weights"


def is_local_model(model: str) -> bool:
    return os.path.isabs(model) or model.startswith(("~", ".", "file:")) or Path(model).expanduser().exists()


def model_key(model: str) -> str:
    """The model's folder name in a pushed store: a hub id with "/" as "--", a local folder by its name."""
    if is_local_model(model):
        return Path(model.removeprefix("file://")).expanduser().name
    return model.replace("/", "--")


def hub_repo_folder(model: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + model.replace("/", "--"))


def local_model_folder(model: str, revision: str | None = None) -> Path | None:
    """Where the model's files are on this machine, or None when a hub id is not in the cache."""
    if is_local_model(model):
        return Path(model.removeprefix("file://")).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:
        return None


def model_files(folder: Path, allow_pickle: bool = False) -> list[str]:
    """The files of a diffusers folder that Boomerang loads (relative paths): model_index.json, the random-weights
    marker, and every file of each used component (never the safety checker or feature extractor)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    found = ["model_index.json"]
    from anonymize.tiny_models import RANDOM_WEIGHTS_MARKER

    if (folder / RANDOM_WEIGHTS_MARKER).is_file():
        found.append(RANDOM_WEIGHTS_MARKER)
    for name, spec in sorted(index.items()):
        if name.startswith("_") or name in UNUSED_COMPONENTS or not isinstance(spec, list) or spec[0] is None:
            continue
        for path in sorted((folder / name).rglob("*")):
            if not path.is_file() or path.name == MANIFEST:
                continue
            if path.suffix in (".bin", ".ckpt", ".pt", ".pth", ".pkl") and not allow_pickle:
                continue
            found.append(path.relative_to(folder).as_posix())
    return found


def hub_patterns(index: dict, variant: str | None = None, allow_pickle: bool = False) -> tuple[list, list]:
    """``allow_patterns`` and ``ignore_patterns`` for ``snapshot_download`` of the components Boomerang loads."""
    allow = ["model_index.json"]
    for name, spec in index.items():
        if name.startswith("_") or name in UNUSED_COMPONENTS or not isinstance(spec, list) or spec[0] is None:
            continue
        allow += [f"{name}/*.json", f"{name}/*.txt", f"{name}/*.model"]
        weights = ["safetensors"] + (["bin"] if allow_pickle else [])
        allow += [f"{name}/*.{variant}.{ext}" if variant else f"{name}/*.{ext}" for ext in weights]
    ignore = [] if variant else ["*.fp16.*", "*.non_ema.*", "*.ema.*"]
    return allow, ignore
