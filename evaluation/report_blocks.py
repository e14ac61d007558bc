"""What a report page is made of, as plain data: sections of paragraphs, notices, tables and plots.

Callers (the report's own parts, and the sections a job adds: the gate, the attacks, diversity, the
enhancement benchmark) build these; the Jinja2 templates (``templates/blocks.html.j2``, autoescaped) turn
them into HTML, so no table or paragraph is an HTML string assembled in Python. Cells are text, already
formatted; a plot is the SVG matplotlib drew (``report._inline_svg``), the one piece of markup a block holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Table:
    """A table: headings, rows of formatted cells, and a CSS class per column ("" right-aligned numbers,
    "text" left-aligned, "text wrap" long text that wraps)."""

    headings: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    classes: tuple[str, ...]
    kind: str = "table"


@dataclass(frozen=True)
class Text:
    """A paragraph; `style` "notice" (a banner), "muted" (a note) or "" (plain)."""

    text: str
    style: str = ""
    kind: str = "text"


@dataclass(frozen=True)
class Plot:
    """An inline SVG figure (from ``report._inline_svg``)."""

    svg: str
    kind: str = "plot"


@dataclass(frozen=True)
class Section:
    """A titled part of the page: its blocks in order."""

    title: str
    blocks: tuple[Table | Text | Plot, ...]


def section(title: str, *blocks: Table | Text | Plot | None) -> Section:
    """A section of the given blocks (None ones left out, for blocks shown only sometimes)."""
    return Section(title, tuple(b for b in blocks if b is not None))


def rows_table(headings: Sequence[str], rows: Sequence[Sequence[object]], text_columns: int = 0) -> Table:
    """A table of plain rows: each cell formatted (``format_cell``); the first `text_columns` columns left-aligned."""
    classes = tuple("text" if i < text_columns else "" for i in range(len(headings)))
    return Table(tuple(headings), tuple(tuple(format_cell(v) for v in row) for row in rows), classes)


def frame_table(frame: pd.DataFrame, headings: Sequence[str] | None = None) -> Table:
    """A DataFrame as a table: numbers right-aligned, text left-aligned, long text (errors) wrapping."""
    headings = tuple(frame.columns if headings is None else headings)
    classes = tuple(_column_class(frame[c]) for c in frame.columns)
    rows = tuple(tuple(format_cell(v) for v in row) for row in frame.itertuples(index=False))
    return Table(tuple(str(h) for h in headings), rows, classes)


def format_cell(value) -> str:
    """A cell's text: "–" for missing, lower-case booleans, integers as they are, 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def _column_class(column: pd.Series) -> str:
    # Numbers align right and never wrap; long text (error messages) wraps, short text does not.
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return ""
    longest = column.astype(str).str.len().max() if len(column) else 0
    return "text wrap" if longest > 40 else "text"
