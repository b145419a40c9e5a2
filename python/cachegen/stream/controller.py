"""The controller: the one decision path of every load, real or simulated.

Before each chunk the loader (`cachegen.stream.loader`) and the trace simulator
(`cachegen.stream.sim`) hand a policy the same `Step`: the costs of the chunks left, the time,
when compute frees up, and the bandwidth measured so far. `Controller` is the policy that
plans against the SLO; the baselines (`fixed`, `cachegen_rule`) are policies too, so what the
simulator sweeps is the code that runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .estimator import BandwidthEstimator
from .planner import TEXT, Choice, ConstantLink, Decision, OptionTable, Planner, Policy, Step


def probe_choice(table: OptionTable) -> Choice:
    """The first chunk's option before anything is measured: the middle stored level by size.

    The smallest would measure soonest, but the lowest levels cost the most quality (an eighth
    of a short context at level 1 can dominate its KL); the middle one is a fair bet at both
    ends of the bandwidth range. Text when the chunk has no stored level.
    """
    sizes = table.nbytes[0]
    stored = [c for c, ch in enumerate(table.choices) if ch != TEXT and np.isfinite(sizes[c])]
    if not stored:
        return TEXT
    by_size = sorted(stored, key=lambda c: sizes[c])
    return table.choices[by_size[(len(by_size) - 1) // 2]]


def fetch_lead(table: OptionTable, estimator: BandwidthEstimator) -> float:
    """How long before the compute stage runs dry the next chunk must be decided and fetched.

    A load decides each chunk as late as this (`cachegen.stream.loader`, and the simulator
    alike): a later decision sees fresher speeds. Waiting is free only while the compute stage
    never has to wait for the link, as the planner assumes of a fetch stage running ahead: so
    the lead is the link time, at the planning rate, of every chunk left at its largest stored
    option, plus the next chunk's once more against estimation error. Infinite while the
    bandwidth is unknown (the probe goes at once).
    """
    bps = estimator.planning_bps(len(table))
    if bps is None or len(table) == 0:
        return math.inf
    largest = np.where(np.isfinite(table.nbytes), table.nbytes, 0.0).max(axis=1)
    return float((largest.sum() + largest[0]) / bps)


def with_probe(
    table: OptionTable, plan: tuple[Choice, ...], decision: Decision
) -> tuple[tuple[Choice, ...], Decision]:
    """`plan`, or its first chunk fetched at the smallest stored level as a probe.

    A plan made from earlier loads' estimate that fetches nothing and misses the SLO anyway
    would, if the estimate is too low (one stalled transfer sets it), keep every later load
    from fetching and so from measuring the link again. The probe measures it once for at
    most the chunk's recompute time (the loader's deadline for a probe), which the chunk saves
    when it arrives in time. A plan that meets the SLO by recomputing is lossless: no probe.
    """
    if decision.feasible or not len(table) or any(c != TEXT for c in plan):
        return plan, decision
    sizes = table.nbytes[0]
    stored = [c for c, ch in enumerate(table.choices) if ch != TEXT and np.isfinite(sizes[c])]
    if not stored:
        return plan, decision
    level = table.choices[min(stored, key=lambda c: sizes[c])]
    probe = Decision(level, decision.finish, False, decision.loss, probe=True)
    return (level, *plan[1:]), probe


@dataclass(frozen=True)
class Controller:
    """Plans each chunk against a TTFT SLO with the bandwidth measured so far.

    Attributes:
        slo_s: the TTFT target of the load.
        margin: fraction of the remaining budget held back against estimation error.
        prefix: the engine takes loaded KV only as a prefix (see `Planner.prefix`).
    """

    slo_s: float
    margin: float = 0.05
    prefix: bool = False

    @property
    def planner(self) -> Planner:
        return Planner(self.slo_s, self.margin, self.prefix)

    def decide(self, step: Step) -> Decision:
        """The option for chunk `step.index` and the predicted end of the load."""
        table, est = step.table, step.estimator
        bps = est.bps
        if bps is None:
            text = self.planner.all_text(table, step.now, step.cpu_free)
            return text or Decision(probe_choice(table), step.now, True, 0.0)
        safe = ConstantLink(est.planning_bps(len(table)) or bps)
        plan, decision = self.planner.plan(table, step.now, step.cpu_free, ConstantLink(bps), safe)
        if est.load_samples == 0:  # planned from earlier loads alone
            plan, decision = with_probe(table, plan, decision)
        return decision

    def __call__(self, step: Step) -> Choice:
        return self.decide(step).choice


@dataclass(frozen=True)
class Fixed:
    """Every chunk `choice` (a baseline)."""

    choice: Choice

    def __call__(self, step: Step) -> Choice:
        return self.choice


@dataclass(frozen=True)
class CacheGenRule:
    """CacheGen's streamer (a baseline): each chunk gets ``slo_s / chunks`` seconds; the best
    level whose transfer fits it at the last throughput, else text. Levels rank by loss."""

    slo_s: float
    chunks: int

    def __call__(self, step: Step) -> Choice:
        bps = step.estimator.bps
        if bps is None:
            return probe_choice(step.table)
        share = self.slo_s / self.chunks
        t = step.table
        levels = [c for c, choice in enumerate(t.choices) if choice != TEXT]
        fitting = [c for c in levels if t.nbytes[0, c] / bps <= share]
        if not fitting:
            return TEXT
        return t.choices[min(fitting, key=lambda c: t.loss[0, c])]


def fixed(choice: Choice) -> Policy:
    """The baseline that loads every chunk as `choice`."""
    return Fixed(choice)
