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
instead of probing. Each load still leaves out its own first sample (`begin_load`) when it is
slower than the estimate, unless it is the load's only one (`end_load`): a load of one chunk
measures the link too, and a first sample faster than the estimate counts at once (a
connection set-up can only have slowed it). Samples expire
after `max_age_s`: a link measured long ago is unknown again, not slow or fast forever (with
nothing live the estimate is the prior, and the planners probe).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
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
        prior_bps: the estimate while no sample is live (None: unknown, the loader then probes).
        window: recent samples the mean is taken over.
        drop_ratio: a sample below ``drop_ratio`` x the mean replaces the mean at once.
        max_age_s: seconds a sample counts for.
        clock: wall-clock seconds (samples are saved with their times for other processes).
    """

    prior_bps: float | None = None
    window: int = 5
    drop_ratio: float = 0.5
    max_age_s: float = 600.0
    clock: Callable[[], float] = time.time
    #: (time, rate) of the recent samples, oldest first.
    _rates: deque[tuple[float, float]] = field(default_factory=deque, init=False, repr=False)
    _first: tuple[float, float] | None = field(default=None, init=False, repr=False)
    _load_samples: int = field(default=0, init=False, repr=False)

    def begin_load(self) -> None:
        """A new load starts: its first transfer may pay for a connection again."""
        self._first, self._load_samples = None, 0

    def end_load(self) -> None:
        """The load is over: a lone sample is kept (the only measurement of that load)."""
        if self._load_samples == 1 and self._first is not None:
            self._append(self._first)
        self.begin_load()

    @property
    def load_samples(self) -> int:
        """Transfers recorded since `begin_load`: 0 while the estimate is all from before."""
        return self._load_samples

    def add(self, nbytes: int, seconds: float, *, probe: bool = False) -> None:
        """Record one transfer of `nbytes` that took `seconds`.

        A `probe` (a fetch the estimate advised against) that beats the estimate replaces it:
        a too-low estimate stops the fetches that would correct it, while a too-high one is
        corrected by the next load's own measurements.
        """
        sample = (self.clock(), nbytes / max(seconds, 1e-6))
        self._load_samples += 1
        if probe and sample[1] > (self.bps or 0.0):
            self._rates.clear()
        elif self._load_samples == 1:
            known = self.bps
            if known is None or sample[1] <= known:
                # It may have paid for a connection: it stands alone until a second replaces it.
                self._first = sample
                return
            # Faster than the estimate: a connection set-up can only have slowed it.
        self._append(sample)

    def _append(self, sample: tuple[float, float]) -> None:
        self._rates.append(sample)
        while len(self._rates) > self.window:
            self._rates.popleft()

    def _live(self) -> list[float]:
        """The rates of the window's samples that have not expired, oldest first."""
        oldest = self.clock() - self.max_age_s
        return [r for t, r in self._rates if t >= oldest]

    def _live_first(self) -> float | None:
        first = self._first
        return first[1] if first and first[0] >= self.clock() - self.max_age_s else None

    def _mean(self) -> float | None:
        """Harmonic mean of the live samples; None if there are none."""
        rates = self._live()
        return len(rates) / sum(1 / r for r in rates) if rates else None

    @property
    def bps(self) -> float | None:
        """Current estimate in bytes/s; None while unknown."""
        mean = self._mean()
        if mean is None:
            first = self._live_first()
            return first if first is not None else self.prior_bps
        latest = self._live()[-1]
        return latest if latest < self.drop_ratio * mean else mean

    @property
    def spread(self) -> float:
        """Coefficient of variation of the recent samples' seconds per byte."""
        rates = self._live()
        if len(rates) < 3:
            return _UNKNOWN_SPREAD
        per_byte = [1 / r for r in rates]
        mean = sum(per_byte) / len(per_byte)
        var = sum((x - mean) ** 2 for x in per_byte) / (len(per_byte) - 1)
        return math.sqrt(var) / mean

    def planning_bps(self, transfers: int) -> float | None:
        """A rate the next `transfers` transfers together should beat ~90% of the time."""
        bps = self.bps
        if bps is None:
            return None
        return bps / (1 + _Z * self.spread / math.sqrt(max(transfers, 1)))

    def samples(self) -> list[tuple[float, float]]:
        """The window's (time, rate) samples, oldest first, and the current load's first
        while it is the only one."""
        first = [self._first] if self._first is not None and self._load_samples == 1 else []
        return list(self._rates) + first

    def restore(self, rates: list[float], times: list[float] | None = None) -> None:
        """Start from `rates` (bytes/s) measured at `times` (default: now), as if measured
        by earlier loads; expired ones are ignored."""
        now = self.clock()
        stamps = times if times is not None else [now] * len(rates)
        pairs = [(float(t), float(r)) for t, r in zip(stamps, rates, strict=True) if r > 0]
        self._rates = deque(pairs[-self.window :])


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
            _restore(est, read_json(bandwidth_file()).get(key))
        return est


def _restore(est: BandwidthEstimator, entry: object) -> None:
    """Samples saved by `save_estimate` (an entry without their times dates them all to its
    "saved" time); a damaged entry is ignored: the link is measured afresh."""
    if not isinstance(entry, dict) or not isinstance(entry.get("rates"), list):
        return
    rates = entry["rates"]
    times = entry.get("times", [_saved(entry)] * len(rates))
    try:
        est.restore([float(r) for r in rates], [float(t) for t in times])
    except (TypeError, ValueError):
        pass


def save_estimate(store: Store) -> None:
    """Persist `store`'s estimator for the next process."""
    key = _store_key(store)
    with _LOCK:
        est = _ESTIMATORS.get(key)
        if est is None or not est.samples():
            return
        path = bandwidth_file()
        table = read_json(path)
        samples = est.samples()
        table[key] = {
            "rates": [r for _, r in samples],
            "times": [t for t, _ in samples],
            "saved": time.time(),
        }
        newest = sorted(table, key=lambda k: _saved(table[k]), reverse=True)[:_KEEP_STORES]
        write_json(path, {k: table[k] for k in newest})


def _saved(entry: object) -> float:
    saved = entry.get("saved") if isinstance(entry, dict) else None
    return float(saved) if isinstance(saved, int | float) else 0.0


def forget_estimates() -> None:
    """Drop the process's estimators (tests; the saved file stays)."""
    with _LOCK:
        _ESTIMATORS.clear()
