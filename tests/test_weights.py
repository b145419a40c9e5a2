"""Step weights: attention sinks kept verbatim, recency token weights, model profiles as channel
weights, token importance predicted from the keys."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from kvgen import synthetic_kv

import cachegen
from cachegen import _core, profiles
from cachegen.importance import (
    IMPORTANCE_BOUND,
    fit,
    importance_weights,
    key_features,
    layer_keys,
    mixed_scores,
    observed_scores,
    pair_magnitudes,
    profile_rope,
    signed_keys,
    token_scores,
)
from cachegen.plan import plan_encode
from cachegen.transform import Rope, rotate
from cachegen.weights import sink_rows, token_weights

PLAIN = cachegen.CodecConfig(key_param=0.5, value_param=1.0)
WEIGHTED = dataclasses.replace(PLAIN, sink_tokens=1, recency=0.5)


def token_errors(kv: np.ndarray, config, **kwargs) -> np.ndarray:
    """Max |error| per token over layers, K/V and channels, relative to the token's rms."""
    out = cachegen.decode(cachegen.encode(kv, config=config, **kwargs)).astype(np.float32)
    x = kv.astype(np.float32)
    rms = np.sqrt((x**2).mean(axis=(3, 4), keepdims=True))
    return (np.abs(out - x) / rms).max(axis=(0, 1, 3, 4))


def test_no_weights_when_off():
    assert token_weights(100, 0, 100, 0.0) is None
    assert token_weights(100, 5000, 5100, 0.5) is not None
    assert sink_rows(100, 0, 0) == 0


def test_sink_rows_are_the_context_start():
    assert sink_rows(100, 0, 1) == 1
    assert sink_rows(100, 2, 4) == 2  # positions 2 and 3 of the context
    assert sink_rows(100, 5, 1) == 0  # the sink lies before this cache
    assert sink_rows(3, 0, 8) == 3


def test_token_weight_law():
    w = token_weights(300, 0, 300, 0.5)
    assert np.all(np.diff(w) <= 0)  # finer toward the end
    assert np.all(w[:-64] == 1.0) and w[-1] == pytest.approx((16 / 80) ** 0.5)
    # A cache in the middle of its context: the context's end sets the distances.
    assert token_weights(300, 1000, 1500, 0.5) is None


def test_sink_is_exact_and_recent_tokens_get_finer_steps():
    kv = synthetic_kv(2, 300, 2, 32)
    plain, weighted = token_errors(kv, PLAIN), token_errors(kv, WEIGHTED)
    assert weighted[0] == 0.0 and plain[0] > 0.0  # the sink is stored verbatim
    assert weighted[-1] < plain[-1] * 0.7
    np.testing.assert_array_equal(weighted[1:200], plain[1:200])  # far tokens: same coding


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_sink_rows_decode_bit_exact(dtype):
    kv = synthetic_kv(2, 50, 2, 16).astype(dtype)
    kv[:, :, 0] *= 300  # a sink's outliers: far beyond any 8-bit step of its row
    blob = cachegen.encode(kv, config=WEIGHTED)
    info = cachegen.inspect(blob)
    assert all(g.raw_rows == 1 for g in info.keys + info.values)
    out = cachegen.decode(blob)
    np.testing.assert_array_equal(out[:, :, 0], kv[:, :, 0])
    for g in cachegen.quantize(kv, config=WEIGHTED):
        assert np.all(g.symbols[0] == 0)  # nothing coded for it
    # A cache that starts later in its context has no sink.
    later = cachegen.inspect(cachegen.encode(kv, config=WEIGHTED, position=1, context_end=60))
    assert all(g.raw_rows == 0 for g in later.keys)


def test_position_and_context_end_move_the_weights():
    kv = synthetic_kv(2, 300, 2, 32)
    plain = token_errors(kv, PLAIN)
    # Not the start of the context, and 1000 tokens still to come: coded like no weights.
    np.testing.assert_array_equal(token_errors(kv, WEIGHTED, position=64, context_end=1364), plain)
    with pytest.raises(ValueError, match="context_end"):
        cachegen.encode(kv, config=WEIGHTED, context_end=100)


def test_levels_use_sink_and_recency():
    config = cachegen.CodecConfig.from_level(cachegen.DEFAULT_LEVEL)
    assert config.sink_tokens == 1 and config.recency > 0


def test_weights_need_a_token_quantizer():
    with pytest.raises(ValueError, match="token"):
        cachegen.CodecConfig(key_quantizer="channel", value_quantizer="layer", sink_tokens=1)


