"""Engines that take loaded KV only as a prefix (vLLM): the load ends at the first chunk not
loaded, nothing is recomputed by the loader, and the scheduler's plan is made before any
transfer."""

from __future__ import annotations

import time

import numpy as np
import pytest
from streamkit import MODEL, FakeEngine, TickClock, costs_for, store_context

from cachegen.context import open_context
from cachegen.store import MemoryStore
from cachegen.stream import (
    TEXT,
    BandwidthEstimator,
    ConstantLink,
    Loader,
    OptionTable,
    Planner,
    plan_prefix,
)
from cachegen.stream.planner import prefix_plans

MB = 1_000_000


def prefix_engine(prefill_tps: float = 1e3) -> FakeEngine:
    return FakeEngine(prefill_tps=prefill_tps, recompute="prefix")


def run(store, ids, engine, slo_s=10.0, **options):
    loader = Loader(store, engine, costs_for(engine), slo_s, **options)
    return loader.load(MODEL, ids, chunk_tokens=64, prefix_tokens=options.pop("limit", None))


def test_whole_context_loads_as_a_prefix() -> None:
    store = MemoryStore()
    ids, kv, _ = store_context(store, 256)
    engine = prefix_engine()  # 64 ms of text per chunk: KV everywhere
    rep = run(store, ids, engine, slo_s=0.05, prior_bps=1e12).report
    assert rep.loaded_tokens == 256 and rep.prefix_end == "complete"
    assert [kind for kind, _ in engine.appended] == ["kv"] * 4  # append_text never called
    assert rep.recompute_after_s == 0 and rep.fallbacks == 0


@pytest.mark.parametrize(
    ("damage", "cause"), [("corrupt", "corrupt"), ("delete", "missing"), ("device", "decode")]
)
def test_first_failed_chunk_ends_the_prefix(damage: str, cause: str) -> None:
    store = MemoryStore()
    ids, _, ctx = store_context(store, 320)
    for ref in ctx.chunks[2].levels.values():
        if damage == "corrupt":
            store.put(ref.key, b"garbage")
        elif damage == "delete":
            store.delete(ref.key)

    class OutOfMemory(FakeEngine):
        def append_kv(self, blob: bytes) -> None:
            if damage == "device" and len(self.appended) == 2:
                raise RuntimeError("CUDA out of memory")  # what torch raises, cache unchanged
            super().append_kv(blob)

    engine = OutOfMemory(prefill_tps=1e3, recompute="prefix")
    rep = run(store, ids, engine, slo_s=0.05, prior_bps=1e12).report
    assert rep.loaded_tokens == 128 and rep.prefix_end == cause
    assert engine.appended == [("kv", 64), ("kv", 64)]
    assert rep.chunks[-1].index == 2 and rep.chunks[-1].cause == cause
    assert rep.fallback_causes == {cause: 1}
    assert rep.recompute_after_s == pytest.approx(costs_for(engine).recompute_time(192, 128))


def test_planner_leaves_the_rest_to_the_engine_when_text_is_cheap() -> None:
    store = MemoryStore()
    ids, _, _ = store_context(store, 256)
    engine = prefix_engine(prefill_tps=1e6)  # recompute is nearly free: load nothing
    rep = run(store, ids, engine, slo_s=1.0, clock=TickClock()).report
    assert rep.loaded_tokens == 0 and rep.prefix_end == "planned"
    assert engine.appended == [] and rep.chunks == [] and rep.met_slo


def test_missing_context_is_all_recompute() -> None:
    engine = prefix_engine()
    rep = run(MemoryStore(), np.arange(100, dtype=np.uint32), engine).report
    assert rep.loaded_tokens == 0 and rep.prefix_end == "missing"
    assert rep.recompute_after_s > 0 and engine.appended == []


def test_prefix_tokens_caps_the_load() -> None:
    store = MemoryStore()
    ids, _, _ = store_context(store, 256)
    engine = prefix_engine()
    loader = Loader(store, engine, costs_for(engine), 0.05, prior_bps=1e12)
    rep = loader.load(MODEL, ids, chunk_tokens=64, prefix_tokens=128).report
    assert rep.loaded_tokens == 128 and rep.prefix_end == "not stored"


def table(chunks: int, recompute_s: float) -> OptionTable:
    choices = (1, 3, TEXT)
    nbytes = np.tile([1 * MB, 4 * MB, 0], (chunks, 1)).astype(float)
    requests = np.tile([1, 1, 0], (chunks, 1)).astype(float)
    compute = np.tile([0.01, 0.01, recompute_s], (chunks, 1))
    loss = np.tile([0.1, 0.01, 0.0], (chunks, 1)) * 256
    return OptionTable(choices, nbytes, requests, compute, loss, np.full(chunks, 256))


def test_prefix_plans_are_stored_chunks_then_text() -> None:
    plans = prefix_plans(6, 3, 2)
    for p in plans:
        text = np.flatnonzero(p == 2)
        assert len(text) == 0 or (p[text[0] :] == 2).all()
    assert {int((p != 2).sum()) for p in plans} == set(range(7))


