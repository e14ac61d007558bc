"""Reliability: bad inputs and injected faults end complete and correct, or with one clear error line,
and a rerun finishes with every (image, level) row exactly once. Figures in docs/reliability.md.

The killed driver is tested in test_faults.py (subprocess + os.killpg); it is not repeated here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pandas as pd
import pytest
from bad_inputs import duplicate_id_parquet, write_corpus
from jobs import Gate, alive, command_name, descendants, manifest_parts, wait_for
from PIL import Image
from samples import write_faces

pytestmark = pytest.mark.slow
FAST = ["--levels", "0.5", "--steps", "4"]


def check_exactly_once(out: Path, expected: dict, levels=(0.5,), evaluated: bool = True) -> pd.DataFrame:
    """Every expected image has one manifest row per level, with the expected outcome; nothing extra."""
    manifest = pd.read_parquet(out / "manifest.parquet")
    identities = pd.read_parquet(out / "private" / "identities.parquet").drop_duplicates("anon_id")
    manifest = manifest.merge(identities[["anon_id", "image_id"]], on="anon_id", how="left")
    assert not manifest.duplicated(["anon_id", "level"]).any(), "a pair has more than one manifest row"
    assert sorted(manifest["image_id"]) == sorted(i for i in expected for _ in levels), "rows lost or invented"
    for row in manifest.itertuples():
        outcome = expected[row.image_id]
        if outcome == "error":
            assert row.status == "error" and row.error, row.image_id
            continue
        assert row.status == "ok", (row.image_id, row.error)
        data = (out / row.output_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256_output
        assert Image.open(io.BytesIO(data)).size == outcome, row.image_id
    if evaluated:
        distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
        assert len(distances) == len(manifest) and not distances.duplicated(["anon_id", "level"]).any()
    leftovers = [p for p in out.rglob("*.tmp*")]
    assert not leftovers, f"temporary files left behind: {leftovers[:3]}"
    return manifest


def test_bad_input_corpus_gives_one_row_each(cli, tmp_path):
    expected = write_corpus(tmp_path / "in")
    status, stdout, stderr = cli("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *FAST)
    assert status == 0, stderr
    manifest = check_exactly_once(tmp_path / "out", expected)
    failed = (manifest["status"] == "error").sum()
    assert failed == sum(v == "error" for v in expected.values())
    # The terminal's "Failed:" line counts every failure, each reason or the rest together.
    line = next(line for line in stdout.splitlines() if line.startswith("Failed: "))
    counted = [int(n) for n in re.findall(r" (\d+)(?:,|\. Details)", line)]
    assert sum(counted) == failed, line


def test_duplicate_ids_in_parquet_are_error_rows(cli, tmp_path):
    # `anonymize`, not `run`: the twins are refused before any stage, on the path that the bad corpus
    # above (a name that is not UTF-8) already follows through evaluation; no evaluate actor is needed.
    expected = duplicate_id_parquet(tmp_path / "in.parquet")
    status, _, stderr = cli("anonymize", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "out"), *FAST)
    assert status == 0, stderr
    check_exactly_once(tmp_path / "out", expected, evaluated=False)


# ---- fault injection -------------------------------------------------------------------------------


def actor_pids(stage: str) -> list[int]:
    """Pids of this session's Ray Data actors of ``stage``; Ray titles them ray::MapWorker(MapBatches(Stage))."""
    return [
        pid
        for pid in descendants(os.getpid())
        if (title := command_name(pid)).startswith("ray::") and f"({stage})" in title
    ]


def manifest_rows(out: Path) -> int:
    return sum(len(pd.read_parquet(part)) for part in manifest_parts(out))


