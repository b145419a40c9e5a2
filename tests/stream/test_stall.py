"""Stalled requests (issue 20): a real S3 server (moto) behind a proxy that goes silent, so a
request is accepted and never answered. The store's own timeout is 30 s; the load must end
within its SLO plus a small margin, from its per-read deadlines and hedges on fresh connections.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from stallproxy import StallProxy
from streamkit import MODEL, FakeEngine, costs_for, store_context

import cachegen.store
from cachegen.stream import TEXT, Loader

SLO_S = 1.0
#: Bound on the load's time: the SLO plus a margin for the hedges and a busy test machine,
#: far below the 30 s one stalled request would take without deadlines.
BOUND_S = SLO_S + 1.0


@pytest.fixture
def stalling() -> Iterator[tuple[StallProxy, cachegen.store.Store]]:
    from store_servers import S3_CREDENTIALS, MotoServer

    server = MotoServer()
    proxy = StallProxy(("127.0.0.1", server.port))
    url = f"s3://{server.bucket()}/kv?endpoint={proxy.endpoint}&region=us-east-1"
    store = cachegen.store.open(url, timeout=30.0, max_retries=0, **S3_CREDENTIALS)
    yield proxy, store
    store.close()
    proxy.close()
    server.stop()


def load(store, ids, engine: FakeEngine):
    loader = Loader(store, engine, costs_for(engine), SLO_S, ranges=1)
    return loader.load(MODEL, ids, chunk_tokens=64).report


@pytest.mark.parametrize("nth", [(1,), (2,), (4,), (1, 3, 5)], ids=str)
def test_unanswered_requests_are_hedged(stalling, nth: tuple[int, ...]) -> None:
    """The manifest (1st request), chunk blobs (2nd...) or several go unanswered."""
    proxy, store = stalling
    ids, kv, _ = store_context(store, 256)
    proxy.silence_next(*nth)
    engine = FakeEngine(prefill_tps=50.0)  # a chunk of text takes 1.28 s: KV everywhere
    rep = load(store, ids, engine)
    assert rep.total_s < BOUND_S and rep.hedged_reads >= len(nth)
    assert rep.context_error == "" and rep.fallbacks == 0  # the hedges got every answer
    assert TEXT not in rep.choices and engine.finish().shape == kv.shape


@pytest.mark.parametrize("recompute", ["chunk", "prefix"])
def test_unanswered_context_goes_to_recompute_at_once(stalling, recompute: str) -> None:
    proxy, store = stalling
    ids, _, _ = store_context(store, 256)
    proxy.silence_all()
    engine = FakeEngine(prefill_tps=5000.0, recompute=recompute)
    rep = load(store, ids, engine)
    assert rep.context_cause == "timeout" and rep.fallback_causes == {"timeout": 1}
    assert rep.open_s < SLO_S / 2  # its share of the budget, not the store's timeouts
    assert rep.total_s < BOUND_S and rep.loaded_tokens == 0
    if recompute == "chunk":
        assert rep.choices == [TEXT] * 4 and rep.met_slo
    else:
        assert rep.prefix_end == "timeout" and engine.appended == []
