"""Paged KV caches: encode from and decode into a serving engine's KV blocks, in place.

An engine keeps each layer's KV in fixed-size blocks; a request's tokens live in the blocks its
block table lists. `encode_paged` reads tokens [0, num_tokens) from the blocks `block_ids`, and
`decode_paged` writes a blob's tokens into them, both natively (the core addresses token t at
`block_ids[t // block_size]`) without a contiguous copy of the context. Other blocks are never
read or written. A layout says where K and V sit in a layer's cache tensor; its strides come from
the tensor itself, so any stride order of the same logical shape works.

Layouts (vLLM 0.32, which registers every attention layer's cache as one tensor of logical shape
`[num_blocks, num_kv_heads, block_size, 2 * head_size]` in the model dtype):
- "vllm-cpu": the CPU attention backend (its "vec"/"vec16" kernels). Each (block, head) page is
  contiguous, `2 * block_size * head_size` elements: K first, stored transposed as `[head_size,
  block_size]`, then V as `[block_size, head_size]` (found by writing known keys with
  `cpu_attn_reshape_and_cache` and reading the page back).
- "flash-nhd" / "flash-hnd": the FlashAttention backend, which splits the last axis (K is
  `[..., :head_size]`, V `[..., head_size:]`); NHD stores a block's tokens outside its heads
  (vLLM's LBNHC layout), HND its heads outside its tokens (LBHNC). The name is checked against
  the tensor's strides.

The blob is an ordinary blob (`cachegen.decode` reads it as a stacked `[layers, 2, tokens,
heads, head_dim]` cache).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import api, dispatch
from ._core import FormatError
from .config import CodecConfig
from .devices import host_bytes
from .info import BlobInfo, blob_info
from .profile import ModelProfile
from .tensors import (
    DTYPE_SIZES,
    GroupView,
    KVViews,
    Paging,
    _raw,
    device_of,
    is_device_blob,
    is_torch,
)


@dataclass(frozen=True)
class Place:
    """Where K or V of one token sits in a layer's cache: element offset of the block's first
    element and strides of (token in block, head, dim)."""

    offset: int
    s_token: int
    s_head: int
    s_dim: int


@dataclass(frozen=True)
class PageGeometry:
    """A layer cache's blocks: their count, size, stride, heads, head dim, and K and V."""

    num_blocks: int
    block_size: int
    s_block: int
    heads: int
    head_dim: int
    k: Place
    v: Place


def _logical(shape: tuple[int, ...], name: str) -> tuple[int, int, int, int]:
    if len(shape) != 4 or shape[3] % 2 or min(shape) < 1:
        raise ValueError(
            f"{name} cache must be [num_blocks, num_kv_heads, block_size, 2 * head_size], "
            f"got shape {tuple(shape)}"
        )
    blocks, heads, block_size, width = shape
    return blocks, heads, block_size, width // 2


def _vllm_cpu(shape: tuple[int, ...], st: tuple[int, ...]) -> PageGeometry:
    blocks, heads, n, d = _logical(shape, "vllm-cpu")
    if st[3] != 1 or (n > 1 and st[2] != 2 * d):
        raise ValueError("vllm-cpu cache pages must be contiguous [block_size, 2 * head_size]")
    k = Place(0, 1, st[1], n)
    v = Place(n * d, d, st[1], 1)
    return PageGeometry(blocks, n, st[0], heads, d, k, v)


def _flash(order: str) -> Callable[[tuple[int, ...], tuple[int, ...]], PageGeometry]:
    def geometry(shape: tuple[int, ...], st: tuple[int, ...]) -> PageGeometry:
        blocks, heads, n, d = _logical(shape, f"flash-{order}")
        tokens_outer = st[2] > st[1]
        if heads > 1 and n > 1 and tokens_outer != (order == "nhd"):
            raise ValueError(f"cache strides {tuple(st)} are not the flash-{order} order")
        k = Place(0, st[2], st[1], st[3])
        v = Place(d * st[3], st[2], st[1], st[3])
        return PageGeometry(blocks, n, st[0], heads, d, k, v)

    return geometry


