"""Reads bounded by the load's budget: every request a load makes has a deadline, and a
request running well past what the bandwidth estimate predicts is hedged on fresh connections.

A blocking store call cannot be interrupted, so each read runs in a worker thread and the load
stops waiting for it at its deadline (the store clients release the GIL while they wait; an
abandoned call ends at the store's own timeout, off the load's path). A request stalled on a
dead pooled connection would otherwise hold the load for the store's whole timeout and
retries; the hedge goes out on a new client (`Store.fresh`), whose connections are new.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TypeVar

from cachegen.store import Store, StoreError, StoreUnavailable
from cachegen.store.base import Buffer
from cachegen.store.errors import ObjectCorrupted, ObjectMissing

from .estimator import BandwidthEstimator

T = TypeVar("T")

#: A read is hedged once it has run this many times its predicted duration ...
HEDGE_FACTOR = 4.0
#: ... and at least this long (small objects: the round trip, scheduling noise).
HEDGE_SLACK_S = 0.1


class DeadlineExceeded(StoreUnavailable):
    """A read did not finish within its share of the load's budget."""


def cause_of(error: BaseException) -> str:
    """The fallback cause of a failed read (see `cachegen.stream.report.CAUSES`)."""
    if isinstance(error, DeadlineExceeded):
        return "timeout"
    if isinstance(error, ObjectCorrupted):
        return "corrupt"
    if isinstance(error, ObjectMissing):
        return "missing"
    return "unavailable"


def _definite(error: BaseException) -> bool:
    """An answer, not a failure to get one: asking again cannot help."""
    return isinstance(error, StoreError) and not isinstance(error, StoreUnavailable)


def _spawn(fn: Callable[[], T]) -> Future[T]:
    """Run `fn` in a daemon thread: the load may stop waiting for it, the process exit too."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - delivered to the waiting reader
            future.set_exception(e)

    threading.Thread(target=run, name="cachegen-read", daemon=True).start()
    return future


class BoundedStore(Store):
    """`inner` for one load: reads end by a deadline, late ones are hedged.

    The `Store` methods (what `open_context` uses) take the deadline set by `set_budget`;
    `read` takes one per call. Writes pass through unbounded (a load makes none).
    """

    def __init__(self, inner: Store, estimator: BandwidthEstimator) -> None:
        self.inner = inner
        self.estimator = estimator
        self.url = inner.url
        self.concurrency = inner.concurrency
        self.cheap_ranges = inner.cheap_ranges
        self.deadline = math.inf
        self.hedges = 0
        self._lock = threading.Lock()
        self._fresh: list[Store] = []

    def set_budget(self, seconds: float) -> None:
        """Reads through the `Store` methods must end within `seconds` from now."""
        self.deadline = time.monotonic() + seconds

    def read(self, fn: Callable[[Store], T], nbytes: int, deadline: float) -> tuple[T, float]:
        """`fn(store)` by `deadline` (`time.monotonic` seconds), hedged once if late.

        `nbytes` is what the link must carry before the answer: the read's own bytes plus
        those of reads running beside it on the same link (the parts of one blob), since they
        share its bandwidth. Returns the result and the seconds the answering request took
        (from its own start, so a stall does not read as a slow link). Raises
        `DeadlineExceeded` at the deadline.
        """
        start = time.monotonic()
        if start >= deadline:
            raise DeadlineExceeded(f"no time left to read {nbytes} bytes")
        bps = self.estimator.bps
        expect = nbytes / bps if bps else 0.0
        hedge_at = start + min(max(HEDGE_FACTOR * expect, HEDGE_SLACK_S), (deadline - start) / 2)
        first = _spawn(lambda: fn(self.inner))
        started = {first: start}
        done = _first_success([first], hedge_at, raise_failure=False)
        if done is None:
            second_store = self._hedge_store()
            second = _spawn(lambda: fn(second_store))
            started[second] = time.monotonic()
            done = _first_success([first, second], deadline, raise_failure=True)
            if done is None:
                raise DeadlineExceeded(f"read of {nbytes} bytes not answered in time")
            if done is second:
                with self._lock:
                    self.inner = second_store  # the old client's connections stalled
        return done.result(), time.monotonic() - started[done]

    def _hedge_store(self) -> Store:
        store = self.inner.fresh()
        with self._lock:
            self.hedges += 1
            if store is not self.inner:
                self._fresh.append(store)
        return store

    # -- the Store interface, for open_context ---------------------------------------------
    def _bounded(self, fn: Callable[[Store], T], nbytes: int = 4096) -> T:
        return self.read(fn, nbytes, self.deadline)[0]

    def _get(self, key: str) -> bytes:
        return self._bounded(lambda s: s.get(key))

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        return self._bounded(lambda s: s.get_range(key, start, end), end - start)

    def _exists(self, key: str) -> bool:
        return self._bounded(lambda s: s.exists(key))

    def _list(self, prefix: str) -> Iterable[str]:
        return self._bounded(lambda s: s.list(prefix))

    def _put(self, key: str, data: Buffer) -> None:
        self.inner.put(key, data)

    def _delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        """Close the hedge clients this load made (never the caller's store)."""
        for store in self._fresh:
            store.close()
        self._fresh.clear()
        super().close()


def _first_success(
    futures: list[Future[T]], until: float, *, raise_failure: bool
) -> Future[T] | None:
    """The first of `futures` to succeed by `until`; None at `until`. A definite answer
    (missing, corrupted) is raised at once; a failure waits for the others, and when all
    have failed the first failure is raised if `raise_failure`, else None (hedge now)."""
    pending = set(futures)
    while pending:
        left = until - time.monotonic()
        if left <= 0:
            return None
        finished, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
        for f in finished:
            error = f.exception()
            if error is None:
                return f
            if _definite(error) or not isinstance(error, Exception):
                raise error
    if not raise_failure:
        return None
    error = futures[0].exception() or futures[-1].exception()
    if isinstance(error, StoreError):
        raise error
    raise StoreUnavailable(f"read failed: {error!r}") from error
