"""The planner: per chunk, a stored level or "text", to maximize quality within the TTFT SLO.

A load is a two-stage pipeline. The network stage fetches chunk blobs one after another; the
compute stage, in chunk order, decodes a fetched blob or recomputes a "text" chunk from its
token ids on top of the chunks before it. The load ends when the compute stage finishes the last
chunk (a flow shop: chunk j's compute starts once its fetch and chunk j-1's compute are done).

Before every chunk the planner scores whole plans for the chunks left: each plan mixes at most
two options, spread evenly (a text chunk recomputes while the next blob downloads, so mixing can
beat either option alone). Among plans predicted to finish within the SLO it takes the one with
the least quality loss (KL x tokens); when none fits, the one that finishes first. Only the
plan's first step is used: after that chunk, it plans again with what it measured meanwhile.

For an engine that takes loaded KV only as a prefix (`prefix=True`), the plans are "chunks
0..k-1 at stored levels (one, or a mix of two), then text for the rest": the text suffix is what
the engine recomputes after the load, costed at its position in the context.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .estimator import BandwidthEstimator

TEXT = "text"
Choice = int | str

#: Fractions of the remaining chunks given to a plan's first option.
_MIX_STEPS = 16


class Link(Protocol):
    """When transfers end: vectorized over candidate plans."""

    def finish(self, start: np.ndarray, nbytes: np.ndarray, requests: np.ndarray) -> np.ndarray:
        """End times of transfers of `nbytes` in `requests` requests, begun at `start`."""
        ...


@dataclass(frozen=True)
class ConstantLink:
    """A link of fixed throughput (bytes/s) and per-request latency (s): the planner's model."""

    bps: float
    latency: float = 0.0

    def finish(self, start: np.ndarray, nbytes: np.ndarray, requests: np.ndarray) -> np.ndarray:
        return start + requests * self.latency + nbytes / self.bps


@dataclass(frozen=True)
class OptionTable:
    """Costs of every option for a run of chunks: arrays ``[chunks, options]``.

    A text option fetches nothing (0 bytes, 0 requests); an option a chunk lacks has infinite
    bytes and loss, so no plan that uses it is ever feasible or fastest.
    """

    choices: tuple[Choice, ...]
    nbytes: np.ndarray
    requests: np.ndarray
    compute_s: np.ndarray
    loss: np.ndarray
    #: Tokens per chunk, ``[chunks]``.
    tokens: np.ndarray

    def __len__(self) -> int:
        return self.nbytes.shape[0]

    def rest(self, first: int) -> OptionTable:
        """The table of chunks ``first`` onwards."""
        return OptionTable(
            self.choices,
            self.nbytes[first:],
            self.requests[first:],
            self.compute_s[first:],
            self.loss[first:],
            self.tokens[first:],
        )


@dataclass(frozen=True)
class Decision:
    """The planner's choice for the next chunk and what it predicts for the whole load."""

    choice: Choice
    #: Predicted end of the load (seconds since its start) under the chosen plan.
    finish: float
    #: Whether that plan meets the SLO (else it is the fastest plan).
    feasible: bool
    #: Predicted quality loss of the remaining plan (KL x tokens).
    loss: float
    #: The chunk is fetched to measure the link, against a plan that fetched nothing (see
    #: `cachegen.stream.controller.with_probe`): its read may take at most its recompute time.
    probe: bool = False


@dataclass
class Step:
    """What a policy sees before choosing chunk `index` (times in seconds since the start)."""

    index: int
    now: float
    cpu_free: float
    #: Costs of the chunks from `index` on.
    table: OptionTable
    estimator: BandwidthEstimator


#: Another way to choose, for baselines: the loader and the simulator both take one.
Policy = Callable[[Step], Choice]


