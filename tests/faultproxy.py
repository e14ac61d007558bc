"""A fault-injecting HTTP proxy on 127.0.0.1 between a client (s3fs) and an S3 server (tests/s3.py's moto).

Every request is passed on unchanged, except those a scheduled fault matches: a fault names a kind, the HTTP
method and a pattern over the request path ("/bucket/key"), and is bounded in count (the next N matching
requests) and in time (until `seconds` have passed), so a schedule always ends. Kinds:
- ``503``: answer 503 ServiceUnavailable (an S3 error document) without passing the request on; its message is
  not S3's "reduce your request rate", which s3fs retries by itself;
- ``slow``: wait `delay` seconds, then pass the request on;
- ``reset``: close the connection with a TCP reset before answering (the request is not passed on);
- ``drop``: answer 200 as S3 would (with the ETag of the body) but never pass the write on: a write lost.

    with FaultProxy(server.endpoint) as proxy:
        fault = proxy.inject("503", method="PUT", path=r"/\\.boomerang\\.lock$", count=4)
        ...  # point a client at proxy.endpoint
        fault.used  # how many requests it has hit so far; fault.done once it is spent or expired

A fault with a `rate` below 1 hits each matching request with that probability (a seeded draw, so a schedule
replays the same), as a soak test's background of faults: `proxy.inject("503", rate=0.02, count=10**9)`.

It imports nothing of the product: bench/soak.py loads this file by its path.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("503", "slow", "reset", "drop")
# Hop-by-hop headers: they describe one connection, not the request, and are not passed on.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
_UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>Service is unavailable; try again.</Message></Error>"
)


@dataclass
class Fault:
    """One scheduled fault: the next `count` requests matching `method` and `path` within `seconds`."""

    kind: str
    method: str | None
    path: re.Pattern
    count: int
    until: float  # time.monotonic() after which the fault no longer applies
    delay: float = 0.0
    rate: float = 1.0  # the probability that a matching request is hit
    draws: random.Random = field(default_factory=lambda: random.Random(0))
    used: int = 0
    hits: list[str] = field(default_factory=list)  # "METHOD /path" of each request it hit

    @property
    def done(self) -> bool:
        return self.used >= self.count or time.monotonic() >= self.until

    def matches(self, method: str, path: str) -> bool:
        if not ((self.method is None or self.method == method) and self.path.search(path)):
            return False
        return self.rate >= 1.0 or self.draws.random() < self.rate


class FaultProxy:
    """`with FaultProxy(upstream) as proxy:` serves at `proxy.endpoint` until the block ends."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.endpoint = ""
        self.requests: list[str] = []  # "METHOD /path" of every request seen, faulted or not
        self._faults: list[Fault] = []
        self._guard = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def inject(
        self,
        kind: str,
        *,
        method: str | None = None,
        path: str = "",
        count: int = 1,
        seconds: float = 60.0,
        delay: float = 0.0,
        rate: float = 1.0,
        seed: int = 0,
    ) -> Fault:
        """Schedule a fault for the next `count` requests (of `method`, any if None) whose path matches the
        regular expression `path`, for at most `seconds`; with `rate` < 1, each such request only with that
        probability (draws seeded with `seed`). Faults apply in the order they were scheduled."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(KINDS)}")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate {rate!r}: a probability in (0, 1]")
        fault = Fault(
            kind, method, re.compile(path), count, time.monotonic() + seconds, delay, rate, random.Random(seed)
        )
        with self._guard:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Cancel every scheduled fault."""
        with self._guard:
            self._faults.clear()

    def _take(self, method: str, path: str) -> Fault | None:
        with self._guard:
            self.requests.append(f"{method} {path}")
            for fault in self._faults:
                if not fault.done and fault.matches(method, path):
                    fault.used += 1
                    fault.hits.append(f"{method} {path}")
                    return fault
        return None

    def __enter__(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as a client's connection pool expects

    def log_message(self, *args) -> None:  # quiet: tests read `requests` and each fault's `hits`
        pass

    def _handle(self) -> None:
        body = self._body()
        path = urlsplit(self.path).path
        fault = self.owner._take(self.command, path)
        kind = fault.kind if fault is not None else None
        if kind == "reset":
            # SO_LINGER 0: close() sends a TCP reset, as a dropped connection looks to the client.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if kind == "503":
            self._answer(503, {"Content-Type": "application/xml"}, _UNAVAILABLE)
            return
        if kind == "drop":
            etag = f'"{hashlib.md5(body).hexdigest()}"'  # noqa: S324 - what S3 answers for a simple PUT
            self._answer(200, {"ETag": etag}, b"")
            return
        if kind == "slow":
            time.sleep(fault.delay)
        self._forward(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "content-length"}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            status, reply = answer.status, [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP]
        finally:
            upstream.close()
        self._answer(status, dict(reply), data)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        # A HEAD answer describes the body a GET would have; keep the upstream's length for it.
        length = headers.get("Content-Length") or headers.get("content-length")
        self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
