"""Model-free key step weights, read from the KV cache itself (no profile needed).

Keys of many models carry a few outlier channels, tens of times larger than the median one
(Gemma-3: up to 23x). A per-token step set by the token's rms is then set by those channels:
the ordinary channels get steps far coarser than their own scale, and the row's range caps how
fine any step gets. Scaling each channel's step by its own rms to the power `strength` (0 =
equal absolute error everywhere, 1 = equal relative error, below 0 finer steps on the larger
pairs) shares the error between the two;
the weights travel in the blob as its per-channel scales, so decoding needs nothing else.

The strength that pays differs by model, and reads off the keys: where a layer's largest pair
stands far above its median pair (Gemma-3: 10-45x), those outliers set every token's step and
a positive strength (coarser outliers) wins; where the channels are of a kind (SmolLM2: 4-8x),
the large pairs are the low RoPE frequencies that attention leans on, and a negative strength
(finer large pairs) wins. `spread_strength` maps that ratio to a strength per layer.

RoPE rotates each channel pair (i, i + head_dim/2) by a position-dependent angle, moving energy
between the pair's two channels from token to token, so the statistic is the pair's: the rms of
its magnitude over the tokens, the same for both channels of the pair.
"""

from __future__ import annotations

import numpy as np

#: `spread_strength`: the outlier ratio at which the strength is 0, and the strength per unit
#: of its log (chosen on GPL-2 and LGPL-2.1 with SmolLM2 and Gemma-3; never on scored text).
NEUTRAL_RATIO = 11.7
STRENGTH_PER_LOG_RATIO = 0.75
#: Weights stay within [1/bound, bound], relative to the layer's geometric mean before clipping.
SPREAD_BOUND = 16.0


def key_channel_weights(
    square_sums: np.ndarray, count: int, head_dim: int, strength: float
) -> np.ndarray:
    """Per-channel key step weights `[heads * head_dim]` (geometric mean 1, then clipped to
    `SPREAD_BOUND`) from a layer's per-pair sums of squared magnitudes over `count` tokens
    (`importance.key_square_sums`, which leaves out the attention sinks stored verbatim: their
    keys are unlike the others'). `strength` is the exponent of the pair rms (0 gives all ones).
    """
    rms = np.sqrt(square_sums / count / 2.0)
    floor = max(float(rms.max()), 1e-30) * 1e-6  # all-zero pairs: as fine as the finest
    log_w = strength * np.log(np.maximum(rms, floor))
    bound = np.log(SPREAD_BOUND)
    log_w = np.clip(log_w - log_w.mean(), -bound, bound)
    pairs = np.exp(log_w).reshape(-1, head_dim // 2)
    return np.concatenate([pairs, pairs], axis=1).reshape(-1).astype(np.float32)


def spread_strength(square_sums: np.ndarray, bound: float) -> float:
    """A layer's key spread strength from its per-pair sums of squared magnitudes: the log of
    its outlier ratio (largest pair rms / median pair rms) over `NEUTRAL_RATIO`, times
    `STRENGTH_PER_LOG_RATIO`, within [-bound, bound]. Half the pairs all zero or more: +bound."""
    largest, median = float(square_sums.max()), float(np.median(square_sums))
    if median <= 0.0:
        return bound if largest > 0.0 else 0.0
    ratio = np.sqrt(largest / median)
    return float(np.clip(STRENGTH_PER_LOG_RATIO * np.log(ratio / NEUTRAL_RATIO), -bound, bound))
