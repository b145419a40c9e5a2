"""The `Engine` adapter for Hugging Face `transformers`: the result is a `DynamicCache` the
model generates from (`model(ids, cache=cache)` or `generate`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

import cachegen

from .costs import CALIBRATION_TOKENS
from .engine import Recompute

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

    from cachegen.transform import Transforms


class HFEngine:
    """Fills a `DynamicCache` for `model` (a causal LM in eval mode) from blobs and text."""

    #: Any chunk can be recomputed on top of the cache built so far.
    recompute: Recompute = "chunk"

    def __init__(
        self, model: Any, *, name: str | None = None, transforms: Transforms | None = None
    ) -> None:
        """`transforms` finds the transform of transform-coded blobs (`cachegen.decode`'s
        argument, e.g. `cachegen.transform.stored_transforms(store)`)."""
        import torch

        self.model = model
        self.config = model.config
        self._device = next(model.parameters()).device
        self._dtype = next(model.parameters()).dtype
        label = name or getattr(self.config, "_name_or_path", "") or type(model).__name__
        self._key = f"hf:{label}:{self._device}:{torch.get_num_threads()}t"
        self._cache: DynamicCache | None = None
        self._transforms = transforms

    @property
    def key(self) -> str:
        return self._key

    @property
    def kv_elements_per_token(self) -> int:
        heads, dim = self._kv_heads_dim()
        return self.config.num_hidden_layers * 2 * heads * dim

    def _kv_heads_dim(self) -> tuple[int, int]:
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return getattr(c, "num_key_value_heads", None) or c.num_attention_heads, head_dim

    def begin(self) -> None:
        from transformers import DynamicCache

        self._cache = DynamicCache(config=self.config)

    def append_kv(self, blob: bytes) -> None:
        # The core writes the model's dtype on the model's device: no conversion pass after.
        kv = cachegen.decode(
            blob,
            framework="torch",
            dtype=self._dtype,
            device=str(self._device),
            transforms=self._transforms,
        )
        pairs = self._pairs(kv)
        cache = self._live()
        if len(pairs) != len(cache.layers):
            raise ValueError(f"blob has {len(pairs)} layers, the model {len(cache.layers)}")
        heads, dim = self._kv_heads_dim()
        # Checked before any layer is touched, so a misfit blob leaves the cache as it was.
        for i, (k, v) in enumerate(pairs):
            if k.shape[1] != heads or k.shape[3] != dim or v.shape[:3] != k.shape[:3]:
                raise ValueError(f"layer {i}: K {tuple(k.shape)} does not fit the model")
        for i, (k, v) in enumerate(pairs):
            cache.update(k, v, i)

    @staticmethod
    def _pairs(kv: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Decoded KV as per-layer ``[1, heads, tokens, dim]`` tensors."""
        import torch

        if not isinstance(kv, torch.Tensor):  # already per-layer pairs in that layout
            return list(kv)
        # stacked [layers, 2, tokens, heads, dim]
        return [
            (k.permute(1, 0, 2)[None].contiguous(), v.permute(1, 0, 2)[None].contiguous())
            for k, v in kv
        ]

    def append_text(self, token_ids: np.ndarray) -> None:
        import torch

        ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64), device=self._device)[None]
        with torch.inference_mode():
            # Only the cache is wanted: skip the vocabulary projection for all but one token.
            self.model(ids, cache=self._live(), use_cache=True, logits_to_keep=1)

    def measure_prefill(self, positions: Sequence[int]) -> list[float]:
        # One growing cache: each timed chunk lands at its position, untimed filler between.
        rng = np.random.default_rng(0)
        vocab = self.config.vocab_size
        self.begin()
        self.append_text(rng.integers(0, vocab, 16))  # warm up kernels and allocator
        self.begin()
        speeds, filled = [], 0
        for position in sorted(positions):
            if position > filled:
                self.append_text(rng.integers(0, vocab, position - filled))
            t0 = time.perf_counter()
            self.append_text(rng.integers(0, vocab, CALIBRATION_TOKENS))
            speeds.append(CALIBRATION_TOKENS / (time.perf_counter() - t0))
            filled = position + CALIBRATION_TOKENS
        self._cache = None
        order = sorted(range(len(positions)), key=lambda i: positions[i])
        return [speeds[order.index(i)] for i in range(len(positions))]

    def finish(self) -> DynamicCache:
        cache = self._live()
        self._cache = None
        return cache

    def _live(self) -> DynamicCache:
        if self._cache is None:
            raise RuntimeError("call begin() before filling the cache")
        return self._cache
