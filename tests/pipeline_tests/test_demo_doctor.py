"""`boomerang demo` end to end offline, and `boomerang doctor`."""

from __future__ import annotations

import json
import socket

import pandas as pd
import pytest

from pipeline.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.heavy
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
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # The model and the ArcFace weights are missing: a job could not run, so the status is 1.
    assert main(["doctor", "--model", str(tmp_path / "nowhere"), "--recognizers", "Facenet,ArcFace"]) == 1
    out = capsys.readouterr().out
    assert "facenet_weights.pth present" in out
    assert "arcface" in out.lower() and "MISSING" in out
    assert "GPUs:" in out and "Ray" in out
    assert out.rstrip().splitlines()[-1] == "NOT ready: missing the diffusion model; recognizer weights (ArcFace)"


def test_doctor_exits_0_when_every_required_part_is_present(capsys, monkeypatch, deepface_home, tiny_sd):
    monkeypatch.setenv("DEEPFACE_HOME", str(deepface_home))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    assert main(["doctor", "--model", str(tiny_sd), "--recognizers", "Facenet,VGG-Face"]) == 0

    out = capsys.readouterr().out
    assert f"model {tiny_sd}: local folder {tiny_sd} present" in out
    # The actors a job with default flags would start here: the plan the job itself uses (pipeline.execution.actors).
    import os

    import torch

    from pipeline.execution.actors import plan_actors

    plan = plan_actors(os.cpu_count() or 1, torch.cuda.device_count())
    assert f"plan with default flags: {plan.describe()}" in out
    assert "MISSING" not in out
    # The demo's random weights are present, and said to be what they are (issue 24, item 6).
    assert out.rstrip().splitlines()[-1] == (
        f"ready: every required part is present, but model {tiny_sd}, Facenet, VGG-Face: "
        "random weights: numbers not meaningful"
    )


def test_doctor_exits_1_when_the_cluster_given_cannot_be_joined(capsys, monkeypatch, deepface_home, tiny_sd):
    monkeypatch.setenv("DEEPFACE_HOME", str(deepface_home))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    assert main(["doctor", "--address", f"127.0.0.1:{port}", "--model", str(tiny_sd), "--recognizers", "Facenet"]) == 1

    out = capsys.readouterr().out
    # The same one line as a job's (pipeline.execution.cluster), here on the doctor's Ray line.
    assert f"cannot join the Ray cluster at 127.0.0.1:{port}: nothing answers at " in out
    assert f"(connection refused); start the head with `ray start --head --port {port}`" in out
    assert out.rstrip().splitlines()[-1] == "NOT ready: missing the Ray cluster"


def test_demo_help_shows_how_run_reuses_the_demos_models(model_cache, deepface_home, tiny_sd, capsys, monkeypatch):
    """Issue 24, item 6: `demo --help` gives the `run` command that points at the demo's models (README's too);
    that command parses as `run` with exactly those folders, and `doctor` with them says they are random."""
    import shlex

    from pipeline.cli import make_parser
    from pipeline.commands.demo import cache_dir

    monkeypatch.setenv("BOOMERANG_CACHE", str(model_cache.parent))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert f"The demo keeps its models in {cache_dir()}" in text
    command = text[text.index("boomerang run") :].replace("\\\n", " ")
    argv = shlex.split(command.splitlines()[0])[1:]
    args = make_parser().parse_args(argv)
    assert (args.command, args.model, args.deepface_home) == ("run", str(tiny_sd), str(deepface_home))

    assert main(["doctor", "--model", args.model, "--deepface-home", args.deepface_home]) == 0
    assert capsys.readouterr().out.rstrip().endswith("random weights: numbers not meaningful")
