"""The engine interface: the little a loader needs from an inference engine.

An adapter for another engine (vLLM, SGLang, ...) implements these methods over its own
paged or contiguous KV cache; `cachegen.stream.hf_engine.HFEngine` is the one for
Hugging Face `transformers`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Engine(Protocol):
    """A model's KV cache under construction, filled chunk by chunk in token order."""

    @property
    def key(self) -> str:
        """Names the engine, model, device and thread count, for cached cost calibrations."""
        ...

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
        `ValueError` for one that does not fit the model): the loader then recomputes the chunk.
        """
        ...

    def append_text(self, token_ids: np.ndarray) -> None:
        """Recompute the KV of `token_ids` on top of the cache and append it."""
        ...

    def measure_prefill(self) -> float:
        """Measure the engine's recompute speed, in tokens/s (a calibration run)."""
        ...

    def finish(self) -> Any:
        """The completed cache, in the engine's own type."""
        ...
