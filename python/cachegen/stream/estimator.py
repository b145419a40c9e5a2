"""Bandwidth estimation from the loader's own transfers.

Each fetch gives a sample: bytes over seconds from request to last byte, so a request's fixed
cost (round trip, server overhead) is folded in and the estimate is the throughput the loader
actually gets for chunk-sized objects. The estimate is the median of the recent samples, which
one slow request (the first one pays for connection set-up) cannot drag down; but a sample far
below the median is believed at once, because a sudden drop must change the next chunk's plan,
not the one three chunks later.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass
class BandwidthEstimator:
    """Throughput (bytes/s) of the link to a store.

    Attributes:
        prior_bps: the estimate before any sample (None: unknown, the loader then probes).
        window: recent samples the median is taken over.
        drop_ratio: a sample below ``drop_ratio`` x the median replaces the median at once.
    """

    prior_bps: float | None = None
    window: int = 5
    drop_ratio: float = 0.5
    _rates: deque[float] = field(default_factory=deque, init=False, repr=False)

    def add(self, nbytes: int, seconds: float) -> None:
        """Record one transfer of `nbytes` that took `seconds`."""
        self._rates.append(nbytes / max(seconds, 1e-6))
        while len(self._rates) > self.window:
            self._rates.popleft()

    @property
    def samples(self) -> int:
        """Samples in the window."""
        return len(self._rates)

    @property
    def bps(self) -> float | None:
        """Current estimate in bytes/s; None while unknown."""
        rates = list(self._rates)
        if not rates:
            return self.prior_bps
        # With few samples the first may be the cold start: leave it out of the median until
        # enough later ones outvote it.
        median = statistics.median(rates[1:] if 2 <= len(rates) <= 3 else rates)
        latest = rates[-1]
        return latest if latest < self.drop_ratio * median else median
