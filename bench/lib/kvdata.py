"""KV caches for the speed benchmarks, cached as ``.npy`` under ``bench/.cache/``.

- ``real_kv()``: SmolLM2-135M-Instruct's KV (30 layers x 3 KV heads x 64 dim) over 4096 tokens
  of real English text (documents from ``/usr/share/common-licenses`` concatenated), as fp16
  ``[layers, 2, tokens, heads, head_dim]``. The first call loads the model and prefills (about
  a minute on two cores); later calls read the cached array.
- ``synthetic_kv()``: a 32 x 8 x 128 x 4096 cache with the statistics that matter to the codec:
  keys with per-channel scales (gamma-distributed, a few outlier channels 8-16x larger) and
  per-channel offsets, values with a per-token scale. Deterministic (seeded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parents[1] / ".cache"
TOKENS = 4096
THREADS = (1, 2)  # codec threads the speed benchmarks time
# Concatenated in this order (about 20K tokens; the first TOKENS are used).
REAL_DOCS = ("GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "LGPL-2.1")
SYNTHETIC_SHAPE = (32, 8, 128)  # layers, kv heads, head dim
REAL_SOURCE = (
    "real: SmolLM2-135M-Instruct (GGUF Q4_1, fp32 compute) prefill over 4096 tokens of "
    + ", ".join(REAL_DOCS)
    + " (/usr/share/common-licenses) concatenated; KV cast to fp16"
)
SYNTHETIC_SOURCE = (
    "synthetic (seeded): keys N(0,1) x per-channel gamma(2, 0.5) scale, 1/64 of channels "
    "outliers scaled 8-16x, plus a per-channel offset; values N(0,1) x per-token gamma(4, 0.25) "
    "scale; fp16"
)


def _cached(path: Path) -> np.ndarray | None:
    """The array saved at ``path``, or None."""
    return np.load(path) if path.exists() else None


def _save(path: Path, arr: np.ndarray) -> None:
    """Save ``arr`` atomically (a half-written cache must never be read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)


def real_text_ids(tokenizer: object, tokens: int = TOKENS) -> np.ndarray:
    """The first ``tokens`` token ids of the ``REAL_DOCS`` texts joined by blank lines."""
    from .kvquality.docs import load_document

    text = "\n\n".join(load_document(name).text for name in REAL_DOCS)
    ids = tokenizer(text, return_tensors="np")["input_ids"][0]  # type: ignore[operator]
    if len(ids) < tokens:
        raise ValueError(f"{len(ids)} tokens of text, need {tokens}")
    return ids[:tokens]


def _prefill_real(tokens: int) -> np.ndarray:
    """Load SmolLM2 (``lib.kvquality.model``), prefill ``tokens`` real tokens, stack the KV."""
    import torch

    from .kvquality.model import load_model, prefill

    lm = load_model()
    ids = torch.from_numpy(real_text_ids(lm.tokenizer, tokens)).long()[None]
    kv = prefill(lm, ids)
    # HF layout [1, heads, tokens, dim] -> [tokens, heads, dim], K and V stacked per layer.
    layers = [torch.stack([t[0].transpose(0, 1) for t in pair]) for pair in kv]
    return torch.stack(layers).to(torch.float16).contiguous().numpy()


def real_kv(tokens: int = TOKENS) -> np.ndarray:
    """SmolLM2's fp16 KV ``[30, 2, tokens, 3, 64]`` of real text (cached)."""
    path = CACHE / f"smollm2_kv_{tokens}.npy"
    arr = _cached(path)
    if arr is None:
        arr = _prefill_real(tokens)
        _save(path, arr)
    return arr


def _synthetic_layer(rng: np.random.Generator, tokens: int, channels: int) -> np.ndarray:
    """One layer's K and V, fp32 ``[2, tokens, channels]``."""
    key_scale = rng.gamma(2.0, 0.5, size=channels).astype(np.float32)
    outliers = rng.choice(channels, size=max(1, channels // 64), replace=False)
    key_scale[outliers] *= rng.uniform(8.0, 16.0, size=outliers.size).astype(np.float32)
    k = rng.standard_normal((tokens, channels), dtype=np.float32) * key_scale
    k += rng.standard_normal(channels, dtype=np.float32) * key_scale
    v = rng.standard_normal((tokens, channels), dtype=np.float32)
    v *= rng.gamma(4.0, 0.25, size=(tokens, 1)).astype(np.float32)
    return np.stack([k, v])


def synthetic_kv(
    shape: tuple[int, int, int] = SYNTHETIC_SHAPE, tokens: int = TOKENS, seed: int = 0
) -> np.ndarray:
    """A deterministic fp16 KV ``[layers, 2, tokens, heads, head_dim]`` (cached)."""
    layers, heads, dim = shape
    path = CACHE / f"synthetic_kv_{layers}x{heads}x{dim}x{tokens}_s{seed}.npy"
    arr = _cached(path)
    if arr is None:
        rng = np.random.default_rng(seed)
        arr = np.empty((layers, 2, tokens, heads, dim), np.float16)
        for layer in range(layers):
            arr[layer] = _synthetic_layer(rng, tokens, heads * dim).reshape(2, tokens, heads, dim)
        _save(path, arr)
    return arr
