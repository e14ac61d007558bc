"""What a failed row says in public, and what only private/ keeps.

A shareable table (manifest, distances, the reports) gets a reason code and a fixed short text, never
the exception's own words: an OS error quotes the path (for LFW, a person's name), a duplicate-id
message would quote the id. The full text goes to private/outputs.parquet.

Each error has a kind, which decides what a rerun does with it:
- ``input``: the file itself is bad (undecodable, too large, too small, a bad name, a duplicate id); a
  rerun redoes it only when the file changed, or with ``--retry-errors``.
- ``transient``: I/O that is not a decode failure, out of memory, a lost worker; every rerun retries it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from anonymize import ImageError

INPUT = "input"
TRANSIENT = "transient"


@dataclass(frozen=True)
class RowError:
    kind: str  # INPUT | TRANSIENT
    reason: str  # a short code, e.g. "corrupt", "read_failed"
    summary: str  # fixed text for the reason: safe to share
    detail: str  # the exception's own words: private/ only

    @property
    def public(self) -> str:
        return f"{self.reason}: {self.summary}"


# Reasons known before any file is read (set by input discovery).
BAD_NAME = RowError(INPUT, "bad_name", "file name is not valid UTF-8; rename the file", "")
DUPLICATE_ID = RowError(INPUT, "duplicate_id", "the id occurs more than once in the input; ids must be unique", "")
MISSING_OUTPUT = RowError(INPUT, "missing_output", "no anonymized image was found for this original", "")
_PROBLEMS = {e.reason: e for e in (BAD_NAME, DUPLICATE_ID, MISSING_OUTPUT)}


def problem(reason: str, detail: str = "") -> RowError:
    """A known problem by its reason code, with a private detail."""
    base = _PROBLEMS[reason]
    return RowError(base.kind, base.reason, base.summary, detail)


def classify(err: BaseException) -> RowError:
    """The row error for an exception raised while reading, decoding or sampling one input."""
    detail = " ".join(f"{type(err).__name__}: {err}".split())
    if isinstance(err, ImageError):
        return RowError(INPUT, err.reason, err.summary, detail)
    if isinstance(err, OSError):
        return RowError(TRANSIENT, "read_failed", "the file could not be read (I/O error); retried on rerun", detail)
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return RowError(TRANSIENT, "out_of_memory", "out of memory even at model batch 1; retried on rerun", detail)
    if isinstance(err, ValueError):
        return RowError(INPUT, "sampler_refused", "the sampler refused this input at these settings", detail)
    return RowError(TRANSIENT, "failed", f"{type(err).__name__} in the worker; retried on rerun", detail)


# Anything that looks like a file path or URI: scrubbed from texts that other code wrote (deepface).
_PATHLIKE = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://|~?/|[A-Za-z]:\\)[^\s'\"]*")


def scrub(text: str | None, secrets: tuple[str, ...] = ()) -> str | None:
    """`text` with paths and the given strings (source ids, file names) replaced: for shareable tables."""
    if text is None:
        return None
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "<id>")
    return _PATHLIKE.sub("<path>", text)


def error_row(base: dict, level: float, error: RowError) -> dict:
    """An (image, level) row that failed: the public reason, its kind, and the detail for private/."""
    return {
        **base,
        "level": level,
        "status": "error",
        "error": error.public,
        "error_kind": error.kind,
        "error_detail": error.detail or None,
    }
