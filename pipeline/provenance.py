"""What produced a run: software versions, model identity, and run.json."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

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


def model_identity(model: str, revision: str | None) -> dict[str, str | None]:
    """Model id plus what pins its bytes: a content hash of a local folder, or the hub snapshot commit."""
    path = Path(model).expanduser()
    if path.is_dir():
        return {"model": model, "revision": revision, "content_sha256": folder_hash(path)}
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(model, revision=revision, local_files_only=True))
        return {"model": model, "revision": snapshot.name, "content_sha256": None}
    except Exception:  # not in the cache: the actors' load reports it properly
        return {"model": model, "revision": revision, "content_sha256": None}


def folder_hash(path: Path) -> str:
    """sha256 over the relative names and bytes of the model files (weights and configs)."""
    digest = hashlib.sha256()
    for file in sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".txt", ".bin")
    ):
        digest.update(file.relative_to(path).as_posix().encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
