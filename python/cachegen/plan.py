"""The encode plan: how every (layer, K/V) group is quantized, decided in one place.

The core's quantizers (src/quant.hpp) take, per group, a quantizer and its parameter, optional
token and channel step weights and a count of verbatim first rows. For the "token" quantizer,
token t of channel c gets about the step

    param * layer_weight * token_weight[t] * channel_weight[c] * rms(token t)

(the core then floors it at the token's range / 127 and rounds it to its 1/8-octave grid),
except the first `raw_rows` tokens (attention sinks), which are stored verbatim. With `center`
(the config's `key_center`, keys only), the group's channel means are stored as offsets and
taken off before rms and range are. `plan_encode`
composes those factors from their sources:

* `param`: the config's per-layer schedule (`CodecConfig.layer_params`);
* `layer_weight`, `channel_weight`: the model profile (`ModelProfile.layer_weight`,
  `channel_weights`), folded into `param` and the channel weights;
* `token_weight`: the token's place in the context (`weights.token_weights`, the recency law)
  times its importance (`importance.importance_weights`), predicted by the profile and/or
  observed by the engine at prefill (`attention`, `importance.mixed_scores`);
* `raw_rows`: the context's sink tokens in this group (`weights.sink_rows`).

`encode` and `quantize` both run an `EncodePlan`, so what `quantize` shows is what `encode`
stores.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from .config import QUANTIZERS, CodecConfig
from .importance import (
    importance_weights,
    key_square_sums,
    mixed_scores,
    observed_scores,
    profile_rope,
    token_scores,
)
from .info import FLAG_TORCH_SOURCE
from .kvstats import key_channel_weights, spread_strength
from .profile import ModelProfile
from .tensors import DTYPE_CODES, LAYOUTS, GroupView, KVViews, on_host
from .weights import TOKEN_WEIGHT_BOUNDS, sink_rows, token_weights

_TOKEN = QUANTIZERS["token"]


@dataclass(frozen=True)
class GroupPlan:
    """How one (layer, K/V) group is quantized."""

    view: GroupView
    quantizer: int  # a `config.QUANTIZERS` id
    param: float  # step fraction (bins for "token-absmax"), times the profile's layer weight
    max_tables: int
    token_weights: np.ndarray | None = None  # float32 [tokens]; None = all 1
    channel_weights: np.ndarray | None = None  # float32 [heads * head_dim]; None = all 1
    raw_rows: int = 0  # first tokens stored verbatim (attention sinks)
    center: bool = False  # "token" only: channel means stored as offsets, taken off first
    overflow: bool = False  # "token" only: symbols beyond 8 bits go to an overflow list
    # "token" keys only: float32 directions [tokens, D, channels] and diagonal [channels] their
    # rounding is shaped by (`cachegen.shaping`); the core reads the directions in place
    shape: tuple[np.ndarray, np.ndarray] | None = None

    def native(self) -> _core.GroupSpec:
        dirs, diag = self.shape if self.shape is not None else (None, None)
        return _core.GroupSpec(
            self.view.native(),
            self.quantizer,
            self.param,
            self.max_tables,
            self.token_weights,
            self.channel_weights,
            self.raw_rows,
            self.center,
            self.overflow,
            0 if dirs is None else dirs.shape[1],
            None if dirs is None else dirs.reshape(-1),
            diag,
        )


@dataclass(frozen=True)
class EncodePlan:
    """Every group's plan (K then V per layer) and the blob header's fields."""

    groups: tuple[GroupPlan, ...]
    dtype: str
    layout: str
    level: int
    segment_symbols: int
    flags: int
    transform: tuple[bytes, int] | None = None  # (sha256 digest, position): the blob names it

    def request(self, threads: int) -> _core.EncodeRequest:
        """The core's request for this plan, run on `threads` threads (0 = all cores)."""
        return _core.EncodeRequest(
            [g.native() for g in self.groups],
            DTYPE_CODES[self.dtype],
            LAYOUTS[self.layout],
            self.level,
            self.segment_symbols,
            self.flags,
            threads,
            self.transform,
        )


# A key group's shaping (`GroupPlan.shape`) from its layer and its tokens' context positions.
Shaping = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


