"""Model-free key step weights, read from the KV cache itself (no profile needed).

Keys of many models carry a few outlier channels, tens of times larger than the median one
(Gemma-3: up to 23x). A per-token step set by the token's rms is then set by those channels:
the ordinary channels get steps far coarser than their own scale, and the row's range caps how
fine any step gets. Scaling each channel's step by its own rms to the power `strength` (0 =
equal absolute error everywhere, 1 = equal relative error) shares the error between the two;
the weights travel in the blob as its per-channel scales, so decoding needs nothing else.

RoPE rotates each channel pair (i, i + head_dim/2) by a position-dependent angle, moving energy
between the pair's two channels from token to token, so the statistic is the pair's: the rms of
its magnitude over the tokens, the same for both channels of the pair.
"""

from __future__ import annotations

import numpy as np

#: Weights stay within [1/bound, bound], relative to the layer's geometric mean before clipping.
SPREAD_BOUND = 16.0


def key_channel_weights(
    magnitudes: np.ndarray, head_dim: int, skip: int, strength: float
) -> np.ndarray:
    """Per-channel key step weights `[heads * head_dim]` (geometric mean 1, then clipped to
    `SPREAD_BOUND`) from a layer's pair magnitudes `[tokens, heads * head_dim/2]`
    (`importance.pair_magnitudes`).

    Args:
        skip: leading tokens left out of the statistics (attention sinks stored verbatim, whose
            keys are unlike the others'); all tokens count if none are left.
        strength: exponent of the pair rms (0 gives all ones).
    """
    rows = magnitudes[skip:] if len(magnitudes) > skip else magnitudes
    return spread_weights(np.mean(np.square(rows, dtype=np.float64), axis=0), head_dim, strength)


def spread_weights(mean_squares: np.ndarray, head_dim: int, strength: float) -> np.ndarray:
    """`key_channel_weights` from each pair's float64 mean squared magnitude over the tokens
    (`importance.layer_mean_squares`)."""
    rms = np.sqrt(mean_squares / 2.0)
    floor = max(float(rms.max()), 1e-30) * 1e-6  # all-zero pairs: as fine as the finest
    log_w = strength * np.log(np.maximum(rms, floor))
    bound = np.log(SPREAD_BOUND)
    log_w = np.clip(log_w - log_w.mean(), -bound, bound)
    pairs = np.exp(log_w).reshape(-1, head_dim // 2)
    return np.concatenate([pairs, pairs], axis=1).reshape(-1).astype(np.float32)
