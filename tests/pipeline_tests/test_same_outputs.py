"""Behaviour unchanged, checked inside one test rather than against recorded digests: two runs of one input with
one secret (--secret-file) in two folders leave byte-identical images, the same public tables (but for the
per-image seconds) and the same private outputs table. A change that moved any byte of an output (a seed, the
sampler's batching, the writer) breaks it."""

from __future__ import annotations

import pandas as pd
import pytest
from samples import write_faces

pytestmark = pytest.mark.slow

TABLES = {  # table -> (key columns, columns that measure time, not outputs)
    "manifest.parquet": (["anon_id", "level"], ["seconds"]),
    "evaluation/distances.parquet": (["anon_id", "level", "recognizer"], []),
    "evaluation/summary.parquet": (["level", "recognizer"], []),
    "private/outputs.parquet": (["anon_id", "level"], ["seconds"]),
}


def _table(out, name: str) -> pd.DataFrame:
    keys, timing = TABLES[name]
    frame = pd.read_parquet(out / name)
    return frame.drop(columns=[c for c in timing if c in frame]).sort_values(keys, ignore_index=True)


def test_two_runs_with_one_secret_leave_the_same_bytes(cli, tmp_path):
    data = tmp_path / "in"
    write_faces(data, 3, size=(64, 64))
    secret = tmp_path / "secret"
    secret.write_text("5e" * 32 + "\n")
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        status, _, _ = cli("run", str(data), "--out", str(out), "--levels", "0.4,0.6", "--secret-file", str(secret))
        assert status == 0

    images = sorted(p.relative_to(first) for p in (first / "images").rglob("*.png"))
    assert len(images) == 6
    assert images == sorted(p.relative_to(second) for p in (second / "images").rglob("*.png"))
    for relative in images:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    for name in TABLES:
        pd.testing.assert_frame_equal(_table(first, name), _table(second, name))
