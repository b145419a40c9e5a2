"""Secrets stay hidden on every error path; every network call has a timeout; TLS verifies.

Real servers: a redis-server with a password and a TLS port, moto's S3 app over HTTPS, and
sockets that never answer. Certificates are self-signed per run, trusted explicitly.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from store_servers import (
    S3_CREDENTIALS,
    AuthMotoServer,
    Pki,
    SilentServer,
    TlsMotoServer,
    free_port,
    make_pki,
    wait_until,
)
from test_context import CHUNK, MODEL, make_kv, tokens

import cachegen.store
from cachegen.context import open_context, save_context
from cachegen.store import StoreConfigError, StoreError, StoreUnavailable
from cachegen.store.s3 import S3Options

PASSWORD = "hunter2-redis-password"
WRONG = "wrong-redis-password-77"
KEY_ID = "AKIASECRETKEYID00042"
SECRET = "s3-secret-access-key-never-shown"
TOKEN = "s3-session-token-never-shown"
S3_SECRETS = {"access_key_id": KEY_ID, "secret_access_key": SECRET, "session_token": TOKEN}
FAST = {"timeout": 0.5, "connect_timeout": 0.5}


def shown(thing: object) -> str:
    """Everything a user could see of `thing`: repr, message and the whole chained traceback."""
    if isinstance(thing, BaseException):
        return "".join(traceback.format_exception(thing))
    return f"{thing!r} {thing}"


def assert_hidden(thing: object, *secrets: str) -> None:
    text = shown(thing)
    for secret in secrets:
        assert secret not in text, f"secret shown in: {text}"


def bounded(fn: Callable[[], Any], seconds: float = 120.0) -> BaseException:
    """The error `fn` raises, failing the test if it hangs instead (a missing timeout)."""
    box: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the call hung: no timeout"
    assert box, "the call did not fail"
    return box[0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA and its server certificate, for the name 'localhost' only."""
    return make_pki(tmp_path_factory.mktemp("tls"), "DNS:localhost")