@dataclass(frozen=True)
class PagedLayout:
    """An engine's per-layer KV cache layout: `geometry(shape, element strides)`."""

    name: str
    geometry: Callable[[tuple[int, ...], tuple[int, ...]], PageGeometry]


LAYOUTS: dict[str, PagedLayout] = {
    "vllm-cpu": PagedLayout("vllm-cpu", _vllm_cpu),
    "flash-nhd": PagedLayout("flash-nhd", _flash("nhd")),
    "flash-hnd": PagedLayout("flash-hnd", _flash("hnd")),
}


def _layout(layout: str | PagedLayout) -> PagedLayout:
    if isinstance(layout, PagedLayout):
        return layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown paged layout {layout!r}; choose from {sorted(LAYOUTS)}")
    return LAYOUTS[layout]


def _block_table(block_ids: Any, num_tokens: int, block_size: int, num_blocks: int) -> np.ndarray:
    """The ids as contiguous int32 after checking count, range and uniqueness."""
    if is_torch(block_ids):
        block_ids = block_ids.cpu().numpy()
    ids = np.asarray(block_ids)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError("block_ids must be a 1-D sequence of integers")
    need = -(-num_tokens // block_size)
    if len(ids) != need:
        raise ValueError(f"{num_tokens} tokens in blocks of {block_size} need {need} block ids")
    if ids.min() < 0 or ids.max() >= num_blocks:
        raise ValueError(f"block ids out of range [0, {num_blocks})")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("block ids must be distinct")
    return np.ascontiguousarray(ids, dtype=np.int32)


@dataclass
class PagedCache:
    """Paged views of every layer's K and V for tokens [0, tokens); holds the block table the
    views point at, so keep it alive while they are used."""

    caches: Sequence[Any]
    geometry: list[PageGeometry]
    table: np.ndarray
    views: KVViews

    def layer_keys(self, layer: int) -> Any:
        """Layer `layer`'s keys `[tokens, heads, head_dim]`, gathered (a copy; torch only)."""
        cache, g = self.caches[layer], self.geometry[layer]
        if not is_torch(cache):
            raise TypeError("a profile's importance on a paged GPU cache needs torch tensors")
        import torch

        k = g.k
        blocks = [
            torch.as_strided(
                cache,
                (g.block_size, g.heads, g.head_dim),
                (k.s_token, k.s_head, k.s_dim),
                cache.storage_offset() + int(b) * g.s_block + k.offset,
            )
            for b in self.table
        ]
        return torch.cat(blocks)[: self.views.groups[0].tokens]


@dataclass(frozen=True)
class PagedLayers:
    """Every layer's cache of one engine, read and checked once (addresses, geometry, dtype,
    device): views and decodes then only build a request's block table. An engine that loads
    chunk after chunk keeps one; a torch cache whose memory moved since (`set_`, `resize_`) is
    refused, so build it again if the caches are reallocated.
    `PagedLayers.of(layer_caches, layout)` makes one."""

    caches: Sequence[Any]
    placements: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]  # address, shape, strides
    geometry: tuple[PageGeometry, ...]
    dtype: str
    device: int | None
    framework: str
    layout: str  # of the views: "stacked" where every layer has the same heads and head dim

    @classmethod
    def of(cls, layer_caches: Sequence[Any], layout: str | PagedLayout) -> PagedLayers:
        lay = _layout(layout)
        if isinstance(layer_caches, str | bytes) or not isinstance(layer_caches, Sequence):
            raise TypeError("layer_caches must be a sequence of per-layer cache tensors")
        if not layer_caches:
            raise ValueError("layer_caches is empty")
        raws = [_raw(c) for c in layer_caches]
        geometry = tuple(lay.geometry(shape, st) for _, shape, st, _ in raws)
        dtypes = {r[3] for r in raws}
        devices = {device_of(c) for c in layer_caches}
        sizes = {(g.block_size, g.num_blocks) for g in geometry}
        if len(dtypes) != 1 or len(devices) != 1 or len(sizes) != 1:
            raise ValueError("every layer cache needs the same dtype, device, block size and count")
        device = devices.pop()
        framework = "torch" if is_torch(layer_caches[0]) else "numpy"
        if device is not None and framework != "torch":
            framework = "cupy"
        placements = tuple((r[0], tuple(r[1]), tuple(r[2])) for r in raws)
        same = len({(g.heads, g.head_dim) for g in geometry}) == 1
        layout = "stacked" if same else "pairs"
        return cls(layer_caches, placements, geometry, dtypes.pop(), device, framework, layout)

    def _check_unmoved(self) -> None:
        """Refuse caches whose memory moved since `of` (only torch tensors can, in place)."""
        for c, placed in zip(self.caches, self.placements, strict=True):
            if is_torch(c) and (c.data_ptr(), tuple(c.shape), tuple(c.stride())) != placed:
                raise ValueError("a layer cache moved since PagedLayers.of; build it again")

    def views(self, block_ids: Any, num_tokens: int) -> PagedCache:
        """Views of tokens [0, num_tokens) in blocks `block_ids` of each layer's cache."""
        if not isinstance(num_tokens, int | np.integer) or num_tokens < 1:
            raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
        self._check_unmoved()
        g0 = self.geometry[0]
        table = _block_table(block_ids, int(num_tokens), g0.block_size, g0.num_blocks)
        item = DTYPE_SIZES[self.dtype]
        groups = []
        for (address, _, _), g in zip(self.placements, self.geometry, strict=True):
            paging = Paging(table.ctypes.data, g.block_size, g.num_blocks, g.s_block)
            for p in (g.k, g.v):
                strides = (p.s_token, p.s_head, p.s_dim)
                start = address + p.offset * item
                groups.append(
                    GroupView(
                        start, self.dtype, int(num_tokens), g.heads, g.head_dim, strides, paging
                    )
                )
        v = KVViews(self.layout, self.framework, self.dtype, groups, self.device, table)
        return PagedCache(self.caches, list(self.geometry), table, v)

    def read(self, blob: Any) -> PagedBlob:
        """A blob's head, parsed for `decode` (its checksum checked here where the caches are
        on the host; a GPU decode checks it on the device), with how many tokens it holds.

        Raises:
            FormatError: the blob is malformed, or transform-coded (`cachegen.transform`: its
                coefficients are not a cache; decode it with `cachegen.decode(transforms=...)`).
            ValueError: its layers do not all hold the same tokens.
        """
        gpu = self.device is not None
        if is_device_blob(blob) and not gpu:
            blob = host_bytes(blob)
        parsed = dispatch.parse(blob, verify=not gpu)
        info = blob_info(parsed)
        if info.transform is not None:
            raise FormatError(
                f"the blob is coded with transform {info.transform.digest}: paged decode does "
                "not apply transforms (cachegen.decode(blob, transforms=...) does)"
            )
        tokens = {g.tokens for g in (*info.keys, *info.values)}
        if len(tokens) != 1:
            raise ValueError("decode_paged needs a blob whose layers all hold the same tokens")
        return PagedBlob(parsed, info, tokens.pop())

    def decode(self, blob: Any | PagedBlob, block_ids: Any, *, threads: int | None = None) -> None:
        """`decode_paged` into these caches; `blob` may be what `read` gave."""
        b = blob if isinstance(blob, PagedBlob) else self.read(blob)
        info = b.info
        if len(self.caches) != info.num_layers:
            raise ValueError(f"blob has {info.num_layers} layers, got {len(self.caches)} caches")
        paged = self.views(block_ids, b.tokens)
        pairs = [g for pair in zip(info.keys, info.values, strict=True) for g in pair]
        if [(g.heads, g.head_dim) for g in paged.views.groups] != [
            (g.heads, g.head_dim) for g in pairs
        ]:
            raise ValueError("the caches' heads and head dims do not match the blob's")
        if self.dtype != info.dtype:
            raise ValueError(f"blob dtype {info.dtype}, cache dtype {self.dtype}")
        if any(isinstance(c, np.ndarray) and not c.flags.writeable for c in self.caches):
            raise ValueError("a layer cache is read-only")
        dispatch.decode_into(b.parsed, paged.views, dispatch.threads_arg(threads))


