"""End to end through the CLI on local Ray: every input once per level, distances, summary, report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from samples import write_bad_files, write_faces

pytestmark = pytest.mark.slow


def _identities(out):
    return pd.read_parquet(out / "private" / "identities.parquet").drop_duplicates("anon_id")


def test_run_good_and_bad_images_at_two_levels(cli, tmp_path):
    data = tmp_path / "in"
    good = write_faces(data, 4, size=(96, 80))
    bad = write_bad_files(data / "bad")
    out = tmp_path / "out"

    status, stdout, _ = cli(
        "run", str(data), "--out", str(out), "--levels", "0.3,0.6", "--batch-size", "2", "--report-originals"
    )

    assert status == 0
    manifest = pd.read_parquet(out / "manifest.parquet")
    ids = manifest.merge(_identities(out)[["anon_id", "image_id"]], on="anon_id")
    assert len(ids) == len(manifest) == 2 * (len(good) + len(bad))
    assert ids.groupby(["image_id", "level"]).size().eq(1).all()
    assert set(ids["image_id"]) == set(good) | set(bad)
    by_status = ids.set_index(["image_id", "level"])["status"]
    assert all(by_status[(i, lvl)] == "ok" for i in good for lvl in (0.3, 0.6))
    assert all(by_status[(i, lvl)] == "error" for i in bad for lvl in (0.3, 0.6))
    errors = ids[ids["status"] == "error"]
    assert errors["error"].str.len().gt(0).all()

    # Outputs: the input's size, the recorded hash, pseudonymous names, t_boom below level * T.
    for row in manifest[manifest["status"] == "ok"].itertuples():
        path = out / row.output_path
        assert row.anon_id in path.name and "Jane" not in str(path)
        assert Image.open(path).size == (96, 80)
        assert row.t_boom <= row.level * 1000 and row.n_steps >= 1

    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    assert len(distances) == len(manifest)  # one recognizer
    ok = distances[distances["status"] == "ok"]
    assert len(ok) == 2 * len(good) and ok["distance"].between(0, 2).all()
    assert (ok["cleared"] == (ok["distance"] > ok["threshold"])).all()

    # The summary equals an independent recomputation from the distances.
    summary = pd.read_parquet(out / "evaluation" / "summary.parquet").set_index(["level", "recognizer"])
    for (level, recognizer), group in distances.groupby(["level", "recognizer"]):
        row = summary.loc[(level, recognizer)]
        values = group.loc[group["status"] == "ok", "distance"].to_numpy()
        assert row["n_images"] == len(group)
        assert row["n_evaluated"] == len(values)
        assert row["n_cleared"] == int((values > 0.4).sum())
        assert row["distance_mean"] == pytest.approx(values.mean())
        assert row["distance_median"] == pytest.approx(np.median(values))
        assert row["distance_std"] == pytest.approx(values.std(ddof=1))

    report = (out / "report" / "index.html").read_text()
    assert "Facenet" in report and "<table" in report
    assert "ORIGINAL" in report  # asked for with --report-originals
    assert "NOT meaningful" in report  # made with the project's random-weight models
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["counts"]["rows"] == len(manifest)
    assert "not meaningful" in stdout
    assert record["versions"]["diffusers"] and record["model"]["weights_sha256"]
    assert "cleared" in stdout and "Report:" in stdout
    # The verdict at the gate's thresholds comes first; the 0.4 counts follow, labelled as the paper's.
    assert stdout.startswith("Verdict at level ") and "the paper's protocol (threshold 0.4)" in stdout


def _stage_actors(stage: str) -> set[str]:
    """Ids of the actors Ray has started for a stage class (alive or finished), from Ray's own actor table."""
    from ray._private.state import actors  # the GCS table, which needs no dashboard

    return {a for a, info in actors().items() if stage in info["ActorClassName"]}


@pytest.mark.heavy
def test_same_bytes_whatever_the_batch_size_and_worker_count(cli, tmp_path):
    """--workers 1 against the default plan, which fills the machine (one actor per CPU here)."""
    from pipeline.execution.actors import plan_actors

    data = tmp_path / "in"
    write_faces(data, 5, size=(64, 64))
    hashes = []
    secret = ["--secret-file", str(tmp_path / "b1w1" / "private" / "secret")]  # the same run, elsewhere
    for name, flags in (("b1w1", ["--batch-size", "1", "--workers", "1"]), ("b4", ["--batch-size", "4", *secret])):
        out = tmp_path / name
        before = _stage_actors("AnonymizeStage")
        status, _, _ = cli("anonymize", str(data), "--out", str(out), "--levels", "0.5", *flags)
        assert status == 0
        started = len(_stage_actors("AnonymizeStage") - before)
        ray_record = json.loads((out / "run.json").read_text())["ray"]
        if name == "b4":  # default flags: the plan doctor prints for this cluster, and Ray started as many
            plan = plan_actors(ray_record["cpus"], ray_record["gpus"], evaluated=False)
            assert ray_record["actors"] == {
                "anonymize": plan.anonymize,
                "evaluate": 0,
                "gpus_per_anonymize": 0.0,
                "gpus_per_evaluate": 0.0,
            }
            assert started == plan.anonymize == int(ray_record["cpus"]) >= 2
        else:
            assert started == ray_record["actors"]["anonymize"] == 1
        manifest = pd.read_parquet(out / "manifest.parquet").merge(_identities(out), on="anon_id")
        hashes.append(dict(zip(manifest["image_id"], manifest["sha256_output"], strict=True)))
    assert hashes[0] == hashes[1]
    assert len(set(hashes[0].values())) == 5


