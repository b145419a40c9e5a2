"""Contexts: a token sequence's KV cache stored as chunks, each encoded at several levels.

Write order makes every reader's view whole. A chunk's blobs and token ids go first, then its
record (which lists them); the context's manifest goes last and is the commit: a context exists
once its manifest does. A chunk is reusable by any context sharing the prefix once its record
exists, so a writer killed part-way leaves whole chunks and no context, never half of one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

import cachegen
from cachegen.config import LADDER_VERSION, LEGACY_LADDER_VERSION
from cachegen.shaping import SHAPING_VERSION, QueryDirections
from cachegen.store.base import Store
from cachegen.store.errors import ContextMissing, ObjectCorrupted, ObjectMissing
from cachegen.transform import (
    COEFFICIENT_VERSION,
    LEGACY_COEFFICIENT_VERSION,
    Transform,
    coefficient_config,
    put_transform,
    stored_transforms,
)

from .auth import Authenticator, AuthKey
from .keys import (
    LEGACY_CODEC_VERSION,
    MANIFEST_SCHEMA,
    ObjectRef,
    Salt,
    checksum,
    chunk_hashes,
    legacy_chunk_hashes,
    level_key,
    manifest_key,
    record_key,
    seal,
    token_array,
    tokens_key,
    unseal,
)
from .layers import assemble, chunk_layer_tokens, layer_counts, slice_attention, slice_chunk

DEFAULT_CHUNK_TOKENS = 256
#: Chunks encoded ahead of their upload; bounds memory while encode and upload overlap.
_UPLOADS_IN_FLIGHT = 2


@dataclass(frozen=True)
class ChunkInfo:
    """One stored chunk: tokens ``[start, stop)`` of the context."""

    index: int
    hash: str
    start: int
    stop: int
    tokens: ObjectRef
    levels: dict[int, ObjectRef]
    #: Tokens of each layer in this chunk, when layers differ (sliding windows; see
    #: `cachegen.context.layers`): the blobs hold only the layers with tokens here.
    layer_tokens: tuple[int, ...] | None = None

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.stop

    def to_json(self) -> dict[str, Any]:
        d = {
            "index": self.index,
            "hash": self.hash,
            "start": self.start,
            "stop": self.stop,
            "tokens": self.tokens.to_json(),
            "levels": {str(lv): ref.to_json() for lv, ref in self.levels.items()},
        }
        return d | ({"layer_tokens": list(self.layer_tokens)} if self.layer_tokens else {})

    @classmethod
    def from_json(cls, key: str, d: dict[str, Any], auth: Authenticator | None) -> ChunkInfo:
        try:
            chunk = cls(
                index=int(d["index"]),
                hash=str(d["hash"]),
                start=int(d["start"]),
                stop=int(d["stop"]),
                tokens=ObjectRef.from_json(d["tokens"], auth),
                levels={int(lv): ObjectRef.from_json(ref, auth) for lv, ref in d["levels"].items()},
                layer_tokens=_layer_tokens(d.get("layer_tokens")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ObjectCorrupted(key, f"bad chunk entry ({e!r})") from e
        span = chunk.stop - chunk.start
        if chunk.layer_tokens and not all(0 <= n <= span for n in chunk.layer_tokens):
            raise ObjectCorrupted(key, f"layer token counts {chunk.layer_tokens} exceed {span}")
        return chunk


@dataclass
class Context:
    """A stored context, or the longest stored prefix of one, ready to fetch chunk by chunk."""

    store: Store
    model_id: str
    codec_version: int
    chunk_tokens: int
    #: Tokens asked for (save_context: saved).
    num_tokens: int
    #: The longest run of stored chunks from the start of the context, in order.
    chunks: list[ChunkInfo]
    #: Whether a manifest for exactly these tokens exists, i.e. the whole context is stored.
    complete: bool
    #: The level ladder's measured quality, as given to `save_context` (complete contexts only).
    quality: dict[str, Any] | None = None
    #: The ladder the chunks were coded with (`cachegen.config.LADDER_VERSION`).
    ladder_version: int = LEGACY_LADDER_VERSION
    #: The digest of the per-model transform the chunks are coefficients of
    #: (`save_context(transform=...)`), None for plain chunks.
    transform: str | None = None

    @functools.cached_property
    def transforms(self) -> Callable[[str], Transform | None]:
        """`decode(..., transforms=)` for this context's blobs: the store's transforms, each
        fetched once (an engine adapter decoding fetched blobs passes it on)."""
        return stored_transforms(self.store)

    @property
    def prefix_tokens(self) -> int:
        """How many leading tokens the stored chunks cover."""
        return self.chunks[-1].stop if self.chunks else 0

    @property
    def levels(self) -> list[int]:
        """Levels every stored chunk has."""
        common = set.intersection(*(set(c.levels) for c in self.chunks)) if self.chunks else set()
        return sorted(common)

    def _ref(self, index: int, level: int) -> ObjectRef:
        ref = self.chunks[index].levels.get(level)
        if ref is None:
            raise ObjectMissing(f"chunk {index} level {level}", f"levels {self.levels} stored")
        return ref

    def fetch(self, index: int, level: int) -> bytes:
        """The verified blob of chunk `index` at `level`; `ObjectCorrupted`/`ObjectMissing`."""
        ref = self._ref(index, level)
        return ref.verify(self.store.get(ref.key))

    async def afetch(self, index: int, level: int) -> bytes:
        """Async `fetch`."""
        ref = self._ref(index, level)
        return ref.verify(await self.store.aget(ref.key))

    def load(self, index: int, level: int) -> Any:
        """Chunk `index` at `level`, decoded into the layout it was saved in (only the layers
        with tokens in the chunk where layers differ: see `ChunkInfo.layer_tokens`)."""
        return cachegen.decode(self.fetch(index, level), transforms=self.transforms)

    def load_prefix(self, level: int) -> Any:
        """The whole stored prefix at `level`, every layer's chunks joined along tokens: what
        was saved, sliding-window layers as short as they were. `ObjectMissing` (a miss) when
        a layer's stored tokens do not form one run up to the prefix's end: a sliding-window
        layer of a longer stored context does not hold the tokens a shorter prefix needs."""
        if not self.chunks:
            raise ContextMissing("the context", "no chunk is stored")
        decoded = [self.load(i, level) for i in range(len(self.chunks))]
        spans = [c.stop - c.start for c in self.chunks]
        try:
            return assemble(decoded, [c.layer_tokens for c in self.chunks], spans)
        except LookupError as e:  # chunks of contexts of other lengths: not this one's KV
            raise ObjectMissing("the context's layers", str(e)) from e

    def fetch_tokens(self, index: int) -> np.ndarray:
        """The token ids of chunk `index` (uint32), for recomputing it from text."""
        chunk = self.chunks[index]
        zstandard = _zstandard()
        raw = chunk.tokens.verify(self.store.get(chunk.tokens.key))
        try:
            data = zstandard.ZstdDecompressor().decompress(raw)
        except zstandard.ZstdError as e:
            raise ObjectCorrupted(chunk.tokens.key, str(e)) from e
        tokens = np.frombuffer(data, dtype="<u4")
        if len(tokens) != chunk.stop - chunk.start:
            raise ObjectCorrupted(chunk.tokens.key, f"{len(tokens)} token ids, expected more")
        return tokens


def _ladder() -> list[int]:
    return sorted({min(cachegen.LEVELS), cachegen.DEFAULT_LEVEL, max(cachegen.LEVELS)})


def _layer_tokens(raw: object) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(type(n) is int for n in raw):
        raise ValueError(f"layer_tokens must be a list of integers, got {raw!r}")
    return tuple(raw)


@dataclass(frozen=True)
class _Record:
    """A chunk record as read back: the chunk, the codec version and the ladder that wrote it,
    and the transform its blobs are coefficients of with what the levels mean on them."""

    chunk: ChunkInfo
    codec_version: int
    ladder_version: int = LEGACY_LADDER_VERSION
    transform: str | None = None
    coefficient_version: int | None = None  # None without a transform

    @property
    def coding(self) -> tuple[int, str | None, int | None]:
        """What its levels mean: the ladder, the transform and the coefficient version (chunks
        that differ in it are never reused or joined into one prefix)."""
        return self.ladder_version, self.transform, self.coefficient_version


def _coding(transform: str | None) -> tuple[int, str | None, int | None]:
    """The `coding` of chunks this version writes, under `transform` (a digest) or none."""
    return LADDER_VERSION, transform, None if transform is None else COEFFICIENT_VERSION


def _read_record(key: str, raw: bytes | None, auth: Authenticator | None) -> _Record | None:
    """A chunk record, or None when it is missing, damaged or unauthenticated (a miss)."""
    if raw is None:
        return None
    try:
        body = unseal(key, raw, auth)
        version = body.get("codec_version", LEGACY_CODEC_VERSION)
        ladder = body.get("ladder_version", LEGACY_LADDER_VERSION)
        transform = body.get("transform")
        coefficients = None
        if transform is not None:
            coefficients = body.get("coefficient_version", LEGACY_COEFFICIENT_VERSION)
            if not _is_digest(transform) or not isinstance(coefficients, int):
                return None
        if not isinstance(version, int) or not isinstance(ladder, int):
            return None
        chunk = ChunkInfo.from_json(key, body["chunk"], auth)
        return _Record(chunk, version, ladder, transform, coefficients)
    except (ObjectCorrupted, KeyError):
        return None


def _is_digest(x: object) -> bool:
    return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


def _check_save_args(
    tokens: np.ndarray, kv: Any, levels: Sequence[int] | None, quality: dict[str, Any] | None
) -> list[int]:
    """The levels to store; `ValueError` for arguments that cannot be saved."""
    held = max(layer_counts(kv))
    if held != len(tokens):
        raise ValueError(f"kv holds {held} tokens but token_ids has {len(tokens)}")
    levels = _ladder() if levels is None else sorted(set(levels))
    if not levels or not set(levels) <= {*cachegen.LEVELS, cachegen.LOSSLESS}:
        raise ValueError(f"levels must be some of {cachegen.LEVELS} or LOSSLESS, got {levels}")
    try:
        json.dumps(quality)
    except (TypeError, ValueError) as e:
        raise ValueError(f"quality must be JSON-serializable: {e}") from e
    return levels


def save_context(
    store: Store,
    model_id: str,
    token_ids: Any,
    kv: Any,
    *,
    levels: Sequence[int] | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    quality: dict[str, Any] | None = None,
    profile: cachegen.ModelProfile | None = None,
    threads: int | None = None,
    salt: Salt = None,
    auth_key: AuthKey = None,
    transform: Transform | None = None,
    attention: Sequence[Any] | None = None,
    queries: QueryDirections | None = None,
) -> Context:
    """Store `kv` (the cache of `token_ids`) as chunks of `chunk_tokens`, each at every level.

    `kv` is a stacked cache, per-layer pairs, or a `cachegen.paged.PagedKV` (an engine's KV
    blocks, encoded chunk by chunk in place; `chunk_tokens` a multiple of its block size).

    `levels` defaults to three rungs of the codec's ladder: lowest, default and highest.
    Each chunk is coded knowing its place in the context (the first chunk holds the attention
    sink, the last the most recent tokens) and with the model's `profile`, if given.
    Chunks already stored by a context with the same prefix are reused, not re-encoded.
    `attention`: what the engine observed at prefill, per layer over the tokens `kv` holds
    (`cachegen.hf.observed_attention`); each chunk is encoded with its slice
    (`cachegen.encode(attention=)`). `queries`: what the context's last queries share
    (`cachegen.hf.query_directions`), with a `transform`: every chunk's key rounding is shaped
    by them (`cachegen.encode(queries=)`).
    `quality` (any JSON-serializable dict, e.g. measured KL per level) goes into the manifest.
    `salt` (bytes or str, e.g. vLLM's per-request ``cache_salt``) keys the chunks to a tenant:
    only `open_context` with the same salt finds them, and only chunks of that salt are reused.
    `auth_key` (at least 16 bytes, or a str) MACs every object written, so that only readers
    with the key use them, and only chunks MAC'd with it are reused.
    `transform` (a `cachegen.transform.Transform` of this model) codes every chunk's
    coefficients (`cachegen.encode(..., transform=)`, with the profile's layer weights and
    token importance if one is given): the transform is stored
    first under `transform/<digest>`, the manifest and chunk records name it, and only chunks
    coded with the same transform are reused. `Context.load` finds it in the store.
    """
    tokens = token_array(token_ids)
    levels = _check_save_args(tokens, kv, levels, quality)
    digest = None
    if transform is not None:
        put_transform(store, transform)  # before any blob that names it
        digest = transform.digest()
    auth = Authenticator.of(auth_key)
    version = cachegen.FORMAT_VERSION
    hashes = chunk_hashes(model_id, tokens, chunk_tokens, salt)
    keys = [record_key(h) for h in hashes]
    raws = store.get_many(keys, missing_ok=True)
    records = [_read_record(k, r, auth) for k, r in zip(keys, raws, strict=True)]

    counts = layer_counts(kv)
    if attention is not None and [len(a) for a in attention] != counts:
        raise ValueError(f"attention: need one array per layer of its tokens {counts}")
    chunker = _Chunker(
        kv, tokens, counts, levels, profile, threads, auth, transform, attention, queries
    )
    chunks: list[ChunkInfo] = []
    pending: deque[Future[None]] = deque()
    # Encode chunk i+1 while chunk i uploads; the codec and the store clients release the GIL.
    with ThreadPoolExecutor(1, thread_name_prefix="cachegen-save") as uploader:
        for i, (h, record) in enumerate(zip(hashes, records, strict=True)):
            span = (i * chunk_tokens, min((i + 1) * chunk_tokens, len(tokens)))
            chunk, objects, chunk_version = chunker.chunk(i, h, span, record)
            chunks.append(chunk)
            while len(pending) >= _UPLOADS_IN_FLIGHT:
                pending.popleft().result()
            pending.append(
                uploader.submit(_write_chunk, store, chunk, objects, chunk_version, auth, digest)
            )
        for f in pending:
            f.result()

    manifest = {
        **_manifest_identity(model_id, chunk_tokens, len(tokens)),
        "codec_version": version,
        "levels": levels,
        "ladder": _ladder_record(
            levels,
            transform is not None,
            profile is not None,
            attention is not None,
            queries is not None,
        ),
        "created": time.time(),
        "quality": quality,
        "transform": digest,
        "chunks": [c.to_json() for c in chunks],
    }
    key = manifest_key(hashes[-1])
    store.put(key, seal(key, manifest, auth))  # the commit point: last, one atomic put
    n = len(tokens)
    return Context(
        store, model_id, version, chunk_tokens, n, chunks, True, quality, LADDER_VERSION, digest
    )


def _ladder_record(
    levels: list[int],
    transformed: bool = False,
    profiled: bool = False,
    observed: bool = False,
    shaped: bool = False,
) -> dict[str, Any]:
    """What each stored level means: the ladder's version, every level's settings as coded and
    the KL measured for it without a profile (`cachegen.targets`); none under a transform,
    whose levels that table does not describe (pass measured ones as `quality`), which records
    the coefficient version instead, and the shaping's where the keys were shaped."""
    configs = {lv: cachegen.CodecConfig.from_level(lv) for lv in levels}
    if transformed:
        configs = {lv: coefficient_config(c, profiled, observed) for lv, c in configs.items()}
    kl = None if transformed else {str(lv): cachegen.expected_kl(lv) for lv in levels}
    settings = {str(lv): c.to_json() for lv, c in configs.items()}
    record = {"version": LADDER_VERSION, "levels": settings, "expected_kl": kl}
    if shaped:
        record["shaping_version"] = SHAPING_VERSION
    return record | ({"coefficient_version": COEFFICIENT_VERSION} if transformed else {})


@dataclass(frozen=True)
class _Chunker:
    """Makes each chunk of one `save_context` call: reused as stored, or encoded."""

    kv: Any
    tokens: np.ndarray
    counts: list[int]
    levels: list[int]
    profile: cachegen.ModelProfile | None
    threads: int | None
    auth: Authenticator | None
    transform: Transform | None
    attention: Sequence[Any] | None
    queries: QueryDirections | None

    def _attention(self, start: int, stop: int) -> list[Any] | None:
        return None if self.attention is None else slice_attention(self.attention, start, stop)

    def chunk(
        self, index: int, chunk_hash: str, span: tuple[int, int], record: _Record | None
    ) -> tuple[ChunkInfo, dict[str, bytes], int]:
        """Chunk `index` covering tokens `span`, the objects to put and its codec version."""
        start, stop = span
        inside = chunk_layer_tokens(self.counts, start, stop)
        old = record.chunk if record else None
        if old is not None and (old.stop, old.layer_tokens) != (stop, inside):
            old = None  # stored with other layer spans (another context length): replace
        digest = None if self.transform is None else self.transform.digest()
        if record and record.coding != _coding(digest):
            old = None  # its levels meant something else: never mixed with this coding's
        if record and old is not None and set(self.levels) <= set(old.levels):
            # Stored by a context with this prefix: reuse it. Its record is rewritten all the
            # same, so that its age tells a concurrent `collect_garbage` it is in use.
            return old, {}, record.codec_version
        part = slice_chunk(self.kv, start, stop)
        where = {
            "position": start,
            "context_end": len(self.tokens),
            "profile": self.profile,
            "transform": self.transform,
            "attention": self._attention(start, stop),
            "queries": self.queries,
        }
        blobs = {
            lv: cachegen.encode(part, level=lv, threads=self.threads, **where)
            for lv in self.levels
            if old is None or lv not in old.levels
        }
        ids = self.tokens[start:stop]
        chunk, objects = _chunk_objects(
            (index, chunk_hash, start, stop), ids, blobs, old, self.auth
        )
        return dataclasses.replace(chunk, layer_tokens=inside), objects, cachegen.FORMAT_VERSION


def _manifest_identity(model_id: str, chunk_tokens: int, n: int) -> dict[str, Any]:
    """The manifest fields that say which context it describes (written, then checked on open).

    The codec version is recorded beside them but not checked: blobs of any version decode.
    """
    return {
        "kind": "cachegen.context",
        "schema": MANIFEST_SCHEMA,
        "model_id": model_id,
        "chunk_tokens": chunk_tokens,
        "num_tokens": n,
    }


def _chunk_objects(
    span: tuple[int, str, int, int],
    tokens: np.ndarray,
    blobs: dict[int, bytes],
    old: ChunkInfo | None,
    auth: Authenticator | None,
) -> tuple[ChunkInfo, dict[str, bytes]]:
    """The chunk's entry (keeping the token ids and levels an earlier writer stored) and the
    objects to put; `span` is (index, hash, start, stop)."""
    index, chunk_hash, start, stop = span
    objects: dict[str, bytes] = {}
    if old is not None:
        tok, refs = old.tokens, dict(old.levels)
    else:
        packed = _zstandard().ZstdCompressor(level=3).compress(tokens.tobytes())
        tok, stored = ObjectRef.frame(tokens_key(chunk_hash, checksum(packed)), packed, auth)
        objects[tok.key], refs = stored, {}
    for lv, blob in blobs.items():
        ref, stored = ObjectRef.frame(level_key(chunk_hash, lv, checksum(blob)), blob, auth)
        refs[lv] = ref
        objects[ref.key] = stored
    return ChunkInfo(index, chunk_hash, start, stop, tok, dict(sorted(refs.items()))), objects


def _write_chunk(
    store: Store,
    chunk: ChunkInfo,
    objects: dict[str, bytes],
    version: int,
    auth: Authenticator | None,
    transform: str | None,
) -> None:
    store.put_many(objects)
    key = record_key(chunk.hash)
    record = {
        "kind": "cachegen.chunk",
        "codec_version": version,
        "ladder_version": LADDER_VERSION,
        "transform": transform,
        "chunk": chunk.to_json(),
    }
    if transform is not None:
        record["coefficient_version"] = COEFFICIENT_VERSION
    store.put(key, seal(key, record, auth))


def open_context(
    store: Store,
    model_id: str,
    token_ids: Any,
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    salt: Salt = None,
    auth_key: AuthKey = None,
) -> Context:
    """The stored context for `token_ids`, or its longest stored prefix (``complete=False``).

    `salt` must be the one the context was saved with. With `auth_key`, only objects MAC'd
    with that key are used (`Context.fetch` verifies each blob): anything else is a miss.
    Without a salt or key, a context stored by the previous release (whose chunk keys hashed
    the codec version) is found when no chunk under the current keys is.
    Raises `ContextMissing` when not even the first chunk is stored and `ObjectCorrupted`
    (`ObjectUnauthenticated` for a bad MAC) when this context's manifest is damaged; all are
    `StoreError`s a loader can treat as a miss.
    """
    tokens = token_array(token_ids)
    auth = Authenticator.of(auth_key)
    chains = [chunk_hashes(model_id, tokens, chunk_tokens, salt)]
    if not salt and auth is None:
        chains.append(legacy_chunk_hashes(model_id, tokens, chunk_tokens))
    for hashes in chains:
        try:
            return _open_chain(store, model_id, tokens, chunk_tokens, hashes, auth)
        except ContextMissing as e:
            missing = e
    raise missing


def _open_chain(
    store: Store,
    model_id: str,
    tokens: np.ndarray,
    chunk_tokens: int,
    hashes: list[str],
    auth: Authenticator | None,
) -> Context:
    """The context whose chunks have `hashes`, or its longest stored prefix."""
    n = len(tokens)
    key = manifest_key(hashes[-1])
    try:
        raw = store.get(key)
    except ObjectMissing:
        records = _stored_prefix(store, hashes, chunk_tokens, n, auth)
        if not records:
            raise ContextMissing(
                key, f"no stored chunk starts this context of {model_id!r}"
            ) from None
        chunks = [r.chunk for r in records]
        first = records[0]
        return Context(
            store,
            model_id,
            first.codec_version,
            chunk_tokens,
            n,
            chunks,
            False,
            None,
            first.ladder_version,
            first.transform,
        )
    body = unseal(key, raw, auth)
    expect = _manifest_identity(model_id, chunk_tokens, n)
    if any(body.get(k) != v for k, v in expect.items()):
        raise ObjectCorrupted(key, "manifest does not describe this context")
    chunks = [ChunkInfo.from_json(key, c, auth) for c in body.get("chunks", [])]
    if [c.hash for c in chunks] != hashes:
        raise ObjectCorrupted(key, "manifest chunk hashes do not match the token ids")
    version = body.get("codec_version")
    if not isinstance(version, int):
        raise ObjectCorrupted(key, f"bad codec version {version!r}")
    quality = body.get("quality")
    ladder = _manifest_ladder(key, body.get("ladder"))
    transform = body.get("transform")
    if transform is not None and not _is_digest(transform):
        raise ObjectCorrupted(key, f"bad transform digest {transform!r}")
    return Context(
        store, model_id, version, chunk_tokens, n, chunks, True, quality, ladder, transform
    )


def _manifest_ladder(key: str, record: Any) -> int:
    """The ladder version a manifest records (manifests of the first ladder record none)."""
    if record is None:
        return LEGACY_LADDER_VERSION
    version = record.get("version") if isinstance(record, dict) else None
    if not isinstance(version, int):
        raise ObjectCorrupted(key, f"bad ladder record {record!r}")
    return version


def _stored_prefix(
    store: Store, hashes: list[str], chunk_tokens: int, n: int, auth: Authenticator | None
) -> list[_Record]:
    """Chunks with intact records from the first one on, probed `concurrency` at a time."""
    found: list[_Record] = []
    step = max(store.concurrency, 1)
    for first in range(0, len(hashes), step):
        keys = [record_key(h) for h in hashes[first : first + step]]
        raws = store.get_many(keys, missing_ok=True)
        for i, (k, raw) in enumerate(zip(keys, raws, strict=True), first):
            record = _read_record(k, raw, auth)
            span = (i * chunk_tokens, min((i + 1) * chunk_tokens, n))
            if record is None or record.chunk.hash != hashes[i] or record.chunk.span != span:
                return found
            if found and record.coding != found[0].coding:
                return found  # a prefix's levels mean one thing throughout
            found.append(record)
    return found


def _zstandard() -> Any:
    """zstandard (the `store` extra) packs token ids; listing contexts and loading KV need none."""
    try:
        import zstandard
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "token ids of stored contexts need zstandard: pip install 'cachegen[store]'",
            name="zstandard",
        ) from e
    return zstandard
