"""The loader: a stored context into an engine's cache, chunk by chunk, within a TTFT SLO.

Two threads make the pipeline the planner models. A fetch thread plans each chunk (with the
bandwidth measured so far and the compute backlog it knows of), fetches its blob, and queues it;
the calling thread decodes or recomputes the queued chunks in order. So the fetch of chunk i+1
overlaps the decode of chunk i, and every chunk is planned with the previous one's measurement.
A missing or corrupted object, or a blob that will not decode, turns its chunk into text.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import cachegen
from cachegen.context import DEFAULT_CHUNK_TOKENS, Context, ObjectRef, open_context
from cachegen.context.keys import token_array
from cachegen.store import FileStore, MemoryStore, Store, StoreError

from .costs import CostModel
from .engine import Engine
from .estimator import BandwidthEstimator
from .planner import (
    TEXT,
    Choice,
    ConstantLink,
    Decision,
    OptionTable,
    Planner,
    Policy,
    Step,
    level_kl,
)
from .report import ChunkReport, LoadReport

#: Range size for parallel range requests on remote stores.
RANGE_BYTES = 256 * 1024


@dataclass
class LoadResult:
    """The engine's filled cache and how the load went."""

    cache: Any
    report: LoadReport


@dataclass(frozen=True)
class _Chunk:
    start: int
    stop: int
    #: Stored objects by level; empty for a chunk that was never stored (text only).
    levels: dict[int, ObjectRef]


@dataclass
class _Item:
    """A chunk handed from the fetch thread to the compute thread."""

    row: ChunkReport
    blob: bytes | None
    predicted_s: float


@dataclass
class _Backlog:
    """What the fetch thread knows of the compute thread: queued work and last completion."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    queued_s: dict[int, float] = field(default_factory=dict)
    last_done: float = 0.0

    def free_at(self, now: float) -> float:
        """Predicted time the compute thread has finished everything queued."""
        with self.lock:
            return max(now, self.last_done) + sum(self.queued_s.values())


@dataclass
class Loader:
    """Loads stored contexts into one engine.

    Attributes:
        store: where the contexts are.
        engine: the engine to fill.
        costs: its compute costs (see `CostModel.calibrated`).
        slo_s: the TTFT target for loading a context.
        ranges: parallel range requests per blob (None: 4 on remote stores, 1 on local ones).
        prior_bps: bandwidth assumed before the first measurement (None: probe with the
            smallest level of the first chunk).
        policy: choose with this instead of the planner (baselines, fixed levels).
    """

    store: Store
    engine: Engine
    costs: CostModel
    slo_s: float
    ranges: int | None = None
    prior_bps: float | None = None
    margin: float = 0.05
    policy: Policy | None = None
    clock: Callable[[], float] = time.perf_counter

    def load(
        self, model_id: str, token_ids: Any, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    ) -> LoadResult:
        """Fill the engine's cache with the context of `token_ids`, stored or not."""
        tokens = token_array(token_ids)
        t0 = self.clock()
        report = LoadReport(slo_s=self.slo_s)
        try:
            ctx: Context | None = open_context(
                self.store, model_id, tokens, chunk_tokens=chunk_tokens
            )
        except StoreError as e:
            ctx, report.context_error = None, f"{type(e).__name__}: {e}"
        chunks = _chunks(ctx, len(tokens), chunk_tokens)
        kl = level_kl(ctx.quality if ctx else None, ctx.levels if ctx else [])
        self.engine.begin()
        run = _Run(self, tokens, chunks, kl, report, lambda: self.clock() - t0)
        run.execute()
        report.total_s = self.clock() - t0
        return LoadResult(self.engine.finish(), report)


