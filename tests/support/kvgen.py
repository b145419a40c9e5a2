"""Synthetic KV caches for the codec tests: with the statistics that matter (outlier key channels,
per-token value scale), built deterministically."""

from __future__ import annotations

import numpy as np
import pytest


def synthetic_kv(layers, tokens, heads, dim, dtype="float16", seed=0, layout="stacked"):
    """KV with per-channel key offsets/outliers and per-token value magnitudes, like real LLMs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        key_scale = rng.gamma(2.0, 0.5, size=heads * dim).astype(np.float32)
        key_scale[rng.integers(0, heads * dim, size=max(1, dim // 16))] *= 8  # outlier channels
        k = rng.standard_normal((tokens, heads * dim)).astype(np.float32) * key_scale
        k += rng.standard_normal(heads * dim).astype(np.float32)
        v = rng.standard_normal((tokens, heads * dim)).astype(np.float32)
        v *= rng.gamma(4.0, 0.25, size=(tokens, 1)).astype(np.float32)
        out.append((k.reshape(tokens, heads, dim), v.reshape(tokens, heads, dim)))
    if layout == "stacked":
        return _cast(np.stack([np.stack(p) for p in out]), dtype)
    return [tuple(_cast(x.transpose(1, 0, 2)[None], dtype) for x in p) for p in out]


def low_rank_kv(seed: int, tokens: int, layers: int, heads: int, dim: int) -> np.ndarray:
    """A stacked fp32 cache with correlated channels (a rank-4 part shared by every seed, plus
    noise), so that a KLT has work to do."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(7).standard_normal((layers, 2, 4, heads * dim))
    low = np.einsum("lstr,lsrc->lstc", rng.standard_normal((layers, 2, tokens, 4)), mix)
    x = low + 0.1 * rng.standard_normal(low.shape)
    return x.reshape(layers, 2, tokens, heads, dim).astype(np.float32)


def _cast(x: np.ndarray, dtype: str):
    if dtype == "bfloat16":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16)
    return np.ascontiguousarray(x.astype(dtype))
