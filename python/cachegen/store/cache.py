"""A size-bounded, least-recently-used local file copy in front of a remote store.

Meant for content-addressed objects (what contexts write): a key's bytes never change in a way
that matters, so a local copy is never stale. Several processes may share one directory; each
keeps its own recency order, and a copy another process evicted is simply a miss.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from .base import Buffer, Store
from .file import TMP_PREFIX, write_atomic

_DIGEST = 16  # bytes of blake2b in front of each local copy, checked on every hit


def _digest(data: Buffer) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST).digest()


class CachedStore(Store):
    """Reads go to the local copy when it is there and intact; writes go to both."""

    def __init__(self, remote: Store, directory: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"cache size must be positive, got {max_bytes}")
        self.remote = remote
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.url = remote.url
        self.concurrency = remote.concurrency
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, int] = OrderedDict(self._scan())
        self._used = sum(self._lru.values())
        with self._lock:
            self._evict()

    def _scan(self) -> list[tuple[str, int]]:
        """Existing copies, least recently used first (hits bump a copy's mtime)."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith(TMP_PREFIX):
                    st = (path := Path(dirpath) / name).stat()
                    found.append(
                        (st.st_mtime_ns, path.relative_to(self.dir).as_posix(), st.st_size)
                    )
        return [(key, size) for _, key, size in sorted(found)]

    def _local(self, key: str) -> bytes | None:
        """The intact local copy of `key`, or None; a damaged copy is dropped."""
        path = self.dir / key
        try:
            raw = path.read_bytes()
        except OSError:
            self._forget(key)
            return None
        data = raw[_DIGEST:]
        if len(raw) < _DIGEST or _digest(data) != raw[:_DIGEST]:
            path.unlink(missing_ok=True)
            self._forget(key)
            return None
        os.utime(path)  # recency survives restarts through the mtime
        with self._lock:
            self._lru[key] = len(raw)
            self._lru.move_to_end(key)
        return data

    def _remember(self, key: str, data: Buffer) -> None:
        size = len(data) + _DIGEST
        if size > self.max_bytes:
            return
        try:
            write_atomic(self.dir / key, _digest(data) + bytes(data))
        except OSError:
            return  # a full or read-only cache disk only costs hits
        with self._lock:
            self._used += size - self._lru.pop(key, 0)
            self._lru[key] = size
            self._evict()

    def _forget(self, key: str) -> None:
        with self._lock:
            self._used -= self._lru.pop(key, 0)

    def _evict(self) -> None:
        while self._used > self.max_bytes and self._lru:
            key, size = self._lru.popitem(last=False)
            self._used -= size
            (self.dir / key).unlink(missing_ok=True)

    def _put(self, key: str, data: Buffer) -> None:
        self.remote.put(key, data)
        self._remember(key, data)  # write-through: what was just saved is usually read soon

    def _get(self, key: str) -> bytes:
        data = self._local(key)
        if data is None:
            data = self.remote.get(key)
            self._remember(key, data)
        return data

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        data = self._local(key)
        return data[start:end] if data is not None else self.remote.get_range(key, start, end)

    def _exists(self, key: str) -> bool:
        return self.remote.exists(key)

    def _delete(self, key: str) -> None:
        self.remote.delete(key)
        (self.dir / key).unlink(missing_ok=True)
        self._forget(key)

    def _list(self, prefix: str) -> Iterable[str]:
        return self.remote.list(prefix)

    def close(self) -> None:
        self.remote.close()
        super().close()
