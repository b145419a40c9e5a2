"""vLLM's paged KV layouts: a chunk's KV moves between a blob and the blocks that hold it.

Each layout names how one layer's cache tensor is laid out in memory:

- ``vllm-cpu``: ``[num_blocks, kv_heads, block_size, 2 * head_dim]``, each (block, head) page
  read as ``[2 * block_size, head_dim]``: the block's K rows, then its V rows (vLLM's CPU backend).
- ``flash-nhd``: ``[2, num_blocks, block_size, kv_heads, head_dim]`` (FlashAttention, NHD order).
- ``flash-hnd``: ``[2, num_blocks, kv_heads, block_size, head_dim]`` in memory (HND order).

Every layout is viewed, without copying, as ``[2, num_blocks, block_size, kv_heads, head_dim]``;
a chunk's tokens are the blocks it names, in order, ``block_size`` tokens each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cachegen

if TYPE_CHECKING:
    import torch

LAYOUTS = ("vllm-cpu", "flash-nhd", "flash-hnd")


def kv_geometry(cache: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    """(num_blocks, block_size, kv_heads, head_dim) of one layer's cache in `layout`."""
    view = _canonical(cache, layout)
    _, blocks, block_size, heads, dim = view.shape
    return blocks, block_size, heads, dim


def _canonical(cache: torch.Tensor, layout: str) -> torch.Tensor:
    """`cache` as a ``[2, blocks, block_size, heads, dim]`` view."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown KV layout {layout!r}; known: {LAYOUTS}")
    if layout == "vllm-cpu":
        if cache.dim() != 4 or cache.shape[3] % 2:
            raise ValueError(
                f"vllm-cpu cache must be [blocks, heads, block, 2*dim], got {cache.shape}"
            )
        blocks, heads, block, two_dim = cache.shape
        return cache.view(blocks, heads, 2, block, two_dim // 2).permute(2, 0, 3, 1, 4)
    if cache.dim() != 5 or cache.shape[0] != 2:
        raise ValueError(f"{layout} cache must be 5-D with K/V first, got {tuple(cache.shape)}")
    if layout == "flash-nhd":
        return cache
    return cache.permute(0, 1, 3, 2, 4)  # flash-hnd


def _index(cache: torch.Tensor, block_ids: Sequence[int]) -> torch.Tensor:
    import torch

    ids = torch.as_tensor(list(block_ids), dtype=torch.long, device=cache.device)
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= cache.shape[1]:
        raise ValueError(f"block ids must lie in [0, {cache.shape[1]}), got {list(block_ids)}")
    return ids


def gather(caches: Sequence[torch.Tensor], layout: str, block_ids: Sequence[int]) -> torch.Tensor:
    """The KV of `block_ids` (a copy) as ``[layers, 2, tokens, heads, dim]``."""
    import torch

    out = []
    for cache in caches:
        view = _canonical(cache, layout)
        part = view.index_select(1, _index(view, block_ids))  # [2, n, block, heads, dim]
        out.append(part.reshape(2, -1, *view.shape[3:]))
    return torch.stack(out)


def encode_blocks(
    caches: Sequence[torch.Tensor], layout: str, block_ids: Sequence[int], **options: object
) -> bytes:
    """`cachegen.encode` of the KV in `block_ids`; `options` go to `encode`."""
    return cachegen.encode(gather(caches, layout, block_ids), **options)


def decode_blocks(
    blob: bytes, caches: Sequence[torch.Tensor], layout: str, block_ids: Sequence[int]
) -> int:
    """Decode `blob` into `block_ids`; returns its token count.

    Raises `cachegen.FormatError` for a bad blob and `ValueError` for one whose shape does not
    fit these blocks, before any block is written.
    """
    views = [_canonical(c, layout) for c in caches]
    kv = cachegen.decode(blob, framework="torch", dtype=views[0].dtype)
    _, _, block, heads, dim = views[0].shape
    expect = (len(views), 2, len(block_ids) * block, heads, dim)
    if tuple(kv.shape) != expect:
        raise ValueError(f"blob holds KV {tuple(kv.shape)}, these blocks take {expect}")
    ids = _index(views[0], block_ids)
    for view, layer in zip(views, kv, strict=True):
        view.index_copy_(1, ids, layer.reshape(2, len(block_ids), block, heads, dim))
    return expect[2]
