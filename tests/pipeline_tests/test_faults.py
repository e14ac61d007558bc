"""Faults: a killed driver resumes with every row exactly once; a lost node loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from jobs import Gate, alive, command_name, descendants, kill_job_when, manifest_parts, wait_for
from samples import write_faces

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


@pytest.mark.heavy
def test_killed_driver_resumes_with_every_row_once(cli, tmp_path, tiny_sd, deepface_home):
    data = tmp_path / "in"
    ids = write_faces(data, 8, size=(64, 64))
    out = tmp_path / "out"
    argv = ["run", str(data), "--out", str(out), "--levels", "0.5", "--steps", "4", "--batch-size", "1"]
    argv += ["--eval-batch-size", "1"]
    options = [
        "--model",
        str(tiny_sd),
        "--recognizers",
        "Facenet",
        "--detector",
        "skip",
        "--deepface-home",
        str(deepface_home),
    ]
    # The job blocks on the 6th image (input order), so the kill lands with 2 to 5 rows done, on any machine.
    gate_id = sorted(ids)[5]
    with Gate.replacing(data / gate_id) as gate:
        kill_job_when([*argv, *options], lambda: gate.held() and len(manifest_parts(out)) >= 2)
    partial = pd.read_parquet(out / "manifest.parquet")
    assert 2 <= len(partial) <= sorted(ids).index(gate_id) < len(ids)

    status, _, stderr = cli(*argv)

    assert status == 0, stderr
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == len(ids) and manifest["anon_id"].is_unique
    assert (manifest["status"] == "ok").all()
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    assert len(distances) == len(ids) and distances["anon_id"].is_unique
    assert json.loads((out / "run.json").read_text())["pairs_done_this_run"] == len(ids) - len(partial)


class NodeLossGate(threading.Thread):
    """Hold the job on ``gate`` until Ray has lost a node (a raylet under ``pid`` has exited), then release it.

    cluster_job.py removes the worker node once the first manifest part lands. Holding the gate until
    then means the node is lost while the gate's image and those after it are still to do, whatever the
    machine's speed; without it, a fast run could finish before the loss.
    """

    def __init__(self, pid: int, gate: Gate, timeout: float = 500) -> None:
        super().__init__(daemon=True)
        self.pid, self.gate, self.timeout = pid, gate, timeout
        self.raylets: set[int] = set()
        self.error: BaseException | None = None
        self.ended = threading.Event()  # set when the job's process has ended: nothing left to wait for

    def node_lost(self) -> bool:
        self.raylets |= {p for p in descendants(self.pid) if command_name(p).endswith("/raylet")}
        return len(self.raylets) >= 2 and not all(alive(p) for p in self.raylets)

    def run(self) -> None:
        try:
            lost_on_gate = lambda: self.ended.is_set() or (self.node_lost() and self.gate.held())  # noqa: E731
            wait_for(lost_on_gate, "the node loss, with the job on the gate", self.timeout, every=0.1)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err
        finally:
            self.gate.release()


def public_rows(out: Path) -> dict[str, pd.DataFrame]:
    """The run's public tables, rows in key order; the manifest's timing column (`seconds`) left out."""
    manifest = pd.read_parquet(out / "manifest.parquet").drop(columns="seconds")
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    summary = pd.read_parquet(out / "evaluation" / "summary.parquet")
    return {
        "manifest": manifest.sort_values(["anon_id", "level"], ignore_index=True),
        "distances": distances.sort_values(["anon_id", "level", "recognizer", "face"], ignore_index=True),
        "summary": summary,
    }


def image_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "images").rglob("*")) if p.is_file()}


@pytest.mark.heavy
def test_losing_the_worker_node_loses_nothing(cli, tmp_path, tiny_sd, deepface_home):
    """A 2-node cluster (cluster_job.py) whose worker node's Ray processes are SIGKILLed mid-shard, with the
    anonymize actor blocked on the gate image: the job finishes on a replacement node (or stops resumable, exit
    1); a rerun then has every pair once, and the images and public tables are those of an undisturbed run."""
    data = tmp_path / "in"
    ids = write_faces(data, 4, size=(64, 64))
    out = tmp_path / "out"
    secret = tmp_path / "secret"
    secret.write_text(bytes(range(32)).hex() + "\n")  # a fixed secret: the undisturbed run's names and seeds
    # tests/ for cluster_job.py's `jobs` helpers; the caller's PYTHONPATH (a checkout's code) after it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    gate_id = sorted(ids)[2]
    with Gate.replacing(data / gate_id) as gate:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "cluster_job.py"), str(data), str(out), str(tiny_sd), str(deepface_home)]
            + ["--secret-file", str(secret)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        watcher = NodeLossGate(proc.pid, gate)
        watcher.start()
        try:
            stdout, stderr = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            watcher.ended.set()
            gate.release()
            watcher.join()
    lines = [line for line in stdout.splitlines() if line.startswith('{"status"')]
    assert lines, stdout[-2000:] + stderr[-3000:]
    result = json.loads(lines[-1])
    if watcher.error is not None:
        raise watcher.error
    assert result["status"] in (0, 1) and not result["alive"], stderr[-3000:]
    assert result["killed"] >= 2  # the raylet and at least the anonymize actor under it
    assert 1 <= result["parts_before_loss"] <= sorted(ids).index(gate_id) < len(ids)
    if result["status"] == 0:
        record = json.loads((out / "run.json").read_text())
        assert record["ray"]["gpus"] == 1 and record["ray"]["nodes"] == 2
    else:  # stopped resumable: one line of ours (Ray may log around it), saying to run it again
        ours = [line for line in stderr.splitlines() if line.startswith("boomerang: ")]
        assert len(ours) == 1 and "run the same command again" in ours[0], stderr[-3000:]

    argv = ["run", str(data), "--levels", "0.5", "--steps", "4", "--batch-size", "1", "--eval-batch-size", "1"]
    argv += ["--secret-file", str(secret)]
    status, _, stderr = cli(*argv, "--out", str(out))  # the rerun (nothing left to do after a status 0)
    assert status == 0, stderr
    if result["status"] == 0:
        assert json.loads((out / "run.json").read_text())["pairs_done_this_run"] == 0
    status, _, stderr = cli(*argv, "--out", str(tmp_path / "undisturbed"))
    assert status == 0, stderr

    rows = public_rows(out)
    pairs = {(aid, 0.5) for aid in rows["manifest"]["anon_id"]}
    assert len(pairs) == len(ids) and (rows["manifest"]["status"] == "ok").all()
    for table, keys in (("manifest", ["anon_id", "level"]), ("distances", ["anon_id", "level", "recognizer"])):
        assert set(zip(rows[table]["anon_id"], rows[table]["level"], strict=True)) == pairs, table  # every pair
        assert not rows[table].duplicated(keys).any(), table  # once (one recognizer: one distance row a pair)
    undisturbed = public_rows(tmp_path / "undisturbed")
    for table, frame in rows.items():
        pd.testing.assert_frame_equal(frame, undisturbed[table], check_exact=True, obj=table)
    assert image_bytes(out) == image_bytes(tmp_path / "undisturbed") and len(image_bytes(out)) == len(ids)
