"""The object-store lock under a flaky store: S3 (moto over HTTP) behind tests/faultproxy.py, which injects 503s,
slow answers, reset connections and lost writes on a bounded schedule.

The driver under test reaches the store through the proxy with botocore's own retries off, so that each fault
reaches the lock (in production botocore's retries come first and the lock's own come after them); the other
driver, and the test's own reads, go to the store directly. Waits are on state (a heartbeat that advanced, a
fault spent, a lock that says it is lost), with a generous deadline only as a safety net.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pandas as pd
import pytest
from s3 import read_lock

from pipeline.folder.layout import RunLayout
from pipeline.folder.lock_common import FolderLocked, LockLost, ensure_held
from pipeline.folder.object_lock import ObjectLock
from pipeline.tables.batch_parts import finish_batch
from pipeline.tables.resume import ShardCompactor

upath = pytest.importorskip("upath")
faultproxy = pytest.importorskip("faultproxy")

LOCK_KEY = r"/\.boomerang\.lock$"
DEADLINE = 60.0  # seconds; only ever reached when the behaviour under test is broken


@pytest.fixture
def proxy(s3_server):
    with faultproxy.FaultProxy(s3_server.endpoint) as proxy:
        yield proxy


@pytest.fixture
def run_url(s3_server):
    return f"{s3_server.bucket('locks')}/{uuid.uuid4().hex}/run"


def via_proxy(proxy, url: str):
    """The lock's path as a driver behind the flaky store sees it; no botocore retries, a short timeout."""
    config = {"retries": {"total_max_attempts": 1}, "read_timeout": 5, "connect_timeout": 5}
    return upath.UPath(f"{url}/.boomerang.lock", endpoint_url=proxy.endpoint, config_kwargs=config)


def direct(url: str):
    return upath.UPath(f"{url}/.boomerang.lock")


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def test_a_503_burst_on_heartbeats_does_not_let_a_second_driver_in(proxy, run_url):
    lease = 4.0
    with ObjectLock(via_proxy(proxy, run_url), lease=lease, beat=0.2) as lock:
        started = read_lock(direct(run_url))["heartbeat"]
        burst = proxy.inject("503", method="PUT", path=LOCK_KEY, count=5)
        wait_for(lambda: burst.done, "the 503 burst to be spent")
        # Past a whole lease after the burst began, a second driver keeps being refused: the heartbeat recovered.
        while (heartbeat := read_lock(direct(run_url))["heartbeat"]) <= started + lease:
            with pytest.raises(FolderLocked):
                ObjectLock(direct(run_url), lease=lease).acquire()
            assert time.time() - heartbeat < DEADLINE, "the heartbeat stopped after the 503 burst"
            time.sleep(0.05)
        assert burst.used == 5
        assert lock.held and lock.beats > 0
        lock.ensure_held()
        ensure_held(lock.path)
    assert read_lock(direct(run_url)) is None


def test_a_driver_that_cannot_beat_for_a_lease_gives_the_lock_up_before_another_takes_it(proxy, run_url):
    lease = 1.5
    lock = ObjectLock(via_proxy(proxy, run_url), lease=lease, beat=0.1).acquire()
    blocked = proxy.inject("503", method="PUT", path=LOCK_KEY, count=10**6, seconds=DEADLINE)
    wait_for(lambda: not lock.held, "the blocked driver to notice it cannot confirm its lock")
    with pytest.raises(LockLost, match="lost the folder's lock .*no heartbeat could be written") as lost:
        lock.ensure_held()
    assert "\n" not in str(lost.value) and "run the same command again to resume" in str(lost.value)
    # Only now may another driver take the folder over; the first never writes its lock again.
    taker = ObjectLock(direct(run_url), lease=lease, beat=0.1)
    wait_for(lambda: _acquired(taker), "the second driver to take the stale lock over")
    proxy.clear()
    assert blocked.used > 0
    tries = len(proxy.requests)
    wait_for(lambda: taker.beats >= 3, "the new holder's heartbeats")
    assert read_lock(direct(run_url))["token"] == taker._token
    assert not [r for r in proxy.requests[tries:] if r.startswith("PUT")]
    lock.close()  # leaves the new holder's lock alone
    assert read_lock(direct(run_url))["token"] == taker._token
    taker.ensure_held()
    taker.close()


