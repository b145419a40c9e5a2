"""The contexts a store holds, each manifest read on its own: a damaged or vanished one is
reported in its place and never stops the listing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cachegen.store.base import Store
from cachegen.store.errors import ObjectCorrupted, ObjectMissing, StoreError

from .auth import Authenticator, AuthKey
from .keys import unseal
from .stored import ChunkInfo

_MANIFESTS = "contexts/"
#: Manifests fetched per store round trip.
_BATCH = 64


@dataclass(frozen=True)
class ContextSummary:
    """What a context's manifest says about it."""

    key: str
    model_id: str
    num_tokens: int
    chunk_tokens: int
    levels: list[int]
    chunks: list[ChunkInfo]
    quality: dict[str, Any] | None

    def bytes_per_level(self) -> dict[int, int]:
        """Stored bytes of each level over all chunks."""
        return {
            lv: sum(c.levels[lv].size for c in self.chunks if lv in c.levels) for lv in self.levels
        }


def list_contexts(
    store: Store, auth_key: AuthKey = None
) -> Iterator[tuple[str, ContextSummary | StoreError]]:
    """(manifest key, its summary, or the `StoreError` reading it raised) for every context.
    With `auth_key`, manifests are read as `open_context(auth_key=...)` reads them (an
    unauthenticated one is an error line); without, authenticated manifests are error lines.
    Only listing the keys may raise (`StoreError`): the store cannot be read at all."""
    auth = Authenticator.of(auth_key)
    keys = store.list(_MANIFESTS)
    for first in range(0, len(keys), _BATCH):
        batch = keys[first : first + _BATCH]
        for key, raw in zip(batch, _read(store, batch), strict=True):
            try:
                if isinstance(raw, StoreError):
                    raise raw
                yield key, _summary(key, auth.verify(key, raw) if auth else raw, auth)
            except StoreError as e:
                yield key, e


def _read(store: Store, keys: list[str]) -> list[bytes | StoreError]:
    """The objects under `keys`, in one batch; when the batch fails, key by key, each failure
    in its key's place."""
    try:
        raws = store.get_many(keys, missing_ok=True)
    except StoreError:
        return [_read_one(store, key) for key in keys]
    return [
        ObjectMissing(k, "deleted while listing") if r is None else r
        for k, r in zip(keys, raws, strict=True)
    ]


def _read_one(store: Store, key: str) -> bytes | StoreError:
    try:
        return store.get(key)
    except StoreError as e:
        return e


def shared_chunks(summaries: Sequence[ContextSummary]) -> dict[str, int]:
    """Per context key: how many of its chunks another listed context also holds."""
    holders = Counter(h for s in summaries for h in {c.hash for c in s.chunks})
    return {s.key: sum(holders[c.hash] > 1 for c in s.chunks) for s in summaries}


def _summary(key: str, raw: bytes, auth: Authenticator | None) -> ContextSummary:
    body = unseal(key, raw)
    chunks = body.get("chunks")
    levels = body.get("levels")
    if not isinstance(chunks, list) or not isinstance(levels, list):
        raise ObjectCorrupted(key, "manifest lacks its chunk or level list")
    quality = body.get("quality")
    return ContextSummary(
        key=key,
        model_id=_field(key, body, "model_id", str),
        num_tokens=_field(key, body, "num_tokens", int),
        chunk_tokens=_field(key, body, "chunk_tokens", int),
        levels=[_checked(key, "levels", lv, int) for lv in levels],
        chunks=[ChunkInfo.from_json(key, c, auth) for c in chunks],
        quality=quality if isinstance(quality, dict) else None,
    )


def _field(key: str, body: dict[str, Any], name: str, kind: type) -> Any:
    return _checked(key, name, body.get(name), kind)


def _checked(key: str, name: str, value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ObjectCorrupted(key, f"manifest field {name!r} is not a {kind.__name__}")
    return value