def plan_encode(
    kv: Any,
    v: KVViews,
    config: CodecConfig,
    profile: ModelProfile | None = None,
    position: int = 0,
    context_end: int | None = None,
    threads: int = 1,
    keys: tuple[Any, KVViews] | None = None,
    attention: Sequence[np.ndarray] | None = None,
    shaping: Shaping | None = None,
) -> EncodePlan:
    """The plan for the groups `v` describes; `kv` is what they view (read only for a profile's
    importance on a GPU: see `importance.layer_keys`). `position` is the context position of
    the cache's first token, `context_end` one past its last (default: the cache's end).
    `keys`: the cache (and its views) whose keys the profile's importance reads, where the
    groups hold something else (a transform's coefficients); default `kv`, `v`. `attention`:
    per layer, the mean attention each of its tokens drew at prefill (`encode`'s). `shaping`:
    a key group's rounding shaping, from its layer and its tokens' context positions."""
    if profile is not None:
        profile.check(v.groups)
    if attention is not None:
        attention = _checked_attention(attention, v)
    tokens = max(g.tokens for g in v.groups)
    end = position + tokens if context_end is None else context_end
    if position < 0 or end < position + tokens:
        raise ValueError("need 0 <= position and context_end >= position + tokens")

    def first(n: int) -> int:  # the context position of the first of a group's n tokens
        return position + tokens - n

    # Sinks and recency weights depend only on a group's token count (a layer holding fewer
    # tokens, a sliding window, holds the last ones): computed once per distinct count.
    place = functools.cache(lambda n: token_weights(n, first(n), end, config.recency))
    sinks = functools.cache(lambda n: sink_rows(n, first(n), config.sink_tokens))
    num_layers = len(v.groups) // 2
    groups: list[GroupPlan] = []
    for layer in range(num_layers):
        pair = v.groups[2 * layer : 2 * layer + 2]
        params = config.layer_params(layer, num_layers)
        token_w = None  # K's and V's alike
        if any(q == _TOKEN for q, _ in params):
            n = pair[0].tokens
            observed = None if attention is None else attention[layer]
            token_w = _layer_token_weights(
                keys or (kv, v), layer, place(n), first(n), profile, observed, config, threads
            )
        for side, (group, (quantizer, param)) in enumerate(zip(pair, params, strict=True)):
            if quantizer != _TOKEN:
                groups.append(GroupPlan(group, quantizer, param, config.max_tables))
                continue
            channel_w = None
            raw_rows = sinks(group.tokens)
            if profile is not None:
                param *= profile.layer_weight(layer, side)
                channel_w = _float32(profile.channel_weights(layer, side, group.head_dim))
            elif side == 0 and config.key_spread > 0:
                channel_w = _key_spread(v, layer, raw_rows, config, threads)
            center = side == 0 and config.key_center
            shape = None
            if side == 0 and shaping is not None:
                shape = shaping(layer, np.arange(first(group.tokens), position + tokens))
            groups.append(
                GroupPlan(
                    group,
                    quantizer,
                    param,
                    config.max_tables,
                    token_w,
                    channel_w,
                    raw_rows,
                    center,
                    config.overflow,
                    shape,
                )
            )
    flags = FLAG_TORCH_SOURCE if v.framework == "torch" else 0
    return EncodePlan(tuple(groups), v.dtype, v.layout, config.level, config.segment_symbols, flags)


def _key_spread(
    v: KVViews, layer: int, skip: int, config: CodecConfig, threads: int
) -> np.ndarray | None:
    """Model-free key channel weights (`cachegen.kvstats`); None for an odd head_dim or a
    strength of 0."""
    head_dim = v.groups[2 * layer].head_dim
    if head_dim % 2:
        return None
    sums, count = key_square_sums(v, layer, skip, threads)
    strength = config.key_spread
    if config.key_spread_auto:
        strength = spread_strength(sums, strength)
    if strength == 0.0:
        return None
    return _float32(key_channel_weights(sums, count, head_dim, strength))


def _layer_token_weights(
    keys: tuple[Any, KVViews],
    layer: int,
    place: np.ndarray | None,
    first: int,
    profile: ModelProfile | None,
    observed: np.ndarray | None,
    config: CodecConfig,
    threads: int,
) -> np.ndarray | None:
    """A layer's token step weights: its place in the context (recency weights; its first token
    at context position `first`) times the importance the profile predicts from its keys
    and/or the `observed` attention shows."""
    predicted = None
    if profile is not None and profile.importance:
        rope = profile_rope(profile.rope_thetas, keys[1].groups[2 * layer].head_dim)
        predicted = token_scores(*keys, layer, profile.importance[layer], threads, rope, first)
    scores = mixed_scores(predicted, None if observed is None else observed_scores(observed))
    if scores is None:
        return _float32(place)
    w = importance_weights(scores, config.importance_strength)
    if place is not None:
        w = np.clip(w * place, TOKEN_WEIGHT_BOUNDS[0], TOKEN_WEIGHT_BOUNDS[1])
    return _float32(w)


def _checked_attention(attention: Sequence[Any], v: KVViews) -> list[np.ndarray]:
    """`encode`'s observed attention (numpy, torch or CUDA arrays) as float64 host arrays, one
    per layer of its layer's tokens, finite and >= 0; a ValueError naming the first that is
    not."""
    layers = len(v.groups) // 2
    if isinstance(attention, (str, bytes)) or len(attention) != layers:
        raise ValueError(f"attention: need one array per layer ({layers})")
    out = []
    for layer, a in enumerate(attention):
        x = np.asarray(on_host(a), dtype=np.float64)
        tokens = v.groups[2 * layer].tokens
        if x.shape != (tokens,):
            raise ValueError(f"attention[{layer}]: shape {x.shape}, need ({tokens},)")
        if not np.isfinite(x).all() or (x < 0).any():
            raise ValueError(f"attention[{layer}]: need finite values >= 0")
        out.append(x)
    return out


def _float32(w: np.ndarray | None) -> np.ndarray | None:
    """Weights as the core takes them: contiguous little-endian float32."""
    return None if w is None else np.ascontiguousarray(w, dtype="<f4")