def test_evaluate_another_tools_output(cli, tmp_path):
    from PIL import ImageFilter

    originals = tmp_path / "orig"
    ids = write_faces(originals, 3, size=(64, 64))
    theirs = tmp_path / "theirs"
    for rel in ids[:2]:  # the tool skipped the third image
        target = theirs / rel.replace(".jpg", ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(originals / rel).filter(ImageFilter.GaussianBlur(3)).save(target)
    out = tmp_path / "out"

    status, stdout, stderr = cli(
        "evaluate", "--originals", str(originals), "--anonymized", str(theirs), "--out", str(out), "--label", "blur-3"
    )

    assert status == 0, stderr
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    assert len(distances) == 3 and distances["level"].isna().all()  # another tool's output has no level
    assert sorted(distances["status"]) == ["missing_output", "ok", "ok"]
    assert (distances.loc[distances["status"] == "ok", "distance"] > 0).all()
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 3 and manifest["error"].str.startswith("missing_output").sum() == 1
    summary = pd.read_parquet(out / "evaluation" / "summary.parquet").iloc[0]
    assert summary["label"] == "blur-3" and summary["n_missing_output"] == 1
    # The skipped image counts as not cleared: the fraction is over all three originals.
    assert summary["fraction_cleared"] == pytest.approx(summary["n_cleared"] / 3)
    report = (out / "report" / "index.html").read_text()
    assert "blur-3" in report and "level 0.7" not in report

    # The same originals as rows of a Parquet dataset give the same distances.
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ids, "image": [(originals / i).read_bytes() for i in ids]}), tmp_path / "o.parquet")
    out2 = tmp_path / "out2"
    status, _, _ = cli(
        "evaluate", "--originals", str(tmp_path / "o.parquet"), "--anonymized", str(theirs), "--out", str(out2)
    )
    assert status == 0
    again = pd.read_parquet(out2 / "evaluation" / "distances.parquet")
    assert sorted(again["distance"].dropna()) == pytest.approx(sorted(distances["distance"].dropna()), abs=1e-9)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "{missing}", "--out", "{out}"], "does not exist"),
        (["run", "{data}", "--out", "{out}", "--levels", "1.5"], "--levels"),
        (["run", "{data}", "--out", "{out}", "--levels", "0"], "--levels"),
        (["run", "{data}", "--out", "{out}", "--steps", "0"], "--steps"),
        (["run", "{data}", "--out", "{out}", "--model", "{missing}"], "model"),
        (["run", "{data}", "--out", "{out}", "--recognizers", "Facenet512"], "facenet512_weights"),
        (["run", "{data}", "--out", "{out}", "--gpus-per-worker", "1"], "--gpus-per-worker"),
        (["run", "{data}", "--out", "{out}", "--eval-gpus-per-worker", "0.8"], "--eval-gpus-per-worker"),
        (["run", "{data}", "--out", "{out}", "--samples", "0"], "--samples"),
        (["run", "{data}", "--out", "{out}", "--region", "faces", "--region-margin", "-1"], "--region-margin"),
        (["run", "{data}", "--out", "{out}", "--region", "faces", "--region-detector", "eyes"], "--region-detector"),
        (["enhance", "{data}", "--out", "{out}", "--scale", "0"], "scale"),
        (["enhance", "{data}", "--out", "{out}", "--region", "faces"], "--region"),
        (["augment", "{data}", "--out", "{out}", "--gate"], "--gate"),
    ],
)
def test_a_job_that_cannot_run_exits_2_with_one_line(cli, tmp_path, argv, expected):
    data = tmp_path / "in"
    write_faces(data, 1)
    fill = {"missing": str(tmp_path / "nowhere"), "out": str(tmp_path / "out"), "data": str(data)}
    argv = [a.format(**fill) for a in argv]

    status, _, stderr = cli(*argv, model="--model" not in argv)

    assert status == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert expected in stderr and "Traceback" not in stderr
