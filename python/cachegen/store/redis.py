"""`redis://host:port/db`: objects as Redis strings (each at most 512 MB, Redis' limit)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis as _redis

from .base import Buffer, Store, check_prefix
from .errors import ObjectMissing, StoreConfigError, StoreUnavailable


class RedisStore(Store):
    """Keys live under an optional `prefix` so a database can be shared with other data."""

    def __init__(self, url: str, prefix: str = "", concurrency: int = 8) -> None:
        parts = urlsplit(url)
        if parts.scheme != "unix" and not re.fullmatch(r"(/\d+)?/?", parts.path):
            raise StoreConfigError(f"bad Redis URL {url!r}: the path must be a database number")
        try:
            # The pool grows to `concurrency` connections for the batched calls.
            self._r = _redis.Redis.from_url(url, max_connections=max(concurrency, 2) * 2)
        except ValueError as e:
            raise StoreConfigError(f"bad Redis URL {url!r}: {e}") from e
        self.url = url
        prefix = check_prefix(prefix.strip("/"))
        self.prefix = f"{prefix}/" if prefix else ""
        self.concurrency = concurrency

    @contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except _redis.AuthenticationError as e:
            raise StoreConfigError(f"Redis {op} {key!r} at {self.url}: {e}") from e
        except _redis.RedisError as e:
            raise StoreUnavailable(f"Redis {op} {key!r} at {self.url} failed: {e}") from e

    def _put(self, key: str, data: Buffer) -> None:
        with self._errors("put", key):
            self._r.set(self.prefix + key, bytes(data))  # SET replaces the value atomically

    def _get(self, key: str) -> bytes:
        with self._errors("get", key):
            data = self._r.get(self.prefix + key)
        if data is None:
            raise ObjectMissing(key)
        return data

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        with self._errors("get_range", key):
            # GETRANGE answers "" for a missing key too, so ask both in one round trip.
            pipe = self._r.pipeline(transaction=True)
            pipe.exists(self.prefix + key)
            pipe.getrange(self.prefix + key, start, end - 1)  # inclusive end
            found, data = pipe.execute()
        if not found:
            raise ObjectMissing(key)
        return data

    def _exists(self, key: str) -> bool:
        with self._errors("exists", key):
            return bool(self._r.exists(self.prefix + key))

    def _delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._r.delete(self.prefix + key)

    def _list(self, prefix: str) -> list[str]:
        # Keys and prefixes are checked to hold no glob characters, so MATCH is a plain prefix.
        n = len(self.prefix)
        with self._errors("list", prefix):
            return [
                k.decode()[n:]
                for k in self._r.scan_iter(match=f"{self.prefix}{prefix}*", count=1000)
            ]

    def close(self) -> None:
        self._r.close()
        super().close()
