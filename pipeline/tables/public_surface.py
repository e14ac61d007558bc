"""What the public writer refuses (pipeline.tables.write): the forms public string values may have, and what no
public value may look like whatever its column (a path, a file name, an input id, an exception's own words).
The tables themselves, and which of their columns are public, are declared in pipeline.tables.schemas."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


class PublicSurfaceError(ValueError):
    """A table the writers refuse: which table, which column, and why, in one line (never the value)."""


# The forms of public string values (matched whole).
ANON_ID = r"[0-9a-f]{24}"  # pipeline.folder.secret.anon_id: a keyed hash, never an input id

RELEASE_NAME = r"[0-9a-f]{16,64}"  # a released image's name (release/images/<name>.png)
SHA256 = r"[0-9a-f]{64}"

LEVEL_DIR = r"level=[0-9]+(?:\.[0-9]+)?"  # pipeline.folder.layout.level_dirname

# A reason code and a fixed text (pipeline.tables.row_errors): the text has no path, no quote, no colon (so no
# "Type: message" of an exception), no underscore (so no LFW-style id); an exception's TYPE may be named.
REASON = r"[a-z][a-z0-9_ ]{0,39}: [A-Za-z0-9 ,;.()=+%-]{1,200}"

RECOGNIZER = r"[A-Za-z][A-Za-z0-9_-]{1,31}"

# A summary label the user chose (`--label`): free text, one line.
LABEL = r"[^\\\x00-\x1f'\"`~:]{1,200}"
CLASS_NAME = r"(?:class-[0-9a-f]{12}|_unlabelled)"  # pipeline.outputs.training_set's pseudonyms


def one_of(*values: str) -> str:
    return "|".join(re.escape(v) for v in values)


@dataclass(frozen=True)
class Rule:
    """The form every value of a public string column has. `names_files`: the value is one of the run's
    own relative file or class names (so `/`, `.png` and an input's class are expected), which the generic
    path, file-name and id checks would refuse; its form is what holds it."""

    pattern: str
    names_files: bool = False

    def refuses(self, value: str) -> str | None:
        if not re.fullmatch(self.pattern, value):
            return "does not have the column's declared form"
        return looks_private(value, files=not self.names_files)


def is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind)


# What no public string may contain, whatever its column's form: an input's path or file name, an id in
# LFW's style, an exception's own words. (A column of the run's own relative file names skips the path
# and file-name checks; its form is strict instead.)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

_FILE_NAME = re.compile(
    r"[^\s/\\]\.(?:jpe?g|png|gif|bmp|tiff?|webp|heic|heif|avif|p[gpn]m|parquet|pq|json|txt|csv|npy|npz|pt|pth|"
    r"safetensors|bin|h5|pkl|zip|tar|gz)\b",
    re.IGNORECASE,
)

_EXCEPTION = re.compile(r"Traceback|Errno|\w(?:Error|Exception|Warning): |\bline \d+\b|File \"")

_QUOTED = re.compile(r"(['\"`]).+?\1", re.DOTALL)

_INPUT_ID = re.compile(r"[^\W_][\w-]*_\d{3,}\b|\b(?:IMG|DSC|DSCN|DCIM|PXL|MVIMG)_?\d+", re.IGNORECASE)


def looks_private(value: str, files: bool = True) -> str | None:
    """Why `value` may not appear in a public table (a path, a file name, an id, exception text), else None.
    `files=False`: a column of the run's own names, whose declared form is strict; only text checks apply."""
    if files and ("/" in value or "\\" in value or value.startswith("~") or _URI.search(value)):
        return "looks like a path"
    if files and _FILE_NAME.search(value):
        return "looks like a file name"
    if any(ch in value for ch in "\n\r\t"):
        return "is multi-line text"
    if _EXCEPTION.search(value):
        return "looks like an exception's own text"
    if _QUOTED.search(value):
        return "quotes something"
    if files and _INPUT_ID.search(value):
        return "looks like an input id"
    return None


def check_public(table: pa.Table, spec) -> None:
    """Raise PublicSurfaceError unless every column of `table` is a declared public column of `spec` and every
    string value has its column's form and looks like nothing private. The message names the column, never
    the value (the value may be what must not be printed)."""
    if spec.private:
        raise PublicSurfaceError(f"{spec.where} is a private/ table: written only by the private writer")
    for column in table.schema:
        where = f"{spec.where}: column {column.name!r}"
        if column.name not in spec.schema.names:
            raise PublicSurfaceError(f"{where} is not declared (pipeline.tables.schemas)")
        if column.name not in spec.public_columns:
            raise PublicSurfaceError(f"{where} is declared private")
        if pa.types.is_nested(column.type):
            raise PublicSurfaceError(f"{where} is nested ({column.type}): no box or vector is public")
        if not is_string(column.type):
            continue
        rule = spec.rules[column.name]
        values = table[column.name]
        if pa.types.is_dictionary(column.type):
            values = values.cast(pa.string())
        for value in pc.unique(values).to_pylist():
            why = None if value is None else rule.refuses(value)
            if why:
                raise PublicSurfaceError(f"{where}: a value {why}; refused (public tables hold no such text)")


def check_private(table: pa.Table, spec) -> None:
    """Raise PublicSurfaceError unless `spec` is a private/ table and `table`'s columns are declared in it."""
    if not spec.private:
        raise PublicSurfaceError(f"{spec.where} is public: the private writer must not write it")
    unknown = [n for n in table.schema.names if n not in spec.schema.names]
    if unknown:
        raise PublicSurfaceError(f"{spec.where}: columns {unknown} are not declared (pipeline.tables.schemas)")
