"""Lines that say exactly what happened: how much an interrupted job kept."""

from __future__ import annotations


def kept_outputs(job) -> int:
    """Outputs (image, level pairs) this run finished and wrote before now: those of finished passes and those
    the running pass has counted (each counted only once its rows are written)."""
    live = getattr(job, "progress", None)  # the running pass (None between passes)
    return int(job.pairs_done_now) + (int(live.done) if live is not None else 0)


def interrupted_text(kept: int | None) -> str:
    """What an interruption kept, in words (run.json's error and the terminal's line)."""
    if kept is None:
        return "before the job started: nothing was written"
    if kept == 0:
        return "no output had finished in this run, so nothing new was kept"
    return f"{kept} output{'s' if kept != 1 else ''} finished in this run {'are' if kept != 1 else 'is'} kept"


def interrupt_line(reason: str, kept: int | None) -> str:
    """The terminal's one line for Ctrl-C or SIGTERM."""
    again = "run the same command again to start" if kept is None else "run the same command again to resume"
    return f"boomerang: {reason}; {interrupted_text(kept)}: {again}"
