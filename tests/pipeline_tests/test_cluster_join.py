"""`--address`: joining a cluster started with `ray start --head`, with and without its token.

`ray start --head` here turns on Ray's token authentication; a job or `boomerang doctor` joins with the
token from RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or ~/.ray/auth_token, and any failure to join is one line
naming the cause and the fix, with exit status 1. Each job runs as its own process: this test session
has its own embedded Ray (`ray_runtime`), which an in-process `connect()` would reuse.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from samples import write_faces

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # a real `ray start` head per module

REPO = Path(__file__).resolve().parents[2]
AUTH_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# A Ray C++ log line ("[2026-11-29 12:42:53,574 E 6183 6183] core_worker.cc:2465: ...") or a gRPC/absl one
# ("E1129 12:42:53.574 ..."), either of which would split the progress line.
RAY_LOG_LINE = re.compile(r"^(\[\d{4}-\d\d-\d\d [\d:,.]+ [EWF] \d+ \d+\]|[EWF]\d{4} )|core_worker\.cc")


@dataclass
class Head:
    address: str
    token_file: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """This environment without any Ray address or authentication setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


def _session_processes(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if os.getsid(int(entry)) == sid and state != "Z":
                pids.append(int(entry))
        except (OSError, IndexError):
            pass
    return pids


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head node started by `ray start --head --block` with token authentication and its own token.

    Its own port and temp dir; it and every process it started (one session) are killed at the end, by
    process id: never `ray stop`, which would stop every Ray on this machine, the session's own included.
    """
    root = tmp_path_factory.mktemp("head")
    token_file = root / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    # Ray's Unix socket paths (temp dir + session_<date>_<pid>/sockets/plasma_store) must stay under 108 bytes.
    temp_dir = root / "ray"
    own_temp = len(str(temp_dir)) > 40
    if own_temp:
        temp_dir = Path(tempfile.mkdtemp(prefix="bray", dir="/tmp"))
    port = _free_port()
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        _wait_until_ready(address, env, proc)
        yield Head(address, token_file)
    finally:
        _stop(proc)
        if own_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)


_READY = (
    "import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
    "sys.exit(0 if ray.cluster_resources().get('CPU', 0) >= 2 else 1)"
)


def _wait_until_ready(address: str, env: dict[str, str], proc: subprocess.Popen, timeout: float = 180) -> None:
    """Poll by joining (with the head's token) until the head's node and its 2 CPUs are registered."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"`ray start --head` exited with status {proc.returncode}")
        try:
            if (
                subprocess.run(
                    [sys.executable, "-c", _READY, address], env=env, capture_output=True, timeout=60
                ).returncode
                == 0
            ):
                return
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the head at {address} was not ready after {timeout:g} s")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    sid = proc.pid  # start_new_session: the head's processes, and the workers they start, share this session
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=3)
    for _ in range(100):  # what did not stop on SIGTERM (Ray's workers have process groups of their own)
        left = _session_processes(sid)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.poll()  # reap the head's own process once it is gone
        time.sleep(0.1)
    proc.wait(timeout=10)


def _boomerang(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faces")
    write_faces(folder, 3)
    return folder


@pytest.fixture
def job_args(faces, tmp_path, tiny_sd, deepface_home):
    def args(*extra: str) -> list[str]:
        return [
            "run",
            str(faces),
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(tiny_sd),
            "--steps",
            "4",
            "--levels",
            "0.5",
            "--recognizers",
            "Facenet",
            "--detector",
            "skip",
            "--deepface-home",
            str(deepface_home),
            *extra,
        ]

    return args


def _ray_log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if RAY_LOG_LINE.search(line)]


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def test_job_joins_a_token_cluster_with_the_token_path_and_no_auth_mode(head, job_args, tmp_path):
    # The setup: the head has token authentication on, this shell leaves RAY_AUTH_MODE unset.
    result = _boomerang(job_args("--address", head.address), _env(RAY_AUTH_TOKEN_PATH=str(head.token_file)))

    assert result.returncode == 0, result.stderr
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == 3 and set(manifest["status"]) == {"ok"}
    assert not _ray_log_lines(result.stderr), result.stderr


_LEAVE_THEN_RUN_LOCALLY = """
import os, sys, ray
from pipeline.execution.cluster import connect, disconnect
info = connect(sys.argv[1])
print("joined", os.environ.get("RAY_AUTH_MODE"))
disconnect(info)
print("left", os.environ.get("RAY_AUTH_MODE"))
info = connect(None)  # a local runtime in the same process, as a library caller or the next job would start
print("local", ray.get(ray.remote(lambda: 6 * 7).remote()))
disconnect(info)
"""


def test_leaving_a_token_cluster_leaves_no_token_mode_behind(head):
    # Joining turns token authentication on in this process (RAY_AUTH_MODE=token, as `ray start` would);
    # leaving must turn it off: the process's next local Ray, and every process it starts, would otherwise
    # demand a token it has no reason to need (a child without the token file aborts: "Check failed: has_token").
    env = _env(RAY_AUTH_TOKEN_PATH=str(head.token_file))
    args = [sys.executable, "-c", _LEAVE_THEN_RUN_LOCALLY, head.address]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["joined token", "left None", "local 42"], result.stdout


def test_doctor_joins_with_the_token_in_home_ray_auth_token(head, tmp_path, tiny_sd, deepface_home):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    shutil.copy(head.token_file, home / ".ray" / "auth_token")
    args = ["doctor", "--address", head.address, "--model", str(tiny_sd), "--recognizers", "Facenet"]

    result = _boomerang(args, _env(HOME=str(home), DEEPFACE_HOME=str(deepface_home)), timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"cluster {head.address}: joined: 1 nodes, 2 CPUs, 0 GPUs" in result.stdout
    # Ready, and honest that the test's model and recognizer are random weights.
    assert result.stdout.rstrip().endswith(
        f"ready: every required part is present, but model {tiny_sd}, Facenet: random weights: numbers not meaningful"
    )


@pytest.mark.parametrize(
    ("setting", "hint"),
    [
        (
            {"RAY_AUTH_TOKEN": "not-the-cluster-token"},
            "the cluster rejected the token from RAY_AUTH_TOKEN; set RAY_AUTH_TOKEN",
        ),
        (
            {"RAY_AUTH_TOKEN_PATH": "/nonexistent/auth_token"},
            "RAY_AUTH_TOKEN_PATH=/nonexistent/auth_token cannot be read",
        ),
        (
            {"RAY_AUTH_MODE": "disabled"},
            "requires token authentication but RAY_AUTH_MODE=disabled; unset it or set RAY_AUTH_MODE=token",
        ),
    ],
    ids=["wrong-token", "missing-token-file", "auth-disabled"],
)
def test_job_with_authentication_misconfigured_fails_in_one_line(head, job_args, setting, hint):
    # Each setting takes precedence over a ~/.ray/auth_token this machine may have.
    result = _boomerang(job_args("--address", head.address), _env(**setting), timeout=120)

    assert result.returncode == 1, result.stderr
    line = _one_line(result.stderr)
    assert line.startswith("boomerang: ") and f"cannot join the Ray cluster at {head.address}: " in line
    assert hint in line


def test_doctor_without_any_token_says_where_to_put_it(head, tmp_path):
    (tmp_path / "home").mkdir()

    result = _boomerang(["doctor", "--address", head.address], _env(HOME=str(tmp_path / "home")), timeout=120)

    assert result.returncode == 1
    assert (
        f"Ray cluster at {head.address}: the cluster requires token authentication and no token was found; "
        "copy the cluster's token (`ray get-auth-token` on the head prints it) to ~/.ray/auth_token, "
        "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN"
    ) in result.stdout
    assert "NOT ready: missing the Ray cluster" in result.stdout


def test_job_with_nothing_at_the_address_fails_in_one_line(job_args):
    port = _free_port()  # nothing listens there

    result = _boomerang(job_args("--address", f"127.0.0.1:{port}"), _env(), timeout=120)

    assert result.returncode == 1, result.stderr
    line = _one_line(result.stderr)
    assert f"cannot join the Ray cluster at 127.0.0.1:{port}: nothing answers at " in line
    assert f"(connection refused); start the head with `ray start --head --port {port}`" in line


def test_a_successful_run_prints_no_ray_log_lines(job_args):
    # Ray Data's actor pools make Ray's core worker log an ERROR line on every run (actor constructor
    # arguments in the object store with max_restarts > 0); pipeline.execution.cluster spends it where nobody sees it.
    result = _boomerang(job_args(), _env())

    assert result.returncode == 0, result.stderr
    assert not _ray_log_lines(result.stderr), result.stderr
