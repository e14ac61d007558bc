"""Job settings: one frozen dataclass, built once at the edge from a config file and flags.

The sampler and evaluation settings are the libraries' own dataclasses; this module only adds what a
job needs around them (input, output, levels, Ray) and validates it with errors that name the field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from anonymize import EnhanceSettings, RegionSettings, SamplerSettings, validate_level
from evaluation import EvaluationSettings
from pipeline.settings.gate_policy import gate_policy_breaches, gate_policy_refusal

DEFAULT_LADDER = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_MAX_PIXELS = 50_000_000


DEFAULT_SHARD_SIZE = 4096


class SettingsError(ValueError):
    """A bad setting; its message names the flag (or config key) and the bad value."""


@dataclass(frozen=True)
class JobSettings:
    """Everything one `boomerang` job needs. Paths are strings so that URIs (s3://...) pass through."""

    input: str | None = None
    out: str = ""
    levels: tuple[float, ...] = (0.7,)
    seed: int = 0
    batch_size: int = 4
    # Local samples per (image, level) (data augmentation): each its own generator, name and manifest row.
    samples: int = 1
    workers: int | None = None  # None: fill the machine (pipeline.execution.actors)
    gpus_per_worker: float | None = None  # None: one actor per GPU (0.75 of it with evaluation), else 0
    eval_gpus_per_worker: float | None = None  # None: 0.25 of each GPU where the cluster has GPUs, else 0
    eval_workers: int | None = None  # None: fill the machine (pipeline.execution.actors)
    # Pairs per evaluation batch: on CPU a batch of 16 costs 18% less per pair than one of 8 (Facenet's batched
    # forward), and each batch writes its parts once (docs/benchmarks.md).
    eval_batch_size: int = 16
    # Images per shard (pipeline.tables.shards): one file per shard per table, so 10^6 images make 245 files, not
    # 250,000 batch parts; small enough that a shard's compaction reads a few hundred parts and holds a few
    # MB. Fixed by the folder's first run.
    shard_size: int = DEFAULT_SHARD_SIZE
    address: str | None = None
    overwrite: bool = False
    gate: bool = False
    ladder: tuple[float, ...] = DEFAULT_LADDER
    report_originals: bool = False
    report_withheld: bool = False  # gate runs: the internal report's pictures include withheld outputs
    max_pixels: int = DEFAULT_MAX_PIXELS
    id_column: str = "id"
    image_column: str = "image"
    # Identity labels for the re-identification attack (pipeline.outputs.linkage_attack): the parent folder (LFW's
    # Person_Name/Person_Name_0001.jpg) or a Parquet column; kept in private/ only.
    identity_from: str | None = None
    identity_column: str | None = None
    deepface_home: str | None = None
    weights_from: str | None = None  # pipeline.weights: a store each node fills its weights from
    secret_file: str | None = None
    retry_errors: bool = False
    shared_filesystem_lock: bool = False  # a local --out on NFS/SMB/FUSE: the user vouches for its locks
    strict: bool = False
    gate_thresholds: tuple[tuple[str, float], ...] = ()
    gate_max_linkage: int | None = None  # withhold outputs whose own original ranks within the top R
    # Face-region mode keeps the scene: the gate releases only when the user accepts that it links to sources.
    accept_scene_linkage: bool = False
    # --gate-override: the named gate-policy rules (GATE_OVERRIDES) this run may break; each one in effect is
    # stated first in both reports and in run.json.
    gate_override: tuple[str, ...] = ()
    label: str | None = None  # boomerang evaluate: the name of another tool's results, shown for a level
    demo: bool = False
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    region: RegionSettings = field(default_factory=RegionSettings)
    enhance: EnhanceSettings | None = None  # boomerang enhance

    def __post_init__(self) -> None:
        if not self.out:
            raise SettingsError("--out is required: the folder the job writes to")
        levels = self.ladder if self.gate else self.levels
        if not levels:
            raise SettingsError("--levels is empty: give at least one level in (0, 1]")
        for level in levels:
            try:
                validate_level(level)
            except ValueError as err:
                raise SettingsError(f"--levels: {err}") from None
        if len(set(levels)) != len(levels):
            raise SettingsError(f"--levels has duplicates: {list(levels)}")
        if self.gate and list(self.ladder) != sorted(self.ladder):
            raise SettingsError(f"--ladder must increase, got {list(self.ladder)}")
        for name in ("batch_size", "samples", "workers", "eval_workers", "eval_batch_size", "max_pixels", "shard_size"):
            value = getattr(self, name)
            if value is None and name in ("workers", "eval_workers"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        for name, value in self.gate_thresholds:
            if name not in self.evaluation.recognizers:
                raise SettingsError(
                    f"--gate-thresholds: {name!r} is not among --recognizers {self.evaluation.recognizers}"
                )
            if not 0.0 <= value <= 2.0:
                raise SettingsError(f"--gate-thresholds: {name}={value!r} is not a cosine distance in [0, 2]")
        linkage = self.gate_max_linkage
        if linkage is not None and (not isinstance(linkage, int) or isinstance(linkage, bool) or linkage < 1):
            raise SettingsError(f"--gate-max-linkage must be an integer >= 1, got {linkage!r}")
        if self.gate and self.region.faces and not self.accept_scene_linkage:
            raise SettingsError(
                "--gate with --region faces would release photos whose every pixel outside the faces is the "
                "original's, so anyone holding the originals links each one to its source; pass "
                "--accept-scene-linkage to release them anyway (see docs/privacy.md)"
            )
        self._check_gate_policy()
        if self.identity_from not in (None, "folder"):
            raise SettingsError(f"--identity-from must be 'folder', got {self.identity_from!r}")
        if self.identity_from and self.identity_column:
            raise SettingsError("give --identity-from folder or --identity-column, not both")
        gpus = self.gpus_per_worker
        if gpus is not None and (not isinstance(gpus, (int, float)) or math.isnan(gpus) or gpus < 0):
            raise SettingsError(f"--gpus-per-worker must be a number >= 0, got {gpus!r}")
        share = self.eval_gpus_per_worker
        if share is not None and (not isinstance(share, (int, float)) or not 0 <= share <= 0.5):
            raise SettingsError(
                f"--eval-gpus-per-worker must be a share of a GPU in [0, 0.5] (recognizers are small), got {share!r}"
            )

    def _check_gate_policy(self) -> None:
        """--gate refuses, in one line, what would void its guarantees unless --gate-override names each rule."""
        refusal = gate_policy_refusal(self)
        if refusal:
            raise SettingsError(refusal)

    def overrides_in_effect(self) -> tuple[str, ...]:
        """The gate-policy rules this run breaks under --gate-override (empty without --gate)."""
        return tuple(name for name in gate_policy_breaches(self) if name in self.gate_override)

    def public_dict(self, model_sha256: str | None = None) -> dict[str, Any]:
        """Settings as plain data for run.json and the report: no paths of this machine (the input's may
        name people; --out may lie inside it; a local --model is named by its weights' hash) and no secret
        file."""
        sections = ("sampler", "evaluation", "region", "enhance")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in sections}
        for private in _NOT_PUBLIC:
            data.pop(private)
        data["sampler"] = {f.name: getattr(self.sampler, f.name) for f in fields(self.sampler)}
        data["sampler"]["model"] = public_model(self.sampler.model, model_sha256)
        data["evaluation"] = {f.name: getattr(self.evaluation, f.name) for f in fields(self.evaluation)}
        data["region"] = {f.name: getattr(self.region, f.name) for f in fields(self.region)}
        if self.enhance is not None:
            data["enhance"] = {f.name: getattr(self.enhance, f.name) for f in fields(self.enhance)}
        return data


_NOT_PUBLIC = ("input", "out", "secret_file", "deepface_home", "weights_from")


def public_model(model: str, weights_sha256: str | None = None) -> str:
    """How public outputs name the model: a hub id as it is; a local folder (made absolute by `build_settings`)
    by what pins its bytes, never its path (which may name the machine's user or the data)."""
    if not (os.path.isabs(model) or model.startswith(("~", ".", "file:"))):
        return model
    return f"local model, sha256 {weights_sha256[:12]}" if weights_sha256 else "local model"


def _keys(settings_class, renames: Mapping[str, str] | None = None) -> dict[str, str]:
    """Flag (config key) -> field, for one of the libraries' settings dataclasses: every field under its own name,
    or the flag `renames` gives it. A field added to the dataclass is a config key at once."""
    renames = renames or {}
    return {renames.get(f.name, f.name): f.name for f in fields(settings_class)}


# Images per model call in a job: fixed (and padded) so bytes never depend on --batch-size or workers.
DEFAULT_MODEL_BATCH = 4
_SAMPLER_KEYS = _keys(SamplerSettings)
_EVALUATION_KEYS = _keys(EvaluationSettings)
# Face-region mode and boomerang enhance: the flags that name a field otherwise.
_REGION_KEYS = _keys(
    RegionSettings,
    {"mode": "region", "detector": "region_detector", "margin": "region_margin", "feather": "region_feather"},
)
_ENHANCE_KEYS = _keys(EnhanceSettings, {"overlap": "tile_overlap", "degrade": "benchmark"})


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML or YAML config file into a flat dict of settings (keys as the long flags, '-' or '_')."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"--config: no such file {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SettingsError(f"--config {path}: not valid TOML ({err})") from None
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise SettingsError(f"--config {path}: not valid YAML ({err})".replace("\n", " ")) from None
    else:
        raise SettingsError(f"--config must be a .toml, .yaml or .yml file, got {str(path)!r}")
    if not isinstance(data, Mapping):
        raise SettingsError(f"--config {path}: expected a table of settings at the top level")
    return flatten(data)


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Config sections ([sampler], [evaluation]) into one flat dict of settings."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        # Sections [sampler] and [evaluation] are accepted as well as flat keys.
        if key in ("sampler", "evaluation") and isinstance(value, Mapping):
            flat.update(flatten(value))
        elif key in ("region", "enhance") and isinstance(value, Mapping):  # run.json's sections: field names
            keys = _REGION_KEYS if key == "region" else _ENHANCE_KEYS
            flags = {field: flag for flag, field in keys.items()}
            flat.update({flags.get(str(k), str(k)): v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def settings_from_flags(flags: Mapping[str, Any]) -> JobSettings:
    """Settings from parsed command-line flags: a --config file's values, overridden by the flags given."""
    values = load_config_file(flags["config"]) if flags.get("config") else {}
    skip = {"command", "config", "originals", "anonymized"}
    values.update({key: value for key, value in flags.items() if key not in skip and value is not None})
    return build_settings(values)


def _parse_thresholds(flag: str, text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise SettingsError(f"--{flag} must look like VGG-Face=0.68,Facenet=0.4, got {text!r}")
    return out


def build_settings(values: Mapping[str, Any]) -> JobSettings:
    """Build validated JobSettings from a flat mapping (config file values updated with given flags)."""
    job: dict[str, Any] = {}
    sampler: dict[str, Any] = {}
    evaluation: dict[str, Any] = {}
    region: dict[str, Any] = {}
    enhance: dict[str, Any] = {}
    job_fields = {f.name for f in fields(JobSettings)} - {"sampler", "evaluation", "region", "enhance"}
    for key, value in values.items():
        if value is None:
            continue
        if key in _SAMPLER_KEYS:
            sampler[_SAMPLER_KEYS[key]] = value
        elif key in _EVALUATION_KEYS:
            evaluation[_EVALUATION_KEYS[key]] = value
        elif key in _REGION_KEYS:
            region[_REGION_KEYS[key]] = value
        elif key in _ENHANCE_KEYS:
            enhance[_ENHANCE_KEYS[key]] = value
        elif key in job_fields:
            job[key] = value
        elif key == "level":
            job["levels"] = value
        else:
            raise SettingsError(f"unknown setting {key!r}")
    for key in ("levels", "ladder"):
        if key in job:
            job[key] = _float_tuple(key, job[key])
    if "recognizers" in evaluation:
        evaluation["recognizers"] = _str_tuple("recognizers", evaluation["recognizers"])
    if "gate_override" in job:
        # run.json records () as []: `boomerang report` rebuilds the settings from it.
        job["gate_override"] = _str_tuple("gate-override", job["gate_override"]) if job["gate_override"] else ()
    if isinstance(evaluation.get("thresholds"), str):
        evaluation["thresholds"] = _parse_thresholds("thresholds", evaluation["thresholds"])
    if isinstance(job.get("gate_thresholds"), str):
        job["gate_thresholds"] = _parse_thresholds("gate-thresholds", job["gate_thresholds"])
    if "thresholds" in evaluation and isinstance(evaluation["thresholds"], Mapping):
        evaluation["thresholds"] = tuple((str(k), float(v)) for k, v in evaluation["thresholds"].items())
    if isinstance(job.get("gate_thresholds"), Mapping):
        job["gate_thresholds"] = tuple((str(k), float(v)) for k, v in job["gate_thresholds"].items())
    # Workers on other machines (or in another folder) must get the same files: absolute paths or URLs.
    for key in ("input", "out", "deepface_home", "secret_file", "weights_from"):
        if isinstance(job.get(key), str) and job[key]:
            job[key] = absolute(job[key])
    if isinstance(sampler.get("model"), str) and Path(sampler["model"]).expanduser().exists():
        sampler["model"] = absolute(sampler["model"])  # a local folder; anything else is a hub id
    sampler.setdefault("model_batch", DEFAULT_MODEL_BATCH)
    try:
        job["sampler"] = SamplerSettings(**sampler)
    except (TypeError, ValueError) as err:
        raise SettingsError(_flagify(str(err))) from None
    try:
        job["evaluation"] = EvaluationSettings(**evaluation)
    except (TypeError, ValueError) as err:
        raise SettingsError(_flagify(str(err))) from None
    try:
        job["region"] = RegionSettings(**region)
        job["enhance"] = EnhanceSettings(**enhance) if enhance else None
    except (TypeError, ValueError) as err:
        raise SettingsError(_flagify(str(err))) from None
    try:
        return JobSettings(**job)
    except TypeError as err:
        raise SettingsError(str(err)) from None


def absolute(path: str) -> str:
    """A local path made absolute (with ~ expanded); URLs (s3://, gs://, ...) as they are."""
    if "://" in path and not path.startswith("file://"):
        return path
    return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


def _float_tuple(name: str, value: Any) -> tuple[float, ...]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            raise SettingsError(f"--{name} must be numbers separated by commas, got {value!r}") from None
    return tuple(out)


def _str_tuple(name: str, value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = tuple(str(item).strip() for item in items if str(item).strip())
    if not out:
        raise SettingsError(f"--{name} is empty")
    return out


def _flagify(message: str) -> str:
    """Settings errors from the libraries name fields; users know them as flags."""
    head, sep, rest = message.partition(" ")
    if head in (*_SAMPLER_KEYS.values(), *_EVALUATION_KEYS.values(), *_REGION_KEYS, "no_face", *_ENHANCE_KEYS):
        return f"--{head.replace('_', '-')}{sep}{rest}"
    return message
