"""`memory://`: a process-local store, for tests and for caching within one process."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .base import Buffer, Store
from .errors import ObjectMissing


class MemoryStore(Store):
    """Objects in a dict; each `open("memory://")` is a new, empty store."""

    cheap_ranges = False

    def __init__(self) -> None:
        self.url = "memory://"
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _put(self, key: str, data: Buffer) -> None:
        blob = bytes(data)  # copy first: a caller's buffer may change after put returns
        with self._lock:
            self._objects[key] = blob

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

    def _list(self, prefix: str) -> Iterable[str]:
        with self._lock:
            return [k for k in self._objects if k.startswith(prefix)]