@dataclass(frozen=True)
class Planner:
    """Chooses options against a TTFT target.

    Attributes:
        slo_s: the load must end within this many seconds of its start.
        margin: fraction of the remaining budget held back against estimation error.
    """

    slo_s: float
    margin: float = 0.05
    #: Plans for an engine that takes loaded KV only as a prefix.
    prefix: bool = False

    def choose(
        self,
        table: OptionTable,
        now: float,
        cpu_free: float,
        link: Link,
        safe_link: Link | None = None,
    ) -> Decision:
        """Pick the next chunk's option; `table` holds the chunks not yet fetched.

        `now` is the time the next fetch can start, `cpu_free` when the compute stage will have
        finished the chunks already fetched (both seconds since the load started). A plan must
        fit the SLO on `safe_link` (a pessimistic bound; default `link`); when none does, the
        plan fastest on `link` (the expected rate) is taken, since a bound biased low would
        favour recomputing over fetching.
        """
        return self.plan(table, now, cpu_free, link, safe_link)[1]

    def plan(
        self,
        table: OptionTable,
        now: float,
        cpu_free: float,
        link: Link,
        safe_link: Link | None = None,
    ) -> tuple[tuple[Choice, ...], Decision]:
        """The whole best plan for `table`'s chunks (see `choose`) and its decision."""
        plans = self.candidates(table)
        finish, loss = evaluate(plans, table, now, cpu_free, safe_link or link)
        best, feasible = best_plan(finish, loss, self._deadline(now))
        if not feasible and safe_link is not None:
            finish, loss = evaluate(plans, table, now, cpu_free, link)
            best, _ = best_plan(finish, loss, -np.inf)
        choices = tuple(table.choices[int(c)] for c in plans[best])
        first = choices[0] if choices else TEXT
        return choices, Decision(first, float(finish[best]), feasible, float(loss[best]))

    def candidates(self, table: OptionTable) -> np.ndarray:
        """The plans scored for `table`: any two-option mix, or prefix plans."""
        if self.prefix and TEXT in table.choices:
            return prefix_plans(len(table), len(table.choices), table.choices.index(TEXT))
        return candidate_plans(len(table), len(table.choices))

    def all_text(self, table: OptionTable, now: float, cpu_free: float) -> Decision | None:
        """The all-text plan if it meets the SLO: it is lossless, so it is the best plan
        whatever the link does, and needs no bandwidth estimate. None otherwise."""
        if TEXT not in table.choices:
            return None
        plan = np.full((1, len(table)), table.choices.index(TEXT))
        finish, _ = evaluate(plan, table, now, cpu_free, ConstantLink(1.0))  # fetches nothing
        if finish[0] > self._deadline(now):
            return None
        return Decision(TEXT, float(finish[0]), True, 0.0)

    def _deadline(self, now: float) -> float:
        return now + (self.slo_s - now) * (1 - self.margin)


def best_plan(finish: np.ndarray, loss: np.ndarray, deadline: float) -> tuple[int, bool]:
    """Index of the best plan and whether it meets `deadline`: the least loss among plans
    that meet it (the earliest finish among equal losses), else the earliest finish."""
    ok = finish <= deadline
    if ok.any():
        return int(np.lexsort((finish, np.where(ok, loss, np.inf)))[0]), True
    return int(np.lexsort((loss, finish))[0]), False


def evaluate(
    plans: np.ndarray, table: OptionTable, now: float, cpu_free: float, link: Link
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted finish time and loss of each plan (rows of option indices into `table`)."""
    rows = np.arange(len(table))
    nbytes, requests = table.nbytes[rows, plans], table.requests[rows, plans]
    compute = table.compute_s[rows, plans]
    net = np.full(plans.shape[0], float(now))
    cpu = np.full(plans.shape[0], float(cpu_free))
    with np.errstate(invalid="ignore"):  # inf - inf in links for missing options
        for j in range(plans.shape[1]):
            net = link.finish(net, nbytes[:, j], requests[:, j])
            cpu = np.maximum(cpu, net) + compute[:, j]
    cpu = np.where(np.isnan(cpu), np.inf, cpu)
    return cpu, table.loss[rows, plans].sum(axis=1)


@functools.lru_cache(maxsize=64)
def candidate_plans(chunks: int, options: int) -> np.ndarray:
    """Plans ``[plans, chunks]`` of option indices: every option alone, and every ordered pair
    (a, b) with a share of a from 1/16 to 15/16, a's chunks spread evenly among b's."""
    if chunks == 0:
        return np.zeros((1, 0), dtype=np.intp)
    plans = [np.full(chunks, o) for o in range(options)]
    j = np.arange(chunks)
    for share in sorted({round(chunks * s / _MIX_STEPS) for s in range(1, _MIX_STEPS)} - {0}):
        if share >= chunks:
            continue
        is_a = (j + 1) * share // chunks - j * share // chunks == 1
        for a in range(options):
            for b in range(options):
                if a != b:
                    plans.append(np.where(is_a, a, b))
    return np.unique(np.stack(plans), axis=0)


@functools.lru_cache(maxsize=64)
def prefix_plans(chunks: int, options: int, text: int) -> np.ndarray:
    """Plans ``[plans, chunks]`` for a prefix-only engine: for every k, chunks 0..k-1 at stored
    options (each alone or a two-option mix, as `candidate_plans`), then option `text`."""
    stored = np.array([o for o in range(options) if o != text], dtype=np.intp)
    plans = [np.full((1, chunks), text, dtype=np.intp)]
    for k in range(1, chunks + 1) if len(stored) else ():
        head = stored[candidate_plans(k, len(stored))]
        tail = np.full((len(head), chunks - k), text, dtype=np.intp)
        plans.append(np.concatenate([head, tail], axis=1))
    return np.unique(np.concatenate(plans), axis=0)


def level_kl(quality: Mapping[str, object] | None, levels: Sequence[int]) -> dict[int, float]:
    """KL per stored level from a context's quality record (``{"kl": {"1": x, ...}}``).

    Without one, levels are ranked by number alone (a higher level is better): a nominal
    KL falling 10x per level keeps the ladder's order, which is all the planner needs.
    """
    kl = quality.get("kl") if isinstance(quality, Mapping) else None
    if isinstance(kl, Mapping):
        try:
            measured = {int(lv): float(v) for lv, v in kl.items()}
        except (TypeError, ValueError):
            measured = {}
        if all(lv in measured for lv in levels):
            return {lv: measured[lv] for lv in levels}
    return {lv: 10.0**-lv for lv in levels}
