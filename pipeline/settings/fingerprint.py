"""The output fingerprint: every setting that can change a run's output bytes or distances, derived.

The fingerprint walks the job's settings dataclasses (`JobSettings` and the library dataclasses nested in
it) with `dataclasses.fields` and takes every field, flattened to dotted keys (`sampler.steps`,
`region.mode`, `seed`), except the fields in `NOT_OUTPUT`, each of which says why it cannot change an
output's bytes or distances. A field added to any of these dataclasses is therefore in the fingerprint
(and a rerun that changes it is refused) without an edit anywhere else; leaving one out takes an entry
with its reason here. Three values are replaced by what pins them: the model (a name or a local folder)
by its hub commit or weight hash, and `sampler.device` / `sampler.dtype` by the device and torch dtype
the anonymize actors actually use, since CPU and CUDA kernels make different bytes.

Each key belongs to the stage it shapes: a job that only evaluates has no sampler keys, one that only
anonymizes no evaluation keys, and the face-region keys are in both (detection shapes the outputs and
the per-face comparison). `pipeline.folder.provenance.check_rerun` compares fingerprints.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, get_args, get_type_hints

ANONYMIZE, EVALUATE = "anonymize", "evaluate"
VERSION = 2  # 1: the hand-written list of pipeline.folder.provenance before this module (legacy keys below)

# Fields that cannot change an output's bytes or distances, each with the reason. Anything not named here
# is in the fingerprint.
NOT_OUTPUT: dict[str, str] = {
    # Where things are, not what they are: the input's bytes are each output's source and are checked per
    # row (size and mtime, pipeline.tables.resume); --out is the folder itself; the ids and bytes columns choose
    # which rows are the input, like INPUT.
    "input": "the input: each row's source bytes are checked per row (pipeline.tables.resume), not recorded here",
    "out": "the folder that holds the record",
    "id_column": "names the input's rows, like INPUT; a changed id is a new image, not a changed output",
    "image_column": "names the input's bytes, like INPUT",
    "deepface_home": "a path: the recognizers' weights are pinned by recognizer_weights (their sha256)",
    "weights_from": "where weights are copied from: they are pinned by sampler.model and recognizer_weights",
    "secret_file": "the secret itself is checked against the folder's outputs (pipeline.folder.secret); its path is "
    "not recorded, and nothing of the secret may leave private/",
    # Scheduling: the model runs on a fixed --model-batch and one torch thread per CPU actor
    # (pipeline.execution.anonymize_pass),
    # so how work is split and placed never changes bytes. The GPU share's effect, the device, is recorded.
    "batch_size": "images per Ray task; model calls are padded to sampler.model_batch",
    "eval_batch_size": "pairs per evaluation batch; each pair is computed on its own",
    "workers": "actor count; one torch thread each, so bytes do not depend on it",
    "eval_workers": "actor count",
    "gpus_per_worker": "placement; the device it leads to is recorded as sampler.device",
    "eval_gpus_per_worker": "placement of the evaluation actors",
    "address": "which Ray cluster runs the job",
    "shard_size": "table file layout, fixed by the folder's first run (pipeline.tables.shards)",
    # Which outputs exist, never their bytes: each output row names its level and sample (sample 0 is the
    # one-sample run's output), so more levels or samples add rows and fewer leave rows in place.
    "levels": "which levels are made; each row names its level",
    "samples": "how many samples per image; each row names its sample, sample 0 is the one-sample output",
    "max_pixels": "refuses larger inputs (an error row, retried with --retry-errors); never resizes",
    # How the command behaves, not what it makes.
    "overwrite": "starts afresh: there is no record left to compare",
    "retry_errors": "which failed rows are redone, with the recorded settings",
    "strict": "the exit status",
    "demo": "the notice in the reports",
    "label": "the name shown for another tool's results in the report",
    "report_originals": "what the report shows; the report is rebuilt by every run",
    "report_withheld": "what the report shows; the report is rebuilt by every run",
    # Restated over the kept distances and embeddings by every run (pipeline.outputs.finalize, pipeline.release.gate): a
    # new
    # threshold, identity labels or release rule re-decides what is cleared, attacked and released.
    "evaluation.threshold": "restated in every table at every run (pipeline.outputs.finalize)",
    "evaluation.thresholds": "restated in every table at every run (pipeline.outputs.finalize)",
    "identity_from": "labels for the re-identification attack, rebuilt from identities at every finalize",
    "identity_column": "labels for the re-identification attack, rebuilt from identities at every finalize",
    "gate": "releases from the outputs made; each output's bytes are the same with or without it",
    "ladder": "which levels the gate tries; each row names its level",
    "gate_thresholds": "the gate's rule, re-decided over the kept distances by every gate run",
    "gate_max_linkage": "the gate's rule, re-decided over the kept embeddings by every gate run",
    "accept_scene_linkage": "whether region-mode outputs may be released; the region mode itself is recorded",
    "gate_override": "which gate rules a release may break (stated first in both reports); not how outputs are made",
    "shared_filesystem_lock": "whether a lock on a network filesystem is trusted; not how outputs are made",
    # A name for what sampler.model records: the hub snapshot commit the revision resolved to.
    "sampler.revision": "a name for the hub commit that sampler.model records",
}

# Replaced by what pins them (see `fingerprint`); absent when not known yet (the device before the cluster).
PINNED = ("sampler.model", "sampler.device", "sampler.dtype")
# Known only once the driver knows its cluster (pipeline.execution.job.ensure_cluster), so compared only where both
# the record and the rerun have them.
DEFERRED = ("sampler.device", "sampler.dtype")

# Sections and job-level fields that shape one stage only; everything else (region.*, a new job-level field)
# belongs to both, so it is covered in every mode.
_STAGES = {
    "sampler": (ANONYMIZE,),
    "enhance": (ANONYMIZE,),
    "seed": (ANONYMIZE,),
    "evaluation": (EVALUATE,),
    "recognizer_weights": (EVALUATE,),
    "seed_scheme": (ANONYMIZE,),
}

# How faces (region mode) and tiles (enhance) are seeded: not a setting but the code's, and it changes their
# bytes (pipeline.folder.secret.keyed_levels). Folders seeded on the workers by the secret itself (before
# PART_SEED_SCHEME) are recorded without it and read as OLD_PART_SEEDS, so they are refused a resume, not mixed.
PART_SEED_SCHEME = "per-output-key-v1"
OLD_PART_SEEDS = "secret-per-part"

# The flag a user changes a key with, where the rule in `flag_for` does not give it (pipeline/cli.py).
_FLAG_OVERRIDES = {
    "region.mode": "--region",
    "region.no_face": "--no-face",
    "enhance": "the command (boomerang enhance)",
    "enhance.overlap": "--tile-overlap",
    "enhance.degrade": "--benchmark",
    "sampler.device": "--device (or --gpus-per-worker)",
    "evaluation.align": "align (config file)",
    "evaluation.metric": "metric (config file)",
    "recognizer_weights": "recognizer weights (DEEPFACE_HOME)",
    "seed_scheme": "the seeding of faces and tiles (a boomerang upgrade; use another --out)",
}

# Version 1 keys -> version 2 keys.
_LEGACY = {
    "model_weights": "sampler.model",
    "seed": "seed",
    **{k: f"sampler.{k}" for k in ("prompt", "negative_prompt", "guidance_scale", "steps", "scheduler")},
    **{k: f"sampler.{k}" for k in ("resolution", "latent", "dtype", "model_batch")},
    **{f"enhance_{k}": f"enhance.{k}" for k in ("scale", "filter", "overlap", "degrade")},
    "region": "region.mode",
    "region_detector": "region.detector",
    "region_margin": "region.margin",
    "region_feather": "region.feather",
    "no_face": "region.no_face",
    **{k: f"evaluation.{k}" for k in ("recognizers", "detector", "engine", "align", "metric", "no_face_anonymized")},
    "recognizer_weights": "recognizer_weights",
}


def fingerprint(
    settings,
    mode: str,
    model: dict | None = None,
    recognizers: dict | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """The settings that determine this job's outputs, as flat JSON-ready data.

    `model` and `recognizers` are `pipeline.folder.provenance.model_identity` / `recognizer_identity`; `device` is
    the anonymize actors' device (`anonymize_device`), None while the driver does not know it yet.
    """
    stages = stages_of_mode(mode)
    pins: dict[str, Any] = {}
    if model is not None:
        # What pins the weights' bytes; the name only where nothing else does (a folder may move).
        pins["sampler.model"] = model.get("commit") or model.get("weights_sha256") or model.get("model")
    if device is not None:
        pins |= device_keys(settings.sampler, device)
    found = {k: v for k, v in walk(settings, pins).items() if set(stage_of(k)) & stages}
    if ANONYMIZE in stages and (settings.region.faces or settings.enhance is not None):
        found["seed_scheme"] = PART_SEED_SCHEME
    if EVALUATE in stages and recognizers is not None:
        found["recognizer_weights"] = {name: r["weights_sha256"] for name, r in recognizers.items()}
    return found


def walk(obj, pins: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every field of a settings dataclass and the dataclasses in it, dotted, minus `NOT_OUTPUT`.

    A nested dataclass that may be None (enhance) is recorded as "on" or "off" with its fields when on;
    a `PINNED` key takes its value from `pins`, or is left out when `pins` lacks it.
    """
    found: dict[str, Any] = {}
    for f in fields(obj):
        key = prefix + f.name
        if key in NOT_OUTPUT:
            continue
        value = getattr(obj, f.name)
        if key in PINNED:
            if key in pins:
                found[key] = pins[key]
        elif is_dataclass(value):
            if _section(obj, f.name):
                found[key] = "on"  # an optional section (enhance): "off" when None
            found |= walk(value, pins, key + ".")
        elif value is None and _section(obj, f.name):
            found[key] = "off"
        else:
            found[key] = _plain(value)
    return found


