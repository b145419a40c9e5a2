"""`redis://host:port/db`: objects as Redis strings (each at most 512 MB, Redis' limit)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import SplitResult, parse_qsl, urlsplit

import redis as _redis

from .base import Buffer, ObjectInfo, Store, check_prefix
from .errors import ObjectMissing, StoreConfigError, StoreUnavailable
from .redact import Redactor, redact_url


def _password(parts: SplitResult) -> str | None:
    """The URL's password, from its user info or its query string."""
    query = dict(parse_qsl(parts.query))
    return parts.password or query.get("password")


class RedisStore(Store):
    """Keys live under an optional `prefix` so a database can be shared with other data.

    Every request is bounded: `connect_timeout` seconds to connect, `timeout` seconds for a
    reply. ``rediss://`` verifies the server's certificate and host name against the system's
    CAs, or against the PEM CAs in `ca_file`; `cert_file`/`key_file` give a client certificate.
    The URL's password never appears in `url`, reprs or error messages.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "",
        concurrency: int = 8,
        *,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.url = redact_url(url)
        parts = urlsplit(url)
        self._redact = Redactor.of(_password(parts))
        if parts.scheme != "unix" and not re.fullmatch(r"(/\d+)?/?", parts.path):
            raise StoreConfigError(
                f"bad Redis URL {self.url!r}: the path must be a database number"
            )
        if min(connect_timeout, timeout) <= 0:
            raise StoreConfigError("Redis timeouts must be positive")
        tls = {
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": ca_file,
            "ssl_certfile": cert_file,
            "ssl_keyfile": key_file,
        }
        if parts.scheme != "rediss" and (ca_file or cert_file or key_file):
            raise StoreConfigError("ca_file, cert_file and key_file need a rediss:// URL")
        try:
            # The pool grows to `concurrency` connections for the batched calls.
            self._r = _redis.Redis.from_url(
                url,
                max_connections=max(concurrency, 2) * 2,
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
                **(tls if parts.scheme == "rediss" else {}),
            )
        except ValueError as e:
            raise StoreConfigError(
                self._redact(f"bad Redis URL {self.url!r}: {e}")
            ) from self._redact.cause(e)
        prefix = check_prefix(prefix.strip("/"))
        self.prefix = f"{prefix}/" if prefix else ""
        self.concurrency = concurrency

    @contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except _redis.AuthenticationError as e:
            msg = f"Redis {op} {key!r} at {self.url}: {e}"
            raise StoreConfigError(self._redact(msg)) from self._redact.cause(e)
        except _redis.RedisError as e:
            msg = f"Redis {op} {key!r} at {self.url} failed: {e}"
            raise StoreUnavailable(self._redact(msg)) from self._redact.cause(e)

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

    def _scan(self, prefix: str) -> list[ObjectInfo]:
        # Redis keeps no write time; OBJECT IDLETIME (since the last access) is never more
        # than the time since the last write. A key gone since the SCAN reports nothing.
        keys = self._list(prefix)
        with self._errors("scan", prefix):
            pipe = self._r.pipeline(transaction=False)
            for key in keys:
                pipe.strlen(self.prefix + key)
                pipe.object("idletime", self.prefix + key)
            replies = pipe.execute(raise_on_error=False)
        # An error instead of an idle time (an LFU eviction policy) reads as age 0: kept.
        return [
            ObjectInfo(key, size, float(idle) if isinstance(idle, int) else 0.0)
            for key, size, idle in zip(keys, replies[::2], replies[1::2], strict=True)
            if idle is not None and isinstance(size, int)
        ]

    def close(self) -> None:
        self._r.close()
        super().close()
