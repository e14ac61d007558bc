"""Where a job's time went before and around its work: seconds since the process started, per milestone.

Recorded in run.json's "timings" (the last run's): `imported` (the command line and the driver's modules
loaded), `prepared` (inputs found, weights checked, folder ready),
`ray` (connected, or the embedded Ray started), `first_output` (the first batch back from the actors: their
start-up, model load and one batch), `pass_done`, `finished`. In tests and `boomerang demo` run in-process
after other work, the process start is long past: the differences between milestones still hold.
"""

from __future__ import annotations

import os
import time

_IMPORTED = time.monotonic()


def since_start() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere since this module was imported)."""
    try:
        with open("/proc/self/stat") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError, AttributeError):
        return round(time.monotonic() - _IMPORTED, 2)


class Timings(dict):
    """Milestone -> seconds since the process started; the first time each milestone is reached counts."""

    def mark(self, milestone: str) -> None:
        self.setdefault(milestone, since_start())
