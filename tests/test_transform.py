"""The per-model KLT transform: exact inverse, orthonormal bases, RoPE as transformers applies
it, a stable digest and typed errors."""

from __future__ import annotations

import numpy as np
import pytest

import cachegen
from cachegen.importance import key_square_sums
from cachegen.kvstats import SPREAD_BOUND, key_channel_weights
from cachegen.tensors import views
from cachegen.transform import (
    QUERY_ENERGY_STRENGTH,
    Rope,
    Transform,
    TransformError,
    channel_weights,
    forward,
    inverse,
    learn_transform,
    query_energy_weights,
    rotate,
)

torch = pytest.importorskip("torch")

HEADS, DIM, LAYERS, TOKENS = 2, 8, 3, 300


def stacked(seed: int, tokens: int = TOKENS) -> np.ndarray:
    """A random stacked cache [layers, 2, tokens, heads, dim] with unequal channel scales."""
    model = np.random.default_rng(99)
    scale = model.uniform(0.1, 5.0, size=(LAYERS, 2, 1, HEADS, DIM))
    offset = model.normal(size=(LAYERS, 2, 1, HEADS, DIM))
    x = (
        np.random.default_rng(seed).standard_normal((LAYERS, 2, tokens, HEADS, DIM)) * scale
        + offset
    )
    return x.astype(np.float32)


def rope() -> Rope:
    return Rope.from_thetas([1e4, 1e5, 1e6], DIM)


def rope_keys(pre: np.ndarray, positions: np.ndarray, r: Rope, layer: int) -> np.ndarray:
    """Keys `[tokens, heads, dim]` rotated to `positions`."""
    return rotate(pre, *r.angles(layer, positions), back=False)


@pytest.mark.parametrize("position", [0, 17, 5000])
@pytest.mark.parametrize("key_spread", [0.0, 0.5])
def test_inverse_undoes_forward_on_random_data(position: int, key_spread: float) -> None:
    kv = stacked(1)
    t = learn_transform([stacked(2)], rope(), key_spread)
    coeffs = forward(kv, t, position)
    assert coeffs.shape == kv.shape and coeffs.dtype == kv.dtype
    back = inverse(coeffs, t, position)
    np.testing.assert_allclose(back, kv, rtol=0, atol=1e-5 * np.abs(kv).max())


def test_bases_are_orthonormal_and_strongest_first() -> None:
    t = learn_transform([stacked(1)], rope())
    for b in (*t.keys, *t.values):
        np.testing.assert_allclose(b.vectors.T @ b.vectors, np.eye(HEADS * DIM), atol=1e-5)
    coeffs = forward(stacked(1), t)  # on the data it was fit to (the sink left out) ...
    energy = (coeffs[:, :, 1:].reshape(LAYERS, 2, TOKENS - 1, -1) ** 2).mean(axis=2)
    # ... the coefficients' energies are the covariance's eigenvalues, strongest first
    assert np.all(np.diff(energy, axis=-1) <= 1e-5 * energy[..., :1])
    assert np.all(energy[..., 0] > 2 * energy[..., -1])


