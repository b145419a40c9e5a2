"""Key rounding shaped away from the directions the queries share (`encode(..., queries=)`).

A key's rounding error e moves query q's attention score by q . e, and the queries a key will
meet are far from isotropic: per head a few directions carry much of their energy (on Gemma-3
the heads' means alone 20-75%, `bench/results/ladder_experiments.md` 42). So the encoder
chooses, per token, which neighbour each key coefficient rounds to, keeping the score error
along those directions small (the core's `shaping.hpp`): every symbol stays within one step of
its value, and the format and the decoders are unchanged. With a transform only: the directions
are mapped into its coefficient space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .transform import Basis, Rope, Transform, rotate

SHAPING_VERSION = 1  # bumped when the same inputs shape differently (bench result keys name it)
SHAPE_AHEAD = 128  # the coming queries sit about this much further from every key
SHAPE_DIRECTIONS = 4  # per query head


@dataclass(frozen=True)
class QueryDirections:
    """Per layer, what the coming queries share, in the post-RoPE frame (a query as RoPE turned
    it at its own position): `directions` float32 `[query heads, k, head_dim]`, each head's top
    `k` directions of its queries' second moment scaled by the root of their eigenvalues;
    `residual` float32 `[query heads, head_dim]`, the diagonal of the second moment left after
    them, averaged over each RoPE pair (so that RoPE leaves it as it is)."""

    directions: tuple[np.ndarray, ...]
    residual: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if len(self.directions) != len(self.residual):
            raise ValueError("queries: one directions and one residual array per layer")
        for d, r in zip(self.directions, self.residual, strict=True):
            if d.ndim != 3 or r.shape != (d.shape[0], d.shape[2]):
                raise ValueError("queries: directions [heads, k, dim] and residual [heads, dim]")
            if not (np.isfinite(d).all() and np.isfinite(r).all() and (r >= 0).all()):
                raise ValueError("queries: directions and residual must be finite, residual >= 0")


def query_directions(
    queries: Sequence[np.ndarray],
    rope: Rope,
    positions: np.ndarray,
    ahead: int = SHAPE_AHEAD,
    k: int = SHAPE_DIRECTIONS,
) -> QueryDirections:
    """`QueryDirections` from a context's last queries: per layer `[n, query heads, head_dim]`
    before RoPE (after the query norm where the model has one), at context `positions`, each
    turned as if `ahead` positions later."""
    directions, residual = [], []
    for layer, q in enumerate(queries):
        cos, sin = rope.angles(layer, np.asarray(positions) + ahead)
        r = rotate(np.asarray(q, np.float32), cos, sin, back=False).astype(np.float64)
        heads, head_dim = r.shape[1:]
        dirs = np.empty((heads, min(k, head_dim), head_dim))
        rest = np.empty((heads, head_dim))
        for h in range(heads):
            moment = r[:, h].T @ r[:, h] / len(r)
            values, vectors = np.linalg.eigh(moment)
            top = np.argsort(values)[::-1][: dirs.shape[1]]
            u = vectors[:, top] * np.sqrt(np.maximum(values[top], 0.0))
            dirs[h] = u.T
            rest[h] = np.maximum(np.diag(moment - u @ u.T), 0.0)
        half = head_dim // 2
        pair = (rest[:, :half] + rest[:, half:]) / 2
        directions.append(dirs.astype(np.float32))
        residual.append(np.concatenate([pair, pair], axis=1).astype(np.float32))
    return QueryDirections(tuple(directions), tuple(residual))


def key_shaping(
    q: QueryDirections, t: Transform, layer: int, positions: np.ndarray, kv_heads: int
) -> tuple[np.ndarray, np.ndarray]:
    """A key group's shaping in `t`'s coefficient space, for tokens at context `positions`:
    directions float32 `[tokens, D, channels]` and the diagonal float32 `[channels]`, as the
    core's `GroupSpec(shape_dirs=, shape_diag=)` takes them (flattened)."""
    basis: Basis = t.keys[layer]
    dirs, rest = q.directions[layer], q.residual[layer]
    heads, k, head_dim = dirs.shape
    if heads % kv_heads or head_dim * kv_heads != len(basis.mean):
        raise ValueError(f"queries[{layer}]: {heads} heads of {head_dim} do not fit the keys")
    per = heads // kv_heads
    cos, sin = t.rope.angles(layer, np.asarray(positions))
    vectors = basis.vectors.astype(np.float64)
    weights = basis.weights.astype(np.float64)
    out = np.empty((len(positions), heads * k, kv_heads * head_dim), np.float32)
    for h in range(heads):
        seen = rotate(np.broadcast_to(dirs[h], (len(positions), k, head_dim)), cos, sin, back=True)
        block = slice((h // per) * head_dim, (h // per + 1) * head_dim)
        # a direction reads its own key head's channels only: the score change per unit of
        # each coefficient (float64 products, rounded once as they are stored)
        out[:, h * k : (h + 1) * k] = (seen * weights[block]) @ vectors[block]
    diag = rest.astype(np.float64).reshape(kv_heads, per, head_dim).sum(axis=1).ravel()
    diag = ((vectors**2) * (weights**2 * diag)[:, None]).sum(axis=0)
    return out, diag.astype(np.float32)


def key_shapings(
    q: QueryDirections, t: Transform, kv_heads: Sequence[int]
) -> Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`plan_encode`'s `shaping` for a cache of `kv_heads[layer]` key heads per layer: a key
    group's `key_shaping` from its layer and its tokens' context positions."""
    if len(q.directions) != len(kv_heads):
        raise ValueError(f"queries: need one entry per layer ({len(kv_heads)})")
    return lambda layer, positions: key_shaping(q, t, layer, positions, kv_heads[layer])