@dataclass(frozen=True)
class PagedBlob:
    """A blob's head as `PagedLayers.read` parsed it: `tokens` says how many blocks it needs."""

    parsed: Any
    info: BlobInfo
    tokens: int


def paged_views(
    layer_caches: Sequence[Any], layout: str | PagedLayout, block_ids: Any, num_tokens: int
) -> PagedCache:
    """Views of tokens [0, num_tokens) in blocks `block_ids` of each layer's cache."""
    return PagedLayers.of(layer_caches, layout).views(block_ids, num_tokens)


def encode_paged(
    layer_caches: Sequence[Any],
    layout: str | PagedLayout,
    block_ids: Any,
    num_tokens: int,
    *,
    level: int | None = None,
    config: CodecConfig | None = None,
    profile: ModelProfile | None = None,
    position: int = 0,
    context_end: int | None = None,
    threads: int | None = None,
) -> bytes:
    """Compress tokens [0, num_tokens) held in blocks `block_ids` of a paged KV cache.

    Args:
        layer_caches: one cache tensor per layer as the engine allocated it (numpy or torch, on
            the host or a GPU; a GPU cache is encoded on its GPU, same bytes).
        layout: a name from `LAYOUTS` (or a `PagedLayout`).
        block_ids: the blocks holding the tokens, in order (`ceil(num_tokens / block_size)` of
            them, distinct): e.g. a chunk's slice of a request's block table.
        num_tokens: tokens to encode; the last block may be partly used.
        level, config, profile, position, context_end, threads: as for `cachegen.encode`.

    Returns the blob (host bytes), the same bytes as `encode` of the gathered
    `[layers, 2, num_tokens, heads, head_dim]` cache.
    """
    return api.encode(
        PagedKV(layer_caches, layout, block_ids, num_tokens),
        level,
        config=config,
        profile=profile,
        position=position,
        context_end=context_end,
        threads=threads,
    )


