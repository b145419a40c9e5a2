"""Bandwidth estimation from the loader's own transfers.

Each fetch gives a sample: bytes over seconds from request to last byte, so a request's fixed
cost (round trip, server overhead) is folded in and the estimate is the throughput the loader
actually gets for chunk-sized objects. The estimate is the harmonic mean of the recent samples
(transfer time goes as 1/throughput, so this is the rate that predicts time right on a noisy
link), leaving out the load's first sample once there is a second: the first request pays for
connection set-up and would otherwise drag the estimate down. A sample far below the mean is
believed at once, because a sudden drop must change the next chunk's plan, not the one three
chunks later.

Planning uses a lower bound, not the mean: `planning_bps(n)` is a rate the next `n` transfers
should beat about nine times in ten, from the spread of the recent samples, so a noisy link
gets a safety margin that shrinks as more transfers average the noise out.

One estimator per store lives for the whole process (`estimator_for`) and is saved next to the
cost calibration, so a load starts from what the previous one measured, even in a new process,
instead of probing. Each load still leaves out its own first sample (`begin_load`).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from cachegen.store import Store

from .costs import default_cache_file, read_json, write_json

#: One-sided normal quantile of the planning bound (0.9).
_Z = 1.28
#: Spread assumed until three samples can measure it: caution while little is known.
_UNKNOWN_SPREAD = 0.5


@dataclass
class BandwidthEstimator:
    """Throughput (bytes/s) of the link to a store.

    Attributes:
        prior_bps: the estimate before any sample (None: unknown, the loader then probes).
        window: recent samples the mean is taken over.
        drop_ratio: a sample below ``drop_ratio`` x the mean replaces the mean at once.
    """

    prior_bps: float | None = None
    window: int = 5
    drop_ratio: float = 0.5
    _rates: deque[float] = field(default_factory=deque, init=False, repr=False)
    _first: float | None = field(default=None, init=False, repr=False)

    def begin_load(self) -> None:
        """A new load starts: its first transfer may pay for a connection again."""
        self._first = None

    def add(self, nbytes: int, seconds: float) -> None:
        """Record one transfer of `nbytes` that took `seconds`."""
        rate = nbytes / max(seconds, 1e-6)
        if self._first is None:
            self._first = rate  # stands alone until a second sample replaces it
            return
        self._rates.append(rate)
        while len(self._rates) > self.window:
            self._rates.popleft()

    @property
    def bps(self) -> float | None:
        """Current estimate in bytes/s; None while unknown."""
        if not self._rates:
            return self._first if self._first is not None else self.prior_bps
        mean = len(self._rates) / sum(1 / r for r in self._rates)
        latest = self._rates[-1]
        return latest if latest < self.drop_ratio * mean else mean

    @property
    def spread(self) -> float:
        """Coefficient of variation of the recent samples' seconds per byte."""
        if len(self._rates) < 3:
            return _UNKNOWN_SPREAD
        per_byte = [1 / r for r in self._rates]
        mean = sum(per_byte) / len(per_byte)
        var = sum((x - mean) ** 2 for x in per_byte) / (len(per_byte) - 1)
        return math.sqrt(var) / mean

    def planning_bps(self, transfers: int) -> float | None:
        """A rate the next `transfers` transfers together should beat ~90% of the time."""
        bps = self.bps
        if bps is None:
            return None
        return bps / (1 + _Z * self.spread / math.sqrt(max(transfers, 1)))

    def samples(self) -> list[float]:
        """The recent rates (bytes/s), oldest first; the first sample if it is alone."""
        if self._rates:
            return list(self._rates)
        return [self._first] if self._first is not None else []

    def restore(self, rates: list[float]) -> None:
        """Start from `rates` (from `samples`) as if measured by earlier loads."""
        self._rates = deque(float(r) for r in rates[-self.window :] if r > 0)


#: Stores whose estimates the file keeps (the most recently saved): temporary stores come and go.
_KEEP_STORES = 64
_ESTIMATORS: dict[str, BandwidthEstimator] = {}
_LOCK = threading.Lock()


def bandwidth_file() -> Path:
    """``bandwidth.json`` beside the cost calibration file."""
    return default_cache_file().with_name("bandwidth.json")


def _store_key(store: Store) -> str:
    # A digest, not the URL: URLs may carry credentials, and the file needs no more.
    return hashlib.sha256(store.url.encode()).hexdigest()[:24]


def estimator_for(store: Store) -> BandwidthEstimator:
    """The process-wide estimator of `store`'s link, started from the saved one if any."""
    key = _store_key(store)
    with _LOCK:
        est = _ESTIMATORS.get(key)
        if est is None:
            est = _ESTIMATORS[key] = BandwidthEstimator()
            entry = read_json(bandwidth_file()).get(key)
            if isinstance(entry, dict) and isinstance(entry.get("rates"), list):
                try:
                    est.restore([float(r) for r in entry["rates"]])
                except (TypeError, ValueError):
                    pass  # a damaged entry: measure afresh
        return est


def save_estimate(store: Store) -> None:
    """Persist `store`'s estimator for the next process."""
    key = _store_key(store)
    with _LOCK:
        est = _ESTIMATORS.get(key)
        if est is None or not est.samples():
            return
        path = bandwidth_file()
        table = read_json(path)
        table[key] = {"rates": est.samples(), "saved": time.time()}
        newest = sorted(table, key=lambda k: _saved(table[k]), reverse=True)[:_KEEP_STORES]
        write_json(path, {k: table[k] for k in newest})


def _saved(entry: object) -> float:
    saved = entry.get("saved") if isinstance(entry, dict) else None
    return float(saved) if isinstance(saved, int | float) else 0.0


def forget_estimates() -> None:
    """Drop the process's estimators (tests; the saved file stays)."""
    with _LOCK:
        _ESTIMATORS.clear()
