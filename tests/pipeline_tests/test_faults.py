"""Faults: a killed driver resumes with every row exactly once; a lost node loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from jobs import kill_job_when
from samples import write_faces

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


def test_killed_driver_resumes_with_every_row_once(cli, tmp_path, tiny_sd, deepface_home):
    data = tmp_path / "in"
    ids = write_faces(data, 8, size=(64, 64))
    out = tmp_path / "out"
    argv = ["run", str(data), "--out", str(out), "--levels", "0.5", "--batch-size", "1", "--eval-batch-size", "1"]
    options = [
        "--model",
        str(tiny_sd),
        "--steps",
        "10",
        "--recognizers",
        "Facenet",
        "--detector",
        "skip",
        "--deepface-home",
        str(deepface_home),
    ]
    manifest = out / "manifest.parquet"
    kill_job_when([*argv, *options], lambda: manifest.is_dir() and len(list(manifest.glob("part-*.parquet"))) >= 2)
    partial = pd.read_parquet(out / "manifest.parquet")
    assert 2 <= len(partial) < len(ids)

    status, stdout, _ = cli(*argv)

    assert status == 0
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == len(ids) and manifest["anon_id"].is_unique
    assert (manifest["status"] == "ok").all()
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    assert len(distances) == len(ids) and distances["anon_id"].is_unique
    assert f"({len(ids) - len(partial)} processed in this run)" in stdout


def test_losing_the_worker_node_loses_nothing(tmp_path, tiny_sd, deepface_home):
    data = tmp_path / "in"
    ids = write_faces(data, 6, size=(64, 64))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.run(
        [sys.executable, str(HERE / "cluster_job.py"), str(data), str(out), str(tiny_sd), str(deepface_home)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"status"')]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["status"] == 0 and not result["alive"], proc.stderr[-3000:]
    assert 1 <= result["parts_before_loss"] < len(ids)
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == len(ids) and manifest["anon_id"].is_unique and (manifest["status"] == "ok").all()
    record = json.loads((out / "run.json").read_text())
    assert record["ray"]["gpus"] == 1 and record["ray"]["nodes"] == 2
