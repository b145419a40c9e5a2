"""Helpers of the stream tests: a stand-in engine (real decode, timed fake recompute) and stored
synthetic contexts."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import cachegen
from cachegen.context import save_context
from cachegen.store import Store
from cachegen.stream import CostModel

LAYERS, HEADS, DIM = 4, 2, 32
MODEL = "test-model"


@dataclass
class FakeEngine:
    """Decodes blobs for real and "recomputes" text by sleeping at `prefill_tps` tokens/s.

    Records what was appended so tests can check order and content.
    """

    prefill_tps: float = 20_000.0
    recompute: str = "chunk"
    appended: list[tuple[str, int]] = field(default_factory=list)
    parts: list[np.ndarray] = field(default_factory=list)

    @property
    def key(self) -> str:
        return "fake"

    @property
    def kv_elements_per_token(self) -> int:
        return LAYERS * 2 * HEADS * DIM

    def begin(self) -> None:
        self.appended, self.parts = [], []

    def append_kv(self, blob: bytes) -> None:
        kv = cachegen.decode(blob, framework="numpy")
        if kv.shape[0] != LAYERS or kv.shape[3:] != (HEADS, DIM):
            raise ValueError(f"blob of shape {kv.shape} does not fit the model")
        self.parts.append(np.asarray(kv))
        self.appended.append(("kv", kv.shape[2]))

    def append_text(self, token_ids: np.ndarray) -> None:
        assert self.recompute == "chunk", "a prefix engine recomputes the rest itself"
        time.sleep(len(token_ids) / self.prefill_tps)
        self.parts.append(np.zeros((LAYERS, 2, len(token_ids), HEADS, DIM), np.float16))
        self.appended.append(("text", len(token_ids)))

    def measure_prefill(self, positions) -> list[float]:
        return [self.prefill_tps for _ in positions]

    def finish(self) -> np.ndarray:
        empty = np.zeros((LAYERS, 2, 0, HEADS, DIM), np.float16)
        return np.concatenate([empty, *self.parts], axis=2)


@dataclass
class TickClock:
    """A clock that advances `step` seconds per reading: a load's report times, and so its
    SLO verdict, without the test machine's speed in them."""

    step: float = 1e-4
    now: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> float:
        with self._lock:
            self.now += self.step
            return self.now


def costs_for(engine: FakeEngine) -> CostModel:
    return CostModel(decode_eps=5e7, prefill_tps=engine.prefill_tps)


def store_context(
    store: Store,
    tokens: int,
    chunk_tokens: int = 64,
    seed: int = 0,
    levels=(1, 3, 5),
    **saved: Any,
):
    """Save a synthetic context of `tokens` tokens at `levels` (`saved`: more `save_context`
    options, e.g. salt= or auth_key=); return (ids, kv, ctx)."""
    rng = np.random.default_rng(seed)
    kv = rng.standard_normal((LAYERS, 2, tokens, HEADS, DIM)).astype(np.float16)
    ids = np.arange(tokens, dtype=np.uint32) + 1000 * seed
    quality = {"kl": {str(lv): kl for lv, kl in zip(levels, (0.05, 0.01, 0.002), strict=True)}}
    ctx = save_context(
        store, MODEL, ids, kv, levels=levels, chunk_tokens=chunk_tokens, quality=quality, **saved
    )
    return ids, kv, ctx
