"""Interleaved timing rounds for the speed benchmarks: every case runs once per round, so all of
them see the same machine state (the machine is shared), and a run stops adding rounds before a
deadline."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Case:
    """One timed operation; ``times`` gets one entry per round."""

    cache: str
    op: str
    threads: int
    items: int  # elements (ours) or symbols (torchac) per call
    fn: Callable[[], Any]
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # process CPU time, all threads

    def run(self) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        result = self.fn()
        self.times.append(time.perf_counter() - t0)
        self.cpu_times.append(time.process_time() - c0)
        return result

    def row(self) -> dict[str, Any]:
        median = statistics.median(self.times)
        return {
            "cache": self.cache,
            "op": self.op,
            "threads": self.threads,
            "items": self.items,
            "rounds": len(self.times),
            "median_s": median,
            "min_s": min(self.times),
            "times_s": self.times,
            "cpu_s_median": statistics.median(self.cpu_times),
            "cpu_times_s": self.cpu_times,
            "items_per_cpu_s": self.items / statistics.median(self.cpu_times),
            "items_per_s": self.items / median,
            "gb_per_s_fp16": 2 * self.items / median / 1e9,
        }


def run_rounds(cases: list[Case], rounds: int, deadline: float) -> None:
    """One untimed warm-up call of each case, then ``rounds`` interleaved timed rounds; once two
    are done, no round starts that would end past ``deadline`` (a ``perf_counter`` time)."""
    for c in cases:
        c.fn()
    last = 0.0
    for i in range(rounds):
        start = time.perf_counter()
        if i >= 2 and start + last > deadline:
            break
        for c in cases:
            c.run()
        last = time.perf_counter() - start


def median_seconds(fn: Callable[[], Any], repeats: int = 5) -> float:
    """The median wall time of `repeats` calls of `fn`, one after another."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
