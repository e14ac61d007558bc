"""Progress: a live bar on a terminal, plain lines at a steady cadence otherwise (CI logs, cluster job logs).

Both are drawn by a ticker thread as well as on each finished batch, so a terminal sees the bar (and its ETA)
from the start of a pass, and a log gets a line every `interval` seconds even while a slow batch runs.
The bar is this module's own (a carriage return and one line cut to the terminal's width): tqdm drew nothing
on a terminal whose size was unknown (a fresh pty, a CI runner's), the case that needs the bar most.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

# Seconds between plain lines when the stream is not a terminal (BOOMERANG_PROGRESS_SECONDS overrides).
PLAIN_INTERVAL = 10.0
# Seconds between redraws of the bar.
BAR_INTERVAL = 0.5
BAR_WIDTH = 20


class Progress:
    """Counts finished outputs (image, level) of one pass; shows done/total, outputs per second and ETA.

    `label` names the pass (the gate's rung: "gate level 0.5 (rung 2 of 3)")."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.total, self.label, self.done, self.errors = total, label, 0, 0
        self.stream = stream or sys.stderr
        self.tty = _isatty(self.stream) and total > 0
        if interval is None:
            interval = BAR_INTERVAL if self.tty else float(os.environ.get("BOOMERANG_PROGRESS_SECONDS", PLAIN_INTERVAL))
        self.interval = interval
        self.started = self.last = time.monotonic()
        self.lines = 0
        self.last_printed = -1  # `done` at the last plain line
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = None
        if total:
            if self.tty:
                self._draw()
            self._ticker = threading.Thread(target=self._tick, name="boomerang-progress", daemon=True)
            self._ticker.start()

    def update(self, done: int, errors: int = 0) -> None:
        with self._lock:
            self.done += done
            self.errors += errors
            now = time.monotonic()
            if self.tty:
                if now - self.last >= self.interval or self.done >= self.total:
                    self._draw(now)
            elif now - self.last >= self.interval or self.done >= self.total:
                self._print(now)

    def line(self, now: float | None = None) -> str:
        return f"{self.label}: {self.done}/{self.total} outputs done, {self._rates(now)}"

    def bar(self, now: float | None = None) -> str:
        filled = int(BAR_WIDTH * self.done / self.total) if self.total else BAR_WIDTH
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        return f"{self.label} [{bar}] {self.done}/{self.total} outputs, {self._rates(now)}"

    def _rates(self, now: float | None) -> str:
        elapsed = (now or time.monotonic()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = _duration(eta) if eta == eta else "?"
        return f"{self.errors} failed, {rate:.2f} outputs/s, ETA {eta_text}"

    def stop(self) -> None:
        """Stop the ticker (a pass that ended early); draws nothing more."""
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()

    def close(self) -> None:
        self.stop()
        with self._lock:
            if self.tty:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()
            elif self.done and self.last_printed != self.done:
                self._print(time.monotonic())

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                now = time.monotonic()
                if now - self.last < self.interval:
                    continue
                if self.tty:
                    self._draw(now)
                else:
                    self._print(now)

    def _draw(self, now: float | None = None) -> None:
        now = now or time.monotonic()
        width = _columns(self.stream)
        self.stream.write("\r" + self.bar(now)[: width - 1].ljust(width - 1))
        self.stream.flush()
        self.last = now
        self.lines += 1

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self.last = now
        self.last_printed = self.done
        self.lines += 1


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _columns(stream) -> int:
    """The terminal's width; 120 where it is not known (a pty nobody sized reports 0)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns if columns >= 20 else 120


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
