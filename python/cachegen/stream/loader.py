"""The loader: a stored context into an engine's cache, chunk by chunk, within a TTFT SLO.

Two threads make the pipeline the planner models. A fetch thread plans each chunk (with the
bandwidth measured so far and the compute backlog it knows of), fetches its blob, and hands it
over through a queue bounded in bytes (a slow engine holds the fetches back instead of piling
blobs up in memory; the bound is far above what a load in its SLO holds, so the planner's
model of a fetch stage running ahead stays true); the calling thread decodes or recomputes the
chunks in order. So the fetch of chunk i+1 overlaps the decode of chunk i, and every chunk is
planned with the previous one's measurement.

Every read has a deadline taken from the load's budget (`cachegen.stream.deadline`): opening
the context gets a share of it, each chunk what is left. A chunk that cannot be loaded (missing,
corrupted, late, or refused by the engine's decoder or device) is recomputed from text by a
"chunk" engine; for a "prefix" engine it ends the loaded prefix, and the engine recomputes the
rest itself. No store or decode failure escapes the load.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cachegen.context import DEFAULT_CHUNK_TOKENS, Context, ObjectRef, open_context
from cachegen.context.auth import AuthKey
from cachegen.context.keys import token_array
from cachegen.store import Store, StoreError

from .controller import Controller, fetch_lead
from .costs import CostModel
from .deadline import HEDGE_FACTOR, HEDGE_SLACK_S, BoundedStore, cause_of
from .engine import Engine
from .estimator import BandwidthEstimator, estimator_for, save_estimate
from .options import ChunkOptions, context_chunks, option_table
from .planner import TEXT, Choice, Decision, OptionTable, Policy, Step, level_kl
from .report import ChunkReport, LoadReport

#: Range size for parallel range requests on remote stores.
RANGE_BYTES = 256 * 1024
#: Share of the SLO the context's manifest and records may take before the load gives up on
#: the stored context; never less than `OPEN_FLOOR_S` (see `Loader._open_budget`).
OPEN_SHARE = 0.25
OPEN_FLOOR_S = 0.2
#: The least time a chunk's read gets, even when the SLO is already spent.
CHUNK_FLOOR_S = 0.25
#: Bytes of fetched blobs waiting for the compute thread at most (one blob always fits).
QUEUE_BYTES = 256 << 20


@dataclass
class LoadResult:
    """The engine's filled cache and how the load went."""

    cache: Any
    report: LoadReport


@dataclass
class Loader:
    """Loads stored contexts into one engine.

    Attributes:
        store: where the contexts are.
        engine: the engine to fill; its `recompute` says what a chunk not loaded becomes.
        costs: its compute costs (see `CostModel.calibrated`); corrected by every load.
        slo_s: the TTFT target for loading a context.
        ranges: parallel range requests per blob (None: 4 where the store says ranged reads
            are cheap, else 1).
        prior_bps: the link's bandwidth, if known: the load starts from it instead of the
            store's shared estimate.
        policy: choose with this instead of the `Controller` (baselines, fixed levels).
        estimator: the bandwidth estimate to use and refine (None: the process-wide one of
            `store`, saved for the next process; see `estimator_for`).
        clock: seconds, for the report's times (the deadlines use `time.monotonic`).
    """

    store: Store
    engine: Engine
    costs: CostModel
    slo_s: float
    ranges: int | None = None
    prior_bps: float | None = None
    margin: float = 0.05
    policy: Policy | None = None
    estimator: BandwidthEstimator | None = None
    clock: Callable[[], float] = time.perf_counter

    def load(
        self,
        model_id: str,
        token_ids: Any,
        *,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        prefix_tokens: int | None = None,
        salt: str | bytes | None = None,
        auth_key: AuthKey = None,
    ) -> LoadResult:
        """Fill the engine's cache with the context of `token_ids`, stored or not.

        `prefix_tokens` caps what a "prefix" engine may load (the tokens its scheduler agreed
        to take, e.g. `plan_prefix(...).tokens`); the engine recomputes the rest. `salt` and
        `auth_key` are the tenant salt and MAC key the context was saved with
        (`cachegen.context.save_context`): with a key, an object whose MAC does not verify is
        a miss, recomputed like any other.
        """
        tokens = token_array(token_ids)
        t0 = self.clock()
        report = LoadReport(slo_s=self.slo_s, total_tokens=len(tokens))
        shared = self.estimator is None and self.prior_bps is None
        estimator = self.estimator or (
            BandwidthEstimator(prior_bps=self.prior_bps)
            if self.prior_bps is not None
            else estimator_for(self.store)
        )
        estimator.begin_load()
        bounded = BoundedStore(self.store, estimator)
        try:
            bounded.set_budget(self._open_budget(len(tokens)))
            where = {"chunk_tokens": chunk_tokens, "salt": salt, "auth_key": auth_key}
            ctx = self._open(bounded, model_id, tokens, where, report)
            report.open_s = self.clock() - t0
            self.engine.begin()
            run = _Run(self, bounded, estimator, tokens, ctx, chunk_tokens, prefix_tokens, report)
            run.execute(lambda: self.clock() - t0)
            report.total_s = self.clock() - t0
        finally:
            report.hedged_reads = bounded.hedges
            bounded.close()
            estimator.end_load()
            if shared:
                save_estimate(self.store)
        return LoadResult(self.engine.finish(), report)

    def _open_budget(self, tokens: int) -> float:
        """Seconds the context's manifest and records may take: a share of the SLO, or, when
        recomputing everything would miss the SLO anyway, as long as waiting costs less than
        that miss (at most the SLO): then the store is the better bet."""
        text_s = self.costs.recompute_time(tokens, 0)
        share = max(OPEN_SHARE * self.slo_s, OPEN_FLOOR_S)
        return max(share, min(self.slo_s, text_s - self.slo_s))

    @staticmethod
    def _open(
        store: Store,
        model_id: str,
        tokens: np.ndarray,
        where: dict[str, Any],
        report: LoadReport,
    ) -> Context | None:
        try:
            return open_context(store, model_id, tokens, **where)
        except StoreError as e:
            report.context_error = f"{type(e).__name__}: {e}"
            report.context_cause = cause_of(e)
            return None


