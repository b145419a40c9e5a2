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
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

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
