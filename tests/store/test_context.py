"""Contexts over every backend: chunking, levels, prefix sharing, keys and integrity."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import cachegen
from cachegen.context import open_context, save_context
from cachegen.context.keys import chunk_hashes, token_array
from cachegen.store import (
    ContextMissing,
    ObjectCorrupted,
    ObjectMissing,
    Store,
    StoreError,
)

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHUNK = 128


def make_kv(tokens: int, seed: int = 0) -> np.ndarray:
    """[layers, 2, tokens, heads, dim], smooth along tokens like a real cache."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(size=(2, 2, tokens, 2, 16)), axis=2) / 8
    return (walk + rng.normal(size=walk.shape)).astype(np.float32)


def hf_layout(kv: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same cache as per-layer (K, V) torch tensors [1, heads, tokens, dim]."""
    t = torch.from_numpy(kv).permute(0, 1, 3, 2, 4)  # layers, 2, heads, tokens, dim
    return [(t[i, 0][None].contiguous(), t[i, 1][None].contiguous()) for i in range(len(t))]


def tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 49152, size=n)


def test_roundtrip_every_level(store: Store) -> None:
    ids, kv = tokens(300), make_kv(300)
    quality = {"1": {"kl": 0.05}, "3": {"kl": 0.01}, "5": {"kl": 0.002}}
    saved = save_context(store, MODEL, ids, kv, chunk_tokens=CHUNK, quality=quality)
    ctx = open_context(store, MODEL, ids, chunk_tokens=CHUNK)
    assert ctx.complete and ctx.prefix_tokens == 300 and ctx.quality == quality
    assert ctx.chunks == saved.chunks
    assert [(c.start, c.stop) for c in ctx.chunks] == [(0, 128), (128, 256), (256, 300)]
    assert ctx.levels == sorted(
        {min(cachegen.LEVELS), cachegen.DEFAULT_LEVEL, max(cachegen.LEVELS)}
    )
    for i, c in enumerate(ctx.chunks):
        np.testing.assert_array_equal(ctx.fetch_tokens(i), ids[c.start : c.stop])
        for lv in ctx.levels:
            # Each chunk is coded knowing its place: the sink in chunk 0, the end in the last.
            part = kv[:, :, c.start : c.stop]
            blob = cachegen.encode(part, level=lv, position=c.start, context_end=300)
            np.testing.assert_array_equal(ctx.load(i, lv), cachegen.decode(blob))


def test_hf_layout_roundtrip(store: Store) -> None:
    ids, kv = tokens(200), make_kv(200)
    save_context(store, MODEL, ids, hf_layout(kv), levels=[2], chunk_tokens=CHUNK)
    ctx = open_context(store, MODEL, ids, chunk_tokens=CHUNK)
    layers = ctx.load(1, 2)
    assert len(layers) == 2 and tuple(layers[0][0].shape) == (1, 2, 72, 16)
    want = cachegen.decode(cachegen.encode(hf_layout(kv[:, :, 128:]), level=2, position=128))
    torch.testing.assert_close(layers[1][1], want[1][1])


def test_async_fetch(store: Store) -> None:
    import asyncio

    ids = tokens(100)
    ctx = save_context(store, MODEL, ids, make_kv(100), levels=[1], chunk_tokens=CHUNK)
    assert asyncio.run(ctx.afetch(0, 1)) == ctx.fetch(0, 1)


def test_manifest_is_sealed_json(store: Store) -> None:
    ids = tokens(150)
    save_context(store, MODEL, ids, make_kv(150), levels=[1, 4], chunk_tokens=CHUNK)
    [key] = store.list("contexts/")
    body = json.loads(store.get(key))["body"]
    assert body["model_id"] == MODEL and body["codec_version"] == cachegen.FORMAT_VERSION
    assert body["chunk_tokens"] == CHUNK and body["num_tokens"] == 150 and body["levels"] == [1, 4]
    level = body["chunks"][0]["levels"]["4"]
    assert store.exists(level["key"]) and len(store.get(level["key"])) == level["size"]


def test_prefix_sharing_finds_and_reuses_chunks(store: Store) -> None:
    base, kv = tokens(400), make_kv(400)
    save_context(store, MODEL, base, kv, levels=[1], chunk_tokens=CHUNK)
    blobs_before = set(store.list("chunks/"))
    # Same first 300 tokens, then different ones: chunks 0 and 1 are shared.
    other = np.concatenate([base[:300], tokens(200, seed=1)])
    partial = open_context(store, MODEL, other, chunk_tokens=CHUNK)
    assert not partial.complete and partial.prefix_tokens == 256 and len(partial.chunks) == 2
    assert partial.load(1, 1).shape == (2, 2, 128, 2, 16)
    other_kv = np.concatenate([kv[:, :, :300], make_kv(200, seed=1)], axis=2)
    save_context(store, MODEL, other, other_kv, levels=[1], chunk_tokens=CHUNK)
    new = set(store.list("chunks/")) - blobs_before
    assert not any(
        k.startswith(tuple(c.hash[:2] + "/" + c.hash for c in partial.chunks)) for k in new
    )
    # A longer query whose start is the stored context finds all its full chunks.
    longer = np.concatenate([base, tokens(50, seed=2)])
    assert open_context(store, MODEL, longer, chunk_tokens=CHUNK).prefix_tokens == 384


def test_misses_are_typed(store: Store) -> None:
    ids = tokens(200)
    with pytest.raises(ContextMissing):
        open_context(store, MODEL, ids)
    save_context(store, MODEL, ids, make_kv(200), levels=[1], chunk_tokens=CHUNK)
    with pytest.raises(ContextMissing):  # another model never shares chunks
        open_context(store, "other-model", ids, chunk_tokens=CHUNK)
    with pytest.raises(ContextMissing):  # another chunking never shares chunks
        open_context(store, MODEL, ids, chunk_tokens=100)
    ctx = open_context(store, MODEL, ids, chunk_tokens=CHUNK)
    with pytest.raises(ObjectMissing):
        ctx.fetch(0, 5)  # a level that was not saved


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_blobs_are_typed_errors(store: Store, damage: str) -> None:
    ids = tokens(200)
    ctx = save_context(store, MODEL, ids, make_kv(200), levels=[3], chunk_tokens=CHUNK)
    for ref in (ctx.chunks[1].levels[3], ctx.chunks[1].tokens):
        data = store.get(ref.key)
        if damage == "flip":
            store.put(ref.key, data[:50] + bytes([data[50] ^ 1]) + data[51:])
        elif damage == "truncate":
            store.put(ref.key, data[:-7])
        else:
            store.delete(ref.key)
    expected = ObjectMissing if damage == "delete" else ObjectCorrupted
    reopened = open_context(store, MODEL, ids, chunk_tokens=CHUNK)
    with pytest.raises(expected):
        reopened.load(1, 3)
    with pytest.raises(expected):
        reopened.fetch_tokens(1)
    assert reopened.load(0, 3).shape[2] == 128  # the intact chunk still loads


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_damaged_manifest_and_records(store: Store, damage: str) -> None:
    ids = tokens(300)
    save_context(store, MODEL, ids, make_kv(300), levels=[1], chunk_tokens=CHUNK)

    def spoil(key: str) -> None:
        data = store.get(key)
        bad = {
            "flip": data.replace(b'"size"', b'"sizf"', 1),
            "truncate": data[: len(data) // 2],
            "garbage": b"\x80\x04pickle?",
        }
        store.put(key, bad[damage])

    [manifest] = store.list("contexts/")
    spoil(manifest)
    with pytest.raises(ObjectCorrupted) as e:
        open_context(store, MODEL, ids, chunk_tokens=CHUNK)
    assert isinstance(e.value, StoreError)
    # Without a manifest, the prefix is found through chunk records; a bad one ends it.
    store.delete(manifest)
    record = f"chunks/{open_context(store, MODEL, ids, chunk_tokens=CHUNK).chunks[1].hash[:2]}"
    spoil(next(k for k in store.list(record) if k.endswith("record.json")))
    partial = open_context(store, MODEL, ids, chunk_tokens=CHUNK)
    assert not partial.complete and partial.prefix_tokens == 128


def test_bad_arguments_write_nothing(store: Store) -> None:
    ids, kv = tokens(100), make_kv(100)
    with pytest.raises(ValueError, match="tokens"):
        save_context(store, MODEL, ids[:90], kv)
    with pytest.raises(ValueError, match="levels"):
        save_context(store, MODEL, ids, kv, levels=[99])
    with pytest.raises(ValueError, match="JSON"):
        save_context(store, MODEL, ids, kv, quality={"kl": object()})
    with pytest.raises(ValueError, match="1-D"):
        save_context(store, MODEL, [], kv[:, :, :0])
    with pytest.raises(ValueError, match="integers"):
        open_context(store, MODEL, [0.5, 1.5])
    assert store.list() == []


def test_keys_are_stable_across_processes() -> None:
    """Chunk hashes depend on content only: not on the process, hash seed or machine."""
    ids = tokens(300)
    here = chunk_hashes(MODEL, token_array(ids), CHUNK, "tenant")
    code = (
        "import numpy as np; from cachegen.context.keys import chunk_hashes, token_array;"
        f"ids = token_array(np.array({ids.tolist()}));"
        f"print(','.join(chunk_hashes({MODEL!r}, ids, {CHUNK}, 'tenant')))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={
                "PYTHONHASHSEED": seed,
                "PATH": "",
                "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            },
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip().split(",") == here
    assert here[0] == chunk_hashes(MODEL, token_array(ids[:128]), CHUNK, "tenant")[0]  # chained
