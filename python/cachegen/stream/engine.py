"""The engine interface: the little a loader needs from an inference engine.

An adapter for another engine (vLLM, SGLang, ...) implements these methods over its own
paged or contiguous KV cache; `cachegen.stream.hf_engine.HFEngine` is the one for
Hugging Face `transformers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np

#: "chunk": the engine recomputes any chunk from text on top of what is loaded (the loader
#: turns a chunk it cannot load into text). "prefix": the engine takes loaded KV only as a
#: prefix and recomputes the rest itself after the load (vLLM): the first chunk not loaded
#: ends the load.
Recompute = Literal["chunk", "prefix"]


class Engine(Protocol):
    """A model's KV cache under construction, filled chunk by chunk in token order."""

    @property
    def key(self) -> str:
        """Names the engine, model, device and thread count, for cached cost calibrations."""
        ...

    #: How the engine recomputes what is not loaded (see `Recompute`).
    recompute: Recompute

    @property
    def kv_elements_per_token(self) -> int:
        """KV elements (all layers, K and V) one token adds to the cache."""
        ...

    def begin(self) -> None:
        """Start a new, empty cache."""
        ...

    def append_kv(self, blob: bytes) -> None:
        """Decode a chunk's blob and append it to the cache.

        Must leave the cache unchanged when it raises (`cachegen.FormatError` for a bad blob,
        `ValueError` for one that does not fit the model, a device error such as running out
        of memory): the loader then recomputes the chunk, or ends the prefix there.
        """
        ...

    def append_text(self, token_ids: np.ndarray) -> None:
        """Recompute the KV of `token_ids` on top of the cache and append it (never called
        on a "prefix" engine)."""
        ...

    def measure_prefill(self, positions: Sequence[int]) -> Sequence[float]:
        """Calibration: tokens/s recomputing `cachegen.stream.costs.CALIBRATION_TOKENS` tokens
        after each of `positions` tokens of context."""
        ...

    def finish(self) -> Any:
        """The completed cache, in the engine's own type."""
        ...
