"""Codec configuration: quantizers, per-layer parameters and the level ladders."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Quantizer ids as stored in the wire format (src/quant.hpp).
QUANTIZERS: dict[str, int] = {
    "token-absmax": 1,  # CacheGen's reference: symmetric, scale = per-token max |x|
    "channel": 2,  # per-channel mean offset, step = param * channel rms
    "token": 3,  # per-token step = param * token rms
    "layer": 4,  # per-channel mean offset, one step = param * rms over the whole layer
    "lossless": 5,  # no quantization: each value's bytes, entropy coded (param unused)
}
QUANTIZER_NAMES = {v: k for k, v in QUANTIZERS.items()}

# A per-layer schedule: (end, value) pairs, `end` a fraction of the layer count (exclusive), so
# one schedule serves models of any depth. A plain number applies to every layer.
Schedule = float | tuple[tuple[float, float], ...]

DEFAULT_LEVEL = 15

#: What the level numbers mean. Stored contexts record it beside the settings of each level
#: they hold, and reuse only chunks coded under the same ladder, so a changed ladder never
#: silently changes what a stored level delivers. 1: levels 1-27 of per-token steps; 2: levels
#: without a profile also scale key channels by the cache's statistics, and finer levels
#: follow 27 (levels 41-44, with centered keys, were appended later: appending leaves every
#: stored level's settings as they were, so the version stands); 3: each layer's key spread
#: strength is read from its keys' outlier ratio (`key_spread_auto`) at levels 1-27, and
#: levels 42-44 are spaced further apart at the top.
LADDER_VERSION = 3
#: The ladder of stored contexts that record none.
LEGACY_LADDER_VERSION = 1

#: The lossless level: the cache's own fp16/bf16/fp32 bits, entropy coded (format v4). Above the
#: ladder, so "higher = larger, better" still orders every level; not in `LEVELS`.
LOSSLESS = 100

# Project ladder: per-token steps for keys and values as a fraction of the token's rms, values
# three times as coarse as keys (attention scores are more sensitive to key error than outputs
# are to value error). Key steps fall geometrically by 0.915x (~0.11 bits) a level, from 1 at
# level 1 through 0.1 at level 27 and 0.0316 at level 40. From level 40 on, key steps mostly
# meet the bound |x| / step <= 127 (symbols are int8), which models with outlier key channels
# reach through those channels' large constant part: levels above 40 also center keys
# (`key_center`), which lowers that bound, and sit on a plateau of KL (~6-9e-5 on both models
# measured) where one 0.915x step moves KL less than 128 scored tokens measure it: they are
# spaced 2-3 steps apart, and the finest also halves the value/key ratio's distance to 1, so
# the pooled KL falls with each. The ratios and exponents here were chosen on text never
# scored; bench/results/ladder_experiments.md has the record, bench/results/ladder.md and
# ladder_models.md the measured quality.
_VALUE_RATIO = 3.0
_FINEST_LEVEL = 44
_CENTERED_FROM = 41
#: Level -> (place on the 0.915x key step scale, value/key ratio) where not (level, 3).
_TOP_LEVELS = {42: (43, 3.0), 43: (46, 3.0), 44: (48, 2.0)}


def _level_steps(level: int) -> tuple[float, float]:
    place, ratio = _TOP_LEVELS.get(level, (level, _VALUE_RATIO))
    k = round(0.1 ** ((place - 1) / 26), 4)
    return k, round(ratio * k, 4)


_LEVEL_STEPS: dict[int, tuple[float, float]] = {
    n: _level_steps(n) for n in range(1, _FINEST_LEVEL + 1)
}

# Every level stores the first token (the attention sink) verbatim: every later query attends
# to it, so any error there is a quality floor, and its wide symbols would widen the tables of
# every channel. The last ~64 tokens are refined by the recency law (`cachegen.weights`).
LEVEL_SINK_TOKENS = 1
LEVEL_RECENCY = 0.75
# Without a profile, every level scales each key channel pair's step by its rms to a power
# (`cachegen.kvstats`): the same level then means about the same quality on models with and
# without outlier channels. Up to `LEVEL_SPREAD_AUTO_TO` the power is read from each layer's
# keys, within +-this (`kvstats.spread_strength`); finer levels take this power everywhere: a
# negative one there drives the larger pairs into the int8 bound, where KL stalls (3.6e-4 from
# level 38 on, both models measured).
LEVEL_KEY_SPREAD = 0.5
LEVEL_SPREAD_AUTO_TO = 27

# CacheGen's artifact levels (bins), layer groups cut at 10/32 and 20/32 of depth for keys and
# 2/32 for values, as LMCache's defaults for 32-layer models.
_K_CUTS = (10 / 32, 20 / 32, 1.0)
_V_CUTS = (2 / 32, 1.0)
_REFERENCE_BINS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    1: ((16, 16, 12), (16, 12)),
    2: ((32, 16, 16), (32, 16)),
    3: ((32, 32, 32), (32, 32)),
    # Finer settings of the same quantizer, past CacheGen's own levels, so the reference curve
    # reaches the low-KL targets it is compared at (not levels of the CacheGen artifact).
    4: ((64, 64, 64), (64, 64)),
    5: ((128, 128, 128), (128, 128)),
    # Symbols stop at +-127 (int8): 256 bins quantize as 255, the quantizer's finest.
    6: ((256, 256, 256), (256, 256)),
}
#: The levels `CodecConfig.cachegen_reference` takes.
REFERENCE_LEVELS = tuple(sorted(_REFERENCE_BINS))


# Settings added after stored contexts began recording settings, with their defaults.
_ADDED_SETTINGS: dict[str, Any] = {
    "key_center": False,
    "key_spread_auto": False,
    "importance_strength": 0.15,
    "overflow": False,
}


def _schedule(cuts: Sequence[float], values: Sequence[int]) -> Schedule:
    return tuple((c, float(v)) for c, v in zip(cuts, values, strict=True))


def resolve_schedule(s: Schedule, layer: int, num_layers: int) -> float:
    """The value of schedule `s` at `layer` of a `num_layers`-layer model."""
    if isinstance(s, int | float):
        return float(s)
    position = layer / num_layers
    for end, value in s:
        if position < end:
            return float(value)
    return float(s[-1][1])


@dataclass(frozen=True)
class CodecConfig:
    """How to code a KV cache. Use `CodecConfig.from_level(n)` or `cachegen_reference(n)` unless
    you are tuning.

    Attributes:
        key_quantizer / value_quantizer: a name from `QUANTIZERS`.
        key_param / value_param: the quantizer parameter (step fraction, or bins for
            "token-absmax"), a number or a per-layer `Schedule`.
        max_tables: at most this many probability tables per (layer, K/V); channels with similar
            statistics share one (16 measured 2% smaller than 8 on SmolLM2).
        segment_symbols: target symbols per independently decodable segment.
        sink_tokens: the context's first tokens (attention sinks) are stored verbatim, in the
            cache's dtype ("token" quantizers only; see `cachegen.weights`).
        recency: exponent of the recency law: a token's step is scaled by
            min(1, ((d + 16) / 80) ** recency), d = tokens after it in the context ("token"
            quantizers only; 0 = off).
        key_spread: without a profile, each key channel pair's step is scaled by its rms over
            the cache to this power (`cachegen.kvstats`; 0 = off, "token" keys only).
        key_center: each key channel's mean over the group is stored as its offset and taken
            off before the token fit, so outlier channels with a large constant part stop
            bounding every token's step by its range ("token" keys only).
        level: recorded in the blob (0 for a custom config).
        key_spread_auto: the key spread's power is instead read per layer from the keys'
            outlier ratio, within [-key_spread, key_spread] (`cachegen.kvstats.spread_strength`).
        importance_strength: with a profile that predicts token importance, each token's step
            is scaled by its predicted attention mass to the power -importance_strength
            (`cachegen.importance`; 0.5 would be the high-rate optimum for a perfect predictor,
            the prediction is rough: a smaller power pays off better).
        overflow: a "token" group's step is never made coarser than asked for to keep its
            largest value within the 8-bit symbols: a symbol beyond them travels in the
            group's overflow list (format v6; blobs with one decode on the host only). For a
            transform's coefficients, where one strong coefficient of an important token would
            otherwise coarsen the whole token (`bench/results/ladder_experiments.md` 41).
    """

    key_quantizer: str = "token"
    value_quantizer: str = "token"
    key_param: Schedule = _LEVEL_STEPS[DEFAULT_LEVEL][0]
    value_param: Schedule = _LEVEL_STEPS[DEFAULT_LEVEL][1]
    max_tables: int = 16
    segment_symbols: int = 1 << 16
    sink_tokens: int = 0
    recency: float = 0.0
    key_spread: float = 0.0
    key_center: bool = False
    level: int = 0
    key_spread_auto: bool = False
    importance_strength: float = 0.15
    overflow: bool = False
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        for q in (self.key_quantizer, self.value_quantizer):
            if q not in QUANTIZERS:
                raise ValueError(f"unknown quantizer {q!r}; choose from {sorted(QUANTIZERS)}")
        if not 1 <= self.max_tables <= 255:
            raise ValueError("max_tables must be in [1, 255]")
        if self.segment_symbols < 1024:
            raise ValueError("segment_symbols must be >= 1024")
        if not 0 <= self.level <= 255:
            raise ValueError("level must be in [0, 255]")
        if self.sink_tokens < 0 or not 0.0 <= self.recency <= 2.0:
            raise ValueError("sink_tokens must be >= 0 and recency in [0, 2]")
        if not 0.0 <= self.key_spread <= 1.0:
            raise ValueError("key_spread must be in [0, 1]")
        if not 0.0 <= self.importance_strength <= 1.0:
            raise ValueError("importance_strength must be in [0, 1]")
        if self.key_spread_auto and self.key_spread == 0.0:
            raise ValueError("key_spread_auto needs key_spread > 0 (its bound)")
        if self.key_center and self.key_quantizer != "token":
            raise ValueError("key_center needs 'token' keys")
        weighted = self.sink_tokens > 0 or self.recency > 0 or self.key_spread > 0 or self.overflow
        if weighted and "token" not in (self.key_quantizer, self.value_quantizer):
            raise ValueError("sink_tokens/recency/key_spread/overflow need a 'token' quantizer")

    @classmethod
    def from_level(cls, level: int) -> CodecConfig:
        """The project's ladder: level 1 (smallest) .. `max(LEVELS)` (highest quality), or
        `LOSSLESS` (bit-exact)."""
        if level == LOSSLESS:
            return cls.lossless()
        if level not in _LEVEL_STEPS:
            raise ValueError(
                f"level must be one of {sorted(_LEVEL_STEPS)} or LOSSLESS ({LOSSLESS}), "
                f"got {level!r}"
            )
        k, v = _LEVEL_STEPS[level]
        return cls(
            key_param=k,
            value_param=v,
            sink_tokens=LEVEL_SINK_TOKENS,
            recency=LEVEL_RECENCY,
            key_spread=LEVEL_KEY_SPREAD,
            key_spread_auto=level <= LEVEL_SPREAD_AUTO_TO,
            key_center=level >= _CENTERED_FROM,
            level=level,
            name=f"level-{level}",
        )

    @classmethod
    def lossless(cls) -> CodecConfig:
        """Bit-exact: every value's bytes, one byte plane each with its own probability
        tables per channel cluster; the blob's dtype is the cache's, and it decodes only into
        that dtype. NaN/Inf are refused, as at every level."""
        return cls(
            key_quantizer="lossless",
            value_quantizer="lossless",
            key_param=1.0,
            value_param=1.0,
            level=LOSSLESS,
            name="lossless",
        )

    @classmethod
    def cachegen_reference(cls, level: int) -> CodecConfig:
        """CacheGen's reference quantizer at its artifact's level 1, 2 or 3, or at the finer
        settings 4 (64 bins), 5 (128) and 6 (256) that extend its curve to low KL."""
        if level not in _REFERENCE_BINS:
            raise ValueError(
                f"CacheGen reference level must be one of {REFERENCE_LEVELS}, got {level!r}"
            )
        k, v = _REFERENCE_BINS[level]
        return cls(
            key_quantizer="token-absmax",
            value_quantizer="token-absmax",
            key_param=_schedule(_K_CUTS, k),
            value_param=_schedule(_V_CUTS, v),
            name=f"cachegen-ref-{level}",
        )

    def to_json(self) -> dict[str, Any]:
        """The settings as plain JSON values (what a stored context records per level). A
        setting added later is left out while it has its default, so the record of a level
        that does not use it reads as it always did."""
        fields = dataclasses.asdict(self)
        return {
            k: v
            for k, v in fields.items()
            if k != "name" and not (k in _ADDED_SETTINGS and v == _ADDED_SETTINGS[k])
        }

    def layer_params(
        self, layer: int, num_layers: int
    ) -> tuple[tuple[int, float], tuple[int, float]]:
        """((quantizer id, param) for K, same for V) at one layer."""
        return (
            (QUANTIZERS[self.key_quantizer], resolve_schedule(self.key_param, layer, num_layers)),
            (
                QUANTIZERS[self.value_quantizer],
                resolve_schedule(self.value_param, layer, num_layers),
            ),
        )


LEVELS: tuple[int, ...] = tuple(sorted(_LEVEL_STEPS))
