"""Key rounding shaped away from the queries' shared directions (`encode(..., queries=)`,
`cachegen.shaping`, the core's shaping.hpp)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from kvgen import low_rank_kv

import cachegen
from cachegen import _core
from cachegen.plan import plan_encode
from cachegen.shaping import QueryDirections, key_shaping, query_directions
from cachegen.tensors import DTYPE_CODES, LAYOUTS, views
from cachegen.transform import Rope, Transform, learn_transform, rotate

LAYERS, KV_HEADS, QUERY_HEADS, DIM, TOKENS = 2, 2, 4, 16, 120


def cache(seed: int, tokens: int) -> np.ndarray:
    return low_rank_kv(seed, tokens, LAYERS, KV_HEADS, DIM)


@pytest.fixture(scope="module")
def transform() -> Transform:
    return learn_transform([cache(1, 300)], Rope.from_thetas([1e4, 1e5], DIM))


@pytest.fixture(scope="module")
def queries(transform: Transform) -> QueryDirections:
    """Queries with a strong shared part per head, as real ones have."""
    rng = np.random.default_rng(3)
    shared = rng.standard_normal((LAYERS, 1, QUERY_HEADS, DIM)) * 3
    q = shared + rng.standard_normal((LAYERS, 64, QUERY_HEADS, DIM))
    return query_directions(
        list(q.astype(np.float32)), transform.rope, np.arange(TOKENS - 64, TOKENS)
    )


def score_error(kv: np.ndarray, decoded: np.ndarray, q: QueryDirections) -> float:
    """sum over layers, tokens and directions of (u . dk)^2, u in the post-RoPE frame as the
    cache's keys are."""
    total = 0.0
    for layer in range(LAYERS):
        dk = decoded[layer, 0].astype(np.float64) - kv[layer, 0]  # [tokens, kv heads, dim]
        for h, dirs in enumerate(q.directions[layer]):
            total += ((dk[:, h * KV_HEADS // QUERY_HEADS] @ dirs.T.astype(np.float64)) ** 2).sum()
    return total


@pytest.mark.parametrize("level", [5, 15])
def test_shaped_keys_move_the_shared_scores_less(transform, queries, level) -> None:
    kv = cache(2, TOKENS)
    plain = cachegen.decode(cachegen.encode(kv, level, transform=transform), transforms=transform)
    blob = cachegen.encode(kv, level, transform=transform, queries=queries)
    shaped = cachegen.decode(blob, transforms=transform)
    assert score_error(kv, shaped, queries) < 0.7 * score_error(kv, plain, queries)
    np.testing.assert_array_equal(shaped[:, 1], plain[:, 1])  # values untouched
    # the keys' squared error grows a little, not a lot
    err = [float(((x[:, 0] - kv[:, 0]) ** 2).sum()) for x in (plain, shaped)]
    assert err[0] < err[1] < 2 * err[0]


def test_shaping_keeps_every_symbol_within_one_step(transform, queries) -> None:
    """The core's symbols: nearest rounding but for flips to the value's other neighbour."""
    from cachegen.transform import coefficient_config, forward

    kv = cache(4, TOKENS)
    coefficients = forward(kv, transform)
    v = views(coefficients)
    config = coefficient_config(cachegen.CodecConfig.from_level(10))

    def shaping(layer: int, positions: np.ndarray):
        return key_shaping(queries, transform, layer, positions, KV_HEADS)

    plain = _core.quantize(plan_encode(coefficients, v, config).request(1))
    shaped = _core.quantize(plan_encode(coefficients, v, config, shaping=shaping).request(1))
    flipped = 0
    for g, (p, s) in enumerate(zip(plain, shaped, strict=True)):
        sp, ss = (np.frombuffer(x[0], np.int8).astype(int) for x in (p, s))
        a = np.frombuffer(s[1], np.float32)
        np.testing.assert_array_equal(a, np.frombuffer(p[1], np.float32))  # same steps
        if g % 2:
            np.testing.assert_array_equal(ss, sp)
            continue
        assert np.abs(ss - sp).max() <= 1
        per_token = (ss != sp).reshape(TOKENS, -1).sum(1)
        assert per_token.max() <= 16
        flipped += per_token.sum()
    assert flipped > 0


def test_key_shaping_is_each_coefficients_score_change(transform, queries) -> None:
    """Entry [t, direction, j]: how much a unit of coefficient j moves the direction's score
    against token t's key (decoded and turned to its position), on its own key head only."""
    layer, positions = 1, np.array([3, 50, 119])
    dirs, _ = key_shaping(queries, transform, layer, positions, KV_HEADS)
    matrix, _ = transform.keys[layer].inverse_factors  # a unit of coefficient j, as channels
    cos, sin = transform.rope.angles(layer, positions)
    units = np.broadcast_to(matrix, (len(positions), *matrix.shape))
    units = units.reshape(len(positions), -1, DIM)  # [tokens, coefficients x key heads, dim]
    keys = rotate(units, cos, sin, back=False).reshape(len(positions), -1, KV_HEADS, DIM)
    u = queries.directions[layer]  # [query heads, k, dim]
    per = QUERY_HEADS // KV_HEADS
    want = np.concatenate(
        [np.einsum("kd,tjd->tkj", u[h], keys[:, :, h // per]) for h in range(QUERY_HEADS)], 1
    )
    np.testing.assert_allclose(dirs, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_query_directions_of_identical_queries_are_the_query() -> None:
    rope = Rope.from_thetas([1e4], DIM)
    q = np.tile(np.arange(1, DIM + 1, dtype=np.float32), (8, 2, 1))  # [n, heads, dim]
    qd = query_directions([q], rope, np.zeros(8, int), ahead=5)  # all at one position
    turned = rotate(q[:1], *rope.angles(0, np.array([5])), back=False)[0]
    for h in range(2):
        top = qd.directions[0][h, 0]
        assert abs(abs(float(top @ turned[h])) - float(turned[h] @ turned[h])) < 1e-3
        assert np.allclose(qd.residual[0][h], 0, atol=1e-4)


def test_query_directions_are_checked() -> None:
    good = (np.zeros((4, 2, DIM), np.float32),), (np.zeros((4, DIM), np.float32),)
    QueryDirections(*good)
    with pytest.raises(ValueError, match="per layer"):
        QueryDirections(good[0] * 2, good[1])
    with pytest.raises(ValueError, match="residual"):
        QueryDirections(good[0], (np.zeros((3, DIM), np.float32),))
    with pytest.raises(ValueError, match="finite"):
        QueryDirections((np.full((4, 2, DIM), np.nan, np.float32),), good[1])
    with pytest.raises(ValueError, match="finite"):
        QueryDirections(good[0], (-np.ones((4, DIM), np.float32),))


def test_encode_refuses_queries_that_do_not_fit(transform, queries) -> None:
    kv = cache(2, 40)
    with pytest.raises(ValueError, match="needs a transform"):
        cachegen.encode(kv, 10, queries=queries)
    one = QueryDirections(queries.directions[:1], queries.residual[:1])
    with pytest.raises(ValueError, match="one entry per layer"):
        cachegen.encode(kv, 10, transform=transform, queries=one)
    odd = QueryDirections(
        tuple(d[:3] for d in queries.directions), tuple(r[:3] for r in queries.residual)
    )
    with pytest.raises(ValueError, match="do not fit"):
        cachegen.encode(kv, 10, transform=transform, queries=odd)


def _request(kv: np.ndarray, count: int, dirs, diag) -> _core.EncodeRequest:
    """The core's request for `kv` with its key group shaped by `dirs` and `diag`."""
    plan = plan_encode(kv, views(kv), cachegen.CodecConfig.from_level(10))
    g = plan.groups[0]
    spec = _core.GroupSpec(
        g.view.native(), g.quantizer, g.param, g.max_tables, None, None, 0, False, False, count,
        dirs, diag,
    )  # fmt: skip
    return _core.EncodeRequest(
        [spec, plan.groups[1].native()],
        DTYPE_CODES[plan.dtype],
        LAYOUTS[plan.layout],
        plan.level,
        plan.segment_symbols,
    )


@pytest.mark.parametrize(
    "count, dirs, diag, match",
    [
        (1, np.zeros(7), np.zeros(8), "direction entries"),
        (1, np.zeros(40), np.zeros(7), "diagonal entry"),
        (1, np.full(40, np.inf), np.zeros(8), "finite"),
        (1, np.zeros(40), -np.ones(8), ">= 0"),
        (65, np.zeros(65 * 40), np.zeros(8), "at most 64"),
        (0, np.zeros(40), None, "no direction count"),
        (1, np.zeros((5, 8)), np.zeros(8), "1-D"),
    ],
)
def test_core_checks_the_shaping(count, dirs, diag, match) -> None:
    """A group of 5 tokens x 8 channels: directions must be 5 x count x 8, diag 8."""
    kv = np.random.default_rng(0).standard_normal((1, 2, 5, 1, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        _core.quantize(_request(kv, count, dirs, diag))


def test_the_request_keeps_the_directions_it_reads_in_place() -> None:
    """The core reads the directions from the caller's array without a copy, and the request
    keeps that array alive after the caller lets it go (a freed array would be a use after
    free, which `scripts/asan_pytest.sh` reports even where the freed bytes still read the
    same)."""
    rng = np.random.default_rng(1)
    kv = rng.standard_normal((1, 2, 5, 1, 8)).astype(np.float32)
    dirs = rng.standard_normal(5 * 2 * 8).astype(np.float32)
    kept = _core.quantize(_request(kv, 2, dirs, np.zeros(8, np.float32)))
    request = _request(kv, 2, dirs.copy(), np.zeros(8, np.float32))
    gc.collect()
    assert _core.quantize(request) == kept
    assert kept != _core.quantize(_request(kv, 0, None, None))  # the directions mattered