def test_a_driver_whose_lock_was_taken_over_notices_and_stops(proxy, run_url):
    """A taker that judges the lock stale sooner than its holder does (another lease, a clock ahead): the holder
    learns it from the object itself, and its conditional heartbeat never replaces the taker's lock."""
    lock = ObjectLock(via_proxy(proxy, run_url), lease=60, beat=0.1).acquire()
    blocked = proxy.inject("503", method="PUT", path=LOCK_KEY, count=10**6, seconds=DEADLINE)
    taker = ObjectLock(direct(run_url), lease=0.5, beat=0.1)
    wait_for(lambda: _acquired(taker), "the second driver to take the lock over")
    proxy.clear()  # its own lease has not run out: only the object can tell it (it may have read it already)
    assert blocked.used > 0
    wait_for(lambda: lock.lost is not None, "the first driver to notice the lock is someone else's")
    with pytest.raises(LockLost, match="now held by pid"):
        lock.ensure_held()
    assert read_lock(direct(run_url))["token"] == taker._token
    lock.close()
    assert read_lock(direct(run_url))["token"] == taker._token
    taker.close()


def test_lost_writes_resets_and_slow_answers_do_not_cost_the_lock(proxy, run_url):
    with ObjectLock(via_proxy(proxy, run_url), lease=5.0, beat=0.1) as lock:
        faults = [
            proxy.inject("drop", method="PUT", path=LOCK_KEY, count=2),  # the store "took" it and lost it
            proxy.inject("reset", method="PUT", path=LOCK_KEY, count=2),
            proxy.inject("slow", method="PUT", path=LOCK_KEY, count=2, delay=0.3),
            proxy.inject("503", path=LOCK_KEY, count=2),  # reads too
        ]
        wait_for(lambda: all(f.done for f in faults), "the faults to be spent")
        beats = lock.beats
        wait_for(lambda: lock.beats >= beats + 3, "heartbeats after the faults")
        assert [f.used for f in faults] == [2, 2, 2, 2]
        assert lock.held
        assert read_lock(direct(run_url))["token"] == lock._token


def test_a_driver_that_lost_the_lock_commits_nothing(proxy, run_url):
    """The commit points: a manifest part (batch_parts.finish_batch) and a compaction (resume.ShardCompactor)."""
    layout = RunLayout.at(run_url)
    lock = ObjectLock(via_proxy(proxy, run_url), lease=3.0, beat=0.1).acquire()
    assert str(lock.path) == str(layout.lock_file)
    row = {"anon_id": "a" * 24, "level": 0.5, "sample": 0, "status": "ok"}
    finish_batch(layout, [row], None)  # held: written
    parts = sorted(p.name for p in layout.manifest.iterdir())
    proxy.inject("503", method="PUT", path=LOCK_KEY, count=10**6, seconds=DEADLINE)
    wait_for(lambda: not lock.held, "the driver to give the lock up")
    with pytest.raises(LockLost):
        finish_batch(layout, [dict(row, anon_id="b" * 24)], None)
    with pytest.raises(LockLost):
        ShardCompactor(layout, Counter({0: 1})).update(pd.DataFrame({"shard": [0]}))
    assert sorted(p.name for p in layout.manifest.iterdir()) == parts  # no new part, no shard file
    proxy.clear()
    lock.close()


def _acquired(lock: ObjectLock) -> bool:
    try:
        lock.acquire()
    except FolderLocked:
        return False
    return True


def test_a_job_that_lost_its_lock_fails_in_one_line_and_leaves_run_json_to_the_new_holder(tmp_path, deepface_home):
    """The driver's side of a lost lock: `run_job` turns LockLost into exit status 1's one line, and writes no
    failure into a run.json that is now the other driver's."""
    from dataclasses import replace

    from samples import write_faces

    from pipeline.cli import make_parser
    from pipeline.commands.common import JobFailed, run_job
    from pipeline.settings.config import settings_from_flags

    originals, out = tmp_path / "orig", tmp_path / "out"
    write_faces(originals, 1, size=(64, 64))
    flags = ["evaluate", "--originals", str(originals), "--anonymized", str(originals), "--out", str(out)]
    args = make_parser().parse_args([*flags, "--deepface-home", str(deepface_home), "--recognizers", "Facenet"])
    settings = replace(settings_from_flags(vars(args)), input=args.originals)
    lost = "this job lost the folder's lock (now held by pid 1 on elsewhere); run the same command again to resume"

    def work(job):
        raise LockLost(lost)

    with pytest.raises(JobFailed) as failed:
        run_job(settings, "evaluate", work)
    assert str(failed.value) == lost
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not (out / "private" / "failure.txt").exists()
