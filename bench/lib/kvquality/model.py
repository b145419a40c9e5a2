"""The real model for quality work (SmolLM2-135M-Instruct, see ``cachegen.smollm2``): loading
once per process, prefill, and continuation from a given cache."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from cachegen import smollm2
from cachegen.hf import from_cache, to_cache

KV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM in eval mode and its tokenizer."""

    model: Any
    tokenizer: Any
    name: str


@functools.cache
def load_model() -> LoadedModel:
    """Load SmolLM2-135M-Instruct once per process (about 20 s on two cores)."""
    model, tokenizer = smollm2.load()
    return LoadedModel(model=model, tokenizer=tokenizer, name="SmolLM2-135M-Instruct (GGUF Q4_1)")


def prefill(lm: LoadedModel, ids: torch.Tensor) -> KV:
    """Run the model over ``ids`` (shape ``[1, tokens]``) and return its KV cache per layer."""
    with torch.inference_mode():
        out = lm.model(ids, use_cache=True)
    return from_cache(out.cache)


def continue_logits(lm: LoadedModel, kv: KV, ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[tokens, vocab]`` of the model fed ``ids`` after a prefix whose cache is ``kv``.

    A fresh cache is built from ``kv`` each call, so ``kv`` itself is never extended.
    """
    cache = to_cache(kv, lm.model.config)
    with torch.inference_mode():
        return lm.model(ids, cache=cache, use_cache=True).logits[0]
