"""A real throttled link for the stream tests and benchmarks: moto's S3 server inside a network
namespace, joined to this one by a veth pair, with `tc` (netem delay + tbf rate) shaping what
the server sends. Needs root, `ip` and `tc` (Debian: iproute2) and moto[server].

    with NetLink() as link:          # 10.213.N.1 (server side) <-> 10.213.N.2 (this side)
        link.shape(rate_bps=20e6 / 8, delay_s=0.002)
        store = cachegen.store.open(link.store_url(), **link.credentials)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import IO

import boto3

#: Private /30s made here (10.213.N.0/30, the first N no interface uses), carrying traffic only
#: between the two namespaces this module creates.
NET, PREFIX = "10.213", 30
CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


class LinkError(RuntimeError):
    """The namespace, the veth pair, the shaping or the server could not be set up."""


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise LinkError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")


def burst_bytes(rate_bps: float) -> int:
    """The tbf bucket `NetLink.shape` gives a rate: at least one timer tick of traffic (and a few
    large packets). A transfer that starts on a full bucket gets that much at once."""
    return max(int(rate_bps / 100), 64 * 1024)


@dataclass
class NetLink:
    """The namespace, veth pair and S3 server; a context manager that tears them down."""

    port: int = 5000
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: int = field(default=-1, init=False)
    _server: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def server_ip(self) -> str:
        return f"{NET}.{self.subnet}.1"

    @property
    def client_ip(self) -> str:
        return f"{NET}.{self.subnet}.2"

    @property
    def ns(self) -> str:
        return f"cgns{self.tag}"

    @property
    def host_if(self) -> str:
        return f"cgh{self.tag}"

    @property
    def ns_if(self) -> str:
        return f"cgn{self.tag}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.server_ip}:{self.port}"

    @property
    def credentials(self) -> dict[str, str]:
        return dict(CREDENTIALS)

    def __enter__(self) -> NetLink:
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise LinkError(f"{tool} not found: apt-get install -y iproute2")
        if os.geteuid() != 0:
            raise LinkError("network namespaces need root")
        try:
            self._create()
            self._start_server()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _in_ns(self, *cmd: str) -> None:
        _run("ip", "netns", "exec", self.ns, *cmd)

    def _free_subnet(self) -> int:
        """The first 10.213.N.0/30 no interface here has an address in (another link's)."""
        shown = subprocess.run(["ip", "-4", "addr", "show"], capture_output=True, text=True)
        for n in range(256):
            if f" {NET}.{n}." not in shown.stdout:
                return n
        raise LinkError(f"no free {NET}.N.0/30 subnet")

    def _create(self) -> None:
        self.subnet = self._free_subnet()
        _run("ip", "netns", "add", self.ns)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run("ip", "link", "set", self.ns_if, "netns", self.ns)
        _run("ip", "addr", "add", f"{self.client_ip}/{PREFIX}", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        self._in_ns("ip", "addr", "add", f"{self.server_ip}/{PREFIX}", "dev", self.ns_if)
        self._in_ns("ip", "link", "set", self.ns_if, "up")
        self._in_ns("ip", "link", "set", "lo", "up")

    def _start_server(self) -> None:
        # The server logs a line per request to stderr: into a file, never an unread pipe.
        # A pipe fills after ~800 requests (64 KiB), and then every request thread of the
        # server blocks in its logging call: connections are accepted and never answered.
        self._log = tempfile.TemporaryFile()
        self._server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "moto.server"]
            + ["-H", self.server_ip, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            if self._server.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                raise LinkError(f"moto server exited ({self._server.returncode}): {err[-1500:]}")
            try:
                client.list_buckets()
                return
            except Exception as e:  # noqa: BLE001 - any failure means "not up yet"
                if time.monotonic() > deadline:
                    raise LinkError(f"moto server at {self.endpoint} not up in 30 s: {e!r}") from e
            time.sleep(0.1)

    def client(self):  # noqa: ANN201 - a boto3 S3 client
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["access_key_id"],
            aws_secret_access_key=CREDENTIALS["secret_access_key"],
        )

    def store_url(self, prefix: str = "kv") -> str:
        """A fresh bucket on the server, as a `cachegen.store.open` URL."""
        bucket = f"cg-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region=us-east-1"

    def shape(self, rate_bps: float, delay_s: float = 0.0) -> None:
        """Limit what the server sends to `rate_bps` bytes/s, after `delay_s` of delay.

        The rate is a tbf; a delay adds netem in front of it, which some kernels lack (then
        `LinkError`): the request overhead of the server is the link's latency there.
        """
        dev = ("dev", self.ns_if)
        parent = ("root",)
        if delay_s > 0:
            delay = f"{delay_s * 1e3:.3f}ms"
            netem = ("netem", "delay", delay, "limit", "100000")
            self._in_ns("tc", "qdisc", "replace", *dev, "root", "handle", "1:", *netem)
            parent = ("parent", "1:1")
        burst = str(burst_bytes(rate_bps))
        tbf = ("tbf", "rate", f"{int(rate_bps * 8)}bit", "burst", burst, "latency", "200ms")
        self._in_ns("tc", "qdisc", "replace", *dev, *parent, "handle", "10:", *tbf)

    def close(self) -> None:
        """Stop the server and delete the namespace (which deletes the veth pair)."""
        if self._server is not None and self._server.poll() is None:
            self._server.terminate()
            try:
                self._server.wait(10)
            except subprocess.TimeoutExpired:
                self._server.kill()
        if self._log is not None:
            self._log.close()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
