"""The `cachegen.stream.Engine` adapter over vLLM's paged KV cache, for one request's load.

vLLM takes stored KV only as a prefix of the prompt and recomputes the rest itself: this is a
"prefix" engine, so the loader stops at the first chunk it does not load and never asks it to
recompute text. Each chunk decodes straight into the request's next blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cachegen.paged import PagedLayers

if TYPE_CHECKING:
    import torch


class VllmEngine:
    """Decodes chunk blobs into a request's blocks, in token order."""

    recompute = "prefix"

    def __init__(
        self,
        key: str,
        caches: Sequence[torch.Tensor],
        layout: str,
        block_size: int,
        kv_elements_per_token: int,
        prefill_tps: float,
    ) -> None:
        self._key = key
        self._pages = PagedLayers.of(caches, layout)  # read once, not per chunk
        self._block_size = block_size
        self._elements = kv_elements_per_token
        self._prefill_tps = prefill_tps
        self._block_ids: list[int] = []
        self._loaded = 0

    @property
    def key(self) -> str:
        return self._key

    @property
    def kv_elements_per_token(self) -> int:
        return self._elements

    def bind(self, block_ids: Sequence[int]) -> None:
        """The blocks of the request's tokens to load, in order."""
        self._block_ids = list(block_ids)

    def begin(self) -> None:
        self._loaded = 0

    def append_kv(self, blob: bytes) -> None:
        first = self._loaded // self._block_size
        head = self._pages.read(blob)  # parsed once, for the block count and the decode
        tokens = head.tokens
        if tokens % self._block_size or first + tokens // self._block_size > len(self._block_ids):
            raise ValueError(f"a chunk of {tokens} tokens does not fit the request's blocks")
        ids = self._block_ids[first : first + tokens // self._block_size]
        self._pages.decode(head, ids)  # checks everything before writing
        self._loaded += tokens

    def append_text(self, token_ids: np.ndarray) -> None:
        raise RuntimeError("vLLM recomputes what is not loaded: a prefix engine takes no text")

    def measure_prefill(self, positions: Sequence[int]) -> float:
        """vLLM's prefill speed as the connector measured it on its own forward passes."""
        return self._prefill_tps

    def finish(self) -> int:
        """Tokens loaded: the prefix vLLM skips."""
        return self._loaded
