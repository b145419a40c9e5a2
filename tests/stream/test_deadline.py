"""Bounded reads: deadlines, hedges on a fresh store, definite answers passed straight on."""

from __future__ import annotations

import threading
import time

import pytest

from cachegen.store import MemoryStore, ObjectMissing, StoreUnavailable
from cachegen.stream import BandwidthEstimator, BoundedStore, DeadlineExceeded
from cachegen.stream.deadline import HEDGE_SLACK_S


class Flaky(MemoryStore):
    """A memory store whose first `stall` reads hang until released, and whose `fresh()` copy
    answers at once (new connections)."""

    def __init__(self, stall: int = 0, fail: int = 0) -> None:
        super().__init__()
        self.stall, self.fail, self.calls = stall, fail, 0
        self.release = threading.Event()
        self.fresh_made = 0

    def _get(self, key: str) -> bytes:
        self.calls += 1
        if self.calls <= self.fail:
            raise StoreUnavailable("connection reset")
        if self.calls <= self.fail + self.stall:
            self.release.wait(5)
        return super()._get(key)

    def fresh(self) -> MemoryStore:
        self.fresh_made += 1
        copy = MemoryStore()
        copy._objects = self._objects
        return copy


def bounded(store: MemoryStore) -> BoundedStore:
    return BoundedStore(store, BandwidthEstimator(prior_bps=1e9))


def test_a_stalled_read_is_hedged_and_the_fresh_store_kept() -> None:
    store = Flaky(stall=1)
    store.put("k", b"v")
    b = bounded(store)
    start = time.monotonic()
    data, seconds = b.read(lambda s: s.get("k"), 1, start + 2.0)
    whole = time.monotonic() - start
    assert data == b"v" and b.hedges == 1 and store.fresh_made == 1
    # The answering request's own time: the hedge started HEDGE_SLACK_S or more into the read,
    # so counting from the stalled request's start would give the whole read's time.
    assert seconds <= whole - HEDGE_SLACK_S
    assert b.inner is not store  # later reads go to the new connections
    store.release.set()


def test_a_failed_read_is_hedged_at_once() -> None:
    store = Flaky(fail=1)
    store.put("k", b"v")
    b = bounded(store)
    assert b.read(lambda s: s.get("k"), 1, time.monotonic() + 2.0)[0] == b"v"
    assert b.hedges == 1


def test_definite_answers_are_not_hedged() -> None:
    store = Flaky()
    b = BoundedStore(store, BandwidthEstimator(prior_bps=1e3))  # 10 s predicted: hedge at 30 s
    with pytest.raises(ObjectMissing):
        b.read(lambda s: s.get("absent"), 10_000, time.monotonic() + 60.0)
    assert b.hedges == 0 and store.calls == 1


def test_deadline_when_every_attempt_stalls() -> None:
    store = Flaky(stall=2)
    store.fresh = lambda: store  # no fresh connections to be had: the hedge stalls too
    store.put("k", b"v")
    b = bounded(store)
    b.set_budget(0.3)
    with pytest.raises(DeadlineExceeded):
        b.get("k")  # the Store interface takes the budget's deadline
    store.release.set()
    with pytest.raises(DeadlineExceeded):
        b.read(lambda s: s.get("k"), 1, time.monotonic() - 1)  # no time left at all
