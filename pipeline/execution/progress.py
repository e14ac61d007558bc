"""Progress: a live bar on a terminal, plain lines otherwise (CI logs, cluster job logs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts finished (image, level) pairs; shows done/total, images per second and ETA."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.total, self.label, self.done, self.errors = total, label, 0, 0
        self.stream = stream or sys.stderr
        self.interval = interval
        self.started = self.last = time.monotonic()
        self.bar = None
        if self.stream.isatty() and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="img", file=self.stream, dynamic_ncols=True)

    def update(self, done: int, errors: int = 0) -> None:
        self.done += done
        self.errors += errors
        if self.bar is not None:
            self.bar.update(done)
            self.bar.set_postfix(errors=self.errors, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.interval or self.done >= self.total:
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = f"{eta:.0f}s" if eta == eta else "?"
        return f"{self.label}: {self.done}/{self.total} done, {self.errors} errors, {rate:.2f} img/s, ETA {eta_text}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
