"""The KV chunk the plug-in drivers get: one 256-token chunk of synthetic KV with real-LLM
statistics (tests/support/kvgen.py), in LMCache's `[2, layers, tokens, hidden]` layout, as .npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from kvgen import synthetic_kv

HEAD_DIM = 64
TOKENS = 256


def write_chunk(path: Path, layers: int = 4, heads: int = 3) -> Path:
    kv = synthetic_kv(layers, TOKENS, heads, HEAD_DIM, dtype="float32")  # [L, 2, T, H, D]
    chunk = kv.transpose(1, 0, 2, 3, 4).reshape(2, layers, TOKENS, heads * HEAD_DIM)
    np.save(path, np.ascontiguousarray(chunk))
    return path
