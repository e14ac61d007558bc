"""One driver per output folder: a lock on `--out` that names its holder, so the driver that loses can say who has it.

Two drivers on one folder would each take the other's in-flight parts for orphans and delete them.

On a local disk the lock is `flock` on `<out>/.boomerang.lock` (`RunLock`; local disks and most NFS setups),
released by the OS when the process dies. An object store (s3://, gs://, ...) has no locks and nothing that
notices a dead process, so there the lock is an object at the same key (`ObjectLock`):
- it is created only if absent (a conditional write, S3's `If-None-Match: *`), so of two drivers one wins;
- it names its holder (pid, host) and carries a heartbeat its holder rewrites while it runs;
- a lock found present is stale, and taken over, when its holder is a dead process on this host or its
  heartbeat is older than the lease (a driver that crashed elsewhere), so a crash never wedges the folder;
- where a store's filesystem cannot create only-if-absent, it checks, writes, pauses and reads back instead,
  which catches most races between two drivers starting at once but not all (see `ObjectLock`).
`run_lock(path)` picks the lock for the kind of path.
"""

from __future__ import annotations

import fcntl
import inspect
import json
import os
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from fsspec.asyn import AsyncFileSystem
from fsspec.spec import AbstractFileSystem

from . import storage
from .layout import OutputError

if TYPE_CHECKING:
    from upath import UPath


class FolderLocked(OutputError):
    """Another driver holds the output folder."""


class RunLock:
    """Hold the lock while the object is open; `close()` (or process exit) releases it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # names the host and process: no one else's to read
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise FolderLocked(
                f"{self.path.parent} is in use by another boomerang job ({holder}); wait for it to finish, "
                "or stop it and run the command again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{_holder(_now())}\n".encode(), 0)
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


class ObjectLock:
    """The lock as an object in a store at a `upath.UPath`; held while open, like `RunLock`.

    The object is JSON: `holder` (the text the loser prints), `host`, `pid`, `since`, a random `token` (the
    object is this holder's only while it carries this token) and `heartbeat` (UTC epoch seconds), which a
    daemon thread rewrites every `lease` / 5 seconds while the lock is held.

    Creation is only-if-absent where the store's filesystem has its own `pipe_file(mode="create")` (s3fs:
    `If-None-Match: *`). Where it has not, acquire reads (nothing there?), writes, pauses `settle` seconds and
    reads back, holding only if the token read back is its own. That fallback races: if a second driver finds
    the key empty before the first one's write but writes only after the first one's read-back, both hold.

    A stale lock (see `_stale`) is deleted and created again only-if-absent, so of two takers one wins the
    create; the winner still reads back after `settle`, because a slower taker's delete may have removed the
    winner's lock before that taker created its own. Staleness assumes that host names are unique and that
    clocks agree to well within the lease.
    """

    lease = 300.0
    settle = 0.5

    def __init__(self, path: UPath) -> None:
        self.path = path
        self._fs = path.fs
        self._key = path.path
        self._exclusive = _creates_only_if_absent(self._fs)
        self._token: str | None = None
        self._since = ""
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def acquire(self) -> ObjectLock:
        token = secrets.token_hex(16)
        self._since = _now()
        for _ in range(3):
            if self._create(token):
                break
            current = self._read()
            if current is None:
                continue
            if not self._stale(current):
                raise self._locked(current)
            if self._take_over(current, token):
                break
        else:
            raise self._locked(self._read())
        self._token = token
        self._stop = threading.Event()
        self._beating = threading.Thread(
            target=self._beat, args=(token, self._stop), name="boomerang-lock-heartbeat", daemon=True
        )
        self._beating.start()
        return self

    def close(self) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
            self._beating = None
        try:
            current = self._read()
            if current is not None and current.get("token") == token:
                self._fs.rm_file(self._key)
        except OSError:
            pass  # a lock left behind lapses by itself: a dead pid on this host, or no heartbeat for a lease

    def __enter__(self) -> ObjectLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self, token: str, read_back: bool = False) -> bool:
        """Write our lock object unless one is there; True when the lock is ours."""
        data = self._content(token)
        if self._exclusive:
            try:
                self._fs.pipe_file(self._key, data, mode="create")
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError):
                self._exclusive = False
            except OSError as err:
                if not _write_conflict(err):
                    raise
                return False
            else:
                return not read_back or self._reads_back(token)
        if self._read() is not None:
            return False
        self._fs.pipe_file(self._key, data)
        return self._reads_back(token)

    def _take_over(self, stale: dict, token: str) -> bool:
        """Replace a stale lock by ours, unless someone else changed it since we read it."""
        current = self._read()
        if current is None or current.get("token") != stale.get("token"):
            return False
        self._fs.rm_file(self._key)
        return self._create(token, read_back=True)

    def _reads_back(self, token: str) -> bool:
        time.sleep(self.settle)
        current = self._read()
        return current is not None and current.get("token") == token

    def _read(self) -> dict | None:
        """The lock object's content, None when there is none; one we cannot parse ages from its mtime."""
        try:
            raw = self._fs.cat_file(self._key)
        except FileNotFoundError:
            return None
        try:
            lock = json.loads(raw)
        except ValueError:
            lock = None
        if isinstance(lock, dict) and isinstance(lock.get("heartbeat"), (int, float)):
            return lock
        try:
            modified = self._fs.modified(self._key).timestamp()
        except (OSError, NotImplementedError):
            modified = time.time()
        return {"holder": "another process", "heartbeat": modified}

    def _stale(self, lock: dict) -> bool:
        """A lock of a dead process on this host, or one whose heartbeat is older than the lease (its holder
        crashed on another machine, or hangs)."""
        if lock.get("host") == socket.gethostname() and not _alive(lock.get("pid")):
            return True
        return time.time() - lock["heartbeat"] > self.lease

    def _content(self, token: str) -> bytes:
        lock = {
            "holder": _holder(self._since),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": token,
            "since": self._since,
            "heartbeat": time.time(),
        }
        return json.dumps(lock).encode()

    def _locked(self, lock: dict | None) -> FolderLocked:
        holder = "another process"
        if lock is not None:
            age = time.time() - lock["heartbeat"]
            holder = f"{lock.get('holder') or holder}; last heartbeat {age:.0f} s ago"
        return FolderLocked(
            f"{self.path.parent} is in use by another boomerang job ({holder}); wait for it to finish, "
            "or stop it and run the command again"
        )

    def _beat(self, token: str, stop: threading.Event) -> None:
        """Refresh the heartbeat until told to stop; give up quietly once the lock is no longer ours or the
        store fails (the lock then lapses after a lease, which is the point of the lease)."""
        while not stop.wait(self.lease / 5):
            try:
                current = self._read()
                if current is None or current.get("token") != token:
                    return
                self._fs.pipe_file(self._key, self._content(token))
            except Exception:
                return