def probe_level(levels: Mapping[int, ObjectRef]) -> int:
    """The first chunk's level, before anything is measured: the middle stored level.

    The smallest would measure soonest, but the lowest levels cost the most quality (an
    eighth of a short context at level 1 can dominate its KL); the middle one is a fair bet
    at both ends of the bandwidth range.
    """
    by_size = sorted(levels, key=lambda lv: levels[lv].size)
    return by_size[(len(by_size) - 1) // 2]


def _chunks(ctx: Context | None, n: int, chunk_tokens: int) -> list[_Chunk]:
    """Stored chunks, then text-only chunks for the tokens past the stored prefix."""
    stored = [_Chunk(c.start, c.stop, dict(c.levels)) for c in (ctx.chunks if ctx else [])]
    first = stored[-1].stop if stored else 0
    rest = [_Chunk(s, min(s + chunk_tokens, n), {}) for s in range(first, n, chunk_tokens)]
    return stored + rest


class _Run:
    """One load in progress: the fetch thread's loop and the compute thread's loop."""

    def __init__(
        self,
        loader: Loader,
        tokens: np.ndarray,
        chunks: list[_Chunk],
        kl: dict[int, float],
        report: LoadReport,
        now: Callable[[], float],
    ) -> None:
        self.loader, self.tokens, self.chunks, self.kl = loader, tokens, chunks, kl
        self.report, self.now = report, now
        self.choices: tuple[Choice, ...] = (*sorted(kl), TEXT)
        self.estimator = BandwidthEstimator(prior_bps=loader.prior_bps)
        self.planner = Planner(loader.slo_s, loader.margin)
        self.backlog = _Backlog()
        self.items: queue.Queue[_Item | BaseException | None] = queue.Queue()
        # Local stores read at memory speed: splitting a read only adds overhead there.
        local = isinstance(loader.store, MemoryStore | FileStore)
        self.ranges = loader.ranges or (1 if local else 4)

    def execute(self) -> None:
        fetcher = threading.Thread(target=self._fetch_all, name="cachegen-fetch", daemon=True)
        fetcher.start()
        try:
            self._compute_all()
        finally:
            fetcher.join()

    # -- fetch thread --------------------------------------------------------------------
    def _fetch_all(self) -> None:
        try:
            with ThreadPoolExecutor(self.ranges, thread_name_prefix="cachegen-range") as pool:
                for i in range(len(self.chunks)):
                    self.items.put(self._fetch(i, pool))
            self.items.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread to raise
            self.items.put(e)

    def _fetch(self, i: int, pool: ThreadPoolExecutor) -> _Item:
        chunk = self.chunks[i]
        start = self.now()
        decision = self._decide(i, start)
        row = ChunkReport(
            index=i,
            tokens=chunk.stop - chunk.start,
            choice=decision.choice,
            planned=decision.choice,
            nbytes=0,
            fetch_start=start,
            fetch_end=start,
            bandwidth_bps=self.estimator.bps,
            predicted_finish=decision.finish,
        )
        blob = None
        if decision.choice != TEXT:
            ref = chunk.levels[int(decision.choice)]
            try:
                blob = self._get(ref, pool)
            except StoreError as e:
                row.choice, row.fallback = TEXT, f"{type(e).__name__}: {e}"
            row.fetch_end = self.now()
            if blob is not None:
                row.nbytes = len(blob)
                self.estimator.add(len(blob), row.fetch_end - start)
        predicted = self._compute_time(chunk, row.choice)
        with self.backlog.lock:
            self.backlog.queued_s[i] = predicted
        return _Item(row, blob, predicted)

    def _decide(self, i: int, now: float) -> Decision:
        chunk = self.chunks[i]
        if not chunk.levels:
            return Decision(TEXT, now, True, 0.0)
        cpu_free = self.backlog.free_at(now)
        policy = self.loader.policy
        if policy is not None:
            choice = policy(Step(i, now, cpu_free, self._table(i), self.estimator))
            if choice != TEXT and int(choice) not in chunk.levels:
                choice = TEXT  # the policy asked for a level this chunk lacks
            return Decision(choice, now, True, 0.0)
        bps = self.estimator.bps
        if bps is None:
            table = self._table(i)
            text = self.planner.all_text(table, now, cpu_free)
            return text or Decision(probe_level(chunk.levels), now, True, 0.0)
        safe = ConstantLink(self.estimator.planning_bps(len(self.chunks) - i) or bps)
        return self.planner.choose(self._table(i), now, cpu_free, ConstantLink(bps), safe)

    def _table(self, first: int) -> OptionTable:
        """Costs of every option for chunks `first` onwards, with the latest speeds."""
        rest = self.chunks[first:]
        shape = (len(rest), len(self.choices))
        nbytes, requests = np.zeros(shape), np.zeros(shape)
        compute, loss = np.zeros(shape), np.zeros(shape)
        for r, chunk in enumerate(rest):
            for c, choice in enumerate(self.choices):
                compute[r, c] = self._compute_time(chunk, choice)
                if choice == TEXT:
                    continue
                ref = chunk.levels.get(int(choice))
                nbytes[r, c] = ref.size if ref else math.inf
                requests[r, c] = 1
                loss[r, c] = self.kl[int(choice)] * (chunk.stop - chunk.start) if ref else math.inf
        tokens = np.array([c.stop - c.start for c in rest])
        return OptionTable(self.choices, nbytes, requests, compute, loss, tokens)

    def _compute_time(self, chunk: _Chunk, choice: Choice) -> float:
        costs, tokens = self.loader.costs, chunk.stop - chunk.start
        if choice == TEXT:
            return costs.recompute_time(tokens)
        return costs.decode_time(tokens * self.loader.engine.kv_elements_per_token)

    def _get(self, ref: ObjectRef, pool: ThreadPoolExecutor) -> bytes:
        """The verified object, in `ranges` parallel range requests when it is large enough."""
        store = self.loader.store
        if self.ranges <= 1 or ref.size <= RANGE_BYTES:
            return ref.verify(store.get(ref.key))
        step = math.ceil(ref.size / self.ranges)
        starts = range(0, ref.size, step)
        parts = pool.map(lambda s: store.get_range(ref.key, s, min(s + step, ref.size)), starts)
        return ref.verify(b"".join(parts))

    # -- compute thread (the caller's) ---------------------------------------------------
    def _compute_all(self) -> None:
        while True:
            item = self.items.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            self._compute(item)

    def _compute(self, item: _Item) -> None:
        row, chunk = item.row, self.chunks[item.row.index]
        engine, costs = self.loader.engine, self.loader.costs
        t0 = self.now()
        if item.blob is not None:
            try:
                engine.append_kv(item.blob)
                row.compute_s = self.now() - t0
                costs.observe_decode(row.tokens * engine.kv_elements_per_token, row.compute_s)
            except (cachegen.FormatError, ValueError) as e:
                row.choice, row.fallback = TEXT, f"{type(e).__name__}: {e}"
        if row.choice == TEXT:
            t1 = self.now()
            engine.append_text(self.tokens[chunk.start : chunk.stop])
            costs.observe_recompute(row.tokens, self.now() - t1)
            row.compute_s = self.now() - t0
        row.compute_end = self.now()
        with self.backlog.lock:
            self.backlog.queued_s.pop(row.index, None)
            self.backlog.last_done = row.compute_end
        self.report.chunks.append(row)
