"""Connect to Ray: an embedded local runtime by default, or a running cluster with --address.

Joining a cluster (`--address` or RAY_ADDRESS) is checked before `ray.init`, so that a failure is one
line naming the cause and the fix, within seconds, rather than Ray's 20 retries and a flattened trace:

1. the head's GCS port answers a TCP connection;
2. token authentication the way Ray sets it up (https://docs.ray.io/en/latest/ray-security/token-auth.html):
   `ray start --head` turns token authentication on when a token exists (~/.ray/auth_token,
   RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN), but Ray 2.60 does the same for a client only when it joins
   with `address="auto"` (ray/_private/worker.py, `init`). When RAY_AUTH_MODE is unset and such a token
   exists, it is used here too; an explicit RAY_AUTH_MODE is respected;
3. the GCS answers one Ray request with this token (a wrong or missing token: Ray's AuthenticationError).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.execution.cluster_auth import (
    ClusterUnavailable,
    auth_message,
    is_auth_error,
    setup_token_auth,
    unset_token_mode,
)

TCP_TIMEOUT_S = 5.0  # a host that drops packets
# A port that accepts connections but is not a Ray GCS: Ray's client waits about 40 s and logs at 5 and 10 s.
GCS_TIMEOUT_S = 8.0
# ray.init's GCS connection attempts (about 1 s each) once the checks passed; Ray's default is 20.
JOIN_RETRIES = 5


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    address: str
    cpus: float
    gpus: float
    nodes: int
    started_here: bool
    joined_here: bool = False  # this process joined a running cluster (disconnect leaves it running)
    token_mode_set_here: bool = False  # joining set RAY_AUTH_MODE=token in this process; disconnect unsets it


def connect(address: str | None) -> ClusterInfo:
    """Join `address` (or RAY_ADDRESS), reuse a runtime this process already has, or start a local one.

    Raises ClusterUnavailable (one line) when the cluster given cannot be joined.
    """
    import ray

    started = joined = token_set = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        with _keeping_sigterm_handler():
            if address:
                token_set = _join(address)
                joined = True
            else:
                # "local": always a new runtime; without it ray.init joins a cluster that `ray start` left
                # recorded in /tmp/ray/ray_current_cluster (and fails, since num_cpus is given).
                ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **_INIT_OPTIONS)
                started = True
        _quiet_actor_restart_warning()
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # our own progress line replaces Ray's bars
    context.print_on_execution_start = False
    # A failed job is reported in one line and its trace kept in run.json; Ray Data's own error log
    # would print the whole trace first.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    info = _info(started_here=started, joined_here=joined)
    return dataclasses.replace(info, token_mode_set_here=token_set)


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """ray.init installs a SIGTERM handler that exits at once; the CLI's own (record the run as
    interrupted, then stop) must stay in place."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def disconnect(info: ClusterInfo | None) -> None:
    """Stop the local runtime this process started, or leave the cluster it joined (which keeps running)."""
    import ray

    if info is not None and (info.started_here or info.joined_here) and ray.is_initialized():
        ray.shutdown()
    if info is not None and info.token_mode_set_here:
        unset_token_mode()


def check(address: str) -> ClusterInfo:
    """Join `address` with the same checks as a job, read its resources, and leave (`boomerang doctor`)."""
    import ray

    if ray.is_initialized():  # in-process callers (tests): check the address, report the runtime in use
        _check_reachable(address, may_enable_token=False)
        return _info(started_here=False, joined_here=False)
    token_set = _join(address)
    try:
        return _info(started_here=False, joined_here=True)
    finally:
        ray.shutdown()
        if token_set:
            unset_token_mode()


_INIT_OPTIONS = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}


def _info(*, started_here: bool, joined_here: bool) -> ClusterInfo:
    import ray

    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return ClusterInfo(
        address=ray.get_runtime_context().gcs_address,
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        nodes=nodes,
        started_here=started_here,
        joined_here=joined_here,
    )


def _join(address: str) -> bool:
    """ray.init(address) after the checks; every failure is a ClusterUnavailable with one line. True when it
    set RAY_AUTH_MODE=token in this process (undone by _unset_token_mode once the process leaves)."""
    import ray

    token_set = _check_reachable(address)
    override = "RAY_gcs_server_port_wait_time_s"  # read by ray._private.node at each connection
    saved = os.environ.get(override)
    if saved is None:
        os.environ[override] = str(JOIN_RETRIES)
    failure = None
    try:
        with _captured_stderr() as captured:
            try:
                ray.init(address=address, **_INIT_OPTIONS)
            except Exception as err:  # a version mismatch, the head lost since the check...
                failure = err
        if failure is None:
            _replay(captured())  # a successful join hides nothing Ray printed
    finally:
        if saved is None:
            os.environ.pop(override, None)
    if failure is not None:
        if token_set:
            unset_token_mode()
        raise ClusterUnavailable(f"cannot join the Ray cluster at {address}: {_summary(failure)}", _text(failure))
    return token_set


