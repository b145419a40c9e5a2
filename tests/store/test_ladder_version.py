"""Stored contexts keep meaning what they meant: each records the ladder its levels were coded
with and every stored level's settings, and chunks of another ladder are never mixed in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import cachegen
from cachegen.config import LADDER_VERSION, LEGACY_LADDER_VERSION
from cachegen.context import open_context, save_context, stored
from cachegen.store import Store

MODEL = "test-model"
CHUNK = 128


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with cachegen.store.open(f"file://{tmp_path}") as s:
        yield s


def make(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    ids = rng.integers(0, 49152, size=n)
    return ids, rng.normal(size=(2, 2, n, 2, 16)).astype(np.float32)


def count_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the level of every chunk encode that `save_context` makes."""
    calls: list[int] = []
    real = cachegen.encode

    def spy(kv, *args, **options):
        calls.append(options["level"])
        return real(kv, *args, **options)

    monkeypatch.setattr(cachegen, "encode", spy)
    return calls


def test_manifest_records_the_ladder_and_each_levels_settings(store: Store) -> None:
    ids, kv = make(300)
    save_context(store, MODEL, ids, kv, chunk_tokens=CHUNK, levels=[3, 15])
    ctx = open_context(store, MODEL, ids, chunk_tokens=CHUNK)
    assert ctx.ladder_version == LADDER_VERSION
    key = stored.manifest_key(ctx.chunks[-1].hash)
    body = stored.unseal(key, store.get(key), None)
    levels = body["ladder"]["levels"]
    assert set(levels) == {"3", "15"}
    assert cachegen.CodecConfig(**levels["15"]) == cachegen.CodecConfig.from_level(15)
    assert body["ladder"]["expected_kl"] == {"3": cachegen.expected_kl(3), "15": 0.0103}


def test_appended_levels_leave_the_records_of_the_others_as_they_were(store: Store) -> None:
    """Settings added later (`key_center`, `key_spread_auto`) are recorded only where a level
    uses them, so a record names every setting it was coded with and reads back as its level."""
    assert cachegen.CodecConfig.from_level(40).to_json() == {
        "key_quantizer": "token",
        "value_quantizer": "token",
        "key_param": 0.0316,
        "value_param": 0.0948,
        "max_tables": 16,
        "segment_symbols": 65536,
        "sink_tokens": 1,
        "recency": 0.75,
        "key_spread": 0.5,
        "level": 40,
    }
    assert cachegen.CodecConfig.from_level(27).to_json()["key_spread_auto"] is True
    top = max(cachegen.LEVELS)
    ids, kv = make(200)
    save_context(store, MODEL, ids, kv, chunk_tokens=CHUNK, levels=[40, top])
    ctx = open_context(store, MODEL, ids, chunk_tokens=CHUNK)
    body = stored.unseal(
        stored.manifest_key(ctx.chunks[-1].hash),
        store.get(stored.manifest_key(ctx.chunks[-1].hash)),
        None,
    )
    for level in (40, top):
        record = body["ladder"]["levels"][str(level)]
        assert cachegen.CodecConfig(**record) == cachegen.CodecConfig.from_level(level)
    assert body["ladder"]["levels"][str(top)]["key_center"] is True


def test_chunks_of_another_ladder_are_recoded_not_reused(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, kv = make(256)
    monkeypatch.setattr(stored, "LADDER_VERSION", LEGACY_LADDER_VERSION)
    save_context(store, MODEL, ids, kv, chunk_tokens=CHUNK, levels=[15])
    assert open_context(store, MODEL, ids, chunk_tokens=CHUNK).ladder_version == 1
    monkeypatch.setattr(stored, "LADDER_VERSION", LADDER_VERSION)
    calls = count_encodes(monkeypatch)
    save_context(store, MODEL, ids, kv, chunk_tokens=CHUNK, levels=[15])
    assert calls == [15, 15]  # both chunks coded again under this ladder
    calls.clear()
    save_context(store, MODEL, ids, kv, chunk_tokens=CHUNK, levels=[15])
    assert calls == []  # and reused once they are of this ladder
    assert open_context(store, MODEL, ids, chunk_tokens=CHUNK).ladder_version == LADDER_VERSION


def test_a_stored_prefix_stops_where_the_ladder_changes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, kv = make(384)
    monkeypatch.setattr(stored, "LADDER_VERSION", LEGACY_LADDER_VERSION)
    save_context(store, MODEL, ids, kv, chunk_tokens=CHUNK, levels=[15])
    monkeypatch.setattr(stored, "LADDER_VERSION", LADDER_VERSION)
    save_context(store, MODEL, ids[:128], kv[:, :, :128], chunk_tokens=CHUNK, levels=[15])
    longer = np.concatenate([ids, ids[:5]])  # no manifest: the longest stored prefix
    ctx = open_context(store, MODEL, longer, chunk_tokens=CHUNK)
    assert not ctx.complete and ctx.prefix_tokens == 128
    assert ctx.ladder_version == LADDER_VERSION
