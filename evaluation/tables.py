"""Parquet schemas of the evaluation files, and writing them so a reader never sees half a file (evaluation.files)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from evaluation.files import write_atomic
from evaluation.summary import NULLABLE_COUNTS, SUMMARY_COLUMNS

# Both tables are public in a boomerang run folder: pipeline.tables.schemas tags their columns and declares the form of
# each text column, which its public writer checks at every write (this library cannot import pipeline).
DISTANCES_SCHEMA = pa.schema(
    [
        pa.field("anon_id", pa.string(), nullable=False),
        pa.field("level", pa.float64(), nullable=False),  # NaN: another tool's output with no level
        pa.field("t_boom", pa.int64()),  # null when the anonymizer failed before choosing it
        # Face-region mode: the face's index in its image (one row per face); null for a whole-image row.
        pa.field("face", pa.int32()),
        pa.field("recognizer", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("distance", pa.float64()),  # null unless status is "ok"
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("cleared", pa.bool_()),  # null unless status is "ok"
        pa.field("face_original", pa.bool_(), nullable=False),
        pa.field("face_anonymized", pa.bool_()),  # null when the anonymized image was not embedded
        # How the anonymized image's faces were taken: "detected" | "original_box" | "whole_image";
        # null when it was not embedded (see evaluation.evaluator).
        pa.field("compared_at", pa.string()),
        # "ok" | "no_face_original" | "missing_output" (boomerang evaluate) | "no_face_detected" (face-region
        # mode: no face in the image, so no output) | "error"
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ]
)

_COUNTS = {name for name in SUMMARY_COLUMNS if name.startswith("n_")} - set(NULLABLE_COUNTS)
_INTEGERS = _COUNTS | set(NULLABLE_COUNTS)
_STRINGS = {"recognizer", "metric", "label"}
SUMMARY_SCHEMA = pa.schema(
    [
        pa.field(
            name,
            pa.int64() if name in _INTEGERS else pa.string() if name in _STRINGS else pa.float64(),
            # An undefined statistic (NaN in pandas) is stored as null: pyarrow converts NaN so.
            nullable=name not in _COUNTS and name not in _STRINGS,
        )
        for name in SUMMARY_COLUMNS
    ]
)


def distances_table(rows: Iterable[dict]) -> pa.Table:
    """Distance rows (``PairEvaluator.evaluate`` / ``error_rows`` output) as a table of ``DISTANCES_SCHEMA``."""
    rows = list(rows)
    keys = set(DISTANCES_SCHEMA.names)
    for row in rows:
        if set(row) != keys:
            raise ValueError(f"rows: keys must be {DISTANCES_SCHEMA.names}, got {list(row)}")
    return pa.Table.from_pylist(rows, schema=DISTANCES_SCHEMA)


def summary_table(summary: pd.DataFrame) -> pa.Table:
    """The ``summarize`` output as a table of ``SUMMARY_SCHEMA``."""
    return pa.Table.from_pandas(summary[list(SUMMARY_COLUMNS)], schema=SUMMARY_SCHEMA, preserve_index=False)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` to ``path`` so that the file is either absent, old, or complete.

    Local paths: ``evaluation.files.write_atomic`` (a hidden temporary file, fsync, rename). Other URIs
    (``s3://...``) go through fsspec, where an object store publishes an object only once its upload completes.
    """
    if not isinstance(table, pa.Table):
        raise TypeError(f"table: must be a pyarrow.Table, got {type(table).__name__}")
    target = os.fspath(path)
    if "://" in target and not target.startswith("file://"):
        import fsspec

        with fsspec.open(target, "wb") as handle:
            pq.write_table(table, handle)
        return
    target_path = Path(target.removeprefix("file://"))
    target_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target_path, lambda handle: pq.write_table(table, handle))


def read_distances(path: str | os.PathLike) -> pd.DataFrame:
    """Read distance rows from a Parquet file or a folder of part files (local or fsspec URI)."""
    return _read(path, DISTANCES_SCHEMA)


def read_summary(path: str | os.PathLike) -> pd.DataFrame:
    """Read a summary written from ``summary_table``."""
    # Counts that may be missing come back as pandas' nullable integers, as summarize made them.
    return _read(path, SUMMARY_SCHEMA).astype({name: "Int64" for name in NULLABLE_COUNTS})


def _read(path: str | os.PathLike, schema: pa.Schema) -> pd.DataFrame:
    target = os.fspath(path)
    if "://" in target and not target.startswith("file://"):
        import fsspec

        filesystem, target = fsspec.core.url_to_fs(target)
        table = pq.read_table(target, schema=schema, filesystem=filesystem)
    else:
        table = pq.read_table(target.removeprefix("file://"), schema=schema)
    return table.to_pandas()
