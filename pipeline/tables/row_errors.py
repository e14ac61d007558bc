"""What a failed row says in public, and what only private/ keeps.

A shareable table (manifest, distances, the reports, run.json) gets a reason code and a fixed short text,
or a reason code and an exception's type name (`scrub`), never the exception's own words: an OS error quotes
the path (for LFW, a person's name), a duplicate-id message would quote the id. The full text goes to
private/outputs.parquet (and private/failure.txt for a job's failure). The public writer checks the form
(pipeline.tables.public_surface.REASON).

Each error has a kind, which decides what a rerun does with it:
- ``input``: the file itself is bad (undecodable, too large, too small, a bad name, a duplicate id); a
  rerun redoes it only when the file changed, or with ``--retry-errors``.
- ``transient``: I/O that is not a decode failure, out of memory, a lost worker; every rerun retries it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from anonymize import ImageError
from pipeline.tables.public_surface import REASON, looks_private

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
        return RowError(
            TRANSIENT, "read_failed", "the file could not be read (an input-output error); retried on rerun", detail
        )
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return RowError(TRANSIENT, "out_of_memory", "out of memory even at model batch 1; retried on rerun", detail)
    if isinstance(err, ValueError):
        return RowError(INPUT, "sampler_refused", "the sampler refused this input at these settings", detail)
    return RowError(TRANSIENT, "failed", f"{type(err).__name__} in the worker; retried on rerun", detail)


# An error text other code wrote (deepface's messages, Ray's traceback lines): "code: Type: its own words".
_CODE = re.compile(r"([a-z][a-z0-9_ ]{0,39}): ")
_TYPE = re.compile(r"([A-Z][A-Za-z0-9_]*(?:Error|Exception|Interrupt|Exit|Warning))\b")
_WORD = re.compile(r"[^/\\\s_.-]{4,}")


def scrub(text: str | None, ids: tuple[str, ...] = ()) -> str | None:
    """What a shareable table or run.json may say of an error text: the text itself only when it already is a
    reason code and a fixed text (`RowError.public`: pipeline.tables.public_surface.REASON) naming none of `ids` (source
    ids, their folders, names and words); else its leading code and the exception's TYPE name, never the
    exception's words. Those quote paths, and no pattern finds a path's end: `/data/lfw/Aaron Eckhart/x.jpg`
    has a space in it, `Aaron_Eckhart/x.jpg` is relative, an id may be any text.
    """
    if text is None:
        return None
    text = " ".join(str(text).split())
    if re.fullmatch(REASON, text) and looks_private(text) is None and not _names_any(text, ids):
        return text
    code = _CODE.match(text)
    rest = text[code.end() :] if code else text
    kind = _TYPE.match(rest)
    return f"{code.group(1) if code else 'error'}: {kind.group(1) if kind else 'text withheld'}"


def _names_any(text: str, ids: tuple[str, ...]) -> bool:
    """Whether `text` holds an id, one of its path components or their stems, or a word (4+ characters) of one."""
    found = set()
    for image_id in filter(None, ids):
        parts = image_id.replace("\\", "/").split("/")
        found |= {image_id, *parts, *(p.rsplit(".", 1)[0] for p in parts), *_WORD.findall(image_id)}
    return any(len(name) >= 3 and name in text for name in found)


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