def small_profile(layers: int, heads: int) -> cachegen.ModelProfile:
    rng = np.random.default_rng(1)
    rows = lambda: tuple(tuple(rng.uniform(0.3, 3.0, heads).tolist()) for _ in range(layers))  # noqa: E731
    return cachegen.ModelProfile("test", rows(), rows())


def test_profile_round_trips_and_decodes_without_it():
    kv = synthetic_kv(3, 80, 4, 16)
    prof = small_profile(3, 4)
    blob = cachegen.encode(kv, level=3, profile=prof)
    assert blob != cachegen.encode(kv, level=3)
    q = cachegen.quantize(kv, level=3, profile=prof)
    decoded = cachegen.decode(blob).astype(np.float32)
    for i, g in enumerate(q):
        want = g.dequantize().astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(decoded[i // 2, i % 2].reshape(80, -1), want)
        rel = np.asarray((prof.key_weights, prof.value_weights)[i % 2][i // 2])
        heads_b = g.b.reshape(4, 16)
        assert np.all(heads_b == heads_b[:, :1])  # one scale per head
        # proportional to the profile's weights up to the 1/8-octave grid the blob codes them on
        codes = 8 * np.log2(heads_b[:, 0])
        np.testing.assert_allclose(codes, np.round(codes), atol=0.01)
        spread = np.log2(heads_b[:, 0] / rel)
        assert np.ptp(spread) <= 1 / 8 + 1e-3


def test_profile_json_and_checks(tmp_path):
    prof = small_profile(2, 3)
    prof.save(tmp_path / "p.json")
    again = cachegen.ModelProfile.load(tmp_path / "p.json")
    assert again.digest == prof.digest and again.num_layers == 2
    with pytest.raises(ValueError, match="layers"):
        cachegen.encode(synthetic_kv(3, 10, 3, 8), profile=prof)
    with pytest.raises(ValueError, match="heads"):
        cachegen.encode(synthetic_kv(2, 10, 2, 8), profile=prof)
    with pytest.raises(ValueError, match="profile"):
        cachegen.ModelProfile.from_json('{"model": 1}')
    with pytest.raises(ValueError, match="weights"):
        cachegen.ModelProfile("x", ((0.0,),), ((1.0,),))


def test_shipped_smollm2_profile():
    prof = profiles.load(profiles.SMOLLM2)
    assert prof.num_layers == 30 and {len(w) for w in prof.key_weights} == {3}
    assert {len(row) for row in prof.importance} == {3 * 32 + 3 * 64}  # magnitudes, signed
    assert prof.rope_thetas == (1e5,) * 30  # SmolLM2's RoPE base, every layer
    assert "GPL-2" in prof.calibration  # calibrated on text the benchmark never scores


@pytest.mark.parametrize(
    "token_w, channel_w, quantizer, raw_rows, match",
    [
        ([1.0] * 9, None, 3, 0, "token weights"),
        (None, [1.0] * 5, 3, 0, "channel weights"),
        ([0.0] * 10, None, 3, 0, "token weights"),
        ([float("nan")] * 10, None, 3, 0, "token weights"),
        ([1.0] * 10, None, 1, 0, "token-step"),
        ([[1.0] * 10], None, 3, 0, "1-D float32"),
        (None, None, 3, 11, "more raw rows than tokens"),
        (None, None, 2, 1, "per-token quantizer"),
    ],
)
def test_core_rejects_bad_weights(token_w, channel_w, quantizer, raw_rows, match):
    kv = synthetic_kv(1, 10, 2, 8)
    plan = plan_encode(kv, cachegen.tensors.views(kv), PLAIN)
    key, value = (g.native() for g in plan.groups)
    param = 16.0 if quantizer == 1 else 0.5
    with pytest.raises(ValueError, match=match):
        bad = _core.GroupSpec(key.view, quantizer, param, 8, token_w, channel_w, raw_rows)
        _core.quantize(_core.EncodeRequest([bad, value], 1, 0, 0, 1 << 16, threads=1))


@pytest.mark.parametrize("quantizer", [1, 2, 4])
def test_core_centers_only_token_step_groups(quantizer):
    kv = synthetic_kv(1, 10, 2, 8)
    plan = plan_encode(kv, cachegen.tensors.views(kv), PLAIN)
    key, value = (g.native() for g in plan.groups)
    param = 16.0 if quantizer == 1 else 0.5
    bad = _core.GroupSpec(key.view, quantizer, param, 8, center=True)
    with pytest.raises(ValueError, match="token-step"):
        _core.quantize(_core.EncodeRequest([bad, value], 1, 0, 0, 1 << 16, threads=1))


def test_importance_fit_recovers_a_planted_model():
    rng = np.random.default_rng(0)
    coef = rng.normal(size=6)
    feats = [rng.gamma(2.0, 1.0, size=(400, 6)) for _ in range(2)]
    mass = [np.exp(f @ coef + 3.0 + rng.normal(scale=0.01, size=400)) for f in feats]
    np.testing.assert_allclose(fit(feats, mass), coef, atol=0.01)


def test_importance_weights_follow_the_score():
    w = importance_weights(np.linspace(-40, 40, 81), 0.15)
    assert np.all(np.diff(w) <= 0) and w[0] > 1 > w[-1]  # more attention, finer step
    assert w.max() == IMPORTANCE_BOUND and w.min() == 1 / IMPORTANCE_BOUND
    mid = w[38:43]  # unclipped: mass^-strength
    np.testing.assert_allclose(np.diff(np.log(mid)), -0.15)


def importance_profile(layers: int, heads: int, dim: int) -> cachegen.ModelProfile:
    """Equal head weights; importance grows with the first RoPE pair of head 0."""
    ones = tuple((1.0,) * heads for _ in range(layers))
    row = tuple([2.0] + [0.0] * (heads * dim // 2 - 1))
    return cachegen.ModelProfile("test", ones, ones, importance=(row,) * layers)


def test_profile_importance_scales_token_steps():
    kv = synthetic_kv(2, 60, 2, 16)
    prof = importance_profile(2, 2, 16)
    plain = cachegen.quantize(kv, config=PLAIN, profile=dataclasses.replace(prof, importance=()))
    weighted = cachegen.quantize(kv, config=PLAIN, profile=prof)
    for i, (p, w) in enumerate(zip(plain, weighted, strict=True)):
        scores = pair_magnitudes(kv[i // 2, 0]) @ prof.importance[i // 2]
        want = importance_weights(scores, PLAIN.importance_strength)
        # K and V of a layer alike; each step rounded to the 1/8-octave grid
        ratio = np.log2(w.a / p.a) - np.log2(want)
        assert np.abs(ratio).max() <= 1 / 8 + 1e-3 and abs(ratio.mean()) < 0.03
    blob = cachegen.encode(kv, config=PLAIN, profile=prof)
    assert cachegen.decode(blob).shape == kv.shape  # decoding needs no profile


def _step_ratios(kv, **kwargs) -> list[np.ndarray]:
    """log2 of each group's token steps over the same config's without importance."""
    plain = cachegen.quantize(kv, config=PLAIN)
    weighted = cachegen.quantize(kv, config=PLAIN, **kwargs)
    return [np.log2(w.a / p.a) for p, w in zip(plain, weighted, strict=True)]


def _observed(layers: int, tokens: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.lognormal(-5.0, 2.0, tokens) for _ in range(layers)]


def test_observed_attention_scales_token_steps():
    """Without a profile, a token's step follows the attention it drew, K and V alike."""
    kv = synthetic_kv(2, 60, 2, 16)
    attention = _observed(2, 60)
    for i, r in enumerate(_step_ratios(kv, attention=attention)):
        want = np.log2(importance_weights(np.log(attention[i // 2]), PLAIN.importance_strength))
        assert np.abs(r - want).max() <= 1 / 8 + 1e-3 and abs((r - want).mean()) < 0.03
    blob = cachegen.encode(kv, config=PLAIN, attention=attention)
    assert cachegen.decode(blob).shape == kv.shape  # decoding needs no attention
    torch = pytest.importorskip("torch")
    as_tensors = [torch.from_numpy(a) for a in attention]  # float64, as given
    assert cachegen.encode(kv, config=PLAIN, attention=as_tensors) == blob


def test_observed_attention_is_mixed_with_the_profiles_prediction():
    kv = synthetic_kv(2, 60, 2, 16, seed=2)
    prof, attention = importance_profile(2, 2, 16), _observed(2, 60, seed=3)
    for i, r in enumerate(_step_ratios(kv, profile=prof, attention=attention)):
        predicted = pair_magnitudes(kv[i // 2, 0]) @ prof.importance[i // 2]
        scores = mixed_scores(predicted, observed_scores(attention[i // 2]))
        want = np.log2(importance_weights(scores, PLAIN.importance_strength))
        assert np.abs(r - want).max() <= 1 / 8 + 1e-3 and abs((r - want).mean()) < 0.03
    half = 0.5 * (np.log(attention[0]) - np.log(attention[0]).mean())
    np.testing.assert_allclose(mixed_scores(None, np.log(attention[0])), np.log(attention[0]))
    np.testing.assert_allclose(mixed_scores(np.zeros(60), np.log(attention[0])), half)


def test_observed_attention_of_a_transform_chunk():
    """With a transform, the attention weighs the coefficients' token steps as a profile does
    (at the coefficients' importance power, with the recency law of observed attention), and
    the blob decodes without it."""
    from cachegen.transform import Rope, coefficient_config, learn_transform

    kv = synthetic_kv(2, 64, 2, 16, seed=6, layout="pairs")
    t = learn_transform([kv], Rope.from_thetas([10000.0, 10000.0], 16))
    attention = _observed(2, 64, seed=7)
    blob = cachegen.encode(kv, level=5, transform=t, attention=attention)
    out = cachegen.decode(blob, transforms=t)
    assert all(k.shape == kk.shape for (k, _), (kk, _) in zip(out, kv, strict=True))
    level = cachegen.CodecConfig.from_level(5)

    def with_config(**importance: bool) -> bytes:  # a custom config is coded as it is
        config = coefficient_config(level, **importance)
        return cachegen.encode(kv, config=config, transform=t, attention=attention)

    assert blob == with_config(observed=True) != with_config()
    assert blob != with_config(profiled=True)  # the recency law of a profile's prediction
    assert blob != cachegen.encode(kv, level=5, transform=t)


@pytest.mark.parametrize(
    "attention, match",
    [
        ([np.ones(60)], r"one array per layer \(2\)"),
        ("ab", "one array per layer"),
        ([np.ones(60), np.ones(59)], r"attention\[1\]: shape \(59,\), need \(60,\)"),
        ([np.ones(60), np.ones((60, 1))], r"attention\[1\]: shape"),
        ([np.ones(60), -np.ones(60)], r"attention\[1\]: need finite values >= 0"),
        ([np.full(60, np.nan), np.ones(60)], r"attention\[0\]: need finite"),
    ],
)
def test_observed_attention_checks(attention, match):
    kv = synthetic_kv(2, 60, 2, 16)
    with pytest.raises(ValueError, match=match):
        cachegen.encode(kv, config=PLAIN, attention=attention)


@pytest.mark.parametrize("signed", [False, True])
def test_importance_is_the_same_for_every_input_layout(signed):
    stacked = synthetic_kv(2, 40, 2, 16, seed=4)
    prof = (signed_profile if signed else importance_profile)(2, 2, 16)
    want = [g.a for g in cachegen.quantize(stacked, level=5, profile=prof)]
    inputs = [synthetic_kv(2, 40, 2, 16, seed=4, layout="pairs")]
    torch = pytest.importorskip("torch")
    inputs += [torch.from_numpy(stacked), [tuple(map(torch.from_numpy, p)) for p in inputs[0]]]
    for kv in inputs:
        got = [g.a for g in cachegen.quantize(kv, level=5, profile=prof)]
        np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_profile_importance_checks():
    ones = ((1.0, 1.0),)
    with pytest.raises(ValueError, match="one coefficient row per layer"):
        cachegen.ModelProfile("x", ones, ones, importance=((1.0,), (1.0,)))
    with pytest.raises(ValueError, match="finite"):
        cachegen.ModelProfile("x", ones, ones, importance=((float("nan"),),))
    short = cachegen.ModelProfile("x", ones, ones, importance=((1.0,) * 7,))
    with pytest.raises(ValueError, match="needs 8 coefficients"):
        cachegen.encode(synthetic_kv(1, 10, 2, 8), profile=short)
    prof = importance_profile(1, 2, 8)
    assert cachegen.ModelProfile.from_json(prof.to_json()) == prof


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("layout", ["stacked", "pairs"])
def test_core_key_magnitudes_equal_numpy(dtype, layout):
    kv = synthetic_kv(2, 300, 3, 16, dtype=dtype, seed=5, layout=layout)
    for layer in range(2):
        keys = layer_keys(kv, layout, layer)  # strided for "pairs"
        k = keys.astype(np.float32)
        want = np.sqrt(k[..., :8] * k[..., :8] + k[..., 8:] * k[..., 8:]).reshape(300, 24)
        np.testing.assert_array_equal(pair_magnitudes(keys, threads=2), want)


def test_core_key_magnitudes_reject_odd_head_dim():
    with pytest.raises(ValueError, match="even head_dim"):
        pair_magnitudes(np.ones((10, 2, 7), np.float16))


def test_core_key_magnitudes_reject_non_finite_keys():
    keys = np.ones((10, 2, 8), np.float16)
    keys[3, 1, 2] = np.inf
    with pytest.raises(ValueError, match="nan or inf"):
        pair_magnitudes(keys)


def test_key_bands_scale_key_channels_by_rope_frequency():
    prof = dataclasses.replace(small_profile(2, 2), key_bands=(2.0, 1.0, 1.0, 0.5))
    np.testing.assert_array_equal(
        prof.band_pattern(16), np.tile(np.repeat([2.0, 1.0, 1.0, 0.5], 2), 2)
    )
    kv = synthetic_kv(2, 50, 2, 16)
    plain = cachegen.quantize(kv, level=5, profile=dataclasses.replace(prof, key_bands=()))
    banded = cachegen.quantize(kv, level=5, profile=prof)
    for i, (p, b) in enumerate(zip(plain, banded, strict=True)):
        want = np.tile(prof.band_pattern(16), 2) if i % 2 == 0 else np.ones(32)  # keys only
        np.testing.assert_allclose(b.b / p.b, want, rtol=2e-3)
    assert cachegen.ModelProfile.from_json(prof.to_json()).key_bands == prof.key_bands


def test_key_bands_checks():
    prof = dataclasses.replace(small_profile(1, 2), key_bands=(1.0,) * 4)
    with pytest.raises(ValueError, match="even head_dim >= 8"):
        cachegen.encode(synthetic_kv(1, 10, 2, 6), profile=prof)
    with pytest.raises(ValueError, match="weights"):
        dataclasses.replace(prof, key_bands=(1.0, 0.0))


def test_importance_needs_an_even_head_dim():
    ones = ((1.0, 1.0),)
    prof = cachegen.ModelProfile("x", ones, ones, importance=((1.0,) * 6,))
    with pytest.raises(ValueError, match="even head_dim"):
        cachegen.encode(synthetic_kv(1, 10, 2, 7), profile=prof)


@pytest.mark.parametrize("layout", ["stacked", "pairs"])
def test_device_path_scores_equal_the_core(layout):
    """A CUDA input's keys are scored from a host copy (here CPU tensors take that branch)."""
    torch = pytest.importorskip("torch")
    kv = synthetic_kv(2, 70, 3, 16, seed=8, layout=layout)
    tensors = (
        torch.from_numpy(kv)
        if layout == "stacked"
        else [tuple(map(torch.from_numpy, p)) for p in kv]
    )
    v = cachegen.tensors.views(tensors)
    coeffs = np.random.default_rng(9).normal(size=24)
    for layer in range(2):
        host = token_scores(tensors, v, layer, coeffs, 1)
        device = token_scores(tensors, dataclasses.replace(v, device=0), layer, coeffs, 1)
        np.testing.assert_array_equal(device, host)


def signed_profile(layers: int, heads: int, dim: int) -> cachegen.ModelProfile:
    """Importance from the keys rotated back to position 0 (a fixed direction per layer), none
    from the pair magnitudes."""
    ones = tuple((1.0,) * heads for _ in range(layers))
    rng = np.random.default_rng(11)
    signed = np.round(rng.normal(size=(layers, heads * dim)), 3)  # exact in the JSON
    rows = tuple(tuple([0.0] * (heads * dim // 2) + [float(x) for x in r]) for r in signed)
    return cachegen.ModelProfile("test", ones, ones, importance=rows, rope_thetas=(1e4,) * layers)


def test_signed_keys_undo_rope():
    rope = Rope.from_thetas([1e4, 5e5], 16)
    x0 = np.random.default_rng(3).normal(size=(40, 2, 16)).astype(np.float32)
    for layer, first in ((0, 0), (1, 1000)):
        keys = rotate(x0, *rope.angles(layer, np.arange(first, first + 40)), back=False)
        got = signed_keys(keys, rope, layer, first)
        np.testing.assert_allclose(got, x0.reshape(40, -1), atol=2e-3)
        assert np.abs(signed_keys(keys, rope, layer, first + 7) - x0.reshape(40, -1)).max() > 0.1


def test_signed_importance_does_not_depend_on_the_chunking():
    """A token's score is the same in a chunk at its context position as in the whole cache,
    so chunked and whole encodes weigh it alike."""
    kv = synthetic_kv(2, 60, 2, 16, seed=6)
    prof = signed_profile(2, 2, 16)
    rope = profile_rope(prof.rope_thetas, 16)
    whole, chunk = cachegen.tensors.views(kv), kv[:, :, 20:]
    part = cachegen.tensors.views(chunk)
    for layer in range(2):
        want = token_scores(kv, whole, layer, prof.importance[layer], 1, rope)[20:]
        got = token_scores(chunk, part, layer, prof.importance[layer], 1, rope, 20)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        misplaced = token_scores(chunk, part, layer, prof.importance[layer], 1, rope)
        assert np.abs(misplaced - want).max() > 0.1
    config = dataclasses.replace(PLAIN, recency=0.0)
    plan = plan_encode(chunk, part, config, prof, position=20)
    for layer in range(2):
        scores = token_scores(kv, whole, layer, prof.importance[layer], 1, rope)[20:]
        want = importance_weights(scores, config.importance_strength).astype(np.float32)
        np.testing.assert_allclose(plan.groups[2 * layer].token_weights, want, rtol=1e-5)


def test_signed_importance_profile_checks():
    prof = signed_profile(1, 2, 8)
    assert prof.importance_width(2, 8) == 8 + 16
    assert cachegen.ModelProfile.from_json(prof.to_json()) == prof
    with pytest.raises(ValueError, match="RoPE bases"):
        dataclasses.replace(prof, rope_thetas=(1e4, 1e4))
    with pytest.raises(ValueError, match="RoPE bases"):
        dataclasses.replace(prof, importance=(), rope_thetas=(1e4,))
    with pytest.raises(ValueError, match="RoPE bases"):
        dataclasses.replace(prof, rope_thetas=(float("nan"),))
    magnitudes_only = dataclasses.replace(prof, importance=((1.0,) * 8,))
    with pytest.raises(ValueError, match="needs 24 coefficients"):
        cachegen.encode(synthetic_kv(1, 10, 2, 8), profile=magnitudes_only)
    blob = cachegen.encode(synthetic_kv(1, 10, 2, 8), profile=prof, position=5)
    assert cachegen.decode(blob).shape == (1, 2, 10, 2, 8)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("first", [0, 37, 5000])
def test_core_key_scores_equal_the_features_times_the_coefficients(cpu_path, dtype, first):
    """The core scores keys in one pass (the rotation by a float64 recurrence, restarted every
    256 tokens): what numpy gets from the features it fits on, for every thread count."""
    kv = synthetic_kv(1, 600, 3, 16, dtype=dtype, seed=12)
    keys = kv[0, 0]
    rope = Rope.from_thetas([1e4], 16)
    c = np.random.default_rng(13).normal(size=3 * 8 + 3 * 16)
    want = key_features(keys, 1, rope, 0, first) @ c
    group = cachegen.tensors.views(kv).groups[0].native()
    runs = [_core.key_scores(group, c, rope.inv_freq[0], first, threads=t) for t in (1, 3)]
    assert runs[0] == runs[1]
    np.testing.assert_allclose(np.frombuffer(runs[0]), want, rtol=1e-4, atol=1e-3)
    plain = np.frombuffer(_core.key_scores(group, c[:24], threads=2))
    np.testing.assert_allclose(plain, pair_magnitudes(keys) @ c[:24], rtol=1e-6)


def test_core_key_scores_checks():
    kv = synthetic_kv(1, 10, 2, 8)
    group = cachegen.tensors.views(kv).groups[0].native()
    freq = Rope.from_thetas([1e4], 8).inv_freq[0]
    with pytest.raises(ValueError, match="coefficients: 8, keys need 24"):
        _core.key_scores(group, np.ones(8), freq)
    with pytest.raises(ValueError, match="coefficients: 24, keys need 8"):
        _core.key_scores(group, np.ones(24))
    with pytest.raises(ValueError, match="inverse frequencies: 3, keys need 4"):
        _core.key_scores(group, np.ones(24), freq[:3])
    with pytest.raises(ValueError, match="1-D"):
        _core.key_scores(group, np.ones((2, 12)), freq)
    bad = kv.copy()
    bad[0, 0, 4, 1, 2] = np.nan
    with pytest.raises(ValueError, match="nan or inf"):
        _core.key_scores(cachegen.tensors.views(bad).groups[0].native(), np.ones(24), freq)
