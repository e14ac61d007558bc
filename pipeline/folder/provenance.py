"""What produced a run: software versions, model and recognizer identity, and run.json.

run.json's `determines_outputs` holds every setting that changes output bytes or distances, derived from
the settings objects (pipeline.settings.fingerprint). A rerun on the same folder with a different value would leave
outputs of one setting under a record naming another, so it is refused (exit 2) before anything is
written; thresholds are not among them: a new threshold restates `cleared` everywhere (pipeline.outputs.finalize).
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata

from anonymize import SamplerSettings, made_by_boomerang, resolve_model, weights_sha256
from pipeline.folder import storage
from pipeline.folder.storage import Location
from pipeline.settings import fingerprint
from pipeline.settings.config import JobSettings

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


class RefusedRerun(ValueError):
    """A rerun whose settings would change what the folder's outputs were made with (exit status 2)."""


def check_rerun(record: dict, determining: dict, *, has_outputs: bool, defaults: dict | None = None) -> None:
    """Refuse a rerun that changes what the folder's outputs were made with, naming the flag and both values.

    `determining` is this job's `pipeline.settings.fingerprint.fingerprint`. Every key of a stage that both the
    record and this job cover is compared, over the union of their keys: a key recorded and absent now is a
    change, and a key the record lacks (a field newer than the folder, or one version 1 did not record) is
    read as its default, `defaults` (`fingerprint.defaults` of this job's settings), so a new field set to
    anything else is refused. The device and dtype are compared only where both sides know them
    (`fingerprint.DEFERRED`).
    """
    if not has_outputs:
        return
    recorded = recorded_fingerprint(record, defaults)
    common = fingerprint.stages_recorded(recorded) & fingerprint.stages_recorded(determining)
    for key in [*determining, *(k for k in recorded if k not in determining)]:
        if not set(fingerprint.stage_of(key)) & common:
            continue
        if key in fingerprint.DEFERRED and not (key in recorded and key in determining):
            continue
        old, new = recorded.get(key, _ABSENT), determining.get(key, _ABSENT)
        if old is not _ABSENT and new is not _ABSENT and _same(old, new):
            continue
        what = fingerprint.flag_for(key)
        if key == "recognizer_weights" and old is not _ABSENT and new is not _ABSENT:
            names = [n for n in new if n in old and old[n] != new[n]]
            if not names:
                continue  # a recognizer added: its rows are new, nothing recorded changes
            what = f"the {names[0]} weight file (DEEPFACE_HOME)"
            old, new = f"sha256 {str(old[names[0]])[:12]}", f"sha256 {str(new[names[0]])[:12]}"
        raise RefusedRerun(
            f"{what} differs from the run in this folder (recorded {_shown(old)}, now {_shown(new)}): rerun with "
            "the recorded value to resume, use another --out, or pass --overwrite to start afresh"
        )


def recorded_fingerprint(record: dict, defaults: dict | None = None) -> dict:
    """run.json's `determines_outputs`, keyed as this version keys it, with what it lacks at its defaults
    (`fingerprint.upgrade`; `defaults` of the default JobSettings when not given)."""
    if defaults is None:
        defaults = fingerprint.defaults(JobSettings(out="-"))
    version = record.get("determines_outputs_version")
    return fingerprint.upgrade(dict(record.get("determines_outputs") or {}), version, defaults)


def record_fingerprint(record: dict, determining: dict, defaults: dict | None = None) -> None:
    """Put `determining` into a run.json record over what it holds (stages this job did not run stay), with
    the fingerprint's version and a short digest of the whole."""
    merged = {**recorded_fingerprint(record, defaults), **determining}
    record["determines_outputs"] = merged
    record["determines_outputs_version"] = fingerprint.VERSION
    record["determines_outputs_digest"] = fingerprint.digest(merged)


_ABSENT = object()


def _shown(value) -> str:
    return "not set" if value is _ABSENT else repr(value)


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