def decode_paged(
    blob: Any,
    layer_caches: Sequence[Any],
    layout: str | PagedLayout,
    block_ids: Any,
    *,
    threads: int | None = None,
) -> None:
    """Decode a blob into blocks `block_ids` of a paged KV cache (in place, on the caches'
    device); only the slots of the blob's tokens are written. An engine loading many blobs
    into the same caches reads them once with `PagedLayers.of(layer_caches, layout)` and calls
    its `decode`.

    Raises:
        FormatError: the blob is malformed, or transform-coded (`cachegen.transform`: its
            coefficients are not a cache; decode it with `cachegen.decode(transforms=...)`),
            reported before anything is written.
        ValueError: the caches do not fit the blob (layer count, heads, head dim, dtype: the
            cache's own dtype is required, so a lossless blob stays exact), or the block ids do
            not (count, range, duplicates); nothing is written.
    """
    PagedLayers.of(layer_caches, layout).decode(blob, block_ids, threads=threads)


@dataclass(frozen=True)
class PagedKV:
    """Tokens [0, num_tokens) of a paged KV cache, which `cachegen.encode` (and
    `cachegen.context.save_context`, chunk by chunk) takes in place of a contiguous cache: it
    is encoded straight from its blocks, never gathered. Chunks must start on block
    boundaries."""

    layer_caches: Sequence[Any]
    layout: str
    block_ids: Sequence[int]
    num_tokens: int

    def block_size(self) -> int:
        return self._cache().geometry[0].block_size

    def tokens(self, start: int, stop: int) -> PagedKV:
        """Tokens [start, stop) (`start` a multiple of the block size) as their own `PagedKV`."""
        size = self.block_size()
        if start % size or not 0 <= start < stop <= self.num_tokens:
            raise ValueError(f"tokens [{start}, {stop}) do not start on a block of {size}")
        ids = self.block_ids[start // size : -(-stop // size)]
        return PagedKV(self.layer_caches, self.layout, ids, stop - start)

    def _cache(self) -> PagedCache:
        return paged_views(self.layer_caches, self.layout, self.block_ids, self.num_tokens)

    def kv_views(self) -> KVViews:
        """The blocks' views (a `cachegen.tensors.ViewSource`), keeping the block table alive."""
        return self._cache().views

    def layer_keys(self, layer: int) -> Any:
        """Layer `layer`'s keys `[tokens, heads, head_dim]`, gathered (a copy; torch only): a
        profile's importance reads them on a GPU (an `importance.KeySource`)."""
        return self._cache().layer_keys(layer)
