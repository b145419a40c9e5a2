"""Token importance predicted from the keys: tokens that later queries attend to get finer steps.

Besides the sink, attention piles onto a few tokens of a context (delimiters, line starts, ...),
and an error in their K or V reaches many outputs. Whether a token draws attention shows in its
key; RoPE rotates each channel pair (i, i + head_dim/2) by an angle set by the position, so the
pairs' magnitudes are position-free features of it. A calibrated `ModelProfile` holds, per
layer, a linear model of the log attention mass a token receives from those magnitudes
(`ModelProfile.importance`, fitted by `cachegen.calibrate`); encoding scales each token's step
by its predicted mass to the power -strength (`CodecConfig.importance_strength`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import _core
from .tensors import GroupView, KVViews, array_group, current_stream, device_of, to_host

#: Importance weights stay within [1/8, 8] of the layer's geometric mean.
IMPORTANCE_BOUND = 8.0


@runtime_checkable
class KeySource(Protocol):
    """A cache that is neither stacked nor pairs (e.g. paged blocks) gives its keys itself."""

    def layer_keys(self, layer: int) -> Any: ...


def layer_keys(kv: Any, layout: str, layer: int) -> Any:
    """Layer `layer`'s keys as `[tokens, heads, head_dim]`, a view in the input's framework (a
    copy for a `KeySource`)."""
    if callable(getattr(kv, "layer_keys", None)):  # a KeySource (isinstance costs ~12 us)
        return kv.layer_keys(layer)
    if layout == "stacked":
        return kv[layer, 0]
    return kv[layer][0][0].swapaxes(0, 1)


def pair_magnitudes(keys: Any, threads: int = 1) -> np.ndarray:
    """`[tokens, heads * head_dim/2]` float32 |(k_i, k_{i+head_dim/2})| of keys `[tokens, heads,
    head_dim]` (numpy, torch or CUDA), computed by the core; CUDA keys on a host copy, so the
    same keys give the same magnitudes wherever they live."""
    if device_of(keys) is not None:
        keys = to_host(keys)
    return _magnitudes(array_group(keys), threads)


def _magnitudes(group: GroupView, threads: int) -> np.ndarray:
    raw = _core.key_magnitudes(group.native(), threads)
    return np.frombuffer(raw, dtype=np.float32).reshape(group.tokens, -1)


def layer_magnitudes(kv: Any, v: KVViews, layer: int, threads: int) -> np.ndarray:
    """`pair_magnitudes` of layer `layer`'s keys, from the views on the host."""
    if v.device is None:
        return _magnitudes(v.groups[2 * layer], threads)
    return pair_magnitudes(layer_keys(kv, v.layout, layer), threads)


def key_square_sums(v: KVViews, layer: int, skip: int, threads: int) -> tuple[np.ndarray, int]:
    """Per RoPE pair of layer `layer`'s keys: the float64 sum of the squared pair magnitudes over
    the tokens from `skip` on (all of them if none are left), and how many tokens it counts.
    Computed where the keys are, without a copy: the core's GPU sums are the host's, bit for bit.
    """
    keys = v.groups[2 * layer]
    if v.device is None:
        raw = _core.key_square_sums(keys.native(), skip, threads)
    else:
        stream = current_stream(v.framework, v.device)
        raw = _core.key_square_sums_cuda(keys.native(), skip, v.device, stream)
    return np.frombuffer(raw, dtype=np.float64), keys.tokens - (skip if keys.tokens > skip else 0)


def token_scores(
    kv: Any, v: KVViews, layer: int, coefficients: Sequence[float], threads: int
) -> np.ndarray:
    """A layer's per-token scores (predicted log attention mass + a constant)."""
    return layer_magnitudes(kv, v, layer, threads) @ np.asarray(coefficients, dtype=np.float64)


def importance_weights(scores: np.ndarray, strength: float) -> np.ndarray:
    """Per-token step weights from a layer's scores: (predicted mass)^-strength, bounded,
    relative to the layer's geometric mean."""
    log_w = -strength * (scores - scores.mean()) / np.log(2.0)
    bound = np.log2(IMPORTANCE_BOUND)
    return 2.0 ** np.clip(log_w, -bound, bound)


def fit(
    features: Sequence[np.ndarray], mass: Sequence[np.ndarray], ridge: float = 1e-4
) -> list[float]:
    """Least-squares coefficients of log attention `mass` on `features` over several texts'
    tokens, with an intercept (dropped: only differences between tokens matter) and a ridge
    penalty relative to the features' mean square. No tokens (a sliding window shorter than
    the tokens left out of the fit) give all-zero coefficients: every token equally important."""
    x = np.concatenate(features)
    if len(x) == 0:
        return [0.0] * x.shape[1]
    x = np.hstack([x, np.ones((len(x), 1))])
    y = np.log(np.concatenate(mass) + 1e-9)
    gram = x.T @ x
    penalty = np.diag(np.r_[np.full(x.shape[1] - 1, ridge * np.diag(gram)[:-1].mean()), 0.0])
    return [float(c) for c in np.linalg.solve(gram + penalty, x.T @ y)[:-1]]
