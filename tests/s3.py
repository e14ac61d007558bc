"""A real S3-compatible HTTP server in this process (moto), for tests of object-store run folders.

Tests talk to it over HTTP through s3fs exactly as they would talk to a store, so conditional writes,
error translation and caching behave as in production rather than as a mock says they do. Point clients at
it with `env` (set it before creating any s3fs filesystem: s3fs caches its instances).
"""

from __future__ import annotations

import contextlib
import json
import logging


class S3Server:
    """`with S3Server() as server:` serves S3 at `server.endpoint` until the block ends."""

    def __init__(self) -> None:
        self.endpoint = ""
        self._server = None

    def __enter__(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that send botocore (and so s3fs) to this server with dummy credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def bucket(self, name: str) -> str:
        """Create bucket `name` (again is fine: tests share a bucket and use their own keys) -> "s3://name"."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return f"s3://{name}"


def read_lock(path) -> dict | None:
    """A lock object's JSON (pipeline.folder.object_lock.ObjectLock), or None when there is none."""
    try:
        return json.loads(path.fs.cat_file(path.path))
    except FileNotFoundError:
        return None
