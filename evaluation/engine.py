"""Choose deepface's backend engine before deepface is imported.

deepface picks tensorflow, then pytorch, then onnx (whichever is installed) the first time it
resolves its engine, and caches that choice for the life of the process. Every deepface import in
this package goes through :func:`deepface_module`, which sets the engine first.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

ENGINES = ("pytorch", "onnx")
ENGINE_ENV_VAR = "DEEPFACE_BACKEND_ENGINE"


def use_engine(engine: str) -> None:
    """Make deepface run on ``engine`` ("pytorch" or "onnx") in this process.

    Raises ValueError for an unknown engine, and RuntimeError when deepface has already resolved a
    different engine in this process (it cannot be switched afterwards).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    resolved = _resolved_engine()
    if resolved is not None and resolved != engine:
        raise RuntimeError(
            f"deepface already runs on {resolved!r} in this process; cannot switch to {engine!r} "
            f"(set {ENGINE_ENV_VAR}={engine} before anything imports deepface)"
        )
    os.environ[ENGINE_ENV_VAR] = engine


def deepface_module(name: str, engine: str) -> ModuleType:
    """Import the deepface module ``name`` (e.g. "deepface.modules.detection") on ``engine``."""
    use_engine(engine)
    return importlib.import_module(name)


def _resolved_engine() -> str | None:
    # Look without importing: importing backend_utils is harmless, but a module that is not
    # loaded yet cannot have resolved anything.
    backend_utils = sys.modules.get("deepface.commons.backend_utils")
    if backend_utils is None:
        return None
    return getattr(backend_utils, "_backend_engine", None)
