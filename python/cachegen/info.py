"""Header facts of a blob (`cachegen.inspect`), read from the core's parse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import QUANTIZER_NAMES
from .tensors import DTYPE_NAMES, LAYOUT_NAMES

#: Header flag: the cache was torch tensors (decode then defaults to torch).
FLAG_TORCH_SOURCE = 1


@dataclass(frozen=True)
class GroupInfo:
    """One layer's K or V as stored."""

    tokens: int
    heads: int
    head_dim: int
    quantizer: str
    param: float
    tables: int
    segments: int
    raw_rows: int = 0  # first tokens (attention sinks) stored verbatim
    overflow: int = 0  # symbols beyond the 8-bit alphabet, carried in the side data

    @property
    def elements(self) -> int:
        return self.tokens * self.heads * self.head_dim


@dataclass(frozen=True)
class TransformRef:
    """The per-model transform a blob's groups are coefficients of (`cachegen.transform`)."""

    digest: str  # sha256 of the transform's canonical bytes, hex
    position: int  # context position of the blob's first token (keys rotate from there)


@dataclass(frozen=True)
class BlobInfo:
    """Header facts of a blob, read without decoding its payload."""

    version: int
    num_layers: int
    dtype: str
    layout: str
    level: int
    total_bytes: int
    payload_bytes: int
    segments: int
    checksum: int
    from_torch: bool
    keys: list[GroupInfo]
    values: list[GroupInfo]
    transform: TransformRef | None = None  # decoding the cache needs this transform

    @property
    def elements(self) -> int:
        return sum(g.elements for g in self.keys + self.values)

    @property
    def bits_per_element(self) -> float:
        """Every byte of the blob, headers and tables included, per KV element."""
        return 8 * self.total_bytes / self.elements

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        """(tokens, heads, head_dim) of every group, K then V per layer."""
        pairs = zip(self.keys, self.values, strict=True)
        return [(g.tokens, g.heads, g.head_dim) for pair in pairs for g in pair]


def _group_info(d: dict) -> GroupInfo:
    return GroupInfo(
        d["tokens"],
        d["heads"],
        d["head_dim"],
        QUANTIZER_NAMES[d["quantizer"]],
        d["param"],
        d["tables"],
        d["segments"],
        d["raw_rows"],
        d["overflow"],
    )


def blob_info(parsed: Any) -> BlobInfo:
    """The facts of a parsed blob (host or device: see `dispatch.parse`)."""
    d = parsed.info()
    groups = [_group_info(g) for g in d["groups"]]
    t = d["transform"]
    return BlobInfo(
        version=d["version"],
        num_layers=d["num_layers"],
        dtype=DTYPE_NAMES[d["dtype"]],
        layout=LAYOUT_NAMES[d["layout"]],
        level=d["level"],
        total_bytes=d["total_bytes"],
        payload_bytes=d["payload_bytes"],
        segments=d["segments"],
        checksum=d["checksum"],
        from_torch=bool(d["flags"] & FLAG_TORCH_SOURCE),
        keys=groups[0::2],
        values=groups[1::2],
        transform=None if t is None else TransformRef(t[0].hex(), t[1]),
    )
