"""The ladder's quantizer checked against an independent numpy statement of what a level means.

The round-trip tests compare `decode(encode(x))` with `cachegen.quantize`, the same C++ fit as
`encode`: a wrong step size would pass them. These tests derive each token's step from the
specification alone (ladder version 3: key step 0.1^((place-1)/26) of the token's rms, the place
being the level but at the top three, values 3x coarser (2x at level 44), the recency law, the
first token verbatim, key channels scaled by their RoPE pair's rms to a power read from the
keys' outlier ratio up to level 27 and 0.5 above, above level 40 keys less their channel means,
steps on the 1/8-octave grid and never so fine that |x| / step exceeds 127), find the steps the
decoded values are multiples of, and check that one of them lies within the grid's rounding of
the specified one with every element's error at most half of it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvgen import synthetic_kv

import cachegen

GRID = 8  # steps per octave
MAX_SYMBOL = 127
CENTERED_FROM = 41  # levels from here on take each key channel's mean off first


#: Levels whose key step sits elsewhere on the 0.915x scale, and their value/key ratio.
TOP_LEVELS = {42: (43, 3.0), 43: (46, 3.0), 44: (48, 2.0)}
SPREAD_AUTO_TO = 27  # levels up to here read the key spread's power from the keys
SPREAD = 0.5  # the key spread's power from there on, and the bound of the one read


def spec_steps(level: int) -> tuple[float, float]:
    """(key, value) step as a fraction of a token's rms, from the ladder's definition."""
    place, ratio = TOP_LEVELS.get(level, (level, 3.0))
    key = round(0.1 ** ((place - 1) / 26), 4)
    return key, round(ratio * key, 4)


def spread_power(mean_squares: np.ndarray, level: int) -> float:
    """The key spread's power: 0.75 ln(largest / median pair rms / 11.7) within +-0.5 up to
    level 27, 0.5 above."""
    if level > SPREAD_AUTO_TO:
        return SPREAD
    largest, median = mean_squares.max(), np.median(mean_squares)
    if median <= 0:
        return SPREAD if largest > 0 else 0.0
    return float(np.clip(0.75 * np.log(np.sqrt(largest / median) / 11.7), -SPREAD, SPREAD))


def recency(positions: np.ndarray, context_end: int) -> np.ndarray:
    """Step weight of tokens at `positions`: ((d + 16) / 80)^0.75 within [1/64, 1], d the
    tokens after it in the context."""
    after = context_end - 1 - positions
    return np.clip(((after + 16) / 80) ** 0.75, 1 / 64, 1)


def key_scales(keys: np.ndarray, skip: int, level: int) -> np.ndarray:
    """Per-channel key scales `[heads * dim]` of keys `[tokens, heads, dim]`: the rms over
    tokens (but the first `skip`) of each RoPE pair's magnitude (channels i and i + dim/2),
    to the level's spread power, geometric mean 1, within [1/16, 16], on the step grid. Ones
    for odd dim or a power of 0."""
    tokens, heads, dim = keys.shape
    if dim % 2:
        return np.ones(heads * dim)
    x = keys[skip:] if tokens > skip else keys
    half = dim // 2
    mag2 = np.square(x[..., :half], dtype=np.float64) + np.square(x[..., half:], dtype=np.float64)
    power = spread_power(mag2.mean(axis=0), level)
    if power == 0:
        return np.ones(heads * dim)
    rms = np.sqrt(mag2.mean(axis=0) / 2)
    log_w = power * np.log(np.maximum(rms, rms.max() * 1e-6 + 1e-30))
    w = np.exp(np.clip(log_w - log_w.mean(), -np.log(16), np.log(16)))
    return grid(np.round(GRID * np.log2(np.concatenate([w, w], axis=1)))).reshape(-1)


def key_offsets(keys: np.ndarray) -> np.ndarray:
    """Per-channel key offsets `[heads * dim]`: each channel's mean over all tokens, as stored
    (fp32, then fp16)."""
    mean = keys.reshape(len(keys), -1).astype(np.float64).mean(axis=0)
    return mean.astype(np.float32).astype(np.float16).astype(np.float64)


def grid(code: np.ndarray) -> np.ndarray:
    """The step of a grid code, as stored (fp16)."""
    return np.exp2(code / GRID).astype(np.float16).astype(np.float64)


def decoded_steps(row: np.ndarray, around: float, slack: np.ndarray) -> list[float]:
    """The grid steps within two codes of `around` of which every decoded value is an integer
    multiple, give or take `slack` (the output dtype's rounding). A row of few elements, or one
    whose rounding is coarse next to its step, can be a near multiple of several."""
    centre = int(np.round(GRID * np.log2(around)))
    steps = grid(centre + np.arange(-2, 3))
    return [
        float(step)
        for step in steps
        if np.all(np.abs(row / step - np.round(row / step)) <= 1e-6 + slack / step)
    ]


def check_group(
    x: np.ndarray,
    y: np.ndarray,
    fraction: float,
    weights: np.ndarray,
    sink: bool,
    slack: np.ndarray,
):
    """x: input rows [tokens, channels] (fp32 of the stored dtype, less any offsets); y:
    decoded rows (less the same offsets); slack: how far the output dtype's rounding may move
    each decoded value."""
    first = 1 if sink else 0
    if sink:
        np.testing.assert_array_equal(y[0], x[0])
    for t in range(first, len(x)):
        rms = float(np.sqrt(np.mean(np.square(x[t], dtype=np.float64))))
        absmax = float(np.max(np.abs(x[t])))
        if absmax == 0:
            np.testing.assert_array_equal(y[t], 0)
            continue
        wanted = max(fraction * weights[t] * rms, absmax / MAX_SYMBOL)
        steps = decoded_steps(y[t], wanted, slack[t])
        assert steps, f"token {t}: decoded values are not multiples of a grid step"
        # Nearest grid point (within 2^(1/16)), one code coarser where that would clip; every
        # error within half a step, plus the output dtype's own rounding of the result.
        err = np.abs(x[t] - y[t])
        assert any(
            wanted * 2 ** (-1 / 16) * 0.999 <= s <= wanted * 2 ** (1 / 8) * 1.001
            and absmax / s <= MAX_SYMBOL + 0.5
            and np.all(err <= s / 2 * 1.001 + slack[t])
            for s in steps
        ), f"token {t}: steps {steps} for specified {wanted}"


def layer_rows(kv: np.ndarray) -> list[np.ndarray]:
    """[tokens, channels] fp32 rows per (layer, K/V), K first."""
    return [
        kv[i, j].reshape(kv.shape[2], -1).astype(np.float32) for i in range(len(kv)) for j in (0, 1)
    ]


def check_level(kv: np.ndarray, level: int, position: int = 0, context_end: int | None = None):
    tokens = kv.shape[2]
    end = position + tokens if context_end is None else context_end
    out = cachegen.decode(
        cachegen.encode(kv, level=level, position=position, context_end=context_end)
    )
    fractions = spec_steps(level)
    weights = recency(np.arange(position, position + tokens), end)
    sink = position == 0
    for g, (x, y) in enumerate(zip(layer_rows(kv), layer_rows(out), strict=True)):
        scales = key_scales(kv[g // 2, 0], int(sink), level) if g % 2 == 0 else 1.0
        centered = g % 2 == 0 and level >= CENTERED_FROM
        offsets = key_offsets(kv[g // 2, 0]) if centered else 0.0
        # Half an ulp of the output dtype plus the fp32 arithmetic's roundings (s * a * b + o):
        # a row of one or two elements is a near multiple of many steps, so a looser slack lets
        # the step search pick the wrong one.
        y64 = y.astype(np.float64)
        half_ulp = np.spacing(np.abs(y.astype(out.dtype))).astype(np.float64) / 2
        slack = (half_ulp + 2.0**-22 * (np.abs(y64) + np.abs(offsets))) / scales
        x, y = x.astype(np.float64) - offsets, y64 - offsets
        check_group(x / scales, y / scales, fractions[g % 2], weights, sink, slack)


@pytest.mark.parametrize(
    "level", [1, 8, cachegen.DEFAULT_LEVEL, 21, CENTERED_FROM - 1, max(cachegen.LEVELS)]
)
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_level_steps_follow_the_specification(level: int, dtype: str) -> None:
    check_level(synthetic_kv(3, 150, 2, 32, dtype=dtype, seed=level), level)


def test_a_chunk_inside_a_context_has_no_sink_and_its_own_recency() -> None:
    kv = synthetic_kv(2, 96, 3, 16, seed=7)
    check_level(kv, cachegen.DEFAULT_LEVEL, position=512, context_end=2048)


@settings(max_examples=25, deadline=None)
@given(
    level=st.sampled_from(cachegen.LEVELS),
    tokens=st.integers(1, 90),
    heads=st.integers(1, 3),
    dim=st.sampled_from([1, 7, 16, 64]),
    position=st.sampled_from([0, 3, 300]),
    seed=st.integers(0, 2**16),
)
def test_any_shape_and_place(level, tokens, heads, dim, position, seed) -> None:
    kv = synthetic_kv(2, tokens, heads, dim, seed=seed)
    kv[0, 1, tokens // 2] = 0  # an all-zero row codes exactly
    check_level(kv, level, position=position, context_end=position + tokens + seed % 200)
