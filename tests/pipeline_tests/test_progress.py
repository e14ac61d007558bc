"""Progress that shows (issue 24, item 4): a live bar on a terminal from the start of a pass, plain lines at a
steady cadence when piped, even while no batch finishes."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time

import pytest
from jobs import wait_for
from samples import write_faces


def read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 300) -> None:
    """Read the pty's master side into `seen` until it holds `needle` (the timeout only bounds a hang)."""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {needle!r} on the terminal; it showed {bytes(seen[-400:])!r}")
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the other side closed (Linux: EIO)
                break


def test_a_terminal_sees_the_bar_before_the_first_output_and_after_each():
    from pipeline.execution.progress import Progress

    master, slave = os.openpty()  # a fresh pty: nobody set its size (tqdm drew nothing on one)
    stream = os.fdopen(slave, "w", buffering=1, encoding="utf-8")
    seen = bytearray()
    try:
        progress = Progress(4, "gate level 0.5 (rung 2 of 3)", stream=stream)
        assert progress.tty
        read_until(master, b"0/4 outputs,", seen)  # drawn at once: before any output is finished
        progress.update(2)
        read_until(master, b"2/4 outputs,", seen)
        progress.update(2, errors=1)
        progress.close()
        read_until(master, b"4/4 outputs, 1 failed", seen)
        read_until(master, b"\n", seen[seen.index(b"4/4") :])
    finally:
        stream.close()
        os.close(master)
    text = seen.decode()
    frames = [f for f in text.split("\r") if f.startswith("gate level")]
    assert len(frames) >= 3
    for frame in frames:  # one line, redrawn in place: the gate's rung, outputs done, outputs/s, ETA
        assert frame.startswith("gate level 0.5 (rung 2 of 3) [") and "outputs/s" in frame and "ETA" in frame
        assert "\n" not in frame.rstrip("\r\n")
    assert "[" + "#" * 20 + "] 4/4" in frames[-1]


def test_a_pipe_gets_plain_lines_at_a_steady_cadence_while_nothing_finishes():
    from pipeline.execution.progress import Progress

    stream = io.StringIO()
    progress = Progress(10, "anonymize", stream=stream, interval=0.05)
    assert not progress.tty
    # No batch finishes, yet the log keeps saying where the pass is.
    wait_for(lambda: stream.getvalue().count("\n") >= 3, "three progress lines with no batch finished", timeout=60)
    progress.update(10)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("anonymize: 0/10 outputs done, 0 failed") and "ETA ?" in lines[0]
    assert lines[-1].startswith("anonymize: 10/10 outputs done")


@pytest.mark.heavy
def test_a_real_job_on_a_terminal_draws_the_bar(deepface_home, tiny_sd, tmp_path):
    """`boomerang run` as its own process with a pty for stderr: the bar shows while the job runs."""
    data, out = tmp_path / "in", tmp_path / "out"
    write_faces(data, 2, size=(64, 64))
    master, slave = os.openpty()
    argv = [sys.executable, "-m", "pipeline.cli", "run", str(data), "--out", str(out), "--levels", "0.5"]
    argv += ["--model", str(tiny_sd), "--steps", "4", "--recognizers", "Facenet", "--detector", "skip"]
    argv += ["--deepface-home", str(deepface_home)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = bytearray()
    try:
        read_until(master, b"0/2 outputs,", seen)  # the bar is up before the first output
        read_until(master, b"2/2 outputs,", seen)
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"\rrun [" in seen and b"outputs/s" in seen
