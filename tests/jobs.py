"""Run `boomerang` as its own process (with its own embedded Ray) and kill it part way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def kill_job_when(argv: Sequence[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start `python -m pipeline.cli ARGV`, SIGKILL it and its Ray runtime once `ready()` is true."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *argv],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                return
            time.sleep(0.1)
        raise AssertionError("the job ended or stalled before the moment to kill it")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray runtime it started
        proc.wait()
