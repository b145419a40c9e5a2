"""Trace-driven simulation of loads: the controller and the baselines over bandwidth traces.

A `Trace` is a piecewise-constant link rate over time; a load is simulated with the same
pipeline model the planner uses (fetch stage, then in-order compute stage), but transfers take
the time the trace gives them, and the policies only learn the bandwidth from the transfers,
as a real loader does. Policies:

- `fixed(choice)`: every chunk the same option (text only, int8, one level);
- `cachegen_rule(slo)`: CacheGen's streamer: the SLO split evenly over chunks, per chunk the
  best level whose transfer fits its share at the last measured throughput, else text;
- `ours(slo)`: the loader's own `Controller`, re-planning after every chunk;
- `oracle(...)`: the best plan in hindsight (the trace known in advance), as a bound.

The policies are the objects the loader runs (`cachegen.stream.controller`): the simulator
replaces only the clock and the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .controller import CacheGenRule, Controller, fetch_lead, fixed
from .estimator import BandwidthEstimator
from .planner import TEXT, Choice, OptionTable, Planner, Policy, Step, best_plan, evaluate

__all__ = [
    "SimResult",
    "Trace",
    "cachegen_rule",
    "fixed",
    "oracle",
    "ours",
    "select",
    "simulate",
]


@dataclass(frozen=True)
class Trace:
    """Link rate `bps[k]` (bytes/s) from `times[k]` on (the last rate holds forever), plus a
    fixed `latency` per request (s). `times[0]` must be 0."""

    times: np.ndarray
    bps: np.ndarray
    latency: float = 0.0
    name: str = ""

    @classmethod
    def constant(cls, bps: float, latency: float = 0.0, name: str = "") -> Trace:
        return cls(np.array([0.0]), np.array([float(bps)]), latency, name)

    def _cumulative(self) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(np.diff(self.times) * self.bps[:-1])])

    def bytes_by(self, t: np.ndarray) -> np.ndarray:
        """Bytes the link can have delivered between time 0 and `t`."""
        cum = self._cumulative()
        k = np.clip(np.searchsorted(self.times, t, side="right") - 1, 0, len(self.times) - 1)
        return cum[k] + (t - self.times[k]) * self.bps[k]

    def time_of(self, nbytes: np.ndarray) -> np.ndarray:
        """When the link has delivered `nbytes` bytes since time 0."""
        cum = self._cumulative()
        k = np.clip(np.searchsorted(cum, nbytes, side="right") - 1, 0, len(cum) - 1)
        return self.times[k] + (nbytes - cum[k]) / self.bps[k]

    def finish(self, start: np.ndarray, nbytes: np.ndarray, requests: np.ndarray) -> np.ndarray:
        """End of transfers begun at `start` (the `Link` protocol)."""
        begin = start + requests * self.latency
        done = self.time_of(self.bytes_by(begin) + nbytes)
        return np.where(nbytes > 0, done, begin)


@dataclass(frozen=True)
class SimResult:
    """One simulated load."""

    ttft: float
    nbytes: float
    #: Sum over chunks of KL x tokens; divide by tokens for the mean KL per token.
    loss: float
    tokens: int
    choices: tuple[Choice, ...]
    met: bool

    @property
    def mean_kl(self) -> float:
        return self.loss / self.tokens


def select(table: OptionTable, choices: Sequence[Choice]) -> OptionTable:
    """The columns of `table` for `choices`, in that order."""
    cols = [table.choices.index(c) for c in choices]
    return OptionTable(
        tuple(choices),
        table.nbytes[:, cols],
        table.requests[:, cols],
        table.compute_s[:, cols],
        table.loss[:, cols],
        table.tokens,
    )


def simulate(
    table: OptionTable,
    trace: Trace,
    policy: Policy,
    slo_s: float,
    *,
    prefix: bool = False,
    estimator: BandwidthEstimator | None = None,
) -> SimResult:
    """Run one load of `table`'s chunks over `trace`, choosing with `policy`.

    `prefix`: the engine takes a prefix only, so the first text chunk makes the rest text.
    `estimator`: the bandwidth known at the start (default: nothing known yet).
    """
    estimator = estimator or BandwidthEstimator()
    estimator.begin_load()
    now, cpu, nbytes, loss = 0.0, 0.0, 0.0, 0.0
    choices: list[Choice] = []
    for i in range(len(table)):
        # The simulator knows the compute schedule exactly; the loader predicts it.
        if prefix and TEXT in choices:
            choice: Choice = TEXT
        else:
            # The loader decides no earlier than the fetch must start, as here.
            now = max(now, cpu - fetch_lead(table.rest(i), estimator))
            choice = policy(Step(i, now, max(now, cpu), table.rest(i), estimator))
        c = table.choices.index(choice)
        size = float(table.nbytes[i, c])
        end = float(trace.finish(np.array(now), np.array(size), table.requests[i, c]))
        if size > 0:
            estimator.add(int(size), end - now)
        cpu = max(cpu, end) + float(table.compute_s[i, c])
        now, nbytes, loss = end, nbytes + size, loss + float(table.loss[i, c])
        choices.append(choice)
    tokens = int(table.tokens.sum())
    return SimResult(cpu, nbytes, loss, tokens, tuple(choices), cpu <= slo_s)


def ours(slo_s: float, margin: float = 0.05, prefix: bool = False) -> Controller:
    """The controller the loader runs, as a policy."""
    return Controller(slo_s, margin, prefix)


def cachegen_rule(slo_s: float, chunks: int) -> Policy:
    """CacheGen's streamer (see `CacheGenRule`)."""
    return CacheGenRule(slo_s, chunks)


def oracle(table: OptionTable, trace: Trace, slo_s: float, prefix: bool = False) -> SimResult:
    """The best plan knowing the trace: least loss within the SLO, else the fastest (the
    planner's candidates and ranking, with the true link instead of an estimate)."""
    plans = Planner(slo_s, margin=0.0, prefix=prefix).candidates(table)
    finish, loss = evaluate(plans, table, 0.0, 0.0, trace)
    best, met = best_plan(finish, loss, slo_s)
    rows = np.arange(len(table))
    nbytes = float(table.nbytes[rows, plans[best]].sum())
    choices = tuple(table.choices[int(c)] for c in plans[best])
    ttft, tokens = float(finish[best]), int(table.tokens.sum())
    return SimResult(ttft, nbytes, float(loss[best]), tokens, choices, met)
