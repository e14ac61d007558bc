"""The lock of a run folder on an object store: an object created only if absent, naming its holder, with a
conditional heartbeat; taken over when its holder is gone (see pipeline.folder.lock for the whole picture)."""

from __future__ import annotations

import inspect
import json
import os
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING

from fsspec.asyn import AsyncFileSystem
from fsspec.spec import AbstractFileSystem

from pipeline.folder.lock_common import HELD, FolderLocked, LockLost, holder_line, utc_now

if TYPE_CHECKING:
    from upath import UPath


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
        self._exclusive = creates_only_if_absent(self._fs)
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
        self._since = utc_now()
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
        HELD[str(self.path)] = self
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
        if HELD.get(str(self.path)) is self:
            del HELD[str(self.path)]
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
            "holder": holder_line(self._since),
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


def creates_only_if_absent(fs: AbstractFileSystem) -> bool:
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
