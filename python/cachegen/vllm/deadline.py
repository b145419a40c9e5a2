"""A store whose reads give up after a deadline, whatever the backend's own timeouts.

A store that accepts connections and never answers must cost a request at most the configured
timeout: each read runs in a daemon thread and is abandoned (raising `StoreUnavailable`) when the
deadline passes. An abandoned read holds only its own thread and buffer, never the engine's KV
blocks, so the request goes on (vLLM recomputes what was not loaded).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from cachegen.store.base import Buffer, Store
from cachegen.store.errors import StoreUnavailable

T = TypeVar("T")


def call_with_deadline(fn: Callable[[], T], seconds: float, what: str) -> T:
    """`fn()`, or `StoreUnavailable` if it has not returned within `seconds`."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, name="cachegen-deadline", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise StoreUnavailable(f"{what}: no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class DeadlineStore(Store):
    """`inner` with every read bounded by `seconds`; writes pass straight through."""

    def __init__(self, inner: Store, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds
        self.url = inner.url
        self.concurrency = inner.concurrency

    def _get(self, key: str) -> bytes:
        return call_with_deadline(lambda: self.inner.get(key), self.seconds, f"get {key}")

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        return call_with_deadline(
            lambda: self.inner.get_range(key, start, end), self.seconds, f"get {key}"
        )

    def _exists(self, key: str) -> bool:
        return call_with_deadline(lambda: self.inner.exists(key), self.seconds, f"exists {key}")

    def _put(self, key: str, data: Buffer) -> None:
        self.inner.put(key, data)

    def _delete(self, key: str) -> None:
        self.inner.delete(key)

    def _list(self, prefix: str) -> Iterable[str]:
        return self.inner.list(prefix)
