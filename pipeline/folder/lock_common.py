"""What the locks of a run folder share (pipeline.folder.lock, pipeline.folder.object_lock): their errors, the
locks this process holds (`ensure_held` at commit points), how a lock names its holder."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.folder.layout import OutputError

if TYPE_CHECKING:
    from upath import UPath


class FolderLocked(OutputError):
    """Another driver holds the output folder."""


class NetworkFilesystem(OutputError):
    """A local --out on a network or FUSE filesystem, without --shared-filesystem-lock."""


class LockLost(RuntimeError):
    """This driver no longer holds (or can no longer confirm that it holds) the output folder's lock."""


# The locks this process holds, by the text of their path: `ensure_held(path)` finds them there.
HELD: dict[str, object] = {}  # RunLock or ObjectLock


def ensure_held(path: Path | UPath) -> None:
    """Raise `LockLost` unless the lock this process took at `path` is still its own; called before each commit
    (a manifest part, a compaction, the release). A process that took no lock there (a Ray actor, a test
    writing parts directly) is not checked: its driver is, before it counts or compacts what the actor wrote."""
    lock = HELD.get(str(path))
    if lock is not None:
        lock.ensure_held()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def holder_line(since: str) -> str:
    """How a lock names its holder, for the driver that finds the folder taken."""
    return f"pid {os.getpid()} on {socket.gethostname()}, since {since}"
