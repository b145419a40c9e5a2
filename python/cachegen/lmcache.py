"""cachegen as a serde of LMCache's multi-process mode (lmcache 0.5.6): L2 adapters store
cachegen blobs instead of raw KV.

Importing this module registers the serde type "cachegen" with LMCache's serde factory
(`register()` does the same, idempotently); an L2 adapter then names it in its config:

    {"type": "fs", "base_path": "/cache",
     "serde": {"type": "cachegen", "level": 15, "head_dim": 64}}

Options: `level` (a ladder level or "lossless"), `profile` (a shipped profile name or a
`.json` path; K/V models only), `head_dim` (splits the `[2, L, T, hidden]` rows into heads:
the model's head size; default: one head per row), `mla_split` (latent channels before the RoPE
part, default 512), `slot_ratio` (see below), `threads`, `max_workers` (LMCache's serde
threads). Chunks are coded position-unaware (`cachegen.chunks`).

Sizes: by default a blob is as long as it is (LMCache narrows the stored object to the bytes
`serialize` returns) within a buffer sized by a worst-case bound. LMCache 0.5.6's fs and valkey
L2 adapters, however, treat an object shorter than that buffer as a miss on load; for them set
`slot_ratio`: every chunk takes a fixed slot of that fraction of its raw bytes (the blob, then
zeros), and a chunk whose blob does not fit fails to store (LMCache recomputes it).

Memory objects: K/V groups `[2, layers, tokens, hidden]`; latent (MLA) groups
`[layers, tokens, width]` or `[1, layers, tokens, width]`; fp16, bf16 or fp32. An object may
hold several groups of one kind; they are coded as one blob.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lmcache.v1.distributed.api import MemoryLayoutDesc, ObjectKey
from lmcache.v1.distributed.serde.async_processor import AsyncSerdeProcessor
from lmcache.v1.distributed.serde.base import Deserializer, SerdeProcessor, Serializer
from lmcache.v1.distributed.serde.factory import (
    get_registered_serde_types,
    register_serde_factory,
)
from lmcache.v1.memory_management import MemoryObj

from . import profiles
from .chunks import ChunkCodec, head_major, max_blob_bytes, parse_level
from .config import DEFAULT_LEVEL
from .latent import MLA_SPLIT, latent_pairs

#: The serde type name LMCache configs use.
SERDE_NAME = "cachegen"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_OPTIONS = {"level", "profile", "head_dim", "mla_split", "slot_ratio", "threads", "max_workers"}


@dataclass(frozen=True)
class ChunkLayout:
    """How a memory object's groups map to cachegen layers."""

    head_dim: int | None = None  # None: a whole K/V row is one head
    mla_split: int = MLA_SPLIT

    def is_latent(self, shapes: list[torch.Size]) -> bool:
        """Whether the groups are latent (MLA); ValueError for shapes of neither kind or a mix."""
        kinds = {_kind(s) for s in shapes}
        if len(kinds) != 1:
            raise ValueError(f"memory object groups mix K/V and latent layouts: {shapes}")
        return kinds.pop() == "latent"

    def pairs(self, groups: list[torch.Tensor]) -> list[tuple[Any, Any]]:
        """`(K, V)` views `[1, heads, tokens, head_dim]` of K/V groups, layer after layer."""
        dims = [self.head_dim or g.shape[-1] for g in groups]
        return [
            (head_major(g[0, layer], dim), head_major(g[1, layer], dim))
            for g, dim in zip(groups, dims, strict=True)
            for layer in range(g.shape[1])
        ]

    @staticmethod
    def latent_layers(groups: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer latent views `[tokens, width]` of latent groups."""
        return [g.reshape(g.shape[-3:])[layer] for g in groups for layer in range(g.shape[-3])]


def _kind(shape: torch.Size) -> str:
    if len(shape) == 4 and shape[0] == 2:
        return "kv"
    if len(shape) == 3 or (len(shape) == 4 and shape[0] == 1):
        return "latent"
    raise ValueError(
        f"unsupported KV shape {tuple(shape)}: expected [2, layers, tokens, hidden] (K/V) or "
        "[layers, tokens, width] / [1, layers, tokens, width] (latent)"
    )


def _groups(obj: MemoryObj) -> list[torch.Tensor]:
    """The KV groups of a memory object, checked."""
    dtypes = obj.get_dtypes()
    bad = [d for d in dtypes if d not in _DTYPES]
    if bad:
        raise TypeError(f"cachegen serde takes float16/bfloat16/float32 KV, got {bad}")
    groups = [obj.get_tensor(i) for i in range(len(obj.get_shapes()))]
    if any(g is None for g in groups):
        raise ValueError("memory object has no tensor (invalidated?)")
    return groups


def _bytes_of(obj: MemoryObj) -> torch.Tensor:
    """The logical bytes of a byte-buffer memory object, flat uint8."""
    raw = obj.raw_tensor
    if raw is None:
        raise ValueError("byte buffer has no tensor (invalidated?)")
    return raw.view(torch.uint8).reshape(-1)[: obj.get_size()]


class CachegenSerializer(Serializer):
    """KV memory object -> cachegen blob in LMCache's temp byte buffer."""

    def __init__(
        self, codec: ChunkCodec, layout: ChunkLayout, slot_ratio: float | None = None
    ) -> None:
        if slot_ratio is not None and not 0 < slot_ratio <= 2:
            raise ValueError(f"slot_ratio must be in (0, 2], got {slot_ratio!r}")
        self.codec, self.layout, self.slot_ratio = codec, layout, slot_ratio

    def encode(self, obj: MemoryObj) -> bytes:
        """The blob of a KV memory object."""
        groups = _groups(obj)
        if self.layout.is_latent(obj.get_shapes()):
            return self.codec.encode_latent(
                self.layout.latent_layers(groups), self.layout.mla_split
            )
        return self.codec.encode_pairs(self.layout.pairs(groups))

    def serialize(self, src: MemoryObj, dst: MemoryObj, key: ObjectKey) -> int:
        blob = self.encode(src)
        out = _bytes_of(dst)
        if len(blob) > out.numel():
            raise ValueError(f"blob of {len(blob)} bytes exceeds the {out.numel()}-byte buffer")
        out[: len(blob)].copy_(torch.frombuffer(bytearray(blob), dtype=torch.uint8))
        if self.slot_ratio is None:
            return len(blob)
        out[len(blob) :].zero_()  # a fixed slot: the reader finds the blob's end in its header
        return out.numel()

    def estimate_serialized_size(self, layout_desc: MemoryLayoutDesc) -> int:
        pairs = zip(layout_desc.shapes, layout_desc.dtypes, strict=True)
        raw = sum(s.numel() * d.itemsize for s, d in pairs)
        if self.slot_ratio is not None:
            return -(-int(raw * self.slot_ratio) // 4096) * 4096
        layers = sum(s[-3] for s in layout_desc.shapes)
        return max_blob_bytes(raw, 2 * layers)


class CachegenDeserializer(Deserializer):
    """cachegen blob in LMCache's temp byte buffer -> KV memory object, in place."""

    def __init__(self, codec: ChunkCodec, layout: ChunkLayout) -> None:
        self.codec, self.layout = codec, layout

    def decode_into(self, buf: memoryview, dst: MemoryObj) -> None:
        """Decode the blob at the start of `buf` into a KV memory object of its shapes."""
        groups = _groups(dst)
        if self.layout.is_latent(dst.get_shapes()):
            pairs = latent_pairs(self.layout.latent_layers(groups), self.layout.mla_split)
        else:
            pairs = self.layout.pairs(groups)
        self.codec.decode_into(buf, pairs)

    def deserialize(self, src: MemoryObj, dst: MemoryObj, key: ObjectKey) -> None:
        self.decode_into(memoryview(_bytes_of(src).numpy()), dst)


def create_serde(options: dict[str, object]) -> SerdeProcessor:
    """LMCache's factory hook: the serde an L2 adapter's `"serde"` options describe."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(
            f"unknown cachegen serde options {sorted(unknown)}; known: {sorted(_OPTIONS)}"
        )
    codec = ChunkCodec(
        level=parse_level(options.get("level", DEFAULT_LEVEL)),
        profile=profiles.resolve(options.get("profile")),  # type: ignore[arg-type]
        threads=options.get("threads"),  # type: ignore[arg-type]
    )
    layout = ChunkLayout(options.get("head_dim"), int(options.get("mla_split", MLA_SPLIT)))  # type: ignore[arg-type]
    workers = int(options.get("max_workers", 1))  # type: ignore[arg-type]
    slot = options.get("slot_ratio")
    serializer = CachegenSerializer(codec, layout, None if slot is None else float(slot))  # type: ignore[arg-type]
    return AsyncSerdeProcessor(serializer, CachegenDeserializer(codec, layout), max_workers=workers)


def register(name: str = SERDE_NAME) -> None:
    """Register the cachegen serde with LMCache under `name` (once; later calls do nothing)."""
    if name not in get_registered_serde_types():
        register_serde_factory(name, create_serde)


register()
