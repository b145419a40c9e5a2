"""`memory://`: a process-local store, for tests and for caching within one process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from .base import Buffer, ObjectInfo, Store
from .errors import ObjectMissing


class MemoryStore(Store):
    """Objects in a dict; each `open("memory://")` is a new, empty store."""

    cheap_ranges = False

    def __init__(self) -> None:
        self.url = "memory://"
        self._objects: dict[str, bytes] = {}
        self._written: dict[str, float] = {}  # key -> time.monotonic() of its last put
        self._lock = threading.Lock()

    def _put(self, key: str, data: Buffer) -> None:
        blob = bytes(data)  # copy first: a caller's buffer may change after put returns
        with self._lock:
            self._objects[key] = blob
            self._written[key] = time.monotonic()

    def _get(self, key: str) -> bytes:
        with self._lock:
            blob = self._objects.get(key)
        if blob is None:
            raise ObjectMissing(key)
        return blob

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        return self._get(key)[start:end]

    def _exists(self, key: str) -> bool:
        with self._lock:
            return key in self._objects

    def _delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)
            self._written.pop(key, None)

    def _list(self, prefix: str) -> Iterable[str]:
        with self._lock:
            return [k for k in self._objects if k.startswith(prefix)]

    def _scan(self, prefix: str) -> Iterable[ObjectInfo]:
        now = time.monotonic()
        with self._lock:
            return [
                ObjectInfo(k, len(v), now - self._written[k])
                for k, v in self._objects.items()
                if k.startswith(prefix)
            ]
