"""What produced a run: software versions, model identity, and run.json."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from anonymize import SamplerSettings, resolve_model, weights_sha256

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


def model_identity(settings: SamplerSettings) -> dict[str, str | None]:
    """Model id plus what pins its bytes: the hub snapshot commit, or a content hash of a local folder."""
    folder, commit = resolve_model(settings)
    return {
        "model": settings.model,
        "revision": settings.revision,
        "commit": commit,
        "weights_sha256": None if commit else weights_sha256(folder, settings.allow_pickle),
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
