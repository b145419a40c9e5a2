"""Step weights: where the model is more sensitive, the quantizer takes finer steps.

A token's step is multiplied by its token weight and a channel's by its channel weight (stored in
the blob as the per-channel scale, so decoding needs nothing else). Two token effects hold for
decoder LLMs in general:

* attention sinks: the first tokens of a context draw attention from every later query, so an
  error there reaches every output: they are stored verbatim (`sink_rows`), not quantized;
* recency: later queries attend mostly to nearby tokens, so a token's sensitivity falls roughly
  as 1 / (tokens after it) and the optimal step grows as its square root.

Channel weights come from a calibrated `cachegen.profile.ModelProfile` (per layer, K/V, head).
"""

from __future__ import annotations

import numpy as np

#: Token weights the core accepts.
TOKEN_WEIGHT_BOUNDS = (2.0**-14, 2.0**14)
#: Recency weights reach 1 at this many tokens before the context's end ...
RECENCY_REFERENCE = 64
#: ... and are shaped by this offset, so the very last tokens are not infinitely fine.
RECENCY_OFFSET = 16
#: Bounds of a recency weight: never coarser than the level's step, so a cache whose context
#: goes on (a stored chunk) loses nothing by being treated as the end.
RECENCY_BOUNDS = (1.0 / 64, 1.0)


def sink_rows(tokens: int, first_position: int, sink_tokens: int) -> int:
    """How many of `tokens` tokens at context positions `first_position`... are sinks (context
    positions below `sink_tokens`), stored verbatim by the core."""
    return min(max(sink_tokens - first_position, 0), tokens)


def token_weights(
    tokens: int, first_position: int, context_end: int, recency: float
) -> np.ndarray | None:
    """Step weights of `tokens` tokens at context positions `first_position`... (None = all 1).

    Args:
        context_end: the context position one past its last token.
        recency: the exponent of the distance law (0 = off).
    """
    if recency <= 0:
        return None
    positions = np.arange(first_position, first_position + tokens, dtype=np.float64)
    after = np.maximum(context_end - 1 - positions, 0.0)
    law = ((after + RECENCY_OFFSET) / (RECENCY_REFERENCE + RECENCY_OFFSET)) ** recency
    w = np.clip(law, *RECENCY_BOUNDS)
    if np.all(w == 1.0):
        return None
    return w.astype(np.float32)