def stage_of(key: str) -> tuple[str, ...]:
    """The stages (anonymize, evaluate) whose outputs a fingerprint key shapes."""
    return _STAGES.get(key.split(".")[0], (ANONYMIZE, EVALUATE))


# Which stages a job's passes run, by the name run.json records for them under "command" (the command that
# runs them first: augment and enhance run the stages of `run` and `anonymize`).
ANONYMIZE_AND_EVALUATE, ANONYMIZE_ONLY, EVALUATE_ONLY = "run", "anonymize", "evaluate"
JOB_STAGES = {ANONYMIZE_AND_EVALUATE: {ANONYMIZE, EVALUATE}, ANONYMIZE_ONLY: {ANONYMIZE}, EVALUATE_ONLY: {EVALUATE}}


def stages_of_mode(mode: str) -> set[str]:
    """The stages a job runs, by its `Job.stages` name (one not known: both)."""
    return JOB_STAGES.get(mode, {ANONYMIZE, EVALUATE})


def stages_recorded(fp: dict) -> set[str]:
    """The stages a fingerprint covers: those with a key of their own (a stage's sections are always whole)."""
    return {stage for key in fp for stage in stage_of(key) if len(stage_of(key)) == 1}


def flag_for(key: str) -> str:
    """The flag that changes a fingerprint key: `--` and the field name with dashes (`--steps`), region
    fields as `--region-<field>`, and the few names pipeline/cli.py spells otherwise."""
    if key in _FLAG_OVERRIDES:
        return _FLAG_OVERRIDES[key]
    section, _, name = key.rpartition(".")
    return "--" + ("region-" if section == "region" else "") + name.replace("_", "-")


