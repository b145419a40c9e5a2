"""An emulated link in front of a store: reads are paced to a bandwidth and pay a latency.

For the demo and for tests that need a link of a given speed without a network namespace.
Concurrent reads share the bandwidth, as on a real link. Writes are not throttled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from .base import Buffer, ObjectInfo, Store


class ThrottledStore(Store):
    """`inner`, read through a link of `bps` bytes/s and `latency_s` per request.

    `bps` may be changed while loads run (a sudden drop, for instance).
    """

    def __init__(self, inner: Store, bps: float, latency_s: float = 0.0) -> None:
        self.inner = inner
        self.bps = bps
        self.latency_s = latency_s
        self.url = f"throttled+{inner.url}"
        self.concurrency = inner.concurrency
        self._lock = threading.Lock()
        self._busy_until = 0.0

    def _pace(self, nbytes: int, started: float) -> None:
        """Sleep until `nbytes` asked for at `started` would have arrived."""
        with self._lock:
            begin = max(started, self._busy_until)
            self._busy_until = begin + nbytes / self.bps
            done = self._busy_until + self.latency_s
        time.sleep(max(0.0, done - time.perf_counter()))

    def _get(self, key: str) -> bytes:
        started = time.perf_counter()
        data = self.inner.get(key)
        self._pace(len(data), started)
        return data

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        started = time.perf_counter()
        data = self.inner.get_range(key, start, end)
        self._pace(len(data), started)
        return data

    def _put(self, key: str, data: Buffer) -> None:
        self.inner.put(key, data)

    def _exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def _delete(self, key: str) -> None:
        self.inner.delete(key)

    def _list(self, prefix: str) -> Iterable[str]:
        return self.inner.list(prefix)

    def _scan(self, prefix: str) -> Iterable[ObjectInfo]:
        return self.inner.scan(prefix)

    def close(self) -> None:
        self.inner.close()
        super().close()
