"""Helpers for the store tests: free ports, waiting, moto's S3 server over HTTP and HTTPS,
self-signed certificates and a stalled server (imported by conftest.py and by tests that start
their own server)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


class RedisServer:
    """Debian's redis-server on a loopback port, in-memory only (fails the test if absent)."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("the Redis tests need redis-server on PATH (apt-get install redis-server)")
        import redis

        port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--dir", str(workdir), "--databases", "16"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=port)

        def up() -> bool:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                pytest.fail(f"redis-server exited with {self.proc.returncode}: {out[-2000:]}")
            return bool(client.ping())

        wait_until(up, f"redis-server on port {port}")
        client.close()
        self.url = f"redis://127.0.0.1:{port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass(frozen=True)
class Pki:
    """A throwaway CA (the certificate the tests trust explicitly) and a server certificate."""

    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path, san: str = "DNS:localhost") -> Pki:
    """A fresh CA and a server certificate for `san` signed by it, made with Debian's openssl
    (rustls refuses a CA certificate used as the server's own, so the two are separate)."""
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail("the TLS tests need openssl on PATH (apt-get install openssl)")

    def openssl(*args: str) -> None:
        subprocess.run([exe, *args], check=True, capture_output=True, cwd=directory)

    openssl(*"req -x509 -newkey rsa:2048 -nodes -days 1 -keyout ca.key -out ca.pem".split(),
            "-subj", "/CN=cachegen test CA")  # fmt: skip
    openssl(*"req -newkey rsa:2048 -nodes -keyout key.pem -out req.csr".split(),
            "-subj", "/CN=cachegen test server")  # fmt: skip
    (directory / "ext.cnf").write_text(
        f"basicConstraints=CA:FALSE\nsubjectAltName={san}\nextendedKeyUsage=serverAuth\n"
    )
    openssl(*"x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1".split(),
            *"-extfile ext.cnf -out cert.pem".split())  # fmt: skip
    return Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")


class TlsMotoServer:
    """moto's S3 app behind werkzeug's HTTPS server, with a certificate the tests make."""

    def __init__(self, pki: Pki) -> None:
        import boto3
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.port = free_port()
        self.endpoint = f"https://localhost:{self.port}"
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            "127.0.0.1", self.port, app, threaded=True, ssl_context=(str(pki.cert), str(pki.key))
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            verify=str(pki.ca),
            **{f"aws_{k}": v for k, v in S3_CREDENTIALS.items()},
        )
        wait_until(self.client.list_buckets, f"moto S3 server on {self.endpoint}")

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


class SilentServer:
    """A TCP port that never answers: it accepts connections and stays silent, or with
    `stall_connect` its backlog is full, so that a new connection never completes."""

    def __init__(self, stall_connect: bool = False) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(0)
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        if stall_connect:
            for _ in range(3):  # fill the backlog; the kernel then drops new SYNs
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", self.port))
                self._held.append(c)
        else:
            self._thread.start()

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                self._held.append(self._sock.accept()[0])
            except TimeoutError:
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for s in [*self._held, self._sock]:
            s.close()


class AuthMotoServer:
    """moto's S3 server in a subprocess that checks signatures against its IAM users, with one
    user made at start: `key_id`/`secret` are valid, anything else is refused."""

    def __init__(self) -> None:
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"INITIAL_NO_AUTH_ACTION_COUNT": "2"}  # the user and its key
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            **{f"aws_{k}": v for k, v in S3_CREDENTIALS.items()},
        )
        wait_until(lambda: iam.create_user(UserName="cachegen"), f"moto on {self.endpoint}")
        key = iam.create_access_key(UserName="cachegen")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
