"""cachegen as an SGLang HiCache storage backend (sglang 0.5.23): host KV pages are kept
compressed by cachegen in any cachegen store (`cachegen.store.open(url)`: file, S3, Redis).

Loaded by SGLang's dynamic backend factory:

    --hicache-storage-backend dynamic --hicache-storage-backend-extra-config \\
      '{"backend_name": "cachegen", "module_path": "cachegen.sglang",
        "class_name": "CachegenHiCacheStorage", "store": "s3://bucket/kv?endpoint=...",
        "level": 15}'

Options (extra config): `store` (URL, required), `level` (a ladder level or "lossless"),
`profile` (a shipped profile name or `.json` path; K/V models only), `mla_split` (latent
channels before the RoPE part, default 512), `threads`. Pages are coded position-unaware
(`cachegen.chunks`). SGLang's generic page path (`get/set/batch_get/batch_set`) moves flat
pages; their geometry comes from the host pool it registers (`register_mem_pool_host`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig

from . import profiles
from .chunks import ChunkCodec, head_major, parse_level
from .config import DEFAULT_LEVEL
from .latent import MLA_SPLIT, latent_pairs
from .store import ObjectMissing
from .store import open as open_store

_OPTIONS = {"backend_name", "module_path", "class_name", "interface_v1"}
_OPTIONS |= {"store", "level", "profile", "mla_split", "threads"}
#: K/V page layouts of SGLang's MHA host pool: the flat page's shape and, for layer l, the
#: index of its K (side 0) or V (side 1) rows `[tokens, heads, head_dim]` or `[heads, ...]`.
_MHA_SHAPES = {
    "layer_first": lambda L, P, H, D: (2, L, P, H, D),
    "page_first": lambda L, P, H, D: (2, P, L, H, D),
    "page_first_direct": lambda L, P, H, D: (2, 1, L, P, H, D),
    "page_head": lambda L, P, H, D: (2, 1, H, P, L, D),
}
_MLA_SHAPES = {
    "layer_first": lambda L, P, D: (L, P, 1, D),
    "page_first": lambda L, P, D: (P, L, 1, D),
    "page_first_direct": lambda L, P, D: (1, L, P, 1, D),
}


def _mha_rows(page: torch.Tensor, layout: str, side: int, layer: int) -> torch.Tensor:
    """A layer's K or V rows of an MHA page as `[tokens, heads, head_dim]`."""
    if layout == "layer_first":
        return page[side, layer]
    if layout == "page_first":
        return page[side, :, layer]
    if layout == "page_first_direct":
        return page[side, 0, layer]
    return page[side, 0, :, :, layer].transpose(0, 1)  # page_head: [heads, tokens, dim]


def _mla_rows(page: torch.Tensor, layout: str, layer: int) -> torch.Tensor:
    """A layer's latent rows of an MLA page as `[tokens, width]`."""
    if layout == "layer_first":
        return page[layer, :, 0]
    if layout == "page_first":
        return page[:, layer, 0]
    return page[0, layer, :, 0]


@dataclass(frozen=True)
class PageGeometry:
    """The shape of one flat host page, from SGLang's host pool."""

    layout: str
    layers: int
    page_size: int
    heads: int
    head_dim: int
    dtype: torch.dtype
    latent: bool

    @classmethod
    def of_pool(cls, pool: Any, latent: bool) -> PageGeometry:
        """Read from a host pool (`MHATokenToKVPoolHost` / `MLATokenToKVPoolHost`)."""
        if latent:
            head_dim = pool.kv_lora_rank + pool.qk_rope_head_dim
            geometry = cls(
                pool.layout, pool.layer_num, pool.page_size, 1, head_dim, pool.dtype, True
            )
        else:
            geometry = cls(
                pool.layout, pool.layer_num, pool.page_size, pool.head_num, pool.head_dim,
                pool.dtype, False,
            )  # fmt: skip
        shapes = _MLA_SHAPES if latent else _MHA_SHAPES
        if geometry.layout not in shapes:
            kind = "MLA" if latent else "MHA"
            raise ValueError(f"cachegen backend: unsupported {kind} host layout {pool.layout!r}")
        return geometry

    @property
    def shape(self) -> tuple[int, ...]:
        L, P, H, D = self.layers, self.page_size, self.heads, self.head_dim
        return (
            _MLA_SHAPES[self.layout](L, P, D)
            if self.latent
            else _MHA_SHAPES[self.layout](L, P, H, D)
        )

    def page(self, flat: Any) -> torch.Tensor:
        """The structured view of a flat page, checked."""
        if not isinstance(flat, torch.Tensor) or flat.dtype != self.dtype:
            got = getattr(flat, "dtype", type(flat).__name__)
            raise TypeError(f"cachegen backend: page must be a {self.dtype} tensor, got {got}")
        if flat.numel() != torch.Size(self.shape).numel():
            raise ValueError(
                f"cachegen backend: page has {flat.numel()} values, the pool's pages "
                f"{self.shape} hold {torch.Size(self.shape).numel()}"
            )
        return flat.reshape(self.shape)


