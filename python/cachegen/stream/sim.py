"""Trace-driven simulation of loads: the controller and the baselines over bandwidth traces.

A `Trace` is a piecewise-constant link rate over time; a load is simulated with the same
pipeline model the planner uses (fetch stage, then in-order compute stage), but transfers take
the time the trace gives them, and the policies only learn the bandwidth from the transfers,
as a real loader does. Policies:

- `fixed(choice)`: every chunk the same option (text only, int8, one level);
- `cachegen_rule(slo)`: CacheGen's streamer: the SLO split evenly over chunks, per chunk the
  best level whose transfer fits its share at the last measured throughput, else text;
- `ours(slo)`: the `Planner`, re-planning after every chunk;
- `oracle(...)`: the best plan in hindsight (the trace known in advance), as a bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .estimator import BandwidthEstimator
from .planner import (
    TEXT,
    Choice,
    ConstantLink,
    OptionTable,
    Planner,
    Policy,
    Step,
    candidate_plans,
    evaluate,
)


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


def simulate(table: OptionTable, trace: Trace, policy: Policy, slo_s: float) -> SimResult:
    """Run one load of `table`'s chunks over `trace`, choosing with `policy`."""
    estimator = BandwidthEstimator()
    now, cpu, nbytes, loss = 0.0, 0.0, 0.0, 0.0
    choices: list[Choice] = []
    for i in range(len(table)):
        # The simulator knows the compute schedule exactly; the loader predicts it.
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


def fixed(choice: Choice) -> Policy:
    """Every chunk `choice`."""
    return lambda step: choice


def _probe(step: Step) -> Choice:
    """Before any measurement: the middle level by size, as the loader does."""
    sizes = step.table.nbytes[0]
    kv = sorted(
        (c for c, ch in enumerate(step.table.choices) if ch != TEXT), key=lambda c: sizes[c]
    )
    return step.table.choices[kv[(len(kv) - 1) // 2]]


def ours(slo_s: float, margin: float = 0.05) -> Policy:
    """The controller: `Planner` over the measured bandwidth."""
    planner = Planner(slo_s, margin)

    def choose(step: Step) -> Choice:
        bps = step.estimator.bps
        if bps is None:
            text = planner.all_text(step.table, step.now, step.cpu_free)
            return text.choice if text else _probe(step)
        safe = ConstantLink(step.estimator.planning_bps(len(step.table)) or bps)
        return planner.choose(step.table, step.now, step.cpu_free, ConstantLink(bps), safe).choice

    return choose


def cachegen_rule(slo_s: float, chunks: int) -> Policy:
    """CacheGen's streamer: each chunk gets ``slo_s / chunks`` seconds; the best level whose
    transfer fits it at the last throughput, else text. Levels rank by loss."""

    def choose(step: Step) -> Choice:
        bps = step.estimator.bps
        if bps is None:
            return _probe(step)
        share = slo_s / chunks
        t = step.table
        levels = [c for c, choice in enumerate(t.choices) if choice != TEXT]
        fitting = [c for c in levels if t.nbytes[0, c] / bps <= share]
        if not fitting:
            return TEXT
        return t.choices[min(fitting, key=lambda c: t.loss[0, c])]

    return choose


def oracle(table: OptionTable, trace: Trace, slo_s: float) -> SimResult:
    """The best plan knowing the trace: least loss within the SLO, else the fastest."""
    plans = candidate_plans(len(table), len(table.choices))
    finish, loss = evaluate(plans, table, 0.0, 0.0, trace)
    ok = finish <= slo_s
    if ok.any():
        best = int(np.lexsort((finish, np.where(ok, loss, np.inf)))[0])
    else:
        best = int(np.lexsort((loss, finish))[0])
    rows = np.arange(len(table))
    nbytes = float(table.nbytes[rows, plans[best]].sum())
    choices = tuple(table.choices[int(c)] for c in plans[best])
    ttft, tokens = float(finish[best]), int(table.tokens.sum())
    return SimResult(ttft, nbytes, float(loss[best]), tokens, choices, bool(ok[best]))