def test_key_spread_weights_are_the_ladders_for_the_same_keys() -> None:
    r = rope()
    kv = roped_cache(1, TOKENS, 0, r) + stacked(2)
    kv[:, 0, :, 0, [1, 1 + DIM // 2]] *= 20  # an outlier RoPE pair
    plain, spread = (learn_transform([kv], r, s) for s in (0.0, 0.5))
    for layer, (p, s) in enumerate(zip(plain.keys, spread.keys, strict=True)):
        assert np.all(p.weights == 1)
        # RoPE keeps a pair's magnitude: the weights the level's plan reads off the RoPE'd keys
        sums, count = key_square_sums(views(kv), layer, 1, 1)
        np.testing.assert_allclose(s.weights, key_channel_weights(sums, count, DIM, 0.5), rtol=1e-4)
        assert s.weights.argmax() == 1 and s.weights.max() / s.weights.min() > 3
    assert all(np.all(b.weights == 1) for b in spread.values)
    assert spread.digest() != plain.digest()
    np.testing.assert_allclose(inverse(forward(kv, spread, 9), spread, 9), kv, atol=1e-4)


def test_query_energy_weights_follow_the_energy_bounded() -> None:
    energy = np.array([1.0, 32.0, 1024.0, 0.0, 1.0, 1.0, 4.0, 4.0])  # 2 heads x 4 pairs
    w = query_energy_weights(energy, 8)
    assert w.dtype == np.float32 and w.shape == (16,)
    # a pair's two channels alike: energy^-0.2 over the layer's geometric mean, bounded (a pair
    # no query reads at the bound), as the key spread weighs pair rms
    np.testing.assert_array_equal(w.reshape(2, 2, 4)[:, 0], w.reshape(2, 2, 4)[:, 1])
    pairs = w.reshape(2, 2, 4)[:, 0].ravel()
    np.testing.assert_allclose(pairs[1] / pairs[0], 32.0**-QUERY_ENERGY_STRENGTH, rtol=1e-6)
    np.testing.assert_allclose(pairs[2] / pairs[0], 1024.0**-QUERY_ENERGY_STRENGTH, rtol=1e-6)
    assert pairs[3] == np.float32(SPREAD_BOUND) and pairs[3] == w.max()
    np.testing.assert_array_equal(w, key_channel_weights(energy, 1, 8, -2 * QUERY_ENERGY_STRENGTH))
    for bad in ([1.0, np.nan], [1.0, -1.0], [0.0, 0.0], [[1.0]]):
        with pytest.raises(TransformError, match="query energies"):
            query_energy_weights(np.array(bad), 4)


def test_channel_weights_take_the_profile_or_the_queries() -> None:
    energy = [np.random.default_rng(i).uniform(0.1, 50, HEADS * DIM // 2) for i in range(LAYERS)]
    shapes = [(HEADS, DIM)] * LAYERS
    for (k, v), e in zip(channel_weights(shapes, energy), energy, strict=True):
        np.testing.assert_array_equal(k, query_energy_weights(e, DIM))
        np.testing.assert_array_equal(v, np.ones(HEADS * DIM, np.float32))
    assert channel_weights(shapes) is None
    profile = cachegen.ModelProfile(
        model="m",
        key_weights=((1.0, 4.0),) * LAYERS,
        value_weights=((2.0, 2.0),) * LAYERS,
        key_bands=(2.0, 0.5),
    )
    for layer, (k, v) in enumerate(channel_weights(shapes, energy, profile)):
        np.testing.assert_array_equal(k, profile.channel_weights(layer, 0, DIM))
        np.testing.assert_array_equal(v, np.ones(HEADS * DIM, np.float32))
    with pytest.raises(TransformError, match="query energies for"):
        channel_weights(shapes, energy[:2])
    with pytest.raises(TransformError, match="profile has"):
        channel_weights(shapes[:2], None, profile)


def test_a_channels_weight_sets_its_share_of_the_coding_error() -> None:
    """A transform learned with a channel's weight 8 leaves that channel about 8x the error of
    the others after coding (the equal steps act on the channel divided by its weight); the
    inverse is still exact, and the weights multiply a key spread's."""
    kv, r = stacked(1), rope()
    weights = [(np.ones(HEADS * DIM), np.ones(HEADS * DIM)) for _ in range(LAYERS)]
    weights[1][1][3] = 8.0
    plain, weighted = learn_transform([kv], r), learn_transform([kv], r, weights=weights)
    assert weighted.values[1].weights[3] == 8 and np.all(weighted.keys[1].weights == 1)
    np.testing.assert_allclose(inverse(forward(kv, weighted, 5), weighted, 5), kv, atol=1e-4)

    def rms_error(t: Transform) -> np.ndarray:
        back = cachegen.decode(cachegen.encode(kv, 20, transform=t), transforms=t)
        return np.sqrt(((back - kv)[1, 1, 1:].reshape(TOKENS - 1, -1) ** 2).mean(0))

    e_plain, e_weighted = rms_error(plain), rms_error(weighted)
    others = np.delete(e_weighted, 3) / np.delete(e_plain, 3)
    assert e_weighted[3] / e_plain[3] > 3 * np.median(others)
    spread = learn_transform([kv], r, 0.5, weights=weights)
    np.testing.assert_allclose(
        spread.values[1].weights, learn_transform([kv], r, 0.5).values[1].weights * weights[1][1]
    )


def test_channel_weights_are_checked() -> None:
    kv, r = stacked(1), rope()
    ones = [(np.ones(HEADS * DIM), np.ones(HEADS * DIM)) for _ in range(LAYERS)]
    with pytest.raises(TransformError, match="layers of weights"):
        learn_transform([kv], r, weights=ones[:2])
    for bad in (np.ones(3), np.full(HEADS * DIM, np.nan), np.zeros(HEADS * DIM)):
        w = list(ones)
        w[2] = (np.ones(HEADS * DIM), bad)
        with pytest.raises(TransformError, match="layer 2 V: channel weights"):
            learn_transform([kv], r, weights=w)


def low_rank_pre_rope(seed: int, tokens: int, rank: int) -> np.ndarray:
    """Keys before RoPE [layers, tokens, heads, dim] of rank `rank` over a layer's channels."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((LAYERS, rank, HEADS * DIM))
    latent = rng.standard_normal((LAYERS, tokens, rank))
    return (latent @ mix).reshape(LAYERS, tokens, HEADS, DIM).astype(np.float32)


def roped_cache(seed: int, tokens: int, first: int, r: Rope) -> np.ndarray:
    pre = low_rank_pre_rope(seed, tokens, rank=3)
    positions = np.arange(first, first + tokens)
    keys = np.stack([rope_keys(pre[i], positions, r, i) for i in range(LAYERS)])
    return np.stack([keys, pre], axis=1)  # values: the same low-rank data, never rotated


@pytest.mark.parametrize("position", [0, 1234, 70000])
def test_roped_keys_at_any_position_become_the_low_rank_coefficients(position: int) -> None:
    r = rope()
    t = learn_transform([roped_cache(1, TOKENS, 0, r)], r)
    kv = roped_cache(2, TOKENS, position, r)
    coeffs = forward(kv, t, position)
    # RoPE-aware: three coefficients hold the keys' energy wherever they sit in the context.
    tail = np.abs(coeffs[:, 0, :, :, :].reshape(LAYERS, TOKENS, -1)[:, :, 3:]).max()
    assert tail < 1e-4 * np.abs(kv[:, 0]).max()
    np.testing.assert_allclose(inverse(coeffs, t, position), kv, atol=1e-4)


def test_unrotated_keys_do_not_fit_a_low_rank_basis() -> None:
    """The check above is not vacuous: without the rotation back the rank is not 3."""
    r = rope()
    none = Rope(tuple(np.zeros(DIM // 2, np.float32) for _ in range(LAYERS)))
    t = learn_transform([roped_cache(1, TOKENS, 0, r)], none)
    coeffs = forward(roped_cache(2, TOKENS, 0, r), t)
    assert np.abs(coeffs[:, 0].reshape(LAYERS, TOKENS, -1)[:, :, 3:]).max() > 0.1


def test_rope_is_the_one_transformers_applies() -> None:
    pytest.importorskip("transformers")
    from transformers import Gemma3TextConfig, LlamaConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    llama = LlamaConfig(hidden_size=192, num_attention_heads=3, num_hidden_layers=2, rope_theta=1e5)
    gemma = Gemma3TextConfig(
        num_hidden_layers=6, head_dim=256, sliding_window_pattern=6, max_position_embeddings=9000
    )
    positions = torch.arange(7000, 7100)[None]
    for config, emb, kinds in (
        (llama, LlamaRotaryEmbedding(config=llama), [None] * 2),
        (gemma, Gemma3RotaryEmbedding(config=gemma), gemma.layer_types),
    ):
        r = Rope.from_config(config)
        dim = 2 * len(r.inv_freq[0])
        pre = torch.randn(1, 2, positions.shape[1], dim)
        for layer, kind in enumerate(kinds):
            cos, sin = emb(pre, positions) if kind is None else emb(pre, positions, kind)
            _, k = apply_rotary_pos_emb(pre, pre, cos, sin)
            ours = rope_keys(pre[0].numpy().transpose(1, 0, 2), positions[0].numpy(), r, layer)
            np.testing.assert_allclose(ours, k[0].numpy().transpose(1, 0, 2), atol=1e-5)
    assert len({f[-1] for f in Rope.from_config(gemma).inv_freq}) == 2  # sliding and full bases


def hf_pairs(kv: np.ndarray, tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs layout; layer i keeps its last tokens[i] tokens (a sliding window)."""
    return [
        tuple(torch.from_numpy(kv[i, s, -n:].transpose(1, 0, 2).copy())[None] for s in (0, 1))
        for i, n in enumerate(tokens)
    ]


def test_pairs_with_a_sliding_layer_go_through_the_codec() -> None:
    r = rope()
    t = learn_transform([hf_pairs(roped_cache(1, TOKENS, 0, r), [TOKENS, 100, TOKENS])], r)
    kv = hf_pairs(stacked(3), [TOKENS, 100, TOKENS])
    coeffs = forward(kv, t, position=40)
    assert [c[0].shape for c in coeffs] == [p[0].shape for p in kv]
    assert all(isinstance(c, torch.Tensor) and c.dtype == torch.float32 for p in coeffs for c in p)
    exact = inverse(coeffs, t, position=40)
    for (k, v), (k2, v2) in zip(kv, exact, strict=True):
        torch.testing.assert_close(k2, k, atol=1e-4, rtol=0)
        torch.testing.assert_close(v2, v, atol=1e-4, rtol=0)
    decoded = inverse(list(cachegen.decode(cachegen.encode(coeffs, level=34))), t, position=40)
    for (k, _), (k2, _) in zip(kv, decoded, strict=True):
        err = (k2 - k).pow(2).mean().sqrt() / k.pow(2).mean().sqrt()
        assert 0 < err < 0.05


def test_digest_names_the_transform() -> None:
    data = [stacked(1)]
    a, b = learn_transform(data, rope()), learn_transform(data, rope())
    assert a.digest() == b.digest() and len(a.digest()) == 64
    assert learn_transform([stacked(2)], rope()).digest() != a.digest()
    other_rope = Rope.from_thetas([1e4, 1e5, 1e4], DIM)
    assert learn_transform(data, other_rope).digest() != a.digest()


def test_bfloat16_caches_keep_their_dtype_through_the_codec() -> None:
    t = learn_transform([stacked(2)], rope())
    kv = torch.from_numpy(stacked(1)).bfloat16()
    coeffs = forward(kv, t, 9)
    assert coeffs.dtype == torch.bfloat16
    blob = cachegen.encode(kv, 27, transform=t, position=9)
    assert cachegen.inspect(blob).dtype == "bfloat16"
    back = cachegen.decode(blob, transforms=t)
    assert back.dtype == torch.bfloat16 and back.shape == kv.shape
    err = (back.float() - kv.float()).square().mean() / kv.float().square().mean()
    assert float(err) < 0.01


def test_bad_input_is_a_typed_error() -> None:
    t = learn_transform([stacked(1)], rope())
    with pytest.raises(TransformError, match="layers"):
        forward(stacked(1)[:2], t)
    with pytest.raises(TransformError, match="heads, dim"):
        forward(stacked(1)[:, :, :, :1], t)
    with pytest.raises(TransformError, match="stacked"):
        forward(stacked(1)[0], t)
    with pytest.raises(TransformError, match="float16, bfloat16 or float32"):
        forward(torch.from_numpy(stacked(1)).to(torch.float64), t)
    with pytest.raises(TransformError, match="pair"):
        inverse([(torch.zeros(1, HEADS, 4, DIM),)], t)
    with pytest.raises(TransformError, match="position"):
        forward(stacked(1), t, position=-1)
    with pytest.raises(TransformError, match="1-D float32"):
        Rope((np.ones(DIM // 2),))
    with pytest.raises(TransformError, match="RoPE has"):
        learn_transform([stacked(1)], Rope.from_thetas([1e4], DIM))
    nan = stacked(1)
    nan[1, 0, 5, 0, 3] = np.nan
    with pytest.raises(TransformError, match="NaN"):
        learn_transform([nan], rope())
    with pytest.raises(TransformError, match="at least two"):
        learn_transform([stacked(1, tokens=2)], rope())
    with pytest.raises(TransformError, match="at least one"):
        learn_transform([], rope())
    with pytest.raises(TransformError, match="not supported"):
        Rope.from_config(
            type(
                "C",
                (),
                {
                    "num_hidden_layers": 1,
                    "head_dim": 8,
                    "layer_types": None,
                    "rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn"},
                },
            )()
        )
    assert isinstance(t, Transform)
