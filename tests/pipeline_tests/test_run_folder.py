"""A run folder never lies: changed settings are refused, thresholds are restated everywhere, one driver
per folder, the input never includes the output, failed rows are retried when they can succeed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from jobs import Gate, wait_for
from samples import write_faces

pytestmark = pytest.mark.slow
FAST = ["--levels", "0.5", "--steps", "4"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".boomerang.lock"
    }


def test_a_rerun_never_changes_what_the_outputs_were_made_with(cli, tmp_path, tiny_sd):
    from anonymize import build_tiny_latent_pipeline

    data = tmp_path / "in"
    write_faces(data, 3, size=(64, 64))
    out = tmp_path / "out"
    assert cli("run", str(data), "--out", str(out), *FAST)[0] == 0
    before = snapshot(out)
    # The same command again finds everything done: no model work, nothing rewritten but run.json.
    status, stdout, _ = cli("run", str(data), "--out", str(out), *FAST)
    assert status == 0 and json.loads((out / "run.json").read_text())["pairs_done_this_run"] == 0
    assert {
        k: v for k, v in snapshot(out).items() if not k.startswith(("run.json", "report/", "evaluation/summary"))
    } == {k: v for k, v in before.items() if not k.startswith(("run.json", "report/", "evaluation/summary"))}
    before = snapshot(out)

    other_model = build_tiny_latent_pipeline(tmp_path / "other-model", seed=1)
    for flags, named in (
        (["--seed", "1"], "--seed"),
        (["--steps", "6"], "--steps"),
        (["--model", str(other_model)], "--model"),
        (["--prompt", "a portrait"], "--prompt"),
        (["--detector", "opencv"], "--detector"),
    ):
        defaults = {"--steps": "4", "--model": str(tiny_sd)}
        rest = [word for flag, value in defaults.items() if flag not in flags for word in (flag, value)]
        status, stdout, err = cli("run", str(data), "--out", str(out), "--levels", "0.5", *flags, *rest, model=False)
        assert status == 2 and not stdout, flags
        assert len(err.strip().splitlines()) == 1 and named in err and "--overwrite" in err, err
        assert snapshot(out) == before, f"{flags} changed the folder"

    # A new threshold is allowed: distances are kept, and `cleared` is restated in every table.
    status, _, _ = cli("run", str(data), "--out", str(out), *FAST, "--threshold", "0.7")
    assert status == 0
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    ok = distances[distances["status"] == "ok"]
    assert len(ok) == 3 and (ok["threshold"] == 0.7).all() and (ok["cleared"] == (ok["distance"] > 0.7)).all()
    summary = pd.read_parquet(out / "evaluation" / "summary.parquet").iloc[0]
    assert summary["threshold"] == 0.7 and summary["n_cleared"] == int((ok["distance"] > 0.7).sum())
    # ... and a new level adds rows; each image stays once in private/identities.parquet.
    assert cli("run", str(data), "--out", str(out), "--levels", "0.5,0.8", *FAST[2:], "--threshold", "0.7")[0] == 0
    assert len(pd.read_parquet(out / "manifest.parquet")) == 6
    identities = pd.read_parquet(out / "private" / "identities.parquet")
    assert len(identities) == 3 and identities["anon_id"].is_unique
    record = json.loads((out / "run.json").read_text())
    assert record["determines_outputs"]["seed"] == 0 and record["recognizers"]["Facenet"]["weights_sha256"]
    assert "NOT meaningful" in record["notice"]  # random-weight models, whichever command made it
    # --overwrite is the way to start afresh with other settings.
    assert cli("run", str(data), "--out", str(out), *FAST, "--seed", "1", "--overwrite")[0] == 0
    assert len(pd.read_parquet(out / "manifest.parquet")) == 3
    assert json.loads((out / "run.json").read_text())["determines_outputs"]["seed"] == 1


def test_the_output_folder_is_guarded(cli, tmp_path):
    data = tmp_path / "data"
    write_faces(data, 2, size=(64, 64))
    # --out inside the input: the second run must not take the first run's images for inputs.
    out = data / "run1"
    assert cli("anonymize", str(data), "--out", str(out), *FAST)[0] == 0
    assert cli("anonymize", str(data), "--out", str(out), "--levels", "0.5,0.8", *FAST[2:])[0] == 0
    identities = pd.read_parquet(out / "private" / "identities.parquet")
    assert sorted(identities["image_id"]) == sorted(p.relative_to(data).as_posix() for p in data.glob("*/*.jpg"))
    assert len(pd.read_parquet(out / "manifest.parquet")) == 4

    # --overwrite never empties a folder that holds no run; --out that is a file is one line.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    status, _, err = cli("anonymize", str(data), "--out", str(precious), "--overwrite", *FAST)
    assert status == 2 and "holds no boomerang run" in err and (precious / "thesis.txt").exists()
    status, _, err = cli("anonymize", str(data), "--out", str(precious / "thesis.txt"), *FAST)
    assert status == 2 and "is a file" in err and len(err.strip().splitlines()) == 1


HOLD_LOCK = """
import sys
from pathlib import Path
from pipeline.folder.lock import RunLock
lock = RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_one_driver_per_folder(cli, tmp_path):
    data = tmp_path / "in"
    write_faces(data, 2, size=(64, 64))
    out = tmp_path / "out"
    out.mkdir()
    # Another driver holds the folder (a real process holding the real lock).
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out / ".boomerang.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        status, _, err = cli("run", str(data), "--out", str(out), *FAST)
        assert status == 2 and len(err.strip().splitlines()) == 1
        assert "in use by another boomerang job" in err and f"pid {holder.pid}" in err
        assert not (out / "manifest.parquet").exists()
    finally:
        holder.kill()  # the OS releases a dead process's lock: no stale lock to clean up
        holder.wait()
    status, _, _ = cli("run", str(data), "--out", str(out), *FAST)
    assert status == 0
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 2 and manifest["anon_id"].is_unique