def _check_reachable(address: str, may_enable_token: bool = True) -> bool:
    """A TCP connection to the GCS port, the token set-up, then one GCS request; raises ClusterUnavailable.
    True when the token set-up set RAY_AUTH_MODE=token in this process."""
    where = f"cannot join the Ray cluster at {address}"
    if address.startswith("ray://"):  # Ray Client: its own protocol and port; ray.init reports
        return False
    bootstrap = _bootstrap(address, where)
    from ray._common.network_utils import parse_address

    parsed = parse_address(bootstrap)
    if parsed is None:
        raise ClusterUnavailable(f"{where}: not a HOST:PORT address; pass the head's address, e.g. 10.0.0.5:6379")
    host, port = parsed[0], int(parsed[1])
    problem = _tcp_problem(host, port)
    if problem:
        raise ClusterUnavailable(
            f"{where}: nothing answers at {host}:{port} ({problem}); start the head with "
            f"`ray start --head --port {port}`, or pass the head's address with --address or RAY_ADDRESS"
        )
    token_set = setup_token_auth(where, may_enable_token)
    error = _gcs_error(bootstrap)
    if error is None:
        return token_set
    if error == "timeout":
        failure = ClusterUnavailable(
            f"{where}: {host}:{port} accepts connections but no Ray GCS answered within {GCS_TIMEOUT_S:g} s; "
            "pass the head's GCS port (`ray start --head --port`, default 6379)"
        )
    elif is_auth_error(error):
        failure = ClusterUnavailable(auth_message(where), _text(error))  # reads the mode set above
    else:
        failure = ClusterUnavailable(f"{where}: {_summary(error)}", _text(error))
    if token_set:
        unset_token_mode()
    raise failure


def _bootstrap(address: str, where: str) -> str:
    """HOST:PORT of the GCS as ray.init resolves it ("auto" finds a cluster started on this machine)."""
    from ray._private import services

    try:
        resolved, failed = services.canonicalize_bootstrap_address(address), False
    except Exception:  # not HOST:PORT, or "auto" with no cluster on this machine
        resolved, failed = None, True
    if failed and address == "auto":
        raise ClusterUnavailable(
            f"{where}: no running Ray cluster was found on this machine; start one with `ray start --head` "
            "or pass the head's HOST:PORT"
        )
    if failed:
        raise ClusterUnavailable(f"{where}: not a HOST:PORT address; pass the head's address, e.g. 10.0.0.5:6379")
    if resolved is None:  # "local"
        raise ClusterUnavailable(f"{where}: not a cluster address; omit --address to start a local Ray")
    return resolved


def _tcp_problem(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=TCP_TIMEOUT_S):
            return None
    except TimeoutError:
        return f"no answer within {TCP_TIMEOUT_S:g} s"
    except socket.gaierror:
        return "unknown host"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as err:
        return err.strerror or type(err).__name__


def _gcs_error(bootstrap: str) -> BaseException | str | None:
    """One GCS request (Ray's own client); None when it answers, "timeout", or the error."""
    from ray._raylet import GcsClient

    result: dict[str, BaseException | None] = {}

    def probe() -> None:
        try:
            GcsClient(address=bootstrap)
            result["error"] = None
        except Exception as err:  # reported to the caller
            result["error"] = err

    # Ray's client logs a warning line per failed attempt on stderr: the caller reports one line instead.
    with _captured_stderr():
        thread = threading.Thread(target=probe, name="boomerang-gcs-probe", daemon=True)
        thread.start()
        thread.join(GCS_TIMEOUT_S)  # the C++ call releases the GIL
    if "error" not in result:
        return "timeout"
    return result["error"]


# Ray Data creates its actor-pool workers with max_restarts=-1 and constructor arguments put in the
# object store (ray/data/_internal/execution/operators/map_operator.py: _map_transformer_ref); Ray's
# core worker then logs an ERROR once per process (core_worker.cc, CoreWorker::CreateActor,
# RAY_LOG_ONCE_PER_PROCESS) that splits the progress line on every successful run. Ray Data keeps
# those references for the operator's lifetime, so a restart finds them: the warning does not apply.
_ACTOR_RESTART_WARNING = re.compile(r"has constructor arguments in the object store and max_restarts")


def _quiet_actor_restart_warning() -> None:
    """Spend that once-per-process log line on a throwaway actor, with stderr captured for that instant.

    Anything else printed in that instant is written back; later errors are printed as usual.
    """
    import ray

    @ray.remote
    class _Spent:
        def __init__(self, argument):
            pass

    with _captured_stderr() as captured:
        try:
            # Never scheduled (a resource no node has) and killed at once: no worker process starts.
            actor = _Spent.options(max_restarts=1, num_cpus=0, resources={"boomerang-never-scheduled": 1}).remote(
                ray.put(None)
            )
            ray.kill(actor, no_restart=True)
        except Exception:  # only a cosmetic step: never a reason for a job to fail
            pass
    _replay(captured(), drop=_ACTOR_RESTART_WARNING)


@contextmanager
def _captured_stderr() -> Iterator[Callable[[], str]]:
    """Point file descriptor 2 (where Ray's C++ code logs) at a temporary file; yields a reader of it."""
    import sys

    sys.stderr.flush()
    text: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: "".join(text)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text.append(sink.read().decode(errors="replace"))


def _replay(text: str, drop: re.Pattern | None = None) -> None:
    kept = [line for line in text.splitlines(keepends=True) if not (drop and drop.search(line))]
    if kept:
        os.write(2, "".join(kept).encode())


def _summary(err: BaseException | str) -> str:
    """Ray's message on one line, without the traceback text some of its errors carry."""
    text = " ".join(str(err).split("Traceback (most recent call last)")[0].split()).rstrip(" :.")
    return (text[:200] or type(err).__name__).rstrip()


def _text(err: BaseException | str) -> str:
    return str(err)[:4000]
