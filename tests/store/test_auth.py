"""Authenticated KV: with a key, only objects MAC'd with it are used; forged, stripped,
moved or differently keyed objects are misses, never KV."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_context import CHUNK, MODEL, make_kv, tokens

import cachegen
from cachegen.context import open_context, save_context
from cachegen.context.auth import Authenticator
from cachegen.context.keys import ObjectRef, checksum
from cachegen.store import (
    ContextMissing,
    ObjectCorrupted,
    ObjectUnauthenticated,
    Store,
)

KEY = b"k" * 32
OTHER_KEY = "another deployment's key"


def test_authenticated_roundtrip(store: Store) -> None:
    ids, kv = tokens(300), make_kv(300)
    saved = save_context(store, MODEL, ids, kv, levels=[1, 3], chunk_tokens=CHUNK, auth_key=KEY)
    ctx = open_context(store, MODEL, ids, chunk_tokens=CHUNK, auth_key=KEY)
    assert ctx.complete and ctx.chunks == saved.chunks
    for i, c in enumerate(ctx.chunks):
        np.testing.assert_array_equal(ctx.fetch_tokens(i), ids[c.start : c.stop])
        blob = cachegen.encode(
            kv[:, :, c.start : c.stop], level=3, position=c.start, context_end=300
        )
        np.testing.assert_array_equal(ctx.load(i, 3), cachegen.decode(blob))
    # Every object the context wrote carries a MAC that verifies under its own store key.
    auth = Authenticator.of(KEY)
    objects = store.list()
    assert len(objects) == 3 * 4 + 1  # per chunk: 2 levels, tokens, record; one manifest
    for key in objects:
        auth.verify(key, store.get(key))
    # Without the key, nothing of it is usable (the framing is not the sealed JSON or codec's).
    with pytest.raises(ObjectCorrupted):
        open_context(store, MODEL, ids, chunk_tokens=CHUNK)


@pytest.mark.parametrize("reader_key", [OTHER_KEY, b"\x00" * 16])
def test_wrong_key_is_a_miss(store: Store, reader_key: str | bytes) -> None:
    ids = tokens(300)
    save_context(store, MODEL, ids, make_kv(300), levels=[1], chunk_tokens=CHUNK, auth_key=KEY)
    with pytest.raises(ObjectUnauthenticated):
        open_context(store, MODEL, ids, chunk_tokens=CHUNK, auth_key=reader_key)
    [manifest] = store.list("contexts/")
    store.delete(manifest)  # the prefix path: records must verify too
    with pytest.raises(ContextMissing):
        open_context(store, MODEL, ids, chunk_tokens=CHUNK, auth_key=reader_key)


def test_writer_without_the_key_cannot_plant_kv(store: Store) -> None:
    """An attacker with write access but no key overwrites the context with its own, fully
    consistent objects (valid codec CRCs and blake2b checksums): the keyed reader misses."""
    ids = tokens(300)
    save_context(store, MODEL, ids, make_kv(300), levels=[1], chunk_tokens=CHUNK, auth_key=KEY)
    planted = make_kv(300, seed=9)
    save_context(store, MODEL, ids, planted, levels=[1], chunk_tokens=CHUNK)  # no key
    with pytest.raises(ObjectUnauthenticated):
        open_context(store, MODEL, ids, chunk_tokens=CHUNK, auth_key=KEY)
    [manifest] = store.list("contexts/")
    store.delete(manifest)
    with pytest.raises(ContextMissing):
        open_context(store, MODEL, ids, chunk_tokens=CHUNK, auth_key=KEY)
    # The keyed writer does not reuse the planted chunks: it writes its own again.
    save_context(store, MODEL, ids, make_kv(300), levels=[1], chunk_tokens=CHUNK, auth_key=KEY)
    ctx = open_context(store, MODEL, ids, chunk_tokens=CHUNK, auth_key=KEY)
    ours = cachegen.encode(make_kv(300)[:, :, :CHUNK], level=1, position=0, context_end=300)
    np.testing.assert_array_equal(ctx.load(0, 1), cachegen.decode(ours))


@pytest.mark.parametrize("forgery", ["strip", "swap_blob", "edit_manifest", "move"])
def test_forged_objects_are_misses(store: Store, forgery: str) -> None:
    ids = tokens(300)
    auth = Authenticator.of(KEY)
    ctx = save_context(
        store, MODEL, ids, make_kv(300), levels=[1], chunk_tokens=CHUNK, auth_key=KEY
    )
    [manifest] = store.list("contexts/")
    ref = ctx.chunks[1].levels[1]
    if forgery == "strip":  # the MAC trailer cut off: the bare, valid object remains
        store.put(ref.key, store.get(ref.key)[: -len(b"cgmac-v1") - 32])
    elif forgery == "swap_blob":  # another valid blob with this blob's trailer
        other = cachegen.encode(make_kv(128, seed=5), level=1, position=128, context_end=300)
        store.put(ref.key, other + store.get(ref.key)[-40:])
    elif forgery == "edit_manifest":  # JSON edited consistently (its blake2b fixed), MAC kept
        raw = store.get(manifest)
        outer = json.loads(raw[:-40])
        outer["body"]["quality"] = {"1": {"kl": 0.0}}
        canonical = json.dumps(outer["body"], sort_keys=True, separators=(",", ":")).encode()
        outer["blake2b"] = checksum(canonical)
        store.put(manifest, json.dumps(outer).encode() + raw[-40:])
        with pytest.raises(ObjectUnauthenticated):
            open_context(store, MODEL, ids, chunk_tokens=CHUNK, auth_key=KEY)
        return
    else:  # a validly MAC'd blob of chunk 0 copied over chunk 1's
        store.put(ref.key, store.get(ctx.chunks[0].levels[1].key))
    opened = open_context(store, MODEL, ids, chunk_tokens=CHUNK, auth_key=KEY)
    with pytest.raises(ObjectCorrupted):  # size/checksum first, then the MAC
        opened.fetch(1, 1)
    # Even when the reference is made to match the forged bytes, the MAC refuses them.
    stored = store.get(ref.key)
    forged_ref = ObjectRef(ref.key, len(stored), checksum(stored), auth)
    with pytest.raises(ObjectUnauthenticated):
        forged_ref.verify(stored)
    assert opened.load(0, 1).shape[2] == CHUNK  # the untouched chunk still loads


def test_keys_are_validated_and_never_shown(store: Store) -> None:
    ids, kv = tokens(100), make_kv(100)
    with pytest.raises(ValueError, match="16 bytes") as e:
        save_context(store, MODEL, ids, kv, auth_key="short-secret")
    assert "short-secret" not in str(e.value)
    with pytest.raises(TypeError, match="auth_key"):
        open_context(store, MODEL, ids, auth_key=12345678901234567890)  # type: ignore[arg-type]
    assert store.list() == []
    secret = "secret-key-material-0123456789"
    ctx = save_context(store, MODEL, ids, kv, levels=[1], chunk_tokens=CHUNK, auth_key=secret)
    shown = repr(ctx) + repr(Authenticator.of(secret)) + repr(ctx.chunks)
    with pytest.raises(ObjectUnauthenticated) as e:
        open_context(store, MODEL, ids, chunk_tokens=CHUNK, auth_key=secret[::-1])
    assert secret not in shown + str(e.value) and secret[::-1] not in str(e.value)
