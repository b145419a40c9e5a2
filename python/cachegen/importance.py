"""Token importance predicted from the keys: tokens that later queries attend to get finer steps.

Besides the sink, attention piles onto a few tokens of a context (delimiters, line starts, ...),
and an error in their K or V reaches many outputs. Whether a token draws attention shows in its
key; RoPE rotates each channel pair (i, i + head_dim/2) by an angle set by the position, so the
pairs' magnitudes are position-free features of it, and so are the key channels rotated back to
position 0 (signed: the fit can learn the direction the queries look in, 6.5% fewer bits at KL
0.002 than the magnitudes alone, bench/results/ladder_experiments.md 34). A calibrated
`ModelProfile` holds, per layer, a linear model of the log attention mass a token receives from
those features (`ModelProfile.importance`, fitted by `cachegen.calibrate`; the signed features
where it records the model's RoPE, `rope_thetas`); encoding scales each token's step by its
predicted mass to the power -strength (`CodecConfig.importance_strength`).

An engine that prefilled the context can say more: the attention each token drew from the
context's own last queries (`OBSERVATION_WINDOW` of them; `cachegen.hf.observed_attention`
records it), which is where the next queries tend to look. Passed to `encode(attention=...)`,
its log stands for the prediction without a profile and is averaged with it with one
(`mixed_scores`; bench/results/ladder_experiments.md 37).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import _core
from .tensors import (
    GroupView,
    KVViews,
    array_group,
    current_stream,
    is_torch,
    on_host,
)
from .transform import Rope, rotate

#: Importance weights stay within [1/8, 8] of the layer's geometric mean.
IMPORTANCE_BOUND = 8.0
#: How many of the context's last queries an engine's observed attention averages (64 beat 32
#: and 256 on the tuning texts, ladder_experiments.md 37).
OBSERVATION_WINDOW = 64
#: The observed attention's share of a token's score where a profile predicts one too.
OBSERVED_SHARE = 0.5
#: Mean attention below this counts as this (a log must stay finite).
_ATTENTION_FLOOR = 1e-9


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
    return _magnitudes(array_group(on_host(keys)), threads)


def _host_float32(x: Any) -> np.ndarray:
    if is_torch(x):
        return x.detach().float().cpu().numpy()
    return np.asarray(on_host(x), dtype=np.float32)


def _magnitudes(group: GroupView, threads: int) -> np.ndarray:
    raw = _core.key_magnitudes(group.native(), threads)
    return np.frombuffer(raw, dtype=np.float32).reshape(group.tokens, -1)


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


def signed_keys(keys: Any, rope: Rope, layer: int, first: int) -> np.ndarray:
    """`[tokens, heads * head_dim]` float32: keys `[tokens, heads, head_dim]` (numpy, torch or
    CUDA) of context positions `first`, `first + 1`, ... rotated back to position 0."""
    x = _host_float32(keys)
    cos, sin = rope.angles(layer, np.arange(first, first + len(x)))
    return rotate(x, cos, sin, back=True).reshape(len(x), -1)


def key_features(
    keys: Any, threads: int = 1, rope: Rope | None = None, layer: int = 0, first: int = 0
) -> np.ndarray:
    """The importance model's features of keys `[tokens, heads, head_dim]`: `pair_magnitudes`,
    then with a `rope` the `signed_keys` of layer `layer` from context position `first`."""
    magnitudes = pair_magnitudes(keys, threads)
    if rope is None:
        return magnitudes
    return np.hstack([magnitudes, signed_keys(keys, rope, layer, first)])


@functools.cache
def profile_rope(thetas: tuple[float, ...], head_dim: int) -> Rope | None:
    """The RoPE a profile's importance model reads keys with (None: magnitudes only)."""
    return Rope.from_thetas(thetas, head_dim) if thetas else None


def token_scores(
    kv: Any,
    v: KVViews,
    layer: int,
    coefficients: Sequence[float],
    threads: int,
    rope: Rope | None = None,
    first: int = 0,
) -> np.ndarray:
    """A layer's per-token scores (predicted log attention mass + a constant), computed by the
    core: `key_features(keys, threads, rope, layer, first) @ coefficients`, its tokens at
    context positions `first`, `first + 1`, ... (they matter with a `rope` only). CUDA keys are
    scored on a host copy, so the same keys give the same scores wherever they live."""
    c = np.asarray(coefficients, dtype=np.float64)
    freq = None if rope is None else rope.inv_freq[layer]
    if v.device is None:
        return _scores(v.groups[2 * layer], c, freq, first, threads)
    keys = on_host(layer_keys(kv, v.layout, layer))  # alive while its view is read
    return _scores(array_group(keys), c, freq, first, threads)


def _scores(
    group: GroupView, c: np.ndarray, freq: np.ndarray | None, first: int, threads: int
) -> np.ndarray:
    raw = _core.key_scores(group.native(), c, freq, first, threads)
    return np.frombuffer(raw, dtype=np.float64)


def observed_scores(attention: np.ndarray) -> np.ndarray:
    """Scores (log mean attention) from a layer's observed attention per token."""
    return np.log(np.maximum(np.asarray(attention, dtype=np.float64), _ATTENTION_FLOOR))


def mixed_scores(predicted: np.ndarray | None, observed: np.ndarray | None) -> np.ndarray | None:
    """A layer's token scores from the profile's prediction and the observed attention, either
    of which may be missing: each centered, then mixed at `OBSERVED_SHARE`."""
    if predicted is None or observed is None:
        return observed if predicted is None else predicted
    share = OBSERVED_SHARE
    return share * (observed - observed.mean()) + (1 - share) * (predicted - predicted.mean())


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
