"""One driver per output folder: a lock on `--out` that names its holder, so the driver that loses can say who has it.

Two drivers on one folder would each take the other's in-flight parts for orphans and delete them.

On a local disk the lock is `flock` on `<out>/.boomerang.lock` (`RunLock`), released by the OS when the process
dies; a local path on a network or FUSE filesystem (NFS, SMB, a mounted bucket: pipeline.mounts) is refused
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
`run_lock(path)` picks the lock for the kind of path; `ensure_held(path)` checks the lock this process holds there.
"""

from __future__ import annotations

import contextlib
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
from .mounts import shared_mount

if TYPE_CHECKING:
    from upath import UPath


class FolderLocked(OutputError):
    """Another driver holds the output folder."""


class NetworkFilesystem(OutputError):
    """A local --out on a network or FUSE filesystem, without --shared-filesystem-lock."""


class LockLost(RuntimeError):
    """This driver no longer holds (or can no longer confirm that it holds) the output folder's lock."""


# The locks this process holds, by the text of their path: `ensure_held(path)` finds them there.
_HELD: dict[str, RunLock | ObjectLock] = {}


def ensure_held(path: Path | UPath) -> None:
    """Raise `LockLost` unless the lock this process took at `path` is still its own; called before each commit
    (a manifest part, a compaction, the release). A process that took no lock there (a Ray actor, a test
    writing parts directly) is not checked: its driver is, before it counts or compacts what the actor wrote."""
    lock = _HELD.get(str(path))
    if lock is not None:
        lock.ensure_held()


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
        os.pwrite(fd, f"{_holder(_now())}\n".encode(), 0)
        self._fd = fd
        _HELD[str(self.path)] = self
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
            if _HELD.get(str(self.path)) is self:
                del _HELD[str(self.path)]
            # A finished run leaves no lock file: removed while still held (see acquire), then let go.
            with contextlib.suppress(OSError):
                os.unlink(self.path)
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
    daemon thread rewrites every `beat` seconds (`lease` / 5 unless given) while the lock is held.

    Creation is only-if-absent where the store's filesystem has its own `pipe_file(mode="create")` (s3fs:
    `If-None-Match: *`). Where it has not, acquire reads (nothing there?), writes, pauses `settle` seconds and
    reads back, holding only if the token read back is its own. That fallback races: if a second driver finds
    the key empty before the first one's write but writes only after the first one's read-back, both hold.

    A stale lock (see `_stale`) is deleted and created again only-if-absent, so of two takers one wins the
    create; the winner still reads back after `settle`, because a slower taker's delete may have removed the
    winner's lock before that taker created its own. Staleness assumes that host names are unique and that
    clocks agree to well within the lease.

    The heartbeat is a conditional write where the store answers writes with an ETag (s3fs: `If-Match` on the
    ETag of our last write), so it never overwrites a taker's lock. A failed write is retried with backoff; a
    write whose outcome is unknown (an error, a precondition failure: our own earlier attempt may have landed)
    is followed by a read: the lock is lost once the object is gone or carries another token. The lock is also
    given up once no heartbeat has been confirmed for `GIVE_UP` of a lease (measured from when that heartbeat
    was written), before another driver may take it over. `held`, `beats` and `lost` show the state.
    """

    lease = 300.0
    settle = 0.5
    # The share of a lease after the last confirmed heartbeat at which the holder gives up: the rest is margin
    # for the request that carried it and for clocks that differ a little.
    GIVE_UP = 0.9

    def __init__(self, path: UPath, *, lease: float | None = None, beat: float | None = None) -> None:
        """`lease`: seconds without a heartbeat after which another driver takes the lock over; `beat`: seconds
        between heartbeats (`lease` / 5 by default). Both are for tests and unusual stores; drivers of one folder
        must agree on the lease."""
        if lease is not None:
            self.lease = lease
        self.beat = beat if beat is not None else self.lease / 5
        self.path = path
        self._fs = path.fs
        self._key = path.path
        self._exclusive = _creates_only_if_absent(self._fs)
        self._token: str | None = None
        self._since = ""
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None
        self._etag: str | None = None  # of our last write known to have landed; None: read-compare-write
        self._unsure = False  # a write whose outcome we do not know: read before the next one
        self._confirmed = 0.0  # time.monotonic() when the newest heartbeat known to have landed was written
        self.beats = 0  # heartbeats that landed since acquire
        self.lost: str | None = None  # why the lock is no longer ours, once it is not

    def acquire(self) -> ObjectLock:
        token = secrets.token_hex(16)
        self._since = _now()
        self.lost, self._etag, self._unsure, self.beats = None, None, False, 0
        self._confirmed = time.monotonic()
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
        _HELD[str(self.path)] = self
        return self

    @property
    def held(self) -> bool:
        """Whether the lock is still ours as far as we can tell: acquired, not lost, and a heartbeat confirmed
        within `GIVE_UP` of a lease."""
        return (
            self._token is not None
            and self.lost is None
            and time.monotonic() - self._confirmed < self.lease * self.GIVE_UP
        )

    def ensure_held(self) -> None:
        """Raise `LockLost` (one line: why, and that a rerun resumes) unless the lock is still ours."""
        if self.held:
            return
        if self._token is not None and self.lost is None:
            self._lose(f"no heartbeat could be written for {time.monotonic() - self._confirmed:.0f} s")
        reason = self.lost or "the lock was released"
        raise LockLost(
            f"{self.path.parent}: this job lost the folder's lock ({reason}) and stopped before writing more; "
            "what finished is kept: run the same command again to resume once no other job uses the folder"
        )

    def close(self) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        if _HELD.get(str(self.path)) is self:
            del _HELD[str(self.path)]
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
                written = self._fs.pipe_file(self._key, data, mode="create")
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError):
                self._exclusive = False
            except OSError as err:
                if not _write_conflict(err):
                    raise
                return False
            else:
                self._etag = _etag_of(written)
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

    def _lose(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason

    def _beat(self, token: str, stop: threading.Event) -> None:
        """Refresh the heartbeat every `beat` seconds until told to stop or the lock is lost."""
        while not stop.wait(self.beat):
            if not self._refresh(token, stop):
                return

    def _refresh(self, token: str, stop: threading.Event) -> bool:
        """One heartbeat, retried with backoff (a tenth of a beat, doubling up to a beat) until it lands; False
        once the lock is lost (someone else's, or not confirmed within `GIVE_UP` of a lease) or stop is set."""
        delay = self.beat / 10
        while self.lost is None:
            written_at = time.monotonic()
            try:
                ours = self._rewrite(token)
            except Exception:  # the store failed (a 503, a reset, a timeout): try again while the lease lasts
                ours = None
            if ours is True:
                self._confirmed = written_at
                self.beats += 1
                return True
            if ours is False:
                holder = (self._read_quietly() or {}).get("holder")
                self._lose(f"now held by {holder}" if holder else "its lock object was removed")
                return False
            if not self.held:
                self._lose(f"no heartbeat could be written for {time.monotonic() - self._confirmed:.0f} s")
                return False
            if stop.wait(delay):
                return False
            delay = min(delay * 2, self.beat)
        return False

    def _rewrite(self, token: str) -> bool:
        """Write a fresh heartbeat if the object is still ours: True once written, False when it is not ours;
        a store error raises (the outcome of that write is then unknown, and the next try reads first).

        With an ETag the write is `If-Match` on our last write's ETag, so it cannot replace a taker's lock.
        Without one it is read-compare-write; a taker that deletes and creates the object between our read
        and our write is overwritten by us. It reads back after `settle` and then backs off (our token is
        there), unless our write lands only after that read-back: then both would hold, the race this
        fallback leaves open."""
        if self._unsure or self._etag is None:
            current, etag = self._read_with_etag()
            if current is None or current.get("token") != token:
                return False
            self._etag = etag
        data = self._content(token)
        self._unsure = True
        if self._etag is None:
            self._fs.pipe_file(self._key, data)
        else:
            try:
                written = self._fs.pipe_file(self._key, data, IfMatch=self._etag)
            except TypeError:  # a filesystem that takes no such argument: read-compare-write from here on
                self._etag = None
                raise
            self._etag = _etag_of(written)
        self._unsure = False
        return True

    def _read_with_etag(self) -> tuple[dict | None, str | None]:
        """The object and its ETag (None where the store gives none or writes cannot be conditional). The
        ETag is asked first: if the object changes in between, the next conditional write fails and reads
        again."""
        etag = None
        if self._etag is not None or self._unsure:
            try:
                etag = _etag_of(self._fs.info(self._key, refresh=True))
            except FileNotFoundError:
                return None, None
        return self._read(), etag

    def _read_quietly(self) -> dict | None:
        try:
            return self._read()
        except Exception:
            return None


def run_lock(
    path: Path | UPath, *, shared_filesystem: bool = False, mountinfo: str | None = None
) -> RunLock | ObjectLock:
    """The lock for `--out`'s lock file: `flock` for a local path, a lock object in an object store.

    A local path on a network or FUSE filesystem (pipeline.mounts) is refused (`NetworkFilesystem`, one line)
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


def _etag_of(answer: object) -> str | None:
    """The ETag of a store's answer to a write or an info call (s3fs: the response dict), None if it has none."""
    if isinstance(answer, dict):
        etag = answer.get("ETag") or answer.get("etag")
        return etag if isinstance(etag, str) else None
    return None


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
