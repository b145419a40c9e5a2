"""Real servers for the store tests: moto's S3 server over HTTP and Debian's redis-server.

Both are started here and the fixtures FAIL, never skip, when a server cannot start, so a CI
run without them is red rather than silently thinner.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from store_servers import S3_CREDENTIALS, MotoServer, RedisServer

import cachegen.store
from cachegen.store import Store

BACKENDS = ["memory", "file", "s3", "redis"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    import redis

    url = f"{redis_server}/1"
    yield url
    with redis.Redis.from_url(url) as r:
        r.flushdb()


@pytest.fixture
def backend_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[str], tuple[str, dict[str, Any]]]:
    """`backend name -> (url, options)` for a fresh, empty store of that backend."""

    def make(backend: str) -> tuple[str, dict[str, Any]]:
        if backend == "memory":
            return "memory://", {}
        if backend == "file":
            return (tmp_path / f"store-{uuid.uuid4().hex[:8]}").as_uri(), {}
        if backend == "s3":
            server: MotoServer = request.getfixturevalue("s3_server")
            return server.url(server.bucket()), dict(S3_CREDENTIALS)
        if backend == "redis":
            return request.getfixturevalue("redis_url"), {"prefix": uuid.uuid4().hex[:8]}
        raise ValueError(backend)

    return make


@pytest.fixture(
    params=[(b, c) for b in BACKENDS for c in (False, True)],
    ids=[f"{b}{'+lru' if c else ''}" for b in BACKENDS for c in (False, True)],
)
def store(request: pytest.FixtureRequest, backend_url, tmp_path: Path) -> Iterator[Store]:
    """Each backend, bare and behind the LRU file cache."""
    backend, cached = request.param
    url, options = backend_url(backend)
    if cached:
        options |= {"cache_bytes": 256 << 20, "cache_dir": tmp_path / "lru"}
    with cachegen.store.open(url, **options) as s:
        yield s
