"""The encode plan: per group the quantizer, its parameter, token and channel weights and
verbatim rows, against the laws written out here; the core request carries it unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from kvgen import synthetic_kv

import cachegen
from cachegen import _core
from cachegen.config import QUANTIZERS
from cachegen.importance import importance_weights, token_scores
from cachegen.plan import plan_encode
from cachegen.tensors import views

LAYERS, TOKENS, HEADS, DIM = 3, 100, 2, 16
LEVEL = cachegen.CodecConfig.from_level(10)


def recency(positions: np.ndarray, context_end: int) -> np.ndarray:
    """The recency law of `CodecConfig.recency` = 0.75 (reference 64, offset 16)."""
    after = context_end - 1 - positions
    return np.clip(((after + 16) / 80) ** 0.75, 1 / 64, 1).astype(np.float32)


def plan_of(kv, config=LEVEL, **options) -> cachegen.plan.EncodePlan:
    return plan_encode(kv, views(kv), config, **options)


def test_level_plan_steps_sinks_and_recency():
    kv = synthetic_kv(LAYERS, TOKENS, HEADS, DIM)
    plan = plan_of(kv)
    assert len(plan.groups) == 2 * LAYERS
    weights = recency(np.arange(TOKENS), TOKENS)
    for i, g in enumerate(plan.groups):
        assert g.quantizer == QUANTIZERS["token"] and g.max_tables == LEVEL.max_tables
        assert g.param == (LEVEL.key_param, LEVEL.value_param)[i % 2]
        assert g.raw_rows == 1  # the context's first token
        np.testing.assert_array_equal(g.token_weights, weights)
        if i % 2:
            assert g.channel_weights is None
        else:  # keys: each RoPE pair's rms over the tokens but the sink, to a power of its own
            np.testing.assert_allclose(g.channel_weights, key_spread(kv[i // 2, 0]), rtol=1e-4)
    assert (plan.dtype, plan.layout, plan.level, plan.flags) == ("float16", "stacked", 10, 0)


def pair_rms(keys: np.ndarray) -> np.ndarray:
    """`[heads, dim/2]` rms of keys' `[tokens, heads, dim]` RoPE pairs over the tokens but the
    sink."""
    x = keys[1:].astype(np.float64)
    half = x.shape[-1] // 2
    return np.sqrt((x[..., :half] ** 2 + x[..., half:] ** 2).mean(axis=0) / 2)


def key_spread(keys: np.ndarray) -> np.ndarray:
    """The levels' key spread of keys `[tokens, heads, dim]` written out: the pair rms to the
    power 0.75 ln(outlier ratio / 11.7) within +-0.5, the ratio that of the largest mean
    square to the median one, square-rooted; geometric mean 1 (no clipping at these spreads)."""
    rms = pair_rms(keys)
    ratio = np.sqrt(np.max(rms**2) / np.median(rms**2))
    strength = np.clip(0.75 * np.log(ratio / 11.7), -0.5, 0.5)
    w = rms**strength / np.exp(np.log(rms**strength).mean())
    return np.concatenate([w, w], axis=1).reshape(-1)


@pytest.mark.parametrize("outlier", [40.0, 1.0])
def test_levels_read_the_spread_from_the_keys_outliers(outlier: float) -> None:
    """Keys whose largest pair stands 40x above the others get it coded coarser; keys whose
    pairs are of a kind (a gentle slope, no outlier) get their largest pair coded finer."""
    rng = np.random.default_rng(3)
    k = rng.standard_normal((TOKENS, HEADS, DIM)).astype(np.float32)
    k *= np.tile(np.linspace(1.0, 4.0, DIM // 2), 2)  # pairs of a kind, up to 4x apart
    k[:, 0, [2, 2 + DIM // 2]] *= outlier
    kv = np.stack([k, k], axis=0)[None]
    (keys, _) = plan_of(kv).groups
    largest = int(np.argmax(pair_rms(k)[0]))
    above = keys.channel_weights[largest] / np.exp(np.log(keys.channel_weights).mean())
    assert above > 2.0 if outlier > 1 else above < 0.8


def test_a_later_chunk_has_no_sink_and_weights_by_distance_to_the_end():
    kv = synthetic_kv(LAYERS, TOKENS, HEADS, DIM)
    plan = plan_of(kv, position=300, context_end=420)
    for g in plan.groups:
        assert g.raw_rows == 0
        np.testing.assert_array_equal(g.token_weights, recency(300 + np.arange(TOKENS), 420))
    far = plan_of(kv, position=300, context_end=1000)  # every token 600+ from the end: 1
    assert all(g.token_weights is None for g in far.groups)


def test_a_sliding_window_layer_holds_the_last_tokens():
    kv = synthetic_kv(2, TOKENS, HEADS, DIM, layout="pairs")
    kv[1] = tuple(x[:, :, -40:] for x in kv[1])
    plan = plan_of(kv)
    assert [g.raw_rows for g in plan.groups] == [1, 1, 0, 0]
    window = recency(np.arange(TOKENS - 40, TOKENS), TOKENS)
    for g in plan.groups[2:]:
        np.testing.assert_array_equal(g.token_weights, window)


def test_reference_quantizer_takes_bins_and_no_weights():
    config = cachegen.CodecConfig.cachegen_reference(1)  # K 16/16/12 bins, V 16/12
    plan = plan_of(synthetic_kv(32, 20, HEADS, DIM), config)
    keys, values = plan.groups[0::2], plan.groups[1::2]
    assert [g.param for g in keys[9:11]] == [16.0, 16.0] and keys[20].param == 12.0
    assert [g.param for g in values[1:3]] == [16.0, 12.0]
    for g in plan.groups:
        assert g.quantizer == QUANTIZERS["token-absmax"]
        assert g.token_weights is g.channel_weights is None and g.raw_rows == 0


def test_profile_scales_layer_steps_and_channels():
    heads = ((1.0, 4.0),) * LAYERS  # geometric mean 2: the layer's step doubles
    profile = cachegen.ModelProfile("test", heads, ((0.5, 0.5),) * LAYERS)
    plan = plan_of(synthetic_kv(LAYERS, TOKENS, HEADS, DIM), profile=profile)
    k, v = plan.groups[0], plan.groups[1]
    assert k.param == pytest.approx(2 * LEVEL.key_param)
    assert v.param == pytest.approx(0.5 * LEVEL.value_param)
    np.testing.assert_allclose(k.channel_weights, np.repeat([0.5, 2.0], DIM))
    np.testing.assert_array_equal(v.channel_weights, np.ones(HEADS * DIM, np.float32))


def test_importance_strength_is_the_power_of_the_predicted_mass():
    kv = synthetic_kv(LAYERS, TOKENS, HEADS, DIM)
    row = tuple(np.linspace(-0.2, 0.2, HEADS * DIM // 2))
    ones = ((1.0,) * HEADS,) * LAYERS
    profile = cachegen.ModelProfile("test", ones, ones, importance=(row,) * LAYERS)
    flat = dataclasses.replace(LEVEL, recency=0.0)
    weights = {
        s: plan_of(kv, dataclasses.replace(flat, importance_strength=s), profile=profile)
        .groups[0]
        .token_weights
        for s in (0.0, 0.15, 0.45)
    }
    assert (weights[0.0] == 1).all()
    log15, log45 = np.log(weights[0.15].astype(np.float64)), np.log(weights[0.45])
    assert np.ptp(log15) > 0.05
    np.testing.assert_allclose(log45, 3 * log15, atol=1e-5)
    with pytest.raises(ValueError, match="importance_strength"):
        dataclasses.replace(flat, importance_strength=1.5)


def test_profile_importance_multiplies_the_recency_weights():
    kv = synthetic_kv(LAYERS, TOKENS, HEADS, DIM)
    row = tuple(np.linspace(-1, 1, HEADS * DIM // 2))
    ones = ((1.0,) * HEADS,) * LAYERS
    profile = cachegen.ModelProfile("test", ones, ones, importance=(row,) * LAYERS)
    plan = plan_of(kv, profile=profile)
    v = views(kv)
    for layer in range(LAYERS):
        importance = importance_weights(token_scores(kv, v, layer, row, 1), 0.15)  # default
        want = np.clip(importance * recency(np.arange(TOKENS), TOKENS), 2.0**-14, 2.0**14)
        for g in plan.groups[2 * layer : 2 * layer + 2]:
            np.testing.assert_array_equal(g.token_weights, want.astype(np.float32))
    assert not np.array_equal(plan.groups[0].token_weights, plan.groups[2].token_weights)


def test_the_request_carries_the_plan():
    kv = torch.from_numpy(synthetic_kv(LAYERS, TOKENS, HEADS, DIM))
    plan = plan_of(kv)
    request = plan.request(2)
    assert (request.dtype, request.layout, request.level) == (1, 0, 10)
    assert (request.segment_symbols, request.flags, request.threads) == (1 << 16, 1, 2)
    for g, spec in zip(plan.groups, request.groups, strict=True):
        view = spec.view
        assert (view.address, view.tokens, view.heads, view.head_dim) == (
            g.view.address,
            TOKENS,
            HEADS,
            DIM,
        )
        assert tuple(view.strides) == g.view.strides and view.block_table == 0
        assert (spec.quantizer, spec.param, spec.raw_rows) == (g.quantizer, np.float32(g.param), 1)
        np.testing.assert_array_equal(spec.token_weights, g.token_weights)
        want = [] if g.channel_weights is None else g.channel_weights
        np.testing.assert_array_equal(spec.channel_weights, want)


def test_quantize_runs_the_plan_that_encode_stores():
    """The reconstruction of `quantize`'s output is what `decode` returns, sinks included."""
    kv = synthetic_kv(LAYERS, TOKENS, HEADS, DIM)
    out = cachegen.decode(cachegen.encode(kv, config=LEVEL, position=0))
    groups = cachegen.quantize(kv, config=LEVEL)
    for i, q in enumerate(groups):
        want = out[i // 2, i % 2].reshape(TOKENS, -1).astype(np.float32)
        np.testing.assert_array_equal(q.dequantize().astype(np.float16), want)
        assert len(q.raw) == 1


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("dtype", 9, "unknown dtype code"),
        ("layout", 2, "unknown layout"),
        ("level", 256, "level out of range"),
        ("segment_symbols", 1023, "segment_symbols"),
        ("flags", 2, "unknown flags"),
    ],
)
def test_the_core_request_refuses_bad_header_fields(field, value, match):
    plan = plan_of(synthetic_kv(1, 8, HEADS, DIM))
    fields = {"dtype": 1, "layout": 0, "level": 10, "segment_symbols": 1 << 16, "flags": 0}
    groups = [g.native() for g in plan.groups]
    with pytest.raises(ValueError, match=match):
        _core.EncodeRequest(groups, **(fields | {field: value}))


