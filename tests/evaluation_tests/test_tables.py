"""Parquet schemas, atomic writes, reading a folder of part files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation import (
    DISTANCES_SCHEMA,
    SUMMARY_SCHEMA,
    EvaluationSettings,
    distances_table,
    error_rows,
    read_distances,
    summarize,
    write_parquet_atomic,
)
from evaluation.evaluator import ROW_KEYS
from evaluation.summary import SUMMARY_COLUMNS
from evaluation.tables import read_summary, summary_table

SETTINGS = EvaluationSettings()


def ok_row(anon_id: str, level: float, recognizer: str, distance: float) -> dict:
    return {
        "anon_id": anon_id,
        "level": level,
        "t_boom": int(level * 1000),
        "face": None,
        "recognizer": recognizer,
        "metric": "cosine",
        "distance": distance,
        "threshold": 0.4,
        "cleared": distance > 0.4,
        "face_original": True,
        "face_anonymized": True,
        "compared_at": "detected",
        "status": "ok",
        "error": None,
    }


def test_schemas_name_the_documented_columns():
    assert tuple(DISTANCES_SCHEMA.names) == ROW_KEYS
    assert tuple(SUMMARY_SCHEMA.names) == SUMMARY_COLUMNS


def test_distances_round_trip_through_a_folder_of_parts(tmp_path):
    part_1 = [ok_row("a", 0.5, "VGG-Face", 0.61), ok_row("a", 0.5, "Facenet", 0.2)]
    part_2 = error_rows("b", 0.5, None, "decode failed", SETTINGS)
    folder = tmp_path / "distances.parquet"
    write_parquet_atomic(distances_table(part_1), folder / "part-0.parquet")
    write_parquet_atomic(distances_table(part_2), folder / "part-1.parquet")
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.parquet", "part-1.parquet"]

    frame = read_distances(folder).sort_values(["anon_id", "recognizer"]).reset_index(drop=True)
    assert list(frame.columns) == list(ROW_KEYS)
    assert len(frame) == 4
    assert frame.loc[frame["status"] == "error", "distance"].isna().all()
    assert frame.loc[frame["status"] == "error", "t_boom"].isna().all()
    assert frame.loc[(frame["anon_id"] == "a") & (frame["recognizer"] == "VGG-Face"), "cleared"].item() == True  # noqa: E712
    # pandas reads it too, as the spec promises.
    assert len(pd.read_parquet(folder)) == 4

    summary = summarize(frame, SETTINGS)
    write_parquet_atomic(summary_table(summary), tmp_path / "summary.parquet")
    back = read_summary(tmp_path / "summary.parquet")
    pd.testing.assert_frame_equal(back, summary)
    assert pq.read_schema(tmp_path / "summary.parquet").equals(SUMMARY_SCHEMA)


def test_parts_written_before_compared_at_existed_read_as_null(tmp_path):
    old = pa.schema([field for field in DISTANCES_SCHEMA if field.name != "compared_at"])
    row = ok_row("old", 0.5, "Facenet", 0.3)
    del row["compared_at"]
    folder = tmp_path / "distances.parquet"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=old), folder / "part-0.parquet")
    write_parquet_atomic(distances_table([ok_row("new", 0.5, "Facenet", 0.3)]), folder / "part-1.parquet")
    frame = read_distances(folder).set_index("anon_id")
    assert list(frame.columns) == list(ROW_KEYS[1:])
    assert frame.loc["new", "compared_at"] == "detected"
    assert frame.loc["old", "compared_at"] is None or pd.isna(frame.loc["old", "compared_at"])
    assert summarize(frame.reset_index(), SETTINGS)["n_compared_at_original_box"].tolist() == [0]


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "nested" / "distances.parquet"
    write_parquet_atomic(distances_table([ok_row("a", 0.5, "Facenet", 0.1)]), path)
    write_parquet_atomic(distances_table([ok_row("b", 0.7, "Facenet", 0.9)] * 3), path)
    assert [p.name for p in path.parent.iterdir()] == ["distances.parquet"]
    assert read_distances(path)["anon_id"].tolist() == ["b"] * 3


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    import evaluation.tables

    path = tmp_path / "distances.parquet"
    write_parquet_atomic(distances_table([ok_row("a", 0.5, "Facenet", 0.1)]), path)
    with pytest.raises(TypeError, match="table"):
        write_parquet_atomic("not a table", path)

    def disk_full(table, handle):
        handle.write(b"PAR1 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(evaluation.tables.pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_parquet_atomic(distances_table([ok_row("b", 0.5, "Facenet", 0.2)]), path)
    monkeypatch.undo()
    assert read_distances(path)["anon_id"].tolist() == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["distances.parquet"]


def test_rows_with_wrong_keys_are_refused():
    row = ok_row("a", 0.5, "Facenet", 0.1)
    with pytest.raises(ValueError, match="rows"):
        distances_table([row | {"extra": 1}])
    with pytest.raises(ValueError, match="rows"):
        distances_table([{k: v for k, v in row.items() if k != "error"}])


def test_fsspec_uri(tmp_path):
    table = distances_table([ok_row("m", 0.5, "Facenet", float(np.float32(0.25)))])
    write_parquet_atomic(table, "memory://evaluation-tests/d.parquet")
    assert read_distances("memory://evaluation-tests/d.parquet")["distance"].tolist() == [0.25]
