"""Which stored contexts a vLLM instance may load: the identity its chunks are filed under.

A KV cache is only reusable by the same weights, in the same dtype, cut into the same per-rank
head shards. The identity therefore names the model (the id the user sets, else the served name
plus a digest of the model's config), the KV dtype, the KV geometry one rank holds (layers, KV
heads, head dim) and the tensor-parallel rank and size. Blobs are stored in cachegen's own
layout, not vLLM's paged one, so a CPU and a GPU instance of the same model share chunks.
Different identities give different chunk keys, so caches of different models or ranks never mix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    """What a stored chunk's KV depends on, besides its tokens."""

    model: str
    dtype: str
    layers: int
    kv_heads: int
    head_dim: int
    tp_rank: int
    tp_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tensor-parallel rank {self.tp_rank} outside size {self.tp_size}")
        if min(self.layers, self.kv_heads, self.head_dim) <= 0:
            raise ValueError(f"KV geometry must be positive: {self}")

    @property
    def model_id(self) -> str:
        """The model id stored contexts are keyed by (`cachegen.context.save_context`)."""
        geometry = f"L{self.layers}xH{self.kv_heads}xD{self.head_dim}"
        return f"vllm/{self.model}/{self.dtype}/{geometry}/tp{self.tp_rank}of{self.tp_size}"

    @property
    def kv_elements_per_token(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim


def model_name(served_name: str, config_json: str, override: str | None = None) -> str:
    """`override` if set, else the served name with a digest of the model's config."""
    if override:
        return override
    digest = hashlib.blake2b(config_json.encode(), digest_size=8).hexdigest()
    return f"{served_name}@{digest}"
