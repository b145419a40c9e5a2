"""The loader against real stores: the cache it builds, the pipeline, the fallbacks to text."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from streamkit import MODEL, FakeEngine, TickClock, costs_for, store_context

import cachegen
import cachegen.store
from cachegen.store import FileStore, MemoryStore, ThrottledStore
from cachegen.stream import TEXT, CostModel, Loader, fixed, load
from cachegen.stream.costs import CALIBRATION_POSITIONS


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path):
    s = MemoryStore() if request.param == "memory" else FileStore(tmp_path / "kv")
    yield s
    s.close()


def run(store, ids, slo_s=10.0, engine=None, **options):
    engine = engine or FakeEngine()
    loader = Loader(store, engine, costs_for(engine), slo_s, **options)
    return engine, loader.load(MODEL, ids, chunk_tokens=64)


def test_loads_every_chunk_in_order_and_decodes_what_was_stored(store) -> None:
    ids, kv, ctx = store_context(store, 300)
    engine, result = run(store, ids, slo_s=1.0, prior_bps=1e12, clock=TickClock())
    rep = result.report
    assert [c.index for c in rep.chunks] == list(range(5))
    assert [t for _, t in engine.appended] == [64, 64, 64, 64, 44]
    assert result.cache.shape == kv.shape
    for c, chunk in zip(rep.chunks, ctx.chunks, strict=True):
        if c.choice != TEXT:
            want = cachegen.decode(ctx.fetch(c.index, c.choice))
            np.testing.assert_array_equal(result.cache[:, :, chunk.start : chunk.stop], want)
            assert c.nbytes == chunk.levels[c.choice].size
    assert rep.nbytes == sum(c.nbytes for c in rep.chunks)
    assert rep.met_slo and json.loads(json.dumps(rep.to_json()))["met_slo"]


def test_first_chunk_probes_with_the_middle_level(store) -> None:
    ids, _, _ = store_context(store, 256)
    _, result = run(store, ids, slo_s=0.05, engine=FakeEngine(prefill_tps=1e3))
    first = result.report.chunks[0]
    assert first.choice == 3 and first.bandwidth_bps is None
    assert all(c.bandwidth_bps for c in result.report.chunks[1:])


def test_corrupted_and_missing_chunks_fall_back_to_text(store) -> None:
    ids, _, ctx = store_context(store, 256)
    for lv, ref in ctx.chunks[1].levels.items():
        store.put(ref.key, b"garbage" * lv)  # wrong size and checksum
    for ref in ctx.chunks[2].levels.values():
        store.delete(ref.key)
    slow = FakeEngine(prefill_tps=1e3)  # text costs 64 ms a chunk: KV is planned everywhere
    engine, result = run(store, ids, slo_s=0.05, prior_bps=1e12, engine=slow)
    rows = result.report.chunks
    assert rows[1].choice == TEXT and "ObjectCorrupted" in rows[1].fallback
    assert rows[2].choice == TEXT and "ObjectMissing" in rows[2].fallback
    assert rows[0].choice != TEXT and rows[3].choice != TEXT
    assert result.report.fallbacks == 2
    assert [t for _, t in engine.appended] == [64] * 4
    assert "text*" in result.report.table()


def test_blob_that_does_not_decode_falls_back_to_text(store) -> None:
    ids, _, ctx = store_context(store, 128)

    class Picky(FakeEngine):
        def append_kv(self, blob: bytes) -> None:
            raise cachegen.FormatError("unsupported")

    engine, result = run(store, ids, slo_s=0.05, engine=Picky(prefill_tps=1e3))
    assert result.report.choices == [TEXT, TEXT]
    assert "FormatError" in result.report.chunks[0].fallback
    assert engine.appended == [("text", 64), ("text", 64)]


def test_all_text_without_probing_when_it_fits(store) -> None:
    ids, _, _ = store_context(store, 256)
    _, result = run(store, ids, slo_s=1.0)  # 256 tokens at 20k tokens/s: 13 ms
    assert result.report.choices == [TEXT] * 4 and result.report.nbytes == 0


def test_missing_context_loads_all_text(store) -> None:
    ids = np.arange(200, dtype=np.uint32)
    engine, result = run(store, ids)
    assert result.report.choices == [TEXT] * 4
    assert "ContextMissing" in result.report.context_error
    assert result.cache.shape[2] == 200


def test_stored_prefix_then_text_for_the_rest(store) -> None:
    ids, _, _ = store_context(store, 192)
    longer = np.concatenate([ids, np.arange(100, dtype=np.uint32) + 50_000])
    slow = FakeEngine(prefill_tps=1e3)
    _, result = run(store, longer, slo_s=0.12, prior_bps=1e12, engine=slow)
    assert result.report.choices[3:] == [TEXT, TEXT]
    assert all(c != TEXT for c in result.report.choices[:3])
    assert result.cache.shape[2] == 292


def test_fetch_overlaps_compute() -> None:
    """With fetch and compute 20 ms a chunk each, fetches run while earlier chunks decode."""
    inner = MemoryStore()
    ids, _, ctx = store_context(inner, 640)
    size = ctx.chunks[0].levels[1].size
    link = ThrottledStore(inner, bps=size / 0.02, latency_s=0.0)

    class Slow(FakeEngine):
        def append_kv(self, blob: bytes) -> None:
            time.sleep(0.02)
            super().append_kv(blob)

    engine = Slow(prefill_tps=10.0)  # text is hopeless: every chunk comes as KV
    loader = Loader(link, engine, costs_for(engine), slo_s=0.01)  # nothing fits: fastest
    result = loader.load(MODEL, ids, chunk_tokens=64)
    rows = result.report.chunks
    assert TEXT not in result.report.choices  # nothing fits: the fastest plans are all KV
    # Chunk i+1's blob arrives before chunk i is decoded: the stages overlap (one clock).
    overlapped = sum(rows[i + 1].fetch_end < rows[i].compute_end for i in range(len(rows) - 1))
    assert overlapped >= len(rows) // 2
    assert not result.report.planned_feasible


def test_parallel_range_requests_on_remote_stores() -> None:
    inner = MemoryStore()
    ids, _, ctx = store_context(inner, 128)
    calls: list[tuple[int, int]] = []

    class Counting(ThrottledStore):
        def _get_range(self, key: str, start: int, end: int) -> bytes:
            calls.append((start, end))
            return super()._get_range(key, start, end)

    link = Counting(inner, bps=1e12)
    import cachegen.stream.loader as loader_mod

    old, loader_mod.RANGE_BYTES = loader_mod.RANGE_BYTES, 1024
    try:
        _, result = run(link, ids, slo_s=0.05, ranges=4, engine=FakeEngine(prefill_tps=1e3))
    finally:
        loader_mod.RANGE_BYTES = old
    assert len(calls) == 8  # 2 chunks x 4 ranges, joined and verified
    assert result.report.fallbacks == 0


def test_load_calibrates_once_and_caches(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CACHEGEN_COSTS", str(tmp_path / "costs.json"))
    store = MemoryStore()
    ids, _, _ = store_context(store, 128)
    measured = []

    class Counting(FakeEngine):
        def measure_prefill(self, positions) -> list[float]:
            measured.append(tuple(positions))
            return super().measure_prefill(positions)

    for _ in range(2):
        result = load(store, Counting(), MODEL, ids, slo_s=1.0, chunk_tokens=64)
        assert len(result.report.chunks) == 2
    assert measured == [CALIBRATION_POSITIONS]
    entry = json.loads((tmp_path / "costs.json").read_text())["fake"]
    assert entry["prefill_tps"] > 0 and entry["decode_eps"] > 0
    assert CostModel.calibrated("fake", lambda: 1.0).prefill_tps == entry["prefill_tps"]


def test_s3_store_through_moto(s3_store) -> None:
    ids, kv, _ = store_context(s3_store, 256)
    _, result = run(s3_store, ids, slo_s=0.1, engine=FakeEngine(prefill_tps=1e3))
    assert result.cache.shape == kv.shape
    assert result.report.fallbacks == 0 and result.report.nbytes > 0


@pytest.fixture
def s3_store(request: pytest.FixtureRequest):
    from store_servers import S3_CREDENTIALS, MotoServer

    server = MotoServer()
    with cachegen.store.open(server.url(server.bucket()), **S3_CREDENTIALS) as s:
        yield s
    server.stop()


def test_handoff_queue_holds_fetches_back(monkeypatch) -> None:
    """With room for one blob, chunk i+2 is fetched only once chunk i left the queue, that is
    once chunk i-1 is done (instant fetches would otherwise run far ahead of 20 ms decodes)."""
    import cachegen.stream.loader as loader_mod

    monkeypatch.setattr(loader_mod, "QUEUE_BYTES", 1)
    store = MemoryStore()
    ids, kv, _ = store_context(store, 384)

    class Slow(FakeEngine):
        def append_kv(self, blob: bytes) -> None:
            time.sleep(0.02)
            super().append_kv(blob)

    engine = Slow(prefill_tps=10.0)
    result = Loader(store, engine, costs_for(engine), 1.0, prior_bps=1e12).load(
        MODEL, ids, chunk_tokens=64
    )
    rows = result.report.chunks
    assert TEXT not in result.report.choices and result.cache.shape == kv.shape
    for i in range(1, len(rows) - 2):
        assert rows[i + 2].fetch_start >= rows[i - 1].compute_end


def test_engine_failure_of_any_kind_falls_back_to_text(store) -> None:
    ids, _, _ = store_context(store, 192)

    class Flaky(FakeEngine):
        def append_kv(self, blob: bytes) -> None:
            if len(self.appended) == 1:
                raise OSError("device lost")  # not a format error: still the chunk's fallback
            super().append_kv(blob)

    engine, result = run(store, ids, slo_s=0.05, prior_bps=1e12, engine=Flaky(prefill_tps=1e3))
    assert result.report.choices[1] == TEXT and result.report.fallback_causes == {"decode": 1}
    assert [k for k, _ in engine.appended] == ["kv", "text", "kv"]


def test_stale_recompute_calibration_is_corrected_within_the_load(store) -> None:
    """The calibration says text is 10x faster than it is: all text looks feasible, and the
    first text chunk shows otherwise before the rest is planned."""
    ids, _, _ = store_context(store, 512)
    engine = FakeEngine(prefill_tps=500.0)  # 128 ms a chunk of text
    stale = CostModel(decode_eps=5e7, prefill_tps=5000.0)  # believes 13 ms
    loader = Loader(store, engine, stale, slo_s=0.4, prior_bps=1e12)
    rep = loader.load(MODEL, ids, chunk_tokens=64).report
    assert rep.choices[0] == TEXT  # all text looked feasible and is lossless
    assert rep.choices.count(TEXT) <= 3  # then the measured speed moves the rest to KV
    assert stale.prefill_tps < 2000.0


def test_open_budget_is_a_share_unless_recompute_misses_anyway() -> None:
    """A quarter of the SLO for the manifest when recomputing everything fits; when it would
    miss the SLO by more than the SLO, waiting for the store the whole SLO is the better bet."""
    quick, slow = FakeEngine(prefill_tps=5000.0), FakeEngine(prefill_tps=50.0)
    assert Loader(MemoryStore(), quick, costs_for(quick), 1.0)._open_budget(256) == 0.25
    assert Loader(MemoryStore(), slow, costs_for(slow), 1.0)._open_budget(256) == 1.0
    assert Loader(MemoryStore(), slow, costs_for(slow), 1.0)._open_budget(75) == 0.5


def test_authenticated_contexts_load_only_with_their_key(store) -> None:
    """With the key, every chunk loads; without it, or with another, the context is a miss
    (recomputed from text), and a blob forged without the key is never decoded."""
    key = b"k" * 32
    ids, kv, ctx = store_context(store, 192, auth_key=key)
    engine = FakeEngine()
    loader = Loader(store, engine, costs_for(engine), 10.0, policy=fixed(5), clock=TickClock())
    ok = loader.load(MODEL, ids, chunk_tokens=64, auth_key=key).report
    assert ok.context_error == "" and ok.choices == [5, 5, 5] and not ok.fallbacks
    for other in (None, b"x" * 32):
        miss = loader.load(MODEL, ids, chunk_tokens=64, auth_key=other).report
        assert miss.context_error and miss.choices == [TEXT] * 3
    ref = ctx.chunks[1].levels[5]
    store.put(ref.key, cachegen.encode(kv[:, :, 64:128], level=5))  # valid blob, no MAC
    forged = loader.load(MODEL, ids, chunk_tokens=64, auth_key=key).report
    assert forged.choices[1] == TEXT and forged.chunks[1].fallback


def test_parts_of_one_blob_share_the_link_and_are_not_hedged(monkeypatch) -> None:
    """A blob's range requests run side by side on one link, so each answers about when the
    whole blob has arrived: a healthy transfer is not taken for a stalled one (a hedge would
    send its bytes twice over the same slow link)."""
    import cachegen.stream.loader as loader_mod

    inner = MemoryStore()
    ids, _, ctx = store_context(inner, 256)
    top = max(ctx.levels)
    blob = ctx.chunks[0].levels[top].size
    monkeypatch.setattr(loader_mod, "RANGE_BYTES", blob // 8)
    bps = blob / 0.2  # each blob 0.2 s on the link: its last part answers after ~4x its share
    link = ThrottledStore(inner, bps=bps, latency_s=0.02)
    _, result = run(link, ids, ranges=4, policy=fixed(top), prior_bps=bps)
    rep = result.report
    assert rep.choices == [top] * 4 and rep.fallbacks == 0
    assert rep.hedged_reads == 0


def test_backlog_counts_the_chunk_in_progress_from_its_start() -> None:
    """The fetch thread's view of the compute stage: a chunk being computed ends its predicted
    time after it started, not after now (a long text chunk would otherwise hold the next
    fetches back and make every plan start from a later compute stage)."""
    from cachegen.stream.loader import _Backlog

    b = _Backlog()
    b.add(0, 0.5)
    b.add(1, 0.1)
    assert b.free_at(0.0) == pytest.approx(0.6)
    b.start(0, 0.0)
    assert b.free_at(0.4) == pytest.approx(0.6)  # 0.1 s left of chunk 0, then chunk 1
    assert b.free_at(0.7) == pytest.approx(0.8)  # overrunning: it ends now at the earliest
    b.done(0)
    b.start(1, 0.7)
    assert b.free_at(0.75) == pytest.approx(0.8)
    b.done(1)
    assert b.free_at(0.9) == pytest.approx(0.9)
