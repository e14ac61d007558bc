"""The project's one atomic file writer: a file is absent, old, or complete, and durable once written.

A hidden temporary file in the same folder (created with its final mode; Parquet dataset readers skip names
starting with "."), flushed and fsync-ed, renamed over the target, then the folder fsync-ed so the rename
survives a crash. This library's tables and report are written through it, and so is every local file of a
boomerang run folder (pipeline.folder.storage adds the modes and the object-store PUT): it lives here because
the libraries never import pipeline, and pipeline may import them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | os.PathLike, content: bytes | Callable[[BinaryIO], object], *, mode: int = 0o666) -> None:
    """Write `content` (bytes, or a function that writes to the open file) to the local `path` whole.

    `mode` is the new file's (the umask applies); the folder must exist."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(content, bytes):
                handle.write(content)
            else:
                content(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable; not possible (nor needed) on every platform."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