@pytest.fixture(scope="module")
def stranger_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA, which did not sign the servers' certificates."""
    return make_pki(tmp_path_factory.mktemp("tls-other"), "DNS:localhost").ca


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[int, int]]:
    """redis-server with a password, on a plain port and a TLS port: (port, tls_port)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("the Redis tests need redis-server on PATH (apt-get install redis-server)")
    import redis

    port, tls_port = free_port(), free_port()
    workdir = tmp_path_factory.mktemp("redis-tls")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--tls-port", str(tls_port), "--bind", "127.0.0.1"]
        + ["--tls-cert-file", str(pki.cert), "--tls-key-file", str(pki.key)]
        + ["--tls-auth-clients", "no", "--requirepass", PASSWORD]
        + ["--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, password=PASSWORD)
    wait_until(client.ping, f"redis-server with TLS on port {tls_port}")
    client.close()
    yield port, tls_port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def https_s3(pki: Pki) -> Iterator[TlsMotoServer]:
    server = TlsMotoServer(pki)
    yield server
    server.stop()


def roundtrip(store: cachegen.store.Store) -> None:
    store.put("a/b", b"over tls")
    assert store.get("a/b") == b"over tls"


# -- secrets ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@127.0.0.1:6390/0",
        f"redis://user:{PASSWORD}@127.0.0.1:6390/0",
        f"redis://127.0.0.1:6390/0?password={PASSWORD}",
        f"rediss://:{PASSWORD}@localhost:6390/0",
    ],
)
def test_redis_store_never_shows_its_password(url: str, tmp_path: Path) -> None:
    store = cachegen.store.open(url)
    assert "***" in store.url
    assert_hidden(store, PASSWORD)
    cached = cachegen.store.open(url, cache_bytes=1 << 20, cache_dir=tmp_path)
    assert_hidden(cached, PASSWORD)


def test_redis_error_paths_hide_secrets(secure_redis: tuple[int, int]) -> None:
    port, tls_port = secure_redis
    silent = SilentServer()
    try:
        failures = {
            f"redis://:{WRONG}@127.0.0.1:{port}/0": (StoreConfigError, WRONG),  # auth fails
            f"redis://user:{PASSWORD}@127.0.0.1:{port}/0": (StoreConfigError, PASSWORD),
            f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0": (StoreUnavailable, PASSWORD),
            f"redis://:{PASSWORD}@no-such-host.invalid:6379/0": (StoreUnavailable, PASSWORD),
            f"rediss://:{PASSWORD}@localhost:{tls_port}/0": (StoreUnavailable, PASSWORD),
            f"redis://:{PASSWORD}@127.0.0.1:{silent.port}/0": (StoreUnavailable, PASSWORD),
        }
        for url, (kind, secret) in failures.items():
            store = cachegen.store.open(url, **FAST)
            error = bounded(lambda s=store: s.get("k"))
            assert isinstance(error, kind), shown(error)
            assert_hidden(error, secret)
            store.close()
    finally:
        silent.stop()
    bad_urls = [
        f"redis://:{PASSWORD}@127.0.0.1:{port}/notadb",
        f"redis://:{PASSWORD}@127.0.0.1:99999999/0",
        f"redsi://:{PASSWORD}@127.0.0.1:{port}/0",
        f"redis://:{PASSWORD}@[::1/0",
    ]
    for url in bad_urls:
        with pytest.raises(StoreConfigError) as e:
            cachegen.store.open(url)
        assert_hidden(e.value, PASSWORD)


def test_s3_options_and_urls_hide_keys() -> None:
    opts = S3Options(endpoint="http://127.0.0.1:9", **S3_SECRETS)
    assert_hidden(opts, KEY_ID, SECRET, TOKEN)
    for url in (f"s3://{KEY_ID}:{SECRET}@bucket/kv", f"s3://{SECRET}@bucket/kv"):
        with pytest.raises(StoreConfigError, match="credentials") as e:
            cachegen.store.open(url)
        assert_hidden(e.value, KEY_ID, SECRET)
    with pytest.raises(StoreConfigError) as e:
        cachegen.store.open("s3://bucket/kv", endpoint=f"ftp://u:{SECRET}@host", **S3_SECRETS)
    assert_hidden(e.value, SECRET)
    store = cachegen.store.open("s3://bucket/kv", endpoint=f"http://u:{SECRET}@h:9", **S3_SECRETS)
    assert_hidden(store, KEY_ID, SECRET, TOKEN)


def test_s3_error_paths_hide_keys(https_s3: TlsMotoServer, pki: Pki) -> None:
    silent = SilentServer()
    stalled = SilentServer(stall_connect=True)
    endpoints = {
        f"http://127.0.0.1:{free_port()}": {},  # nothing listens
        f"http://127.0.0.1:{silent.port}": {},  # never answers
        f"http://127.0.0.1:{stalled.port}": {},  # never connects
        https_s3.endpoint: {},  # untrusted certificate
        f"{https_s3.endpoint}/": {"ca_file": str(pki.ca)},  # no such bucket
    }
    try:
        for endpoint, extra in endpoints.items():
            store = cachegen.store.open(
                "s3://cg-missing/kv",
                endpoint=endpoint,
                max_retries=0,
                **FAST,
                **extra,
                **S3_SECRETS,
            )
            error = bounded(lambda s=store: s.get("k"))
            assert isinstance(error, StoreError), shown(error)
            assert_hidden(error, KEY_ID, SECRET, TOKEN)
            store.close()
    finally:
        silent.stop()
        stalled.stop()


def test_s3_auth_failures_hide_keys() -> None:
    """A server that checks signatures: an unknown key id, and a known one with a wrong
    secret (S3 echoes the key id in that error)."""
    server = AuthMotoServer()
    try:
        for key_id, secret in ((KEY_ID, SECRET), (server.key_id, SECRET)):
            store = cachegen.store.open(
                "s3://bucket/kv",
                endpoint=server.endpoint,
                access_key_id=key_id,
                secret_access_key=secret,
                max_retries=0,
            )
            error = bounded(lambda s=store: s.get("k"))
            assert isinstance(error, StoreConfigError), shown(error)
            assert_hidden(error, key_id, secret)
            store.close()
    finally:
        server.stop()


# -- timeouts --------------------------------------------------------------------------------
@pytest.mark.parametrize("stall", ["connect", "reply"])
def test_stalled_redis_is_unavailable_not_a_hang(stall: str) -> None:
    server = SilentServer(stall_connect=stall == "connect")
    try:
        store = cachegen.store.open(f"redis://127.0.0.1:{server.port}/0", **FAST)
        assert isinstance(bounded(lambda: store.get("k")), StoreUnavailable)
        # A load through the context layer sees a StoreError: a miss, not a hang.
        error = bounded(lambda: open_context(store, MODEL, tokens(100), chunk_tokens=CHUNK))
        assert isinstance(error, StoreError)
        store.close()
    finally:
        server.stop()


def test_timeouts_are_validated() -> None:
    with pytest.raises(StoreConfigError, match="timeout"):
        cachegen.store.open("redis://127.0.0.1:6390/0", timeout=0)
    with pytest.raises(StoreConfigError, match="timeout"):
        cachegen.store.open("s3://bucket/kv", connect_timeout=-1, **S3_CREDENTIALS)


# -- TLS -------------------------------------------------------------------------------------
def test_rediss_checks_certificate_and_host(
    secure_redis: tuple[int, int], pki: Pki, stranger_ca: Path
) -> None:
    _, tls_port = secure_redis
    good = f"rediss://:{PASSWORD}@localhost:{tls_port}/0"
    with cachegen.store.open(good, ca_file=str(pki.ca), **FAST) as store:
        roundtrip(store)
        ids = tokens(200)
        save_context(store, MODEL, ids, make_kv(200), levels=[1], chunk_tokens=CHUNK)
        assert open_context(store, MODEL, ids, chunk_tokens=CHUNK).complete
    refused = [
        (good, {}),  # self-signed: not in the system's CAs
        (good, {"ca_file": str(stranger_ca)}),  # another CA
        # The certificate names localhost only: an IP address fails the host name check.
        (f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/0", {"ca_file": str(pki.ca)}),
    ]
    for url, extra in refused:
        with cachegen.store.open(url, **FAST, **extra) as store:
            error = bounded(lambda s=store: s.get("a/b"))
            assert isinstance(error, StoreUnavailable), shown(error)
            assert "certificate" in str(error).lower()
    with pytest.raises(StoreConfigError, match="rediss"):
        cachegen.store.open("redis://localhost:6390/0", ca_file=str(pki.ca))


def test_https_s3_with_a_trusted_test_ca(
    https_s3: TlsMotoServer, pki: Pki, stranger_ca: Path
) -> None:
    bucket = f"cg-tls-{free_port()}"
    https_s3.client.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/kv?endpoint={https_s3.endpoint}&region=us-east-1"
    with cachegen.store.open(url, ca_file=str(pki.ca), **S3_CREDENTIALS) as store:
        roundtrip(store)
        ids = tokens(200)
        save_context(store, MODEL, ids, make_kv(200), levels=[1], chunk_tokens=CHUNK)
        assert open_context(store, MODEL, ids, chunk_tokens=CHUNK).complete
    for extra in ({}, {"ca_file": str(stranger_ca)}):  # verification is never off
        with cachegen.store.open(url, max_retries=0, **extra, **S3_CREDENTIALS) as store:
            error = bounded(lambda s=store: s.get("a/b"))
            assert isinstance(error, StoreUnavailable), shown(error)
    with pytest.raises(StoreConfigError, match="CA file"):
        cachegen.store.open(url, ca_file=str(pki.key.parent / "none.pem"), **S3_CREDENTIALS)
