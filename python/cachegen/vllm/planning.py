"""The scheduler-side decision: how many stored prompt tokens a request takes from the store.

vLLM takes external KV only as a prefix, so the choice is a cut point on chunk boundaries: the
first k stored chunks are loaded, vLLM recomputes the rest. Loading pays transfer (at the
bandwidth measured on earlier loads from this store) plus decode; recomputing pays the engine's
measured prefill speed. The cut is where the predicted time to the first token is least.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Speeds:
    """What the decision needs to know about the link and the engine (None: not measured)."""

    bandwidth_bps: float | None
    decode_eps: float | None
    prefill_tps: float | None


def loadable_tokens(prompt_tokens: int, chunk_tokens: int) -> int:
    """Whole chunks of the prompt vLLM can take: at least one token must be left to compute."""
    return max(prompt_tokens - 1, 0) // chunk_tokens * chunk_tokens


def best_prefix(
    chunk_bytes: Sequence[int], chunk_tokens: int, elements_per_token: int, speeds: Speeds
) -> int:
    """Chunks to load, of the stored ones whose blob sizes are `chunk_bytes` (in order).

    Until both the link and the engine have been measured, every stored chunk is taken: a
    first load is also how the bandwidth gets measured.
    """
    if speeds.bandwidth_bps is None or speeds.prefill_tps is None or speeds.decode_eps is None:
        return len(chunk_bytes)
    decode_s = chunk_tokens * elements_per_token / speeds.decode_eps
    recompute_s = chunk_tokens / speeds.prefill_tps
    # Time to first token with the first k chunks loaded: loads of chunks < k, recompute of
    # the others (the same for every k past the stored chunks, so only these are compared).
    best_k, best_t = 0, recompute_s * len(chunk_bytes)
    loaded = 0.0
    for k, nbytes in enumerate(chunk_bytes, 1):
        loaded += nbytes / speeds.bandwidth_bps + decode_s
        t = loaded + recompute_s * (len(chunk_bytes) - k)
        if t < best_t:
            best_k, best_t = k, t
    return best_k