def anonymize_device(explicit: str | None, gpus_per_actor: float) -> str:
    """The torch device the anonymize actors load the model on.

    `anonymize.loading.load_model` takes `--device` when given, else CUDA when the actor sees a GPU. An
    actor sees a GPU when Ray gives it a share (then Ray makes that GPU its visible device); one with no
    share would still see every GPU of its node (Ray leaves CUDA_VISIBLE_DEVICES alone for it), so
    pipeline.execution.anonymize_pass pins that choice to this value in the settings it sends, and what is
    recorded is what ran.
    """
    return explicit or ("cuda" if gpus_per_actor > 0 else "cpu")


def device_keys(sampler, device: str) -> dict[str, str]:
    """The fingerprint's device and dtype keys for sampler settings run on `device`."""
    return {"sampler.device": device, "sampler.dtype": torch_dtype(sampler.dtype, device)}


def torch_dtype(explicit: str | None, device: str) -> str:
    """The torch dtype the model runs in: `--dtype`, else as `anonymize.loading._default_dtype` chooses
    (half precision on CUDA, float32 elsewhere; a test keeps the two in step)."""
    return explicit or ("float16" if device.split(":")[0] == "cuda" else "float32")


def digest(fp: dict) -> str:
    """A short stable hash of a fingerprint, for run.json and the reports."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]


def upgrade(recorded: dict, version: int | None, defaults: dict) -> dict:
    """A recorded fingerprint as this version keys it, every key it lacks in the stages it covers read as
    its default (`defaults`).

    A record lacks a key when its run came before the field existed, so it ran as the default does (a new
    field's default keeps the old behaviour); version 1 (no version recorded) also used other names and left
    out region keys outside face-region mode, enhancement outside `boomerang enhance`, and allow_pickle.
    The device and dtype a record never resolved stay absent (`DEFERRED`).
    """
    found = dict(recorded)
    if version != VERSION and found:
        found = {_LEGACY.get(k, k): v for k, v in found.items()}
        if found.get("sampler.dtype") is None:
            found.pop("sampler.dtype", None)  # version 1 kept the flag, None when it was not given
        if "evaluation.recognizers" in found:
            # Runs from before the setting existed compared a faceless anonymized image on the whole image.
            found.setdefault("evaluation.no_face_anonymized", "whole_image")
        if any(k.startswith("enhance.") for k in found):
            found["enhance"] = "on"
    parts_seeded = found.get("region.mode") == "faces" or found.get("enhance") == "on"
    if parts_seeded and "sampler.model" in found:
        found.setdefault("seed_scheme", OLD_PART_SEEDS)
    stages = stages_recorded(found)
    for key, value in defaults.items():
        if set(stage_of(key)) & stages and key not in DEFERRED:
            found.setdefault(key, value)
    return found


def defaults(settings) -> dict[str, Any]:
    """The fingerprint keys of `settings`' own types at their defaults (pinned keys left out)."""
    return walk(_default_like(settings), {})


def _default_like(obj):
    """`obj`'s type with every field at its default; nested settings at their own types' defaults, so a field
    of a subclass has its default too. Built without `__init__`: the defaults of one section may not pass
    another's cross-checks (thresholds name recognizers), and only single fields are read from it."""
    blank = object.__new__(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.default is None:
            default = None
        elif is_dataclass(value):
            default = _default_like(value)
        elif f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = value
        object.__setattr__(blank, f.name, default)
    return blank


def _section(obj, name: str) -> bool:
    """Whether a field may hold None or a settings dataclass (an optional section such as enhance)."""
    args = get_args(_hints(type(obj)).get(name))
    return type(None) in args and any(is_dataclass(a) for a in args)


@functools.cache
def _hints(cls) -> dict:
    try:
        return get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: no optional sections there
        return {}


def _plain(value: Any) -> Any:
    """Tuples as lists, as they read back from run.json."""
    return json.loads(json.dumps(value, default=str))