def test_the_core_view_and_spec_refuse_bad_codes():
    view = plan_of(synthetic_kv(1, 8, HEADS, DIM)).groups[0].view
    with pytest.raises(ValueError, match="unknown dtype code"):
        _core.TensorView(view.address, 7, 8, HEADS, DIM, view.strides)
    for quantizer in (0, 6, 257):
        with pytest.raises(ValueError, match="unknown quantizer id"):
            _core.GroupSpec(view.native(), quantizer, 0.5, 8)


def test_levels_above_40_center_keys_only():
    kv = synthetic_kv(LAYERS, TOKENS, HEADS, DIM)
    assert not any(g.center for g in plan_of(kv, cachegen.CodecConfig.from_level(40)).groups)
    plan = plan_of(kv, cachegen.CodecConfig.from_level(41))
    assert [g.center for g in plan.groups] == [True, False] * LAYERS
    assert [s.center for s in plan.request(1).groups] == [True, False] * LAYERS


def test_centered_keys_store_their_channel_means_as_offsets():
    kv = synthetic_kv(LAYERS, TOKENS, HEADS, DIM, dtype="float32")
    kv[:, 0, :, 0, 3] += 400.0  # a key channel with a large constant part
    groups = cachegen.quantize(kv, level=max(cachegen.LEVELS))
    for layer in range(LAYERS):
        keys = kv[layer, 0].reshape(TOKENS, -1).astype(np.float64)
        want = keys.mean(axis=0).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(groups[2 * layer].o, want)
        assert not groups[2 * layer + 1].o.any()  # values: no offsets
    # Uncentered, channel 3 sets every key row's range, and the range bounds its step.
    top = cachegen.CodecConfig.from_level(max(cachegen.LEVELS))
    plain = cachegen.quantize(kv, config=dataclasses.replace(top, key_center=False))
    for centered, uncentered in zip(groups[0::2], plain[0::2], strict=True):
        assert np.median(centered.a[1:]) < np.median(uncentered.a[1:]) / 4