class Killer(threading.Thread):
    """Kill every actor of a stage at chosen states of the job, not at moments.

    For each (stage, gate) in turn: wait until the anonymize actor is blocked on the gate (an input image
    in the input order) and a batch has been finished since the last kill (a manifest part: the job, and
    after a kill the restarted actors, are working). Nothing at or after the gate can be done then, so
    the stage has work left whatever the machine's speed. Then SIGKILL the stage's actors, wait until they
    are gone, note the rows done, and release the gate: the job can only finish through restarted actors.
    """

    def __init__(self, out: Path, steps: list[tuple[str, Gate]], timeout: float = 300) -> None:
        super().__init__(daemon=True)
        self.out, self.steps, self.timeout = out, steps, timeout
        self.killed: dict[str, list[int]] = {}
        self.rows_at_kill: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            rows = 0
            for stage, gate in self.steps:
                wait_for(gate.held, f"the anonymize actor to reach {gate.path.name}", self.timeout, every=0.1)
                wait_for(lambda rows=rows: manifest_rows(self.out) > rows, "a finished batch", self.timeout)
                pids = actor_pids(stage)
                assert pids, f"no {stage} actor was found to kill"
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                wait_for(lambda pids=pids: not any(alive(pid) for pid in pids), "the killed actors to exit", 60)
                rows = manifest_rows(self.out)
                self.killed[stage], self.rows_at_kill = pids, [*self.rows_at_kill, rows]
                gate.release()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err
        finally:
            for _, gate in self.steps:
                gate.release()  # never leave the job blocked


@pytest.mark.heavy
def test_killed_actors_are_restarted_and_nothing_is_lost(cli, tmp_path):
    # One run, two kills: the evaluate actors while the job waits on the 5th image, then the anonymize
    # actor while it waits on the 9th (12 images, batches of 2). Each kill leaves work that only a
    # restarted actor of that stage can do, and the restarted evaluate actor works before the second kill.
    ids = write_faces(tmp_path / "in", 12, size=(64, 64))
    order = sorted(ids)
    out = tmp_path / "out"
    argv = ["run", str(tmp_path / "in"), "--out", str(out), *FAST, "--batch-size", "2", "--model-batch", "2"]
    argv += ["--eval-batch-size", "2"]
    with Gate.replacing(tmp_path / "in" / order[4]) as first, Gate.replacing(tmp_path / "in" / order[8]) as second:
        killer = Killer(out, [("EvaluateStage", first), ("AnonymizeStage", second)])
        killer.start()
        try:
            status, _, stderr = cli(*argv)
        finally:
            first.release()
            second.release()
            killer.join()
    if killer.error is not None:
        raise killer.error
    assert set(killer.killed) == {"EvaluateStage", "AnonymizeStage"}
    assert status == 0, stderr
    expected = {i: (64, 64) for i in ids}
    check_exactly_once(out, expected)
    # Each kill landed mid-job: rows were done before it, and the gate's batch and those after were not.
    assert 1 <= killer.rows_at_kill[0] <= 4 and killer.rows_at_kill[0] < killer.rows_at_kill[1] <= 8 < len(ids)
    # A rerun has nothing left to do and changes nothing.
    status, _, stderr = cli(*argv)
    assert status == 0, stderr
    assert json.loads((out / "run.json").read_text())["pairs_done_this_run"] == 0
    check_exactly_once(out, expected)


@pytest.fixture
def small_disk(tmp_path):
    """A 320 KiB tmpfs (root only); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.heavy
def test_full_disk_fails_clearly_and_a_rerun_completes(cli, tmp_path, small_disk):
    # 24 noise-like 96x96 PNGs (about 25 kB each) and their Parquet parts do not fit in 320 KiB.
    ids = write_faces(tmp_path / "in", 24, size=(96, 96))
    out = small_disk / "out"
    argv = ["run", str(tmp_path / "in"), "--out", str(out), *FAST, "--batch-size", "2", "--eval-batch-size", "2"]
    try:
        status, _, stderr = cli(*argv)
        first = f"exit {status}, stderr {stderr.strip()[-500:]!r}"
        # Progress lines come first on stderr; the job's end is one line that names the cause.
        last = stderr.strip().splitlines()[-1]
        clear = status != 0 and last.startswith("boomerang: job failed") and "No space left" in last
        clear = clear and "Traceback" not in stderr
    except Exception as err:  # noqa: BLE001 - recorded, judged after the rerun
        first, clear, status = f"raised {type(err).__name__}: {str(err)[-300:]}", False, None
    assert status != 0, "the disk did not fill; make the tmpfs smaller"
    # Free space (grow the tmpfs), run the same command: it must finish with every row exactly once.
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    status, _, stderr = cli(*argv)
    assert status == 0, stderr[-2000:]
    check_exactly_once(out, {i: (96, 96) for i in ids})
    assert clear, f"a full disk should end the job with one line that says so; got {first}"