def run_lock(path: Path | UPath) -> RunLock | ObjectLock:
    """The lock for `--out`'s lock file: `flock` for a local path, a lock object in an object store."""
    return RunLock(path) if storage.is_local(path) else ObjectLock(path)


def describe(path: Path | UPath) -> str:
    """Which lock a run folder gets, for `boomerang doctor`."""
    if storage.is_local(path):
        return "an OS lock (flock) on .boomerang.lock"
    if _creates_only_if_absent(path.fs):
        return "a lock object created only if absent (conditional write)"
    return "a lock object written, then read back (this store cannot create only if absent: one job at a time)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _holder(since: str) -> str:
    """How a lock names its holder, for the driver that finds the folder taken."""
    return f"pid {os.getpid()} on {socket.gethostname()}, since {since}"


def _creates_only_if_absent(fs: AbstractFileSystem) -> bool:
    """Whether the filesystem has its own `pipe_file(mode="create")`: fsspec's generic one only checks and then
    writes (the fallback, without the read-back), and one with no `mode` may ignore it and overwrite."""
    method = type(fs).pipe_file
    if method is AbstractFileSystem.pipe_file and isinstance(fs, AsyncFileSystem):
        method = type(fs)._pipe_file  # fsspec serves an async filesystem's pipe_file from its coroutine
    if method in (AbstractFileSystem.pipe_file, AsyncFileSystem._pipe_file):
        return False
    try:
        return "mode" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _write_conflict(err: OSError) -> bool:
    """S3's 409 ConditionalRequestConflict: another conditional write to the key is in flight."""
    response = getattr(err.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") == "ConditionalRequestConflict"


def _alive(pid: object) -> bool:
    """False only when this host surely has no such process; a pid we cannot check counts as alive."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