def test_failed_rows_are_retried_when_they_can_succeed(cli, tmp_path):
    data = tmp_path / "in"
    good = write_faces(data, 1, size=(64, 64))[0]
    image = (data / good).read_bytes()
    (data / "p").mkdir()
    (data / "p" / "corrupt.jpg").write_bytes(image[:100])  # an input error until the file is replaced
    (data / "p" / "still_bad.jpg").write_bytes(b"not an image")  # an input error that stays
    (data / "elsewhere").mkdir()
    os.symlink(data / "elsewhere", data / "p" / "io.jpg")  # reading it fails with an OS error: transient
    out = tmp_path / "out"

    assert cli("anonymize", str(data), "--out", str(out), *FAST)[0] == 0
    first = pd.read_parquet(out / "manifest.parquet")
    assert sorted(first.loc[first["status"] != "ok", "error_kind"]) == ["input", "input", "transient"]

    (data / "p" / "corrupt.jpg").write_bytes(image)
    (data / "p" / "io.jpg").unlink()
    (data / "p" / "io.jpg").write_bytes(image)
    status, stdout, _ = cli("anonymize", str(data), "--out", str(out), *FAST)

    assert status == 0 and "(2 processed in this run)" in stdout
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 4 and manifest["anon_id"].is_unique
    assert (manifest["status"] == "error").sum() == 1 and manifest.loc[manifest["status"] == "error", "error"].item()
    # An unchanged bad file is not redone, unless asked.
    status, stdout, _ = cli("anonymize", str(data), "--out", str(out), *FAST)
    assert "(0 processed in this run)" in stdout
    status, stdout, _ = cli("anonymize", str(data), "--out", str(out), *FAST, "--retry-errors", "--strict")
    assert status == 3 and "(1 processed in this run)" in stdout  # --strict: a failed row exits 3
    assert len(pd.read_parquet(out / "manifest.parquet")) == 4


@pytest.mark.heavy
def test_sigterm_is_recorded_as_interrupted_and_the_rerun_completes(cli, tmp_path, tiny_sd):
    data = tmp_path / "in"
    ids = write_faces(data, 3, size=(64, 64))
    out = tmp_path / "out"
    argv = ["anonymize", str(data), "--out", str(out), *FAST, "--batch-size", "1"]
    with Gate.replacing(data / sorted(ids)[1]) as gate:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *argv, "--model", str(tiny_sd)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(gate.held, "the job to reach the gated image")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130 and "terminated" in err and "resume" in err
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["finished"]

    status, _, _ = cli(*argv)
    assert status == 0
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 3 and (manifest["status"] == "ok").all()
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
