"""The run lock of an object-store `--out`: a lock object on a real S3 server (moto over HTTP, via s3fs/UPath)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from s3 import read_lock

from pipeline.folder.lock import RunLock, run_lock
from pipeline.folder.lock_common import FolderLocked
from pipeline.folder.object_lock import ObjectLock, creates_only_if_absent

upath = pytest.importorskip("upath")


@pytest.fixture
def lock_path(s3_server):
    return upath.UPath(f"{s3_server.bucket('locks')}/{uuid.uuid4().hex}/run/.boomerang.lock")


def plant(path, host: str, pid: int, age: float) -> None:
    """A lock object left by another driver, its last heartbeat `age` seconds ago."""
    lock = {
        "holder": f"pid {pid} on {host}, since 2026-01-01T00:00:00+00:00",
        "host": host,
        "pid": pid,
        "token": "theirs",
        "since": "2026-01-01T00:00:00+00:00",
        "heartbeat": time.time() - age,
    }
    path.fs.pipe_file(path.path, json.dumps(lock).encode())


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_driver_is_refused_with_the_holder_named(lock_path):
    with ObjectLock(lock_path):
        holder = f"pid {os.getpid()} on {socket.gethostname()}"
        with pytest.raises(FolderLocked, match=re.escape(holder)) as refused:
            ObjectLock(lock_path).acquire()
    message = str(refused.value)
    assert message.startswith(f"{lock_path.parent} is in use by another boomerang job (")
    assert "\n" not in message


def test_close_releases_the_lock_and_may_be_called_again(lock_path):
    lock = ObjectLock(lock_path).acquire()
    assert read_lock(lock_path)["pid"] == os.getpid()
    lock.close()
    assert read_lock(lock_path) is None
    lock.close()
    with ObjectLock(lock_path):
        assert read_lock(lock_path) is not None
    assert read_lock(lock_path) is None


def test_close_leaves_a_lock_that_is_no_longer_its_own(lock_path):
    lock = ObjectLock(lock_path).acquire()
    plant(lock_path, "elsewhere.invalid", 4242, age=0)
    lock.close()
    assert read_lock(lock_path)["token"] == "theirs"


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over(lock_path):
    plant(lock_path, socket.gethostname(), dead_pid(), age=0)
    with ObjectLock(lock_path):
        assert read_lock(lock_path)["pid"] == os.getpid()


def test_another_hosts_lock_is_taken_over_only_once_its_heartbeat_is_older_than_the_lease(lock_path):
    plant(lock_path, "elsewhere.invalid", 4242, age=ObjectLock.lease / 2)
    with pytest.raises(FolderLocked, match=re.escape("pid 4242 on elsewhere.invalid")):
        ObjectLock(lock_path).acquire()
    assert read_lock(lock_path)["token"] == "theirs"

    plant(lock_path, "elsewhere.invalid", 4242, age=ObjectLock.lease + 60)
    with ObjectLock(lock_path):
        assert read_lock(lock_path)["host"] == socket.gethostname()


def test_a_lock_object_that_cannot_be_read_still_holds_the_folder(lock_path):
    lock_path.fs.pipe_file(lock_path.path, b"not a lock")
    with pytest.raises(FolderLocked, match="another process"):
        ObjectLock(lock_path).acquire()


def test_of_drivers_taking_over_one_stale_lock_at_once_one_wins(lock_path):
    plant(lock_path, "elsewhere.invalid", 4242, age=ObjectLock.lease + 60)
    locks = [ObjectLock(lock_path) for _ in range(4)]
    start = threading.Barrier(len(locks))
    won, refused = [], []

    def take(lock: ObjectLock) -> None:
        start.wait()
        try:
            won.append(lock.acquire())
        except FolderLocked:
            refused.append(lock)

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(won), len(refused)) == (1, 3)
    assert read_lock(lock_path)["token"] == won[0]._token
    won[0].close()


def test_the_heartbeat_is_refreshed_while_the_lock_is_held(lock_path):
    class QuickLock(ObjectLock):
        lease = 0.5

    with QuickLock(lock_path):
        first = read_lock(lock_path)
        deadline = time.monotonic() + 10
        while (latest := read_lock(lock_path))["heartbeat"] == first["heartbeat"]:
            assert time.monotonic() < deadline, "the heartbeat was not refreshed within 10 s"
            time.sleep(0.02)
    assert latest["heartbeat"] > first["heartbeat"]
    assert (latest["token"], latest["since"]) == (first["token"], first["since"])
    assert read_lock(lock_path) is None


def test_a_store_that_cannot_create_only_if_absent_falls_back_to_reading_back(tmp_path, lock_path):
    path = upath.UPath(f"file://{tmp_path}/.boomerang.lock")  # fsspec's local filesystem: no create-only write
    assert not creates_only_if_absent(path.fs)
    assert creates_only_if_absent(lock_path.fs)
    with ObjectLock(path), pytest.raises(FolderLocked, match=re.escape(f"pid {os.getpid()}")):
        ObjectLock(path).acquire()
    assert not (tmp_path / ".boomerang.lock").exists()


def test_run_lock_picks_flock_for_a_local_path_and_a_lock_object_for_a_store(tmp_path, lock_path):
    assert type(run_lock(tmp_path / ".boomerang.lock")) is RunLock
    assert type(run_lock(upath.UPath(tmp_path) / ".boomerang.lock")) is RunLock
    assert type(run_lock(lock_path)) is ObjectLock
