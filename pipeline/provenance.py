"""What produced a run: software versions, model and recognizer identity, and run.json.

run.json's `determines_outputs` holds every setting that changes output bytes or distances. A rerun on
the same folder with a different value would leave outputs of one setting under a record naming
another, so it is refused (exit 2) before anything is written; thresholds are not among them: a new
threshold restates `cleared` everywhere (pipeline.finalize).
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata

from anonymize import SamplerSettings, made_by_boomerang, resolve_model, weights_sha256

from . import storage
from .secret import PART_SEED_SCHEME
from .storage import Location

PACKAGES = (
    "boomerang-anonymize",
    "torch",
    "diffusers",
    "transformers",
    "deepface",
    "ray",
    "pyarrow",
    "pandas",
    "numpy",
)


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def model_identity(settings: SamplerSettings) -> dict[str, str | bool | None]:
    """Model id plus what pins its bytes: the hub snapshot commit, or a content hash of a local folder."""
    folder, commit = resolve_model(settings)
    return {
        "model": settings.model,
        "revision": settings.revision,
        "commit": commit,
        "weights_sha256": None if commit else weights_sha256(folder, settings.allow_pickle),
        "random_weights": made_by_boomerang(folder),
    }


def recognizer_identity(settings) -> dict[str, dict]:
    """Per recognizer: the sha256 of its deepface weight file, and whether boomerang made it (random)."""
    from evaluation import is_random_weights, weight_file_sha256

    return {
        name: {
            "weights_sha256": weight_file_sha256(name, settings.engine),
            "random_weights": is_random_weights(name, settings.engine),
        }
        for name in settings.recognizers
    }


def made_here(model: dict | None, recognizers: dict | None) -> bool:
    """True when any model of the run has weights that boomerang generated (tests, the demo)."""
    return bool(model and model.get("random_weights")) or any(
        r.get("random_weights") for r in (recognizers or {}).values()
    )


# Setting -> the flag a user changes it with (for the one-line refusal).
FLAGS = {
    "model_weights": "--model",
    "prompt": "--prompt",
    "negative_prompt": "--negative-prompt",
    "guidance_scale": "--guidance-scale",
    "steps": "--steps",
    "scheduler": "--scheduler",
    "resolution": "--resolution",
    "latent": "--latent",
    "dtype": "--dtype",
    "model_batch": "--model-batch",
    "seed": "--seed",
    "recognizers": "--recognizers",
    "recognizer_weights": "recognizer weights (DEEPFACE_HOME)",
    "detector": "--detector",
    "engine": "--engine",
    "align": "align",
    "metric": "metric",
    "no_face_anonymized": "--no-face-anonymized",
    "seed_scheme": "the seeding of faces and tiles (a boomerang upgrade)",
}


def output_settings(settings, mode: str, model: dict | None, recognizers: dict | None) -> dict:
    """The settings that determine this job's outputs (sampler ones unless evaluate-only, and so on)."""
    found: dict = {}
    if mode != "evaluate" and model is not None:
        s = settings.sampler
        found |= {
            # What pins the weights' bytes; the name only where nothing else does (a folder may move).
            "model_weights": model.get("commit") or model.get("weights_sha256") or model.get("model"),
            "prompt": s.prompt,
            "negative_prompt": s.negative_prompt,
            "guidance_scale": s.guidance_scale,
            "steps": s.steps,
            "scheduler": s.scheduler,
            "resolution": s.resolution,
            "latent": s.latent,
            "dtype": s.dtype,
            "model_batch": s.model_batch,
            "seed": settings.seed,
        }
        if settings.enhance is not None:
            e = settings.enhance
            found |= {
                "enhance_scale": e.scale,
                "enhance_filter": e.filter,
                "enhance_overlap": e.overlap,
                "enhance_degrade": e.degrade,
            }
        if settings.region.faces or settings.enhance is not None:
            # Faces and tiles are seeded from a per-output sub-key since the secret left the workers
            # (pipeline.secret): a folder seeded the older way is refused a resume, not mixed.
            found["seed_scheme"] = PART_SEED_SCHEME
        if settings.region.faces:  # recorded only in face-region mode: older folders stay resumable
            r = settings.region
            found |= {
                "region": r.mode,
                "region_detector": r.detector,
                "region_margin": r.margin,
                "region_feather": r.feather,
                "no_face": r.no_face,
            }
    if mode != "anonymize" and recognizers is not None:
        e = settings.evaluation
        found |= {
            "recognizers": list(e.recognizers),
            "recognizer_weights": {name: r["weights_sha256"] for name, r in recognizers.items()},
            "detector": e.detector,
            "engine": e.engine,
            "align": e.align,
            "metric": e.metric,
            "no_face_anonymized": e.no_face_anonymized,
        }
        if settings.region.faces:
            found |= {
                "region": "faces",
                "region_detector": settings.region.detector,
                "region_margin": settings.region.margin,
            }
    return found


class RefusedRerun(ValueError):
    """A rerun whose settings would change what the folder's outputs were made with (exit status 2)."""


def check_rerun(record: dict, determining: dict, *, has_outputs: bool) -> None:
    """Refuse a rerun that changes a setting recorded in run.json, naming the setting and both values."""
    recorded = dict(record.get("determines_outputs") or {})
    if not has_outputs:
        return
    if "recognizers" in recorded:
        # Runs from before the setting existed compared a faceless anonymized image on the whole image.
        recorded.setdefault("no_face_anonymized", "whole_image")
    if "model_weights" in recorded and ("region_feather" in recorded or "enhance_scale" in recorded):
        recorded.setdefault("seed_scheme", "secret-per-part")  # faces and tiles seeded on the workers, by the secret
    for key, value in determining.items():
        if key not in recorded or _same(recorded[key], value):
            continue
        if key == "recognizer_weights":
            names = [n for n in value if n in recorded[key] and recorded[key][n] != value[n]]
            if not names:
                continue  # a recognizer added: its rows are new, nothing recorded changes
            old, new = recorded[key][names[0]], value[names[0]]
            what = f"the {names[0]} weight file (DEEPFACE_HOME)"
            old, new = f"sha256 {str(old)[:12]}", f"sha256 {str(new)[:12]}"
        else:
            what, old, new = FLAGS.get(key, key), recorded[key], value
        raise RefusedRerun(
            f"{what} differs from the run in this folder (recorded {old!r}, now {new!r}): rerun with the recorded "
            "value to resume, use another --out, or pass --overwrite to start afresh"
        )


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Location, data: dict) -> None:
    storage.write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Location) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
