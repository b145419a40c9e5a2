"""Chunk coding for the engine plug-ins (`cachegen.lmcache`, `cachegen.sglang`): an engine hands
over one chunk or page of KV at a time, without its place in the context.

A chunk's position is unknown, so it is coded as if it were anywhere: no sink tokens (only the
context's first tokens are sinks, and nothing says this chunk holds them) and no recency
refinement (nothing says where the context ends). The level's steps apply uniformly; what that
costs against position-aware coding (`cachegen.context.save_context`) is measured in
bench/results/plugins.md.

Blobs travel in engine buffers larger than themselves (sized by an upper bound), so a reader
takes the blob's own length from its header (`blob_length`).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .api import FormatError, decode, encode
from .config import DEFAULT_LEVEL, LOSSLESS, CodecConfig
from .latent import latent_config, latent_pairs
from .profile import ModelProfile

_MAGIC = b"CGKV"
_HEADER_BYTES = 64
#: Slack of `max_blob_bytes` over the raw bytes: headers, tables and the side data of every
#: group, and entropy-coded bytes that do not compress (lossless noise) or symbols past the
#: raw width (fine lossy steps on heavy-tailed values).
_FIXED_SLACK = 1 << 16
_GROUP_SLACK = 1 << 13


def chunk_config(level: int) -> CodecConfig:
    """The config of `level` for a chunk whose place in its context is unknown."""
    config = CodecConfig.from_level(level)
    if level == LOSSLESS:
        return config
    return dataclasses.replace(config, sink_tokens=0, recency=0.0)


def parse_level(value: Any) -> int:
    """A level from an engine config: an int of the ladder, or "lossless"."""
    if isinstance(value, str) and value.lower() == "lossless":
        return LOSSLESS
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"level must be an int or 'lossless', got {value!r}")
    level = int(value)
    CodecConfig.from_level(level)  # a clear error for a level off the ladder
    return level


def max_blob_bytes(raw_bytes: int, groups: int) -> int:
    """An upper bound on the blob of a chunk of `raw_bytes` KV bytes in `groups` groups (K and
    V of each layer): what an engine allocates before the blob exists."""
    return raw_bytes + raw_bytes // 4 + _FIXED_SLACK + _GROUP_SLACK * groups


def blob_length(buf: memoryview) -> int:
    """The length of the blob at the start of `buf` (its header's total_bytes, docs/FORMAT.md),
    checked against the buffer."""
    if len(buf) < _HEADER_BYTES or bytes(buf[:4]) != _MAGIC:
        raise FormatError("buffer does not start with a cachegen blob")
    (total,) = struct.unpack_from("<Q", buf, 8)
    if not _HEADER_BYTES < total <= len(buf):
        raise FormatError(f"blob header says {total} bytes, buffer holds {len(buf)}")
    return total


def head_major(x: Any, head_dim: int) -> Any:
    """`[1, heads, tokens, head_dim]` view of token-major rows `[tokens, heads * head_dim]` or
    `[tokens, heads, head_dim]` (the pairs layout of `cachegen.encode`), without a copy."""
    if x.dim() == 2:
        if x.shape[1] % head_dim:
            raise ValueError(f"a row of {x.shape[1]} values is not whole heads of {head_dim}")
        x = x.unflatten(1, (x.shape[1] // head_dim, head_dim))
    return x.permute(1, 0, 2).unsqueeze(0)


@dataclass(frozen=True)
class ChunkCodec:
    """Encodes and decodes chunks at one level (and optional model profile), position-unaware.

    Attributes:
        level: a level of `cachegen.LEVELS`, or `cachegen.LOSSLESS`.
        profile: per-layer/head steps for the model (`cachegen.calibrate`); K/V layouts only.
        threads: worker threads per call (None: the core's default).
    """

    level: int = DEFAULT_LEVEL
    profile: ModelProfile | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        chunk_config(self.level)  # a clear error for a level off the ladder, at construction

    @property
    def config(self) -> CodecConfig:
        return chunk_config(self.level)

    def encode_pairs(self, pairs: Sequence[tuple[Any, Any]]) -> bytes:
        """A chunk given as `(K, V)` views `[1, heads, tokens, head_dim]` per layer."""
        return encode(pairs, config=self.config, profile=self.profile, threads=self.threads)

    def encode_latent(self, layers: Sequence[Any], split: int) -> bytes:
        """A chunk of latent layers `[tokens, width]` (`cachegen.latent`)."""
        if self.profile is not None:
            raise ValueError("a model profile describes K/V heads; latent (MLA) KV takes none")
        pairs = latent_pairs(layers, split)
        return encode(pairs, config=latent_config(self.config), threads=self.threads)

    def decode_into(self, buf: memoryview, pairs: Sequence[tuple[Any, Any]]) -> None:
        """Decode the blob at the start of `buf` into `(K, V)` views of the chunk's shapes."""
        decode(buf[: blob_length(buf)], out=list(pairs), threads=self.threads)