@dataclass
class _Item:
    """A chunk handed from the fetch thread to the compute thread."""

    row: ChunkReport
    blob: bytes | None


class _Handoff:
    """A FIFO of chunks bounded by the bytes of their blobs."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: deque[_Item | BaseException | None] = deque()
        self._bytes = 0
        self._cond = threading.Condition()

    @staticmethod
    def _size(item: _Item | BaseException | None) -> int:
        return len(item.blob) if isinstance(item, _Item) and item.blob is not None else 0

    def put(self, item: _Item | BaseException | None, stop: threading.Event) -> None:
        """Append `item` once it fits (or the queue is empty); drop it if `stop` is set."""
        size = self._size(item)
        with self._cond:
            while self._items and self._bytes + size > self.max_bytes:
                if stop.is_set():
                    return
                self._cond.wait(0.05)
            self._items.append(item)
            self._bytes += size
            self._cond.notify_all()

    def get(self) -> _Item | BaseException | None:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.popleft()
            self._bytes -= self._size(item)
            self._cond.notify_all()
            return item


@dataclass
class _Backlog:
    """What the fetch thread knows of the compute thread: the predicted seconds of each chunk
    queued or in progress, and when the one in progress started (load time)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    queued_s: dict[int, float] = field(default_factory=dict)
    running: int | None = None
    running_since: float = 0.0

    def add(self, index: int, seconds: float) -> None:
        with self.lock:
            self.queued_s[index] = seconds

    def start(self, index: int, now: float) -> None:
        with self.lock:
            self.running, self.running_since = index, now

    def done(self, index: int) -> None:
        with self.lock:
            self.queued_s.pop(index, None)
            self.running = None

    def free_at(self, now: float) -> float:
        """Predicted time the compute thread has finished everything queued: the chunk in
        progress ends its predicted time after it started (now, if it overruns), the rest
        follow it one after another."""
        with self.lock:
            rest = sum(s for i, s in self.queued_s.items() if i != self.running)
            if self.running not in self.queued_s:
                return now + rest
            return max(now, self.running_since + self.queued_s[self.running]) + rest


