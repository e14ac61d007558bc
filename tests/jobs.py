"""Helpers for fault tests: run `boomerang` as its own process and kill it, find a job's processes, and
hold a job at a known point with a `Gate`, so that a fault lands in a state the test chose, not at a moment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 300, every: float = 0.05) -> None:
    """Poll until ``condition()`` is true; the timeout only bounds a job that hangs (then AssertionError)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(every)


def kill_job_when(argv: Sequence[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start `python -m pipeline.cli ARGV`, SIGKILL it and its Ray runtime once `ready()` is true.

    `ready` should name a state the job cannot pass on its own (hold it with a `Gate`), so that a fast
    or a slow machine kills it at the same point.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *argv],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    family: list[int] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                family = descendants(proc.pid)
                return
            time.sleep(0.1)
        raise AssertionError("the job ended or stalled before the moment to kill it")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray runtime it started
            # Ray workers may run in sessions of their own, out of the group's reach: they stop when they
            # notice their raylet is gone, and a batch they were finishing could still land after the kill.
            # The caller reads what the kill left only once every process of the job is gone.
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.wait()
        wait_for(lambda: not any(alive(pid) for pid in family), "every process of the killed job to end")


def manifest_parts(out: Path) -> list[Path]:
    """The manifest part files written so far (one per finished batch; written last, the "done" marker)."""
    return sorted((out / "manifest.parquet").glob("part-*.parquet"))


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    stack, out = [pid], []
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return [p for p in out if alive(p)]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has already closed its files)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def command_name(pid: int) -> str:
    """The first word of a process's command line ("" if it is gone); Ray sets it to ray::Actor titles."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def blocked_on_pipes(pid: int) -> list[str]:
    """For each thread of ``pid`` blocked in open() on a named pipe that has no writer: the path it opens.

    The path is read from the open call's argument in the process's memory; "" where that cannot be read
    (no permission to read its memory), so a caller must then assume it may be any pipe.
    """
    paths = []
    for tid in _tasks(pid):
        if _read(f"/proc/{pid}/task/{tid}/wchan") not in ("wait_for_partner", "fifo_open"):
            continue
        try:  # openat(dirfd, path, flags, mode): the path is the second argument
            address = int(_read(f"/proc/{pid}/task/{tid}/syscall").split()[2], 16)
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(address)
                paths.append(mem.read(4096).split(b"\0")[0].decode(errors="replace"))
        except (OSError, ValueError, IndexError, OverflowError):
            paths.append("")
    return paths


def _stopped(pid: int) -> bool:
    states = [_read(f"/proc/{pid}/task/{tid}/stat").rsplit(")", 1)[-1].split()[:1] for tid in _tasks(pid)]
    return all(state in (["T"], ["t"], []) for state in states)


class Gate:
    """An input image that is a named pipe: the job blocks in open() when it reaches it, until `release()`.

    The anonymize stage reads its input files itself, in input order, so while the gate is `held()` the
    anonymize actor is stopped inside a batch: images before the gate may be done, the gate and everything
    after it are not, on any machine. A fault injected then has work left to recover.

    `release()` puts the real image at the path and makes each waiting reader open the path again: a
    SIGSTOP/SIGCONT makes the kernel restart the interrupted open() (no handler runs, so Python never
    sees it), and the restarted open() looks the path up afresh and finds the regular file. (Feeding the
    bytes through the pipe would not do: fsspec seeks in the file it opens.) Readers that arrive later
    open the regular file directly; a watcher keeps nudging any that were caught mid-lookup until `close()`.
    Blocked readers are found in /proc: a thread's kernel wait channel, and the path its open() was given.
    """

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data = Path(path), data
        self.path.unlink(missing_ok=True)
        os.mkfifo(self.path)
        self.released = threading.Event()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def replacing(cls, path: Path) -> Gate:
        """Turn an existing input file into a gate that releases the same bytes."""
        return cls(path, Path(path).read_bytes())

    def waiters(self) -> list[int]:
        """Processes under this test process blocked opening this gate's pipe."""

        def mine(path: str) -> bool:  # "": cannot tell which pipe, so it may be this one
            return not path or os.path.realpath(path) == os.path.realpath(self.path)

        return [pid for pid in descendants(os.getpid()) if any(map(mine, blocked_on_pipes(pid)))]

    def held(self) -> bool:
        """True while the job is blocked on the gate (and it has not been released)."""
        return not self.released.is_set() and bool(self.waiters())

    def release(self) -> None:
        if self.released.is_set():
            return
        tmp = self.path.with_name(f".{self.path.name}.gate-tmp")
        tmp.write_bytes(self.data)
        os.replace(tmp, self.path)
        self.released.set()
        self._watcher = threading.Thread(target=self._nudge_waiters, daemon=True)
        self._watcher.start()

    def _nudge_waiters(self) -> None:
        while not self._closed.is_set():
            for pid in self.waiters():
                try:
                    os.kill(pid, signal.SIGSTOP)
                    wait_for(lambda pid=pid: _stopped(pid), "a reader of the gate to stop", timeout=10, every=0.01)
                except (ProcessLookupError, AssertionError):
                    pass
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
            self._closed.wait(0.1)

    def close(self) -> None:
        """Release (if not yet) and stop watching; never leaves a job, or a rerun, blocked on the pipe."""
        self.release()
        self._closed.set()
        if self._watcher is not None:
            self._watcher.join()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
