"""Model-free key spread: key channel weights read from the cache itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import cachegen
from cachegen.importance import key_square_sums, pair_magnitudes
from cachegen.kvstats import SPREAD_BOUND, key_channel_weights, spread_strength
from cachegen.tensors import views


def keys_with_outlier(tokens: int = 200, heads: int = 2, dim: int = 16) -> np.ndarray:
    """[tokens, heads, dim] keys whose RoPE pair 3 of head 0 is 30x the others."""
    k = np.random.default_rng(1).standard_normal((tokens, heads, dim)).astype(np.float32)
    k[:, 0, [3, 3 + dim // 2]] *= 30
    return k


def one_layer(k: np.ndarray) -> np.ndarray:
    """A one-layer stacked cache with keys k."""
    return np.stack([k, k], axis=0)[None]


def sums_of(k: np.ndarray, skip: int, threads: int = 1) -> tuple[np.ndarray, int]:
    kv = one_layer(k)  # alive while the views are read
    return key_square_sums(views(kv), 0, skip, threads)


def spread(k: np.ndarray, strength: float, skip: int = 1) -> np.ndarray:
    sums, count = sums_of(k, skip)
    return key_channel_weights(sums, count, k.shape[2], strength)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_square_sums_are_the_magnitudes_sums_whatever_the_threads(dtype: str) -> None:
    k = keys_with_outlier(tokens=1000).astype(dtype)  # several 256-token blocks
    want = np.square(pair_magnitudes(k)[3:], dtype=np.float64).sum(axis=0)
    sums, count = sums_of(k, 3)
    assert count == 997
    np.testing.assert_allclose(sums, want, rtol=1e-12)
    for threads in (2, 0):
        again, _ = sums_of(k, 3, threads)
        assert again.tobytes() == sums.tobytes()


def test_square_sums_count_every_token_when_skip_leaves_none() -> None:
    k = keys_with_outlier(tokens=4)
    sums, count = sums_of(k, 4)
    assert count == 4
    np.testing.assert_allclose(sums, np.square(pair_magnitudes(k), dtype=np.float64).sum(0))


def test_square_sums_refuse_nan_keys() -> None:
    k = keys_with_outlier()
    k[7, 1, 2] = np.nan
    with pytest.raises(ValueError, match="nan"):
        sums_of(k, 1)


def test_weights_follow_the_pair_rms_to_the_strength() -> None:
    k = keys_with_outlier()
    w = spread(k, 0.5)
    assert w.shape == (32,)
    assert np.exp(np.log(w).mean()) == pytest.approx(1.0, rel=1e-5)
    assert w[3] == w[11] and w[3] / np.median(w) == pytest.approx(np.sqrt(30), rel=0.15)
    ones = spread(k, 0.0)
    np.testing.assert_array_equal(ones, 1.0)


def test_weights_are_bounded_and_skip_the_sink() -> None:
    k = keys_with_outlier()
    k[0] *= 1e6  # a sink unlike every other token must not set the weights
    k[:, 1, 5] = k[:, 1, 13] = 0.0  # an all-zero pair
    w = spread(k, 1.0)
    assert np.all((1 / SPREAD_BOUND <= w) & (w <= SPREAD_BOUND))
    k[0] /= 1e6
    again = spread(k, 1.0)
    np.testing.assert_allclose(w, again, rtol=1e-5)


def test_levels_code_ordinary_channels_finer_beside_an_outlier() -> None:
    k = keys_with_outlier()
    kv = np.stack([k, k * 0.5], axis=0)[None]  # [1 layer, K/V, tokens, heads, dim]
    level = cachegen.CodecConfig.from_level(15)
    flat = dataclasses.replace(level, key_spread=0.0, key_spread_auto=False)
    normal = np.ones(32, dtype=bool)
    normal[[3, 11]] = False

    def key_error(config: cachegen.CodecConfig) -> float:
        out = cachegen.decode(cachegen.encode(kv, config=config))
        err = (out[0, 0, 1:] - kv[0, 0, 1:]).reshape(len(k) - 1, -1)[:, normal]
        return float(np.sqrt(np.mean(err**2)))

    assert level.key_spread > 0
    assert key_error(level) < 0.5 * key_error(flat)


def test_strength_follows_the_outlier_ratio_within_the_bound() -> None:
    sums = np.ones(32)
    assert spread_strength(sums, 0.5) == -0.5  # no outlier: the large pairs finer
    sums[3] = 11.7**2  # an rms ratio of 11.7: neutral
    assert spread_strength(sums, 0.5) == pytest.approx(0.0, abs=1e-12)
    sums[3] = 18.0**2
    assert spread_strength(sums, 0.5) == pytest.approx(0.75 * np.log(18 / 11.7))
    sums[3] = 1e4**2
    assert spread_strength(sums, 0.3) == 0.3
    assert spread_strength(np.r_[np.zeros(20), np.ones(12)], 0.5) == 0.5  # median zero
    assert spread_strength(np.zeros(32), 0.5) == 0.0


def test_strength_ratio_skips_the_sink() -> None:
    k = keys_with_outlier()
    k[0] *= 1e6
    assert spread_strength(sums_of(k, 1)[0], 0.5) == 0.5  # the outlier pair is 30x
    k[:, 0, [3, 11]] /= 30
    assert spread_strength(sums_of(k, 1)[0], 0.5) == -0.5


def test_key_spread_is_checked() -> None:
    with pytest.raises(ValueError, match="key_spread"):
        cachegen.CodecConfig(key_spread=1.5)
    with pytest.raises(ValueError, match="key_spread"):
        cachegen.CodecConfig(key_quantizer="layer", value_quantizer="layer", key_spread=0.5)
    with pytest.raises(ValueError, match="key_spread_auto"):
        cachegen.CodecConfig(key_spread_auto=True)


def test_key_center_needs_token_keys() -> None:
    with pytest.raises(ValueError, match="key_center"):
        cachegen.CodecConfig(key_quantizer="channel", key_center=True)