class CachegenHiCacheStorage(HiCacheStorage):
    """A HiCache storage backend keeping pages as cachegen blobs in a cachegen store."""

    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Any = None) -> None:
        extra = dict(storage_config.extra_config or {})
        unknown = set(extra) - _OPTIONS
        if unknown:
            raise ValueError(f"unknown cachegen backend options {sorted(unknown)}")
        if "store" not in extra:
            raise ValueError("cachegen backend needs a 'store' URL in its extra config")
        self.store = open_store(extra["store"])
        self.codec = ChunkCodec(
            level=parse_level(extra.get("level", DEFAULT_LEVEL)),
            profile=profiles.resolve(extra.get("profile")),
            threads=extra.get("threads"),
        )
        self.mla_split = int(extra.get("mla_split", MLA_SPLIT))
        self.latent = storage_config.is_mla_model
        self.prefix = _key_prefix(storage_config)
        self.geometry: PageGeometry | None = None

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self.geometry = PageGeometry.of_pool(mem_pool_host, self.latent)

    def _page(self, flat: Any) -> tuple[PageGeometry, torch.Tensor]:
        if self.geometry is None:
            raise RuntimeError("cachegen backend: no host pool registered yet")
        return self.geometry, self.geometry.page(flat)

    def _latent_rows(self, flat: Any) -> list[torch.Tensor]:
        g, page = self._page(flat)
        return [_mla_rows(page, g.layout, layer) for layer in range(g.layers)]

    def _pairs(self, flat: Any) -> list[tuple[Any, Any]]:
        """`(K, V)` views of a page, the latent split in two for MLA (`cachegen.latent`)."""
        if self.latent:
            return latent_pairs(self._latent_rows(flat), self.mla_split)
        g, page = self._page(flat)
        return [
            tuple(head_major(_mha_rows(page, g.layout, s, layer), g.head_dim) for s in (0, 1))
            for layer in range(g.layers)
        ]

    def _encode(self, flat: Any) -> bytes:
        if self.latent:
            return self.codec.encode_latent(self._latent_rows(flat), self.mla_split)
        return self.codec.encode_pairs(self._pairs(flat))

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Any:
        if target_location is None:
            raise ValueError("cachegen backend: get needs a target page to decode into")
        try:
            blob = self.store.get(self.prefix + key)
        except ObjectMissing:
            return None
        self.codec.decode_into(memoryview(blob), self._pairs(target_location))
        return target_location

    def batch_get(
        self, keys: list[str], target_locations: Any = None, target_sizes: Any = None
    ) -> list[Any]:
        targets = target_locations or [None] * len(keys)
        return [self.get(k, t) for k, t in zip(keys, targets, strict=True)]

    def set(
        self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None
    ) -> bool:
        self.store.put(self.prefix + key, self._encode(value))
        return True

    def batch_set(
        self,
        keys: list[str],
        values: Any = None,
        target_locations: Any = None,
        target_sizes: Any = None,
    ) -> bool:
        return all(self.set(k, v) for k, v in zip(keys, values, strict=True))

    def exists(self, key: str) -> bool:
        return self.store.exists(self.prefix + key)

    def close(self) -> None:
        self.store.close()


def _key_prefix(cfg: HiCacheStorageConfig) -> str:
    """Store keys per model and shard: MLA pages are the same on every TP rank, K/V pages are
    a rank's heads."""
    model = (cfg.model_name or "model").replace("/", "-")
    shard = "mla" if cfg.is_mla_model else f"tp{cfg.tp_rank}of{cfg.tp_size}"
    return f"sglang/{model}/{shard}/pp{cfg.pp_rank}of{cfg.pp_size}/"
