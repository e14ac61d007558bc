"""`boomerang demo` end to end offline, and `boomerang doctor`."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.cli import main

pytestmark = pytest.mark.slow


def test_demo_runs_offline_and_says_its_numbers_are_not_meaningful(
    ray_runtime, model_cache, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("BOOMERANG_CACHE", str(model_cache.parent))
    out = tmp_path / "demo"

    assert main(["demo", "--out", str(out)]) == 0

    stdout = capsys.readouterr().out
    assert "not meaningful" in stdout
    assert "NOT meaningful" in json.loads((out / "run.json").read_text())["notice"]
    assert "NOT meaningful" in (out / "report" / "index.html").read_text()
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["status"].value_counts()["error"] == 3  # the broken sample file, at 3 levels
    summary = pd.read_parquet(out / "evaluation" / "summary.parquet")
    assert set(summary["recognizer"]) == {"VGG-Face", "Facenet"} and len(summary) == 6
    assert (summary["n_no_face_original"] >= 1).all()  # the coffee cup


def test_doctor_says_where_weights_are_looked_for(tmp_path, capsys, monkeypatch, deepface_home):
    monkeypatch.setenv("DEEPFACE_HOME", str(deepface_home))
    assert main(["doctor", "--model", str(tmp_path / "nowhere"), "--recognizers", "Facenet,ArcFace"]) == 0
    out = capsys.readouterr().out
    assert "facenet_weights.pth present" in out
    assert "arcface" in out.lower() and "MISSING" in out
    assert "GPUs:" in out and "Ray" in out
