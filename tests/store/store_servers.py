"""Helpers for the store tests: free ports, waiting, and moto's S3 server (imported by
conftest.py and by tests that start their own server)."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable

import pytest

S3_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - any failure means "not up yet"
            last = e
        else:
            last = None
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up within {timeout:.0f} s: {last!r}")
        time.sleep(0.05)


class MotoServer:
    """moto's threaded S3 server on a loopback port; restartable on the same port."""

    def __init__(self) -> None:
        try:
            import boto3
            from moto.server import ThreadedMotoServer
        except ImportError as e:
            pytest.fail(
                f"the S3 tests need moto[server] and boto3 (pip install 'moto[server]'): {e}"
            )
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._cls = ThreadedMotoServer
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.start()

    def start(self) -> None:
        self._server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_until(self.client.list_buckets, f"moto S3 server on {self.endpoint}")

    def stop(self) -> None:
        self._server.stop()

    def bucket(self) -> str:
        name = f"cg-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def url(self, bucket: str, prefix: str = "kv") -> str:
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region=us-east-1"
