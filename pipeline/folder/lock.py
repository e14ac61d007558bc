"""One driver per output folder: a lock on `--out` that names its holder, so the driver that loses can say who has it.

Two drivers on one folder would each take the other's in-flight parts for orphans and delete them.

On a local disk the lock is `flock` on `<out>/.boomerang.lock` (`RunLock`), released by the OS when the process
dies; a local path on a network or FUSE filesystem (NFS, SMB, a mounted bucket: pipeline.folder.mounts) is refused
unless --shared-filesystem-lock says its locks reach every machine that writes there. An object store (s3://,
gs://, ...) has no locks and nothing that notices a dead process, so there the lock is an object at the same
key (`ObjectLock`):
- it is created only if absent (a conditional write, S3's `If-None-Match: *`), so of two drivers one wins;
- it names its holder (pid, host) and carries a heartbeat its holder rewrites while it runs, each rewrite
  conditional on the object being the one it last wrote (S3's `If-Match` on its ETag), retried with backoff
  while the lease lasts;
- the holder knows whether it still holds the lock: once the object is someone else's, or no heartbeat could
  be confirmed for most of a lease, `ensure_held` raises `LockLost`, and the driver calls it at its commit points
  (a manifest part, a compaction, the release) so that it stops before writing more;
- a lock found present is stale, and taken over, when its holder is a dead process on this host or its
  heartbeat is older than the lease (a driver that crashed elsewhere), so a crash never wedges the folder;
- where a store's filesystem cannot create only-if-absent, it checks, writes, pauses and reads back instead,
  which catches most races between two drivers starting at once but not all (see `ObjectLock`).
`run_lock(path)` picks the lock for the kind of path (`RunLock` here, `ObjectLock` in pipeline.folder.object_lock);
`ensure_held(path)` (pipeline.folder.lock_common) checks the lock this process holds there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.folder import storage
from pipeline.folder.lock_common import HELD, FolderLocked, LockLost, NetworkFilesystem, holder_line, utc_now
from pipeline.folder.mounts import shared_mount
from pipeline.folder.object_lock import ObjectLock, creates_only_if_absent

if TYPE_CHECKING:
    from upath import UPath


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class RunLock:
    """Hold the lock while the object is open; `close()` (or process exit) releases it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # names the host and process: no one else's
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise FolderLocked(
                    f"{self.path.parent} is in use by another boomerang job ({holder}); wait for it to finish, "
                    "or stop it and run the command again"
                ) from None
            # A finished holder removes the file before it lets go (close): a lock taken on a file no longer at
            # the path is no lock; take the one at the path instead.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder_line(utc_now())}\n".encode(), 0)
        self._fd = fd
        HELD[str(self.path)] = self
        return self

    @property
    def held(self) -> bool:
        """An flock lasts as long as its descriptor: held from `acquire` to `close`."""
        return self._fd is not None

    def ensure_held(self) -> None:
        if not self.held:
            raise LockLost(f"{self.path.parent}: this job does not hold the folder's lock")

    def close(self) -> None:
        if self._fd is not None:
            if HELD.get(str(self.path)) is self:
                del HELD[str(self.path)]
            # A finished run leaves no lock file: removed while still held (see acquire), then let go.
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.close()


def run_lock(
    path: Path | UPath, *, shared_filesystem: bool = False, mountinfo: str | None = None
) -> RunLock | ObjectLock:
    """The lock for `--out`'s lock file: `flock` for a local path, a lock object in an object store.

    A local path on a network or FUSE filesystem (pipeline.folder.mounts) is refused (`NetworkFilesystem`, one line)
    unless `shared_filesystem` (--shared-filesystem-lock): there `flock` may not keep out a job on another
    machine, and the user has to say that only one machine writes there or that the filesystem shares locks.
    `mountinfo`: the mount table's text (read from /proc/self/mountinfo when None)."""
    if not storage.is_local(path):
        return ObjectLock(path)
    mount = None if shared_filesystem else shared_mount(os.fspath(path.parent), mountinfo)
    if mount is not None:
        raise NetworkFilesystem(
            f"{path.parent} is on a network or FUSE filesystem ({mount.fstype} at {mount.point}), where a lock "
            "may not keep out a job on another machine: use an object-store URL for --out, or pass "
            "--shared-filesystem-lock if only this machine writes there or the filesystem shares its locks"
        )
    return RunLock(path)


def describe(path: Path | UPath) -> str:
    """Which lock a run folder gets, for `boomerang doctor`."""
    if storage.is_local(path):
        mount = shared_mount(os.fspath(path.parent))
        if mount is not None:
            return (
                f"none without --shared-filesystem-lock: the folder is on {mount.fstype} at {mount.point}, where "
                "flock may not exclude other machines"
            )
        return "an OS lock (flock) on .boomerang.lock"
    if creates_only_if_absent(path.fs):
        return "a lock object created only if absent (conditional write)"
    return "a lock object written, then read back (this store cannot create only if absent: one job at a time)"
