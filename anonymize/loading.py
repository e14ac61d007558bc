"""Load a diffusion model through diffusers, with the scheduler the settings ask for, and say where it came from.

A model is a hub id or a local diffusers pipeline folder (one with model_index.json). Hub ids are looked
up in the local Hugging Face cache first and fetched from the network only when that misses and the hub
is not in offline mode (HF_HUB_OFFLINE), so a machine without network fails at once with a one-line
``WeightsNotFound`` rather than after retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anonymize.settings import SamplerSettings

if TYPE_CHECKING:
    import torch

_HOW_TO_SUPPLY = (
    "pass --model /path/to/a/diffusers/folder, or put it in the Hugging Face cache (HF_HOME) on a machine with network"
)
_SAFE_WEIGHTS = (".safetensors",)
_PICKLE_WEIGHTS = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# torch is imported where a model is loaded (`_torch`), not with this module: the driver checks and names the
# weights without it (about a second of start-up on a small machine).


class WeightsNotFound(Exception):
    """The model's weights cannot be had; ``str()`` is one line: what, where it looked, how to supply it."""


class PickleRefused(WeightsNotFound):
    """The model has only pickle weights and ``allow_pickle`` is off."""


@dataclass
class LoadedModel:
    """A loaded diffusers pipeline and what the sampler and run records need to know about it.

    Attributes:
        pipeline: the diffusers pipeline, on ``device``, with the scheduler from the settings.
        kind: "latent" (VAE + text encoder + UNet2DConditionModel) or "pixel" (UNet2DModel DDPM).
        device, dtype: where and in what precision the model runs.
        resolution: side of the square images the model is run at.
        num_train_timesteps: T, the training schedule length (level = t_boom / T).
        model: the id or path given; revision: the hub revision asked for;
        commit: the hub snapshot commit, if loaded from the hub cache; folder: the folder loaded.
    """

    pipeline: Any
    kind: str
    device: torch.device
    dtype: torch.dtype
    resolution: int
    num_train_timesteps: int
    model: str
    revision: str | None
    commit: str | None
    folder: Path
    allow_pickle: bool = False
    _weights_sha256: str | None = field(default=None, repr=False)

    def provenance(self) -> dict[str, Any]:
        """A JSON-ready record of what model ran, for run.json.

        ``weights_sha256`` is a sha256 over the weight files' relative paths and bytes for local folders;
        for hub snapshots it is None and ``commit`` identifies the content (hashing gigabytes per load
        would add nothing the hub's commit does not already pin).
        """
        import diffusers

        if self.commit is None and self._weights_sha256 is None:
            self._weights_sha256 = weights_sha256(self.folder, self.allow_pickle)
        return {
            "model": self.model,
            "revision": self.revision,
            "commit": self.commit,
            "weights_sha256": self._weights_sha256,
            "kind": self.kind,
            "pipeline_class": type(self.pipeline).__name__,
            "scheduler": type(self.pipeline.scheduler).__name__,
            "scheduler_config": _jsonable(dict(self.pipeline.scheduler.config)),
            "num_train_timesteps": self.num_train_timesteps,
            "resolution": self.resolution,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "diffusers_version": diffusers.__version__,
            "torch_version": _torch().__version__,
        }


def load_model(settings: SamplerSettings) -> LoadedModel:
    """Load ``settings.model`` through ``DiffusionPipeline.from_pretrained`` and set its scheduler.

    Raises:
        WeightsNotFound: the folder is missing, the hub id is not cached and cannot be fetched, or
            (``PickleRefused``) only pickle weights exist and ``settings.allow_pickle`` is off.
        ValueError: the pipeline is not a kind Boomerang supports, or the resolution does not fit it.
    """
    from diffusers import DiffusionPipeline

    torch = _torch()
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, settings.dtype) if settings.dtype else _default_dtype(device)
    folder, commit = resolve_model(settings)
    try:
        with quiet_progress_bars():
            pipe = DiffusionPipeline.from_pretrained(
                str(folder),
                local_files_only=True,
                use_safetensors=None if settings.allow_pickle else True,
                **{_dtype_kwarg(): dtype},
                **unused_components(folder),
                **_variant(folder),
            )
    except OSError as e:  # diffusers' way of saying a file is missing, e.g. a partly cached snapshot
        raise WeightsNotFound(
            f"model {settings.model!r}: loading {folder} failed ({_short(e)}); {_HOW_TO_SUPPLY}"
        ) from e
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # from_pretrained does this; a pipeline built by hand may not have
    pipe.set_progress_bar_config(disable=True)
    kind = _kind(pipe)
    pipe.scheduler = _make_scheduler(settings.scheduler, pipe.scheduler.config)
    pipe.to(device)
    return LoadedModel(
        pipeline=pipe,
        kind=kind,
        device=device,
        dtype=dtype,
        resolution=_resolution(pipe, kind, settings.resolution),
        num_train_timesteps=int(pipe.scheduler.config.num_train_timesteps),
        model=settings.model,
        revision=settings.revision,
        commit=commit,
        folder=folder,
        allow_pickle=settings.allow_pickle,
    )


