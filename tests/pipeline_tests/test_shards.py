"""Shards fixed by the input: one file per shard per table, whatever Ray's batching or a kill did."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from jobs import Gate, kill_job_when
from samples import write_faces

from pipeline.folder.secret import anon_id
from pipeline.tables.shards import Shards

pytestmark = pytest.mark.slow

SECRET = bytes(range(32))
SHARD_NAMES = ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(("_", ".")))


def tables(out: Path) -> list[Path]:
    return [out / "manifest.parquet", out / "private" / "outputs.parquet"]


def test_a_finished_run_leaves_one_file_per_shard_per_table(cli, tmp_path):
    ids = write_faces(tmp_path / "in", 40, size=(32, 32))
    out = tmp_path / "out"

    status, _, err = cli(
        "run", str(tmp_path / "in"), "--out", str(out), "--batch-size", "4", "--shard-size", "16", "--steps", "4"
    )

    assert status == 0, err
    for folder in [*tables(out), out / "evaluation" / "distances.parquet"]:
        assert files(folder) == SHARD_NAMES, folder
        rows = pd.read_parquet(folder)
        assert len(rows) == len(ids) and rows["anon_id"].is_unique
    # Shards are cut in the keyed order: 16, 16 and the rest, each a range of anon_ids.
    sizes = [len(pd.read_parquet(out / "manifest.parquet" / name)) for name in SHARD_NAMES]
    assert sizes == [16, 16, 8]
    firsts = [pd.read_parquet(out / "manifest.parquet" / name)["anon_id"] for name in SHARD_NAMES]
    assert firsts[0].max() < firsts[1].min() and firsts[1].max() < firsts[2].min()


@pytest.mark.heavy
def test_a_job_killed_mid_shard_resumes_to_the_same_files_whatever_the_batch_size(cli, tmp_path, tiny_sd):
    data = tmp_path / "in"
    ids = write_faces(data, 40, size=(32, 32))
    secret = tmp_path / "secret"
    secret.write_text(SECRET.hex() + "\n")
    argv = ["anonymize", str(data), "--shard-size", "16", "--steps", "4", "--secret-file", str(secret)]

    # The reference: one uninterrupted run.
    reference = tmp_path / "reference"
    status, _, err = cli(*argv, "--out", str(reference), "--batch-size", "4")
    assert status == 0, err

    # Shards are worked on one after another, each in input order: hold the job at the 9th image of
    # shard 1, when shard 0 is compacted and shard 1 has batch parts but is not done, on any machine.
    shards = Shards.cut([anon_id(SECRET, i) for i in ids], 16)
    in_shard_1 = [i for i in ids if shards.of(anon_id(SECRET, i)) == 1]
    out = tmp_path / "out"
    manifest = out / "manifest.parquet"

    def mid_shard() -> bool:
        return (
            gate.held() and (manifest / "part-00000.parquet").is_file() and any(manifest.glob("part-00001-*.parquet"))
        )

    with Gate.replacing(data / in_shard_1[8]) as gate:
        kill_job_when([*argv, "--out", str(out), "--batch-size", "4", "--model", str(tiny_sd)], mid_shard)
    assert not (manifest / "part-00001.parquet").exists()
    done_before = len(pd.read_parquet(manifest))
    # Shard 0 whole, shard 1 begun but not whole (its held image cannot be done); how many of its other
    # batches finished depends on how many actors ran beside the held one.
    assert 16 + 4 <= done_before < 16 + 16
    shard_0 = (manifest / "part-00000.parquet").stat().st_mtime_ns

    status, _, err = cli(*argv, "--out", str(out), "--batch-size", "3")

    assert status == 0, err
    # Every row once, the same file names, nothing finished before the kill redone.
    assert json.loads((out / "run.json").read_text())["pairs_done_this_run"] == len(ids) - done_before
    assert (manifest / "part-00000.parquet").stat().st_mtime_ns == shard_0
    for ours, theirs in zip(tables(out), tables(reference), strict=True):
        assert files(ours) == files(theirs) == SHARD_NAMES
        for name in SHARD_NAMES:
            mine = pd.read_parquet(ours / name).drop(columns=["seconds"], errors="ignore")
            expected = pd.read_parquet(theirs / name).drop(columns=["seconds"], errors="ignore")
            pd.testing.assert_frame_equal(mine, expected)
    # The images too: --batch-size changes nothing in the outputs.
    images = sorted(p.relative_to(out) for p in (out / "images").rglob("*.png"))
    assert images == sorted(p.relative_to(reference) for p in (reference / "images").rglob("*.png"))
    assert all((out / p).read_bytes() == (reference / p).read_bytes() for p in images)
