"""URLs, options and credentials: every mistake gives a clear, typed error."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_servers import S3_CREDENTIALS, MotoServer, free_port

import cachegen.store
from cachegen.store import (
    CachedStore,
    FileStore,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
)

AWS_ENV = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"]


@pytest.fixture(autouse=True)
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AWS_ENV + ["AWS_ENDPOINT_URL_S3"]:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("ftp://host/x", {}, "unsupported store URL"),
        ("file://host/x", {}, "absolute path"),
        ("file:relative/x", {}, "absolute path"),
        ("memory://", {"concurrency": 2}, "takes no options"),
        ("memory://?x=1", {}, "takes no options"),
        ("s3:///prefix", S3_CREDENTIALS, "needs a bucket"),
        ("s3://ab/p", S3_CREDENTIALS, "invalid S3 bucket name"),
        ("s3://Bad_Bucket/p", S3_CREDENTIALS, "invalid S3 bucket name"),
        ("s3://bucket/p?colour=red", S3_CREDENTIALS, "unknown S3 options"),
        ("s3://bucket/p", {"colour": "red"} | S3_CREDENTIALS, "unknown S3 options"),
        ("s3://bucket/p?timeout=soon", S3_CREDENTIALS, "bad S3 option value"),
        ("s3://bucket/p?anonymous=maybe", S3_CREDENTIALS, "bad S3 option value"),
        ("s3://bucket/p?secret_access_key=x", {}, "not in the URL"),
        ("s3://bucket/p?endpoint=localhost:9000", S3_CREDENTIALS, "must be an http"),
        ("redis://localhost:6379/0", {"colour": "red"}, "unknown Redis store options"),
        ("redis://localhost:6379/notadb", {}, "bad Redis URL"),
    ],
)
def test_bad_urls(url: str, options: dict, message: str) -> None:
    with pytest.raises(StoreConfigError, match=message) as e:
        cachegen.store.open(url, **options)
    assert isinstance(e.value, ValueError) and isinstance(e.value, StoreError)


def test_missing_s3_credentials_are_named() -> None:
    with pytest.raises(StoreConfigError, match="AWS_ACCESS_KEY_ID"):
        cachegen.store.open("s3://bucket/p?endpoint=http://127.0.0.1:1")
    with pytest.raises(StoreConfigError, match="no S3 credentials"):
        cachegen.store.open("s3://bucket/p", access_key_id="only-half")


def test_s3_credentials_from_environment(
    s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    with cachegen.store.open(f"s3://{s3_server.bucket()}/env") as s:
        s.put("k", b"v")
        assert s.get("k") == b"v"


def test_unreachable_s3_is_unavailable() -> None:
    url = f"s3://bucket/p?endpoint=http://127.0.0.1:{free_port()}&timeout=2&max_retries=0"
    with cachegen.store.open(url, **S3_CREDENTIALS) as s, pytest.raises(StoreUnavailable) as e:
        s.put("k", b"v")
    assert "127.0.0.1" in str(e.value) and "\n" not in str(e.value)


def test_missing_bucket_is_named(s3_server: MotoServer) -> None:
    with cachegen.store.open(s3_server.url("no-such-bucket"), **S3_CREDENTIALS) as s:
        for op in (lambda: s.put("k", b"v"), lambda: s.get("k")):
            with pytest.raises(StoreConfigError, match="'no-such-bucket' does not exist"):
                op()


def test_unreachable_redis_is_unavailable() -> None:
    with cachegen.store.open(f"redis://127.0.0.1:{free_port()}/0") as s:
        with pytest.raises(StoreUnavailable, match="Redis put"):
            s.put("k", b"v")


def test_default_file_store_is_under_user_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for url in (None, "", "file://"):
        with cachegen.store.open(url) as s:
            assert isinstance(s, FileStore) and s.root == tmp_path / "cachegen" / "store"
    with cachegen.store.open(str(tmp_path / "plain")) as s:
        assert s.root == tmp_path / "plain"


def test_cache_wraps_any_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with cachegen.store.open("memory://", cache_bytes=1 << 20) as s:
        assert isinstance(s, CachedStore)
        assert s.dir.is_relative_to(tmp_path / "cachegen" / "lru")
    with pytest.raises(ValueError, match="positive"):
        cachegen.store.open("memory://", cache_bytes=0)
