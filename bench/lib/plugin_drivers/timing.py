"""Timing shared by the plug-in drivers (run as scripts in the engines' environments, so this
folder is on their import path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each of `fns`, run in interleaved rounds (drift hits all alike)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]
