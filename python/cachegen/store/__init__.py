"""Object transport: `open(url)` gives a `Store`, a flat key -> bytes store (local files,
memory, S3, Redis), optionally behind a local LRU copy. What goes into it, and how whole
contexts are laid out as chunked, multi-level objects, is `cachegen.context`'s business.

    store = cachegen.store.open("s3://bucket/kv?endpoint=http://127.0.0.1:9000")
    store.put("a/b", b"bytes"); store.get("a/b")
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cachegen.paths import user_cache_dir

from .base import ObjectInfo, Store
from .cache import CachedStore
from .errors import (
    ContextMissing,
    InvalidKey,
    ObjectCorrupted,
    ObjectMissing,
    ObjectUnauthenticated,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
)
from .file import FileStore
from .memory import MemoryStore
from .redact import redact_url
from .throttle import ThrottledStore

__all__ = [
    "CachedStore",
    "ContextMissing",
    "FileStore",
    "InvalidKey",
    "MemoryStore",
    "ObjectInfo",
    "ObjectCorrupted",
    "ObjectMissing",
    "ObjectUnauthenticated",
    "Store",
    "StoreConfigError",
    "StoreError",
    "StoreUnavailable",
    "ThrottledStore",
    "open",
]

_SECRETS = {"access_key_id", "secret_access_key", "session_token"}


def open(
    url: str | None = None,
    *,
    cache_bytes: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Store:
    """Open the store that `url` names; with no URL, the default file store.

    URLs: ``file:///abs/path``, ``memory://``, ``s3://bucket/prefix?endpoint=...&region=...``
    (options: see `cachegen.store.s3.S3Options`), ``redis://host:port/db`` or ``rediss://``
    (options: see `cachegen.store.redis.RedisStore`). Error messages and the store's `url`
    never show a password or key from the URL or the options. With `cache_bytes`, reads are
    served from a local LRU file copy of at most that many bytes, kept in `cache_dir` (default:
    under the user cache directory).
    """
    store = _open_backend(url or "", options)
    if cache_bytes is None:
        return store
    if cache_dir is None:
        tag = hashlib.blake2b(store.url.encode(), digest_size=8).hexdigest()
        cache_dir = user_cache_dir() / "lru" / tag
    return CachedStore(store, cache_dir, cache_bytes)


def _open_backend(url: str, options: dict[str, Any]) -> Store:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise StoreConfigError(f"malformed store URL {redact_url(url)!r}") from None
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        _no_options(url, options, parts.query)
        if parts.netloc or (url and parts.path and not parts.path.startswith("/")):
            raise StoreConfigError(
                f"file store URLs need an absolute path (file:///path): {redact_url(url)!r}"
            )
        return FileStore(parts.path or None)
    if scheme == "memory":
        _no_options(url, options, parts.query)
        return MemoryStore()
    if scheme == "s3":
        return _open_s3(url, parts.netloc, parts.path, parts.query, options)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStore

        known = set(inspect.signature(RedisStore).parameters) - {"url"}
        unknown = set(options) - known
        if unknown:
            raise StoreConfigError(
                f"unknown Redis store options {sorted(unknown)}; known: {sorted(known)}"
            )
        return RedisStore(url, **options)
    raise StoreConfigError(
        f"unsupported store URL {redact_url(url)!r}: use file:///path, memory://, "
        "s3://bucket/prefix or redis://host:port/db"
    )


def _no_options(url: str, options: dict[str, Any], query: str) -> None:
    if options or query:
        raise StoreConfigError(f"{redact_url(url) or 'the default store'} takes no options")


def _open_s3(url: str, bucket: str, path: str, query: str, options: dict[str, Any]) -> Store:
    from .s3 import S3Options, S3Store

    fields = {f.name: f for f in dataclasses.fields(S3Options)}
    params = dict(parse_qsl(query, keep_blank_values=True))
    if _SECRETS & set(params) or "@" in bucket:
        raise StoreConfigError("put S3 credentials in options or environment, not in the URL")
    unknown = (set(params) | set(options)) - set(fields)
    if unknown:
        raise StoreConfigError(f"unknown S3 options {sorted(unknown)}; known: {sorted(fields)}")
    if not bucket:
        raise StoreConfigError(
            f"S3 URL needs a bucket: s3://bucket/prefix, got {redact_url(url)!r}"
        )
    merged = {k: _parse(v, fields[k].default) for k, v in params.items()} | options
    return S3Store(bucket, path, S3Options(**merged))


def _parse(text: str, default: object) -> object:
    """Read a URL query value as the type of the option's default."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes")
        return type(default)(text) if default is not None else text
    except ValueError as e:
        raise StoreConfigError(f"bad S3 option value {text!r}") from e