# Components of a Stable Diffusion folder that Boomerang never calls (the NSFW safety checker, a CLIP vision model of
# about 0.6 GB in fp16, and its image processor): never loaded, never moved to the device.
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


def unused_components(folder: Path) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that skip the folder's unused components (those it names)."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    skip: dict[str, Any] = {name: None for name in UNUSED_COMPONENTS if name in index}
    if "requires_safety_checker" in index or "safety_checker" in index:
        skip["requires_safety_checker"] = False
    return skip


def _variant(folder: Path) -> dict[str, str]:
    """``variant="fp16"`` for a folder whose weights are only fp16 files (``boomerang weights fetch --variant fp16``
    takes only those), so diffusers looks for them; nothing otherwise."""
    names = [p.name for p in Path(folder).glob("*/*.safetensors")]
    if names and all(name.endswith(".fp16.safetensors") for name in names):
        return {"variant": "fp16"}
    return {}


def weights_sha256(folder: Path, include_pickle: bool = False) -> str:
    """sha256 over every weight file under ``folder``: its relative path, a NUL, its size, then its bytes."""
    suffixes = _SAFE_WEIGHTS + (_PICKLE_WEIGHTS if include_pickle else ())
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in suffixes)
    digest = hashlib.sha256()
    for path in files:
        rel = path.relative_to(folder).as_posix()
        digest.update(rel.encode("utf-8") + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_model(settings: SamplerSettings) -> tuple[Path, str | None]:
    """Return (local pipeline folder, hub commit or None) for ``settings.model``, without loading it.

    Downloads a hub id that is not cached when the network allows. Raises WeightsNotFound (or
    PickleRefused) with a one-line message, so a job can check this before it starts workers.
    """
    folder, commit = _locate(settings)
    _refuse_pickle_only(folder, settings)
    return folder, commit


def _locate(settings: SamplerSettings) -> tuple[Path, str | None]:
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    model = settings.model
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise WeightsNotFound(
                f"model {model!r}: the folder {path.resolve()} is not a diffusers pipeline "
                f"(no model_index.json); {_HOW_TO_SUPPLY}"
            )
        return path.resolve(), None
    try:
        validate_repo_id(model)
    except HFValidationError:
        # Not a possible hub id, so the user meant a folder, and it is not there.
        raise WeightsNotFound(
            f"model {model!r}: no folder at {path.resolve()} and it is not a hub id; {_HOW_TO_SUPPLY}"
        ) from None

    from diffusers import DiffusionPipeline

    kwargs = {"revision": settings.revision, "use_safetensors": None if settings.allow_pickle else True}
    where = f"not a local folder and not in the Hugging Face cache at {constants.HF_HUB_CACHE}"
    try:
        with quiet_progress_bars():
            folder = DiffusionPipeline.download(model, local_files_only=True, **kwargs)
    except (OSError, ValueError) as cache_miss:
        if _hub_offline():
            raise WeightsNotFound(f"model {model!r} is {where} (offline mode); {_HOW_TO_SUPPLY}") from cache_miss
        try:
            with quiet_progress_bars():
                folder = DiffusionPipeline.download(model, **kwargs)
        except (OSError, ValueError) as e:
            if "safetensors" in str(e) and not settings.allow_pickle:
                raise PickleRefused(_pickle_message(model, "its weights are pickle files")) from e
            raise WeightsNotFound(
                f"model {model!r} is {where}, and fetching it from the hub failed ({_short(e)}); {_HOW_TO_SUPPLY}"
            ) from e
    folder = Path(folder)
    commit = folder.name if folder.parent.name == "snapshots" else None
    return folder, commit


def _refuse_pickle_only(folder: Path, settings: SamplerSettings) -> None:
    """Refuse a component that has pickle weights and no safetensors, before diffusers sees it."""
    if settings.allow_pickle:
        return
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    for name in index:
        sub = folder / name
        if name.startswith("_") or not sub.is_dir():
            continue
        files = [p for p in sub.iterdir() if p.is_file()]
        pickles = [p for p in files if p.suffix in _PICKLE_WEIGHTS]
        if pickles and not any(p.suffix in _SAFE_WEIGHTS for p in files):
            rel = pickles[0].relative_to(folder).as_posix()
            raise PickleRefused(_pickle_message(settings.model, f"{rel} is a pickle file with no safetensors"))


def _pickle_message(model: str, what: str) -> str:
    return (
        f"model {model!r}: {what}, and pickle files can run code when loaded; pass --allow-pickle if you trust the file"
    )


def _short(error: BaseException, limit: int = 200) -> str:
    """An exception as one short line, for messages that must stay one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hub_offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE at import; also honour it when set later in this process.
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE) or env


def _kind(pipe: Any) -> str:
    from diffusers import UNet2DConditionModel, UNet2DModel

    unet = getattr(pipe, "unet", None)
    has_text = getattr(pipe, "text_encoder", None) is not None and getattr(pipe, "tokenizer", None) is not None
    if (
        isinstance(unet, UNet2DConditionModel)
        and getattr(pipe, "vae", None) is not None
        and has_text
        and getattr(pipe, "text_encoder_2", None) is None  # SDXL needs added conditioning we do not build
    ):
        return "latent"
    if isinstance(unet, UNet2DModel) and getattr(pipe, "vae", None) is None:
        return "pixel"
    raise ValueError(
        f"{type(pipe).__name__} is not supported: Boomerang here runs Stable Diffusion 1.x/2.x-class "
        "pipelines (VAE, CLIP text encoder, UNet2DConditionModel) and pixel DDPMs (UNet2DModel)"
    )


def load_scheduler(settings: SamplerSettings) -> Any:
    """The scheduler ``load_model`` would set, from the model's scheduler config alone (no weights)."""
    from diffusers import DDPMScheduler

    folder, _ = resolve_model(settings)
    config = DDPMScheduler.load_config(str(folder), subfolder="scheduler", local_files_only=True)
    return _make_scheduler(settings.scheduler, config)


def _make_scheduler(name: str, config: Any) -> Any:
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    raise ValueError(f"scheduler must be one of dpm++, ddim, ddpm, got {name!r}")


def _resolution(pipe: Any, kind: str, requested: int | None) -> int:
    size = pipe.unet.config.sample_size
    if not isinstance(size, int):
        if len(set(size)) != 1:
            raise ValueError(f"the model's sample_size {tuple(size)} is not square; pass a resolution")
        size = int(size[0])
    factor = pipe.vae_scale_factor if kind == "latent" else 1
    if requested is None:
        return size * factor
    # UNet2DConditionModel passes odd skip sizes up itself, so a latent model needs only whole latents;
    # UNet2DModel halves its input once per down block after the first and cannot undo odd sizes.
    pixel_multiple = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    multiple = factor if kind == "latent" else pixel_multiple
    if requested % multiple:
        raise ValueError(f"resolution must be a multiple of {multiple} for this model, got {requested}")
    return requested


def _torch():
    import torch

    return torch


def _default_dtype(device: torch.device) -> torch.dtype:
    torch = _torch()
    # Half precision is what SD is run in on GPUs; on CPUs it is slow or unsupported.
    return torch.float16 if device.type == "cuda" else torch.float32


def _dtype_kwarg() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` in 2026 (the old name warns); older releases know only
    ``torch_dtype``. The helper that does the renaming marks the releases that take ``dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


@contextlib.contextmanager
def quiet_progress_bars():
    """Silence diffusers' and transformers' loading bars, then put their global switches back."""
    from diffusers.utils import logging as d_logging
    from transformers.utils import logging as t_logging

    d_was, t_was = d_logging.is_progress_bar_enabled(), t_logging.is_progress_bar_enabled()
    d_logging.disable_progress_bar()
    t_logging.disable_progress_bar()
    try:
        yield
    finally:
        if d_was:
            d_logging.enable_progress_bar()
        if t_was:
            t_logging.enable_progress_bar()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # strict JSON has no inf/nan (DPM-Solver's lambda_min_clipped is -inf)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
