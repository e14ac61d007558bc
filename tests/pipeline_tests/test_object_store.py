"""Run folders on an object store: `--out s3://...` against a real S3 HTTP API (moto's server, tests/s3.py).

Jobs here run as their own processes: the test session's Ray workers were started before the S3 settings
were in the environment, and object-store settings reach workers the way they do on a cluster, through
each node's environment (pipeline.storage).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pytest
from jobs import Gate, kill_job_when
from samples import write_faces
from scans import leaks

from pipeline import storage
from pipeline.layout import OutputError, RunLayout

HERE = Path(__file__).parent


def listing(url: str) -> list[str]:
    """Object keys under `url`, listed afresh (never from a cache)."""
    fs, root = fsspec.core.url_to_fs(url, use_listings_cache=False)
    return sorted(path[len(root) + 1 :] for path in fs.find(root))


def read_table(url: str) -> pd.DataFrame:
    """A table as a user reads it: pandas, straight from the URL (a fresh client: no cached listing)."""
    return pd.read_parquet(url, storage_options={"use_listings_cache": False})


def boomerang(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True, timeout=600, check=False
    )


def test_object_store_files_are_written_whole_and_read_back(s3_server):
    root = storage.locate(f"{s3_server.bucket('storage')}/run")
    layout = RunLayout.at(str(root))
    layout.prepare(overwrite=False)  # folders are key prefixes: nothing to create
    assert listing(str(root)) == []

    table = pa.table({"anon_id": ["a", "b"], "level": [0.5, 0.5]})
    storage.write_table(table, layout.manifest / "part-00000.parquet")
    first = storage.version(layout.manifest / "part-00000.parquet")
    assert storage.read_table(layout.manifest / "part-00000.parquet").equals(table)
    storage.write_table(table.slice(1), layout.manifest / "part-00000.parquet")
    assert storage.version(layout.manifest / "part-00000.parquet") != first
    assert read_table(str(layout.manifest))["anon_id"].tolist() == ["b"]

    storage.write_bytes(layout.images / "level=0.50" / "a.png", b"png bytes")
    storage.copy_file(layout.images / "level=0.50" / "a.png", layout.release / "images" / "a.png")
    assert (layout.release / "images" / "a.png").read_bytes() == b"png bytes"
    storage.remove_tree(layout.release)
    assert listing(str(root)) == ["images/level=0.50/a.png", "manifest.parquet/part-00000.parquet"]
    assert layout.has_outputs()


def test_urls_with_credentials_or_unknown_schemes_are_refused_in_one_line():
    with pytest.raises(OutputError) as caught:
        RunLayout.at("ftp://user:hunter2@host/run")
    assert "hunter2" not in str(caught.value) and "environment" in str(caught.value)
    with pytest.raises(OutputError) as caught:
        RunLayout.at("nosuchscheme://bucket/run")
    assert "nosuchscheme://" in str(caught.value) and "\n" not in str(caught.value)


def test_a_store_that_cannot_be_used_is_one_line_before_anything_runs(s3_server, tmp_path, capsys, monkeypatch):
    from pipeline.cli import main

    data = tmp_path / "faces"
    write_faces(data, 1, size=(64, 64))
    argv = ["anonymize", str(data), "--model", str(tmp_path / "no-model"), "--levels", "0.5"]
    assert main([*argv, "--out", "s3://no-such-bucket/run"]) == 2
    assert capsys.readouterr().err.strip() == (
        "boomerang: --out s3://no-such-bucket: no such bucket; check the name (an --out bucket must exist first)"
    )
    assert main([argv[0], "s3://no-such-bucket/faces", *argv[2:], "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("boomerang: input s3://no-such-bucket: no such bucket")
    s3fs = pytest.importorskip("s3fs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        assert main([*argv, "--out", f"{s3_server.bucket('runs')}/unreachable"]) == 2
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    err = capsys.readouterr().err.strip()
    assert err.startswith("boomerang: --out cannot reach s3://runs:") and "AWS_ENDPOINT_URL" in err
    assert "\n" not in err


@pytest.mark.slow
@pytest.mark.heavy
def test_a_run_on_s3_resumes_after_a_killed_driver_with_every_row_once(s3_server, tmp_path, tiny_sd, deepface_home):
    data = tmp_path / "source_faces"
    ids = write_faces(data, 8, size=(64, 64))
    out = f"{s3_server.bucket('runs')}/killed"
    argv = ["run", str(data), "--out", out, "--levels", "0.5", "--steps", "4", "--batch-size", "1"]
    argv += ["--eval-batch-size", "1", "--model", str(tiny_sd), "--recognizers", "Facenet", "--detector", "skip"]
    argv += ["--deepface-home", str(deepface_home)]

    def manifest_parts() -> list[str]:
        return [key for key in listing(f"{out}/manifest.parquet") if key.startswith("part-")]

    # The job blocks on the 6th image (input order), so the kill lands with 2 to 5 rows done, on any machine.
    gate_id = sorted(ids)[5]
    with Gate.replacing(data / gate_id) as gate:
        kill_job_when(argv, lambda: gate.held() and len(manifest_parts()) >= 2)
    assert ".boomerang.lock" in listing(out)  # a killed driver cannot remove its lock object
    partial = read_table(f"{out}/manifest.parquet")
    assert 2 <= len(partial) <= sorted(ids).index(gate_id) < len(ids)

    result = boomerang(*argv)

    assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_table(f"{out}/manifest.parquet")
    assert len(manifest) == len(ids) and manifest["anon_id"].is_unique and (manifest["status"] == "ok").all()
    distances = read_table(f"{out}/evaluation/distances.parquet")
    assert len(distances) == len(ids) and distances["anon_id"].is_unique
    assert len(read_table(f"{out}/evaluation/summary.parquet")) == 1
    with fsspec.open(f"{out}/run.json") as handle:
        record = json.load(handle)
    assert record["pairs_done_this_run"] == len(ids) - len(partial) and record["status"] == "finished"
    keys = listing(out)
    assert ".boomerang.lock" not in keys  # released by the driver that finished
    assert sorted(k for k in keys if k.startswith("images/")) == sorted(manifest["output_path"])
    assert "report/index.html" in keys
    # One file per table and shard once the run is done: no batch part, no temporary object.
    assert not [k for k in keys if k.endswith(".tmp") or k.count("-") > 1 and k.endswith(".parquet")]
    # The attacker's scan of everything outside private/, as on a disk: no source name, path or secret.
    copy = tmp_path / "copy"
    fs, root = fsspec.core.url_to_fs(out)
    fs.get(root, str(copy), recursive=True)
    secret = (copy / "private" / "secret").read_text().strip()
    assert not leaks(copy, [*ids, "Jane_Doe", "John_Roe", "_0001", str(data), data.name, secret])


@pytest.mark.slow
@pytest.mark.heavy
def test_a_two_node_cluster_reads_and_writes_the_object_store_with_every_row_once(
    s3_server, tmp_path, tiny_sd, deepface_home
):
    local = tmp_path / "in"
    ids = write_faces(local, 6, size=(64, 64))
    bucket = s3_server.bucket("cluster")
    fs, _ = fsspec.core.url_to_fs(bucket)
    fs.put(str(local), "cluster/in", recursive=True)
    out = f"{bucket}/run"
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.run(
        [sys.executable, str(HERE / "cluster_s3_job.py"), f"{bucket}/in", out, str(tiny_sd), str(deepface_home)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"status"')]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["status"] == 0 and result["nodes"] == 2, proc.stderr[-3000:]
    manifest = read_table(f"{out}/manifest.parquet")
    assert len(manifest) == len(ids) and manifest["anon_id"].is_unique and (manifest["status"] == "ok").all()
    distances = read_table(f"{out}/evaluation/distances.parquet")
    assert len(distances) == len(ids) and (distances["status"] == "ok").all()
    identities = read_table(f"{out}/private/identities.parquet")
    assert sorted(identities["image_id"]) == sorted(ids)
    with fsspec.open(f"{out}/run.json") as handle:
        record = json.load(handle)
    assert record["ray"]["nodes"] == 2 and "out" not in record["settings"]
    # The default plan fills the cluster, one actor per CPU of the two nodes. Ray places them (each reserves
    # half a CPU in its accounting), so this does not prove that both nodes' workers wrote: only that the
    # job ran on the cluster and that every row of its folder on the store is there once.
    actors = record["ray"]["actors"]
    assert actors["anonymize"] + actors["evaluate"] == record["ray"]["cpus"] == 4


@pytest.mark.slow
@pytest.mark.heavy
def test_a_gated_release_on_s3_its_report_forget_and_overwrite(s3_server, tmp_path, tiny_sd, deepface_home):
    """A gate job, `report`, `forget --identity` and `--overwrite` where --out is a bucket."""
    data = tmp_path / "source_faces"
    people = ("Ann_Lee", "Bob_Ray")
    write_faces(data, 4, size=(64, 64), people=people)
    out = f"{s3_server.bucket('runs')}/gated"
    argv = ["run", str(data), "--out", out, "--steps", "4", "--model", str(tiny_sd), "--recognizers", "Facenet"]
    argv += ["--detector", "skip", "--deepface-home", str(deepface_home), "--batch-size", "2", "--eval-batch-size", "2"]
    gate = ["--gate", "--ladder", "0.3,0.6", "--gate-thresholds", "Facenet=0.01", "--shard-size", "2"]
    gate += ["--gate-override", "detector-skip,thresholds", "--identity-from", "folder"]

    result = boomerang(*argv, *gate)

    assert result.returncode == 0, result.stderr[-3000:]
    release = read_table(f"{out}/release/manifest.parquet")
    assert len(release) >= 1
    fs, root = fsspec.core.url_to_fs(out, use_listings_cache=False)
    for row in release.itertuples():  # every released file is its output, byte for byte
        assert hashlib.sha256(fs.cat_file(f"{root}/release/{row.output_path}")).hexdigest() == row.sha256_output
    assert listing(f"{out}/release/images") == sorted(p.split("/")[-1] for p in release["output_path"])
    assert "release/report/index.html" in listing(out)

    rebuilt = boomerang("report", out)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert f"{out}/report/index.html" in rebuilt.stdout

    # forget: no key, byte or cell of the withdrawn person is left, and the release is whole.
    identities = read_table(f"{out}/private/identities.parquet")
    gone = set(identities.loc[identities["identity"] == people[1], "anon_id"])
    assert gone
    result = boomerang("forget", out, "--identity", people[1])
    assert result.returncode == 0, result.stderr[-3000:]
    keys = listing(out)
    for key in keys:
        blob = fs.cat_file(f"{root}/{key}")
        cells = set()
        if key.endswith(".parquet"):
            table = read_table(f"{out}/{key}")
            cells = {str(v) for column in table.columns for v in table[column]}
        assert not [a for a in gone if a in key or a.encode() in blob or a in cells or people[1] in cells], key
    release = read_table(f"{out}/release/manifest.parquet")
    images = sorted(k.split("/")[-1] for k in keys if k.startswith("release/images/"))
    assert images == sorted(p.split("/")[-1] for p in release["output_path"])
    assert not [k for k in keys if k.startswith("release.")]  # no staging or old folder left

    again = boomerang(*argv, "--levels", "0.5", "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    keys = listing(out)
    assert not [k for k in keys if k.startswith("release/")]  # --overwrite removed the earlier run's entries
    assert set(read_table(f"{out}/manifest.parquet")["level"]) == {0.5}


def test_doctor_checks_the_out_store_and_names_its_lock(s3_server, tmp_path, capsys):
    from pipeline.doctor import output_check

    url = f"{s3_server.bucket('runs')}/doctor"
    line, ok = output_check(url)
    assert ok and line == f"output: {url} (object store, reachable; lock: a lock object created only if absent " + (
        "(conditional write))"
    )
    line, ok = output_check("s3://no-such-bucket/run")
    assert not ok and "no such bucket" in line
    line, ok = output_check(str(tmp_path / "run"))
    assert ok and "local folder; lock: an OS lock (flock)" in line