class _Run:
    """One load in progress: the fetch thread's loop and the compute thread's loop."""

    def __init__(
        self,
        loader: Loader,
        store: BoundedStore,
        estimator: BandwidthEstimator,
        tokens: np.ndarray,
        ctx: Context | None,
        chunk_tokens: int,
        prefix_tokens: int | None,
        report: LoadReport,
    ) -> None:
        self.loader, self.store, self.estimator = loader, store, estimator
        self.tokens, self.report = tokens, report
        self.prefix = loader.engine.recompute == "prefix"
        limit = len(tokens) if prefix_tokens is None or not self.prefix else prefix_tokens
        self.chunks = [
            c if c.stop <= limit else ChunkOptions(c.start, c.stop)
            for c in context_chunks(ctx, len(tokens), chunk_tokens)
        ]
        stored = ctx.chunks if ctx else []
        self.refs: list[dict[int, ObjectRef]] = [dict(c.levels) for c in stored]
        levels = ctx.levels if ctx else []
        self.kl = level_kl(ctx.quality if ctx else None, levels)
        self.choices: tuple[Choice, ...] = (*levels, TEXT)
        self.policy = loader.policy or Controller(loader.slo_s, loader.margin, self.prefix)
        self.backlog = _Backlog()
        self.items = _Handoff(QUEUE_BYTES)
        self.planned = False
        self.done = threading.Event()  # the compute side stopped: the fetch side stops too
        self.ranges = loader.ranges or (4 if store.cheap_ranges else 1)
        self.now: Callable[[], float] = time.perf_counter

    def execute(self, now: Callable[[], float]) -> None:
        self.now = now
        fetcher = threading.Thread(target=self._fetch_all, name="cachegen-fetch", daemon=True)
        fetcher.start()
        try:
            self._compute_all()
        finally:
            self.done.set()
            fetcher.join()
        self._finish_report()

    # -- fetch thread --------------------------------------------------------------------
    def _fetch_all(self) -> None:
        try:
            with ThreadPoolExecutor(self.ranges, thread_name_prefix="cachegen-range") as pool:
                for i in range(len(self.chunks)):
                    self._wait_to_decide(i)
                    if self.done.is_set():
                        break
                    item = self._fetch(i, pool)
                    if self.prefix and item.row.choice == TEXT:
                        self._end_prefix(item.row)
                        break
                    self._put(item)
            self._put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread to raise
            self._put(e)

    def _wait_to_decide(self, i: int) -> None:
        """Plan chunk i no earlier than its fetch must start (`fetch_lead`): a later decision
        sees fresher speeds (a text chunk timed, a decode measured), so a stale calibration is
        corrected before it has planned the whole load, and the link is never the bottleneck."""
        lead = fetch_lead(self._table(i), self.estimator)
        while not self.done.is_set():
            now = self.now()
            slack = self.backlog.free_at(now) - now - lead
            if slack <= 0:
                return
            self.done.wait(min(slack, 0.02))

    def _put(self, item: _Item | BaseException | None) -> None:
        """Queue `item`, waiting while the queue is full, unless the compute side stopped."""
        self.items.put(item, self.done)

    def _fetch(self, i: int, pool: ThreadPoolExecutor) -> _Item:
        chunk = self.chunks[i]
        start = self.now()
        decision = self._decide(i, start)
        bps = self.estimator.bps
        row = ChunkReport(
            index=i,
            tokens=chunk.tokens,
            choice=decision.choice,
            planned=decision.choice,
            nbytes=0,
            fetch_start=start,
            fetch_end=start,
            bandwidth_bps=bps,
            predicted_finish=decision.finish,
            probe=decision.probe,
        )
        if bps is not None and not self.planned:  # the first plan made with a bandwidth
            self.planned = True
            self.report.planned_feasible = decision.feasible
        blob = None
        if decision.choice != TEXT:
            ref = self.refs[i][int(decision.choice)]
            row.predicted_fetch_s = ref.size / bps if bps else 0.0
            began = time.monotonic()
            deadline = self._deadline(start, row.predicted_fetch_s)
            if decision.probe:  # it may cost at most what recomputing the chunk would
                text_s = self._compute_time(chunk, TEXT)
                deadline = min(deadline, began + max(text_s, CHUNK_FLOOR_S))
            try:
                blob, seconds = self._get(ref, pool, deadline)
            except Exception as e:  # noqa: BLE001 - every read failure is a fallback
                row.choice, row.fallback, row.cause = TEXT, f"{type(e).__name__}: {e}", cause_of(e)
                if row.cause == "timeout":
                    # Less than the blob arrived in that time: a bound on the rate, low enough
                    # for the estimator's drop rule, so the next chunks plan for a slow link.
                    self.estimator.add(ref.size, time.monotonic() - began)
            row.fetch_end = self.now()
            if blob is not None:
                row.nbytes = len(blob)
                self.estimator.add(len(blob), seconds, probe=decision.probe)
        row.predicted_compute_s = self._compute_time(chunk, row.choice)
        self.backlog.add(i, row.predicted_compute_s)
        return _Item(row, blob)

    def _decide(self, i: int, now: float) -> Decision:
        if not self.chunks[i].sizes:
            return Decision(TEXT, now, True, 0.0)
        step = Step(i, now, self.backlog.free_at(now), self._table(i), self.estimator)
        if isinstance(self.policy, Controller):
            return self.policy.decide(step)
        choice = self.policy(step)
        if choice != TEXT and choice not in self.chunks[i].sizes:
            choice = TEXT  # the policy asked for a level this chunk lacks
        return Decision(choice, now, True, 0.0)

    def _table(self, first: int) -> OptionTable:
        """Costs of every option for chunks `first` onwards, with the latest speeds."""
        return option_table(
            self.chunks[first:],
            self.choices,
            self.kl,
            self.loader.costs,
            self.loader.engine.kv_elements_per_token,
        )

    def _compute_time(self, chunk: ChunkOptions, choice: Choice) -> float:
        costs = self.loader.costs
        if choice == TEXT:
            return costs.recompute_time(chunk.tokens, chunk.start)
        return costs.decode_time(chunk.tokens * self.loader.engine.kv_elements_per_token)

    def _deadline(self, start: float, expect_s: float) -> float:
        """When a chunk read begun at `start` (load time) must have ended, in monotonic
        seconds: what is left of the SLO, but never less than a few predicted transfers."""
        left = self.loader.slo_s - start
        floor = max(CHUNK_FLOOR_S, HEDGE_FACTOR * expect_s + 2 * HEDGE_SLACK_S)
        return time.monotonic() + max(left, floor)

    def _get(
        self, ref: ObjectRef, pool: ThreadPoolExecutor, deadline: float
    ) -> tuple[bytes, float]:
        """The verified object and the seconds its reads took, in `ranges` parallel range
        requests when it is large enough; all by `deadline` (`time.monotonic` seconds)."""
        if self.ranges <= 1 or ref.size <= RANGE_BYTES:
            data, seconds = self.store.read(lambda s: s.get(ref.key), ref.size, deadline)
            return ref.verify(data), seconds
        step = math.ceil(ref.size / self.ranges)

        def part(lo: int) -> tuple[bytes, float]:
            # The parts share the link: each answers about when the whole blob has arrived.
            hi = min(lo + step, ref.size)
            return self.store.read(lambda s: s.get_range(ref.key, lo, hi), ref.size, deadline)

        futures = [pool.submit(part, lo) for lo in range(0, ref.size, step)]
        try:
            parts = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        # The parts ran side by side: the slowest answering request is the transfer's time.
        return ref.verify(b"".join(p for p, _ in parts)), max(s for _, s in parts)

    def _end_prefix(self, row: ChunkReport) -> None:
        """A "prefix" engine's load ends before chunk `row`: planned text or a failure."""
        if row.cause:
            self.report.chunks.append(row)
            self.report.prefix_end = row.cause
        elif self.chunks[row.index].sizes:
            self.report.prefix_end = "planned"
        else:
            self.report.prefix_end = self.report.context_cause or "not stored"

    # -- compute thread (the caller's) ---------------------------------------------------
    def _compute_all(self) -> None:
        while True:
            item = self.items.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            if not self._compute(item):
                return

    def _compute(self, item: _Item) -> bool:
        """Put one chunk into the engine; False when it ends a "prefix" engine's load."""
        row, chunk = item.row, self.chunks[item.row.index]
        engine, costs = self.loader.engine, self.loader.costs
        t0 = self.now()
        self.backlog.start(row.index, t0)
        if item.blob is not None:
            try:
                engine.append_kv(item.blob)
                row.compute_s = self.now() - t0
                costs.observe_decode(row.tokens * engine.kv_elements_per_token, row.compute_s)
            except Exception as e:  # noqa: BLE001 - decoder or device: the chunk is not loaded
                row.choice, row.fallback, row.cause = TEXT, f"{type(e).__name__}: {e}", "decode"
        if row.choice == TEXT and self.prefix:
            self._record(row)
            self.report.prefix_end = row.cause
            return False
        if row.choice == TEXT:
            t1 = self.now()
            engine.append_text(self.tokens[chunk.start : chunk.stop])
            costs.observe_recompute(row.tokens, chunk.start, self.now() - t1)
            row.compute_s = self.now() - t0
        self._record(row)
        return True

    def _record(self, row: ChunkReport) -> None:
        row.compute_end = self.now()
        self.backlog.done(row.index)
        self.report.chunks.append(row)

    def _finish_report(self) -> None:
        rep = self.report
        rep.chunks.sort(key=lambda c: c.index)
        rep.loaded_tokens = sum(c.tokens for c in rep.chunks if c.choice != TEXT)
        if not self.prefix:
            return
        if not rep.prefix_end:
            complete = rep.loaded_tokens == len(self.tokens)
            rep.prefix_end = "complete" if complete else rep.context_cause or "not stored"
        rest = len(self.tokens) - rep.loaded_tokens
        rep.recompute_after_s = self.loader.costs.recompute_time(rest, rep.loaded_tokens)
