"""The chunk-key chain: what it hashes (model, salt, chunking, tokens; never the codec version),
tenant salts, and the previous release's stores staying hits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_context import CHUNK, MODEL, make_kv, tokens

import cachegen
import cachegen.store
from cachegen.context import open_context, save_context
from cachegen.context.keys import chunk_hashes, legacy_chunk_hashes, token_array
from cachegen.store import ContextMissing, Store

#: A file store written by the previous release (commit 4561ab5: codec version 3 in the key
#: chain, no salt) and the context it holds.
LEGACY = Path(__file__).parents[1] / "data" / "legacy_store_v3"


def test_chain_inputs() -> None:
    ids = token_array(tokens(300))
    base = chunk_hashes(MODEL, ids, CHUNK)
    assert len(base) == 3 and len(set(base)) == 3
    assert chunk_hashes(MODEL, ids, CHUNK, None) == chunk_hashes(MODEL, ids, CHUNK, b"") == base
    assert chunk_hashes(MODEL, ids, CHUNK, "t1") == chunk_hashes(MODEL, ids, CHUNK, b"t1")
    others = [
        chunk_hashes("other-model", ids, CHUNK),
        chunk_hashes(MODEL, ids, CHUNK, "t1"),
        chunk_hashes(MODEL, ids, CHUNK, "t2"),
        legacy_chunk_hashes(MODEL, ids, CHUNK),
    ]
    for other in others:
        assert not set(other) & set(base)
    # The chunk size is hashed: a context shorter than both sizes still gets distinct keys.
    short = ids[:50]
    assert chunk_hashes(MODEL, short, 64) != chunk_hashes(MODEL, short, 128)
    with pytest.raises(TypeError, match="salt"):
        chunk_hashes(MODEL, ids, CHUNK, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunk_hashes(MODEL, ids, 0)


def test_keys_do_not_depend_on_the_codec_version(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, kv = tokens(300), make_kv(300)
    saved = save_context(store, MODEL, ids, kv, levels=[1], chunk_tokens=CHUNK)
    monkeypatch.setattr(cachegen, "FORMAT_VERSION", cachegen.FORMAT_VERSION + 1)
    ctx = open_context(store, MODEL, ids, chunk_tokens=CHUNK)
    assert ctx.complete and ctx.chunks == saved.chunks
    assert ctx.codec_version == cachegen.FORMAT_VERSION - 1  # what the manifest recorded


def test_salts_separate_tenants(store: Store) -> None:
    ids, kv = tokens(300), make_kv(300)
    a = save_context(store, MODEL, ids, kv, levels=[1], chunk_tokens=CHUNK, salt="tenant-a")
    with pytest.raises(ContextMissing):
        open_context(store, MODEL, ids, chunk_tokens=CHUNK, salt="tenant-b")
    with pytest.raises(ContextMissing):
        open_context(store, MODEL, ids, chunk_tokens=CHUNK)  # nor without a salt
    # A prefix query is a miss across salts too: no record of tenant a answers tenant b.
    with pytest.raises(ContextMissing):
        open_context(store, MODEL, ids[:200], chunk_tokens=CHUNK, salt=b"tenant-b")
    objects = set(store.list())
    b = save_context(store, MODEL, ids, kv, levels=[1], chunk_tokens=CHUNK, salt=b"tenant-b")
    assert not {c.hash for c in a.chunks} & {c.hash for c in b.chunks}
    new = set(store.list()) - objects
    assert len(new) == len(objects)  # tenant b wrote all of its own objects, shared none
    hit = open_context(store, MODEL, ids, chunk_tokens=CHUNK, salt=b"tenant-a")
    assert hit.complete and hit.chunks == a.chunks


def test_same_salt_dedupes(store: Store) -> None:
    ids, kv = tokens(400), make_kv(400)
    save_context(store, MODEL, ids, kv, levels=[1], chunk_tokens=CHUNK, salt="t")
    blobs = set(store.list("chunks/"))
    other = np.concatenate([ids[:300], tokens(100, seed=3)])
    partial = open_context(store, MODEL, other, chunk_tokens=CHUNK, salt="t")
    assert not partial.complete and partial.prefix_tokens == 256
    other_kv = np.concatenate([kv[:, :, :300], make_kv(100, seed=3)], axis=2)
    save_context(store, MODEL, other, other_kv, levels=[1], chunk_tokens=CHUNK, salt="t")
    new = set(store.list("chunks/")) - blobs
    shared = tuple(f"chunks/{c.hash[:2]}/{c.hash}/" for c in partial.chunks)
    assert new and not any(k.startswith(shared) for k in new)


def _legacy() -> dict:
    return json.loads((LEGACY / "context.json").read_text())


def test_store_of_the_previous_release_stays_a_hit(tmp_path: Path) -> None:
    meta = _legacy()
    ids, model, chunk = np.array(meta["tokens"]), meta["model_id"], meta["chunk_tokens"]
    shutil.copytree(LEGACY / "store", tmp_path / "store")
    store = cachegen.store.open((tmp_path / "store").as_uri())
    # The fixture's keys are exactly what the legacy chain computes.
    [manifest] = store.list("contexts/")
    assert manifest.endswith(legacy_chunk_hashes(model, token_array(ids), chunk)[-1] + ".json")

    ctx = open_context(store, model, ids, chunk_tokens=chunk)
    assert ctx.complete and ctx.levels == meta["levels"] and ctx.codec_version == 3
    assert ctx.quality == {"1": {"kl": 0.1}}
    for i, c in enumerate(ctx.chunks):
        np.testing.assert_array_equal(ctx.fetch_tokens(i), ids[c.start : c.stop])
        assert ctx.load(i, 3).shape == (2, 2, c.stop - c.start, 2, 16)
    # A longer context whose start is the legacy one finds the legacy prefix.
    longer = np.concatenate([ids, tokens(100, seed=4)])
    partial = open_context(store, model, longer, chunk_tokens=chunk)
    assert not partial.complete and partial.prefix_tokens == 256
    # Salted tenants never see unsalted legacy data.
    with pytest.raises(ContextMissing):
        open_context(store, model, ids, chunk_tokens=chunk, salt="t")
    # Saving again writes the current keys; those are found first from then on.
    kv = make_kv(len(ids))
    save_context(store, model, ids, kv, levels=[1], chunk_tokens=chunk)
    again = open_context(store, model, ids, chunk_tokens=chunk)
    assert again.levels == [1] and again.codec_version == cachegen.FORMAT_VERSION