def test_prefix_planner_never_loads_after_text() -> None:
    # Text and level 1 alternate best in a chunk engine (fetch overlaps recompute); a prefix
    # engine gets the best "load k chunks, recompute the rest" instead.
    t, link = table(8, recompute_s=0.1), ConstantLink(10 * MB)
    mixed, _ = Planner(0.6).plan(t, 0, 0, link)
    assert TEXT in mixed and mixed.index(TEXT) < max(i for i, c in enumerate(mixed) if c != TEXT)
    plan, decision = Planner(0.6, prefix=True).plan(t, 0, 0, link)
    k = plan.index(TEXT) if TEXT in plan else len(plan)
    assert all(c != TEXT for c in plan[:k]) and all(c == TEXT for c in plan[k:])
    assert decision.finish >= Planner(0.6).choose(t, 0, 0, link).finish


def test_plan_prefix_before_any_transfer() -> None:
    store = MemoryStore()
    ids, _, _ = store_context(store, 512)
    ctx = open_context(store, MODEL, ids, chunk_tokens=64)
    engine = prefix_engine()
    costs, per_token = costs_for(engine), engine.kv_elements_per_token
    size = ctx.chunks[0].levels[5].size
    fast = BandwidthEstimator(prior_bps=1000 * size)  # a chunk in 1 ms
    plan = plan_prefix(ctx, costs, fast, 0.05, per_token, 512)  # no time for 64 ms of text
    assert plan.tokens == 512 and plan.levels == (5,) * 8 and plan.feasible
    assert plan.predicted_s <= 0.05
    lossless_tail = plan_prefix(ctx, costs, fast, 0.1, per_token, 512)  # text is lossless
    assert lossless_tail.tokens == 448 and lossless_tail.predicted_s <= 0.1
    # 40 ms a chunk at level 1, 64 ms of text: only 6 or 7 chunks of KV and the rest as text
    # fit 0.45 s, and have less loss than 8 chunks of KV.
    slow = BandwidthEstimator(prior_bps=ctx.chunks[0].levels[1].size / 0.04)
    part = plan_prefix(ctx, costs, slow, 0.45, per_token, 512)
    assert 0 < part.tokens < 512 and len(part.levels) * 64 == part.tokens
    longer = plan_prefix(ctx, costs, fast, 0.05, per_token, 600)  # 88 tokens past the store
    assert longer.tokens == 512
    unknown = plan_prefix(ctx, costs, BandwidthEstimator(), 10.0, per_token, 512)
    assert unknown.tokens == 0 and unknown.feasible  # recompute fits: needs no bandwidth
    blind = plan_prefix(ctx, costs, BandwidthEstimator(), 0.01, per_token, 512)
    assert blind.tokens == 512 and not blind.feasible
    assert plan_prefix(None, costs, fast, 0.1, per_token, 100).tokens == 0


def stalled(fast_bps: float, stall_bps: float) -> BandwidthEstimator:
    """Four fast transfers, then one stalled one (believed at once: the drop rule)."""
    est = BandwidthEstimator()
    for rate in (fast_bps,) * 4 + (stall_bps,):
        est.add(int(rate), 1.0)
    return est


def test_a_stalled_estimate_probes_one_chunk_instead_of_never_loading_again() -> None:
    store = MemoryStore()
    ids, _, _ = store_context(store, 512)
    ctx = open_context(store, MODEL, ids, chunk_tokens=64)
    engine = prefix_engine()  # 64 ms of text per chunk
    costs, per_token = costs_for(engine), engine.kv_elements_per_token
    levels = ctx.chunks[0].levels
    size = levels[5].size
    est = stalled(1000 * size, size / 10)  # the last transfer of a chunk took 10 s
    plan = plan_prefix(ctx, costs, est, 0.05, per_token, 512)
    smallest = min(levels, key=lambda lv: levels[lv].size)
    assert plan.probe and plan.tokens == 64 and plan.levels == (smallest,) and not plan.feasible
    relaxed = plan_prefix(ctx, costs, est, 10.0, per_token, 512)  # recomputing fits: lossless
    assert relaxed.tokens == 0 and relaxed.feasible and not relaxed.probe


class Hanging(MemoryStore):
    """A memory store whose reads of `keys` hang for `seconds` (a stalled link)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.keys = seconds, set()

    def _get(self, key: str) -> bytes:
        if key in self.keys:
            time.sleep(self.seconds)
        return super()._get(key)


@pytest.mark.parametrize("hang_s", [0.0, 5.0])
def test_the_probe_costs_at_most_its_chunks_recompute_time(hang_s: float) -> None:
    store = Hanging(hang_s)
    ids, _, ctx = store_context(store, 512)
    store.keys = {ref.key for c in ctx.chunks for ref in c.levels.values()}
    engine = prefix_engine()  # 64 ms of text per chunk: the probe may wait 0.25 s (the floor)
    size = ctx.chunks[0].levels[5].size
    est = stalled(1000 * size, size / 10)
    loader = Loader(store, engine, costs_for(engine), 0.05, estimator=est)
    rep = loader.load(MODEL, ids, chunk_tokens=64, prefix_tokens=64).report  # what was promised
    probe = rep.chunks[0]
    assert probe.index == 0 and probe.fetch_end - probe.fetch_start < 2.0
    if hang_s:  # the read gave up at the probe's deadline; the estimate stays low
        assert rep.loaded_tokens == 0 and rep.prefix_end == "timeout"
        assert est.bps < size
    else:  # the link is back: the chunk loads and the estimate follows
        assert rep.loaded_tokens == 64 and engine.appended == [("kv", 64)]
        assert est.bps > 100 * size
