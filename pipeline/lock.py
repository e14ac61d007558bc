"""One driver per output folder: an exclusive OS lock on `--out`, released when the process dies.

Two drivers on one folder would each take the other's in-flight parts for orphans and delete them. The
lock is `flock` on `<out>/.boomerang.lock` (local disks and most NFS setups); the file names its holder,
so the driver that loses can say who has the folder.
"""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from .layout import OutputError


class FolderLocked(OutputError):
    """Another driver holds the output folder."""


class RunLock:
    """Hold the lock while the object is open; `close()` (or process exit) releases it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise FolderLocked(
                f"{self.path.parent} is in use by another boomerang job ({holder}); wait for it to finish, "
                "or stop it and run the command again"
            ) from None
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode(), 0)
        self._fd = fd
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.close()
