"""Stored contexts coded with a per-model transform, over every backend: the transform is
stored once beside the chunks, manifests and records name it, chunks of another coding are
never reused or joined into a prefix, and a missing transform is a typed miss."""

from __future__ import annotations

import numpy as np
import pytest

import cachegen
from cachegen.context import collect_garbage, open_context, save_context
from cachegen.store import Store
from cachegen.transform import (
    COEFFICIENT_VERSION,
    STORE_PREFIX,
    Rope,
    TransformMissing,
    coefficient_config,
    learn_transform,
)

MODEL = "test-model"
CHUNK = 128
LEVELS = [5, 20]


def make_kv(tokens: int, seed: int = 0) -> np.ndarray:
    """[layers, 2, tokens, heads, dim], smooth along tokens like a real cache."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(size=(2, 2, tokens, 2, 16)), axis=2) / 8
    return (walk + rng.normal(size=walk.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def transform():
    return learn_transform([make_kv(400, seed=5)], Rope.from_thetas([1e4, 1e5], 16))


def ids(n: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 49152, size=n)


def test_round_trip_names_and_finds_the_transform(store: Store, transform) -> None:
    kv = make_kv(300)
    save_context(store, MODEL, ids(300), kv, chunk_tokens=CHUNK, levels=LEVELS, transform=transform)
    assert store.list(STORE_PREFIX) == [STORE_PREFIX + transform.digest()]
    ctx = open_context(store, MODEL, ids(300), chunk_tokens=CHUNK)
    assert ctx.complete and ctx.transform == transform.digest()
    for i, c in enumerate(ctx.chunks):
        assert cachegen.inspect(ctx.fetch(i, 20)).transform.position == c.start
        part = kv[:, :, c.start : c.stop]
        blob = cachegen.encode(part, 20, position=c.start, context_end=300, transform=transform)
        np.testing.assert_array_equal(ctx.load(i, 20), cachegen.decode(blob, transforms=transform))
    assert ctx.load_prefix(5).shape == kv.shape


def test_other_codings_are_not_reused_or_joined(store: Store, transform) -> None:
    kv = make_kv(300)
    save_context(store, MODEL, ids(256), kv[:, :, :256], chunk_tokens=CHUNK, levels=LEVELS)
    # The same tokens with the transform: every chunk coded anew, none of the plain ones reused.
    ctx = save_context(
        store, MODEL, ids(300), kv, chunk_tokens=CHUNK, levels=LEVELS, transform=transform
    )
    for i in range(len(ctx.chunks)):
        assert cachegen.inspect(ctx.fetch(i, 5)).transform is not None
    # Plain again over the first chunk only: the prefix of a longer context stops where the
    # coding changes, so the plain chunk is not joined to transform-coded ones.
    save_context(store, MODEL, ids(128), kv[:, :, :128], chunk_tokens=CHUNK, levels=LEVELS)
    prefix = open_context(store, MODEL, ids(300)[:280], chunk_tokens=CHUNK)
    assert not prefix.complete and prefix.transform is None and len(prefix.chunks) == 1


def test_missing_transform_is_a_typed_miss(store: Store, transform) -> None:
    save_context(
        store, MODEL, ids(200), make_kv(200), chunk_tokens=CHUNK, levels=LEVELS, transform=transform
    )
    store.delete(STORE_PREFIX + transform.digest())
    ctx = open_context(store, MODEL, ids(200), chunk_tokens=CHUNK)
    with pytest.raises(TransformMissing):
        ctx.load(0, 5)


def test_collection_keeps_the_transform(store: Store, transform) -> None:
    save_context(
        store, MODEL, ids(200), make_kv(200), chunk_tokens=CHUNK, levels=LEVELS, transform=transform
    )
    collect_garbage(store, grace_s=0)
    ctx = open_context(store, MODEL, ids(200), chunk_tokens=CHUNK)
    assert ctx.load(1, 20).shape[2] == 200 - CHUNK


def test_transform_with_a_profile_codes_each_chunk_with_it(store: Store, transform) -> None:
    kv, weights = make_kv(300), ((1.0, 3.0),) * 2
    profile = cachegen.ModelProfile("m", weights, weights)
    save_context(
        store,
        MODEL,
        ids(300),
        kv,
        chunk_tokens=CHUNK,
        levels=LEVELS,
        profile=profile,
        transform=transform,
    )
    ctx = open_context(store, MODEL, ids(300), chunk_tokens=CHUNK)
    for i, c in enumerate(ctx.chunks):
        part, where = kv[:, :, c.start : c.stop], {"position": c.start, "context_end": 300}
        blob = cachegen.encode(part, 20, transform=transform, profile=profile, **where)
        assert ctx.fetch(i, 20) == blob
        assert blob != cachegen.encode(part, 20, transform=transform, **where)


@pytest.mark.parametrize(
    "profiled, observed", [(False, False), (True, False), (True, True), (False, True)]
)
def test_manifest_records_the_levels_as_coded(store: Store, transform, profiled, observed) -> None:
    """Under a transform a level is coded without its key spread (and with a profile or
    observed attention, with the coefficients' importance power and their recency), and the
    ladder's KL table (measured without a transform) is not recorded as if it applied."""
    from cachegen.context import stored

    weights = ((1.0, 2.0),) * 2
    profile = cachegen.ModelProfile("m", weights, weights) if profiled else None
    kv = make_kv(200)
    rng = np.random.default_rng(1)
    attention = [rng.lognormal(-5.0, 2.0, 200) for _ in range(len(kv))] if observed else None
    where = {"chunk_tokens": CHUNK, "levels": LEVELS, "transform": transform}
    save_context(store, MODEL, ids(200), kv, profile=profile, attention=attention, **where)
    ctx = open_context(store, MODEL, ids(200), chunk_tokens=CHUNK)
    key = stored.manifest_key(ctx.chunks[-1].hash)
    body = stored.unseal(key, store.get(key), None)
    assert body["transform"] == transform.digest()
    assert body["ladder"]["expected_kl"] is None
    assert body["ladder"]["coefficient_version"] == COEFFICIENT_VERSION
    level = cachegen.CodecConfig(**body["ladder"]["levels"]["5"])
    assert level.key_spread == 0 and level.key_spread_auto is False
    assert level.key_param == cachegen.CodecConfig.from_level(5).key_param
    assert level == coefficient_config(cachegen.CodecConfig.from_level(5), profiled, observed)
    # What the manifest records is what the chunk was coded with.
    part = kv[:, :, :CHUNK]
    seen = None if attention is None else [a[:CHUNK] for a in attention]
    blob = cachegen.encode(
        part, config=level, context_end=200, transform=transform, profile=profile, attention=seen
    )
    assert blob == ctx.fetch(0, 5)
    if profiled:  # a profile's head weights differ from none
        assert blob != cachegen.encode(
            part, config=level, context_end=200, transform=transform, attention=seen
        )


def test_chunks_of_an_older_coefficient_version_are_coded_anew(
    store: Store, transform, monkeypatch
) -> None:
    """A transform chunk whose record names no coefficient version (written before levels on
    coefficients changed meaning) is neither joined to chunks of this version nor reused."""
    from cachegen.context import stored

    where = {"chunk_tokens": CHUNK, "levels": LEVELS, "transform": transform}
    kv = make_kv(256)
    first = save_context(store, MODEL, ids(256), kv, **where)
    key = stored.record_key(first.chunks[0].hash)
    record = stored.unseal(key, store.get(key), None)
    assert record["coefficient_version"] == COEFFICIENT_VERSION
    del record["coefficient_version"]
    store.put(key, stored.seal(key, record, None))
    prefix = open_context(store, MODEL, ids(300)[:280], chunk_tokens=CHUNK)
    assert len(prefix.chunks) == 1  # the second chunk is not joined to the older first
    coded = []
    encode = cachegen.encode
    monkeypatch.setattr(
        cachegen, "encode", lambda part, **kw: coded.append(kw["position"]) or encode(part, **kw)
    )
    save_context(store, MODEL, ids(256), kv, **where)
    assert coded == [0] * len(LEVELS)  # the older chunk coded anew, the other one reused


def test_shaped_chunks_are_coded_with_the_queries(store: Store, transform) -> None:
    """`save_context(queries=)` shapes every chunk's keys as `encode(queries=)` at the chunk's
    position does, and the manifest records the shaping's version."""
    from cachegen.context import stored
    from cachegen.shaping import SHAPING_VERSION, query_directions

    kv = make_kv(200)
    rng = np.random.default_rng(2)
    q = rng.normal(size=(2, 32, 4, 16)) + 3 * rng.normal(size=(2, 1, 4, 16))
    queries = query_directions(list(q.astype(np.float32)), transform.rope, np.arange(168, 200))
    where = {"chunk_tokens": CHUNK, "levels": LEVELS, "transform": transform}
    save_context(store, MODEL, ids(200), kv, queries=queries, **where)
    ctx = open_context(store, MODEL, ids(200), chunk_tokens=CHUNK)
    key = stored.manifest_key(ctx.chunks[-1].hash)
    assert stored.unseal(key, store.get(key), None)["ladder"]["shaping_version"] == SHAPING_VERSION
    c = ctx.chunks[1]
    part = kv[:, :, c.start : c.stop]
    at = {"position": c.start, "context_end": 200, "transform": transform}
    blob = cachegen.encode(part, 20, queries=queries, **at)
    assert ctx.fetch(1, 20) == blob != cachegen.encode(part, 20, **at)
