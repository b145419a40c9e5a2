"""Shared helpers of the KV-cache quality benchmark (``bench/codec_quality.py``) and its tests.

Real model (SmolLM2-135M-Instruct), real documents, methods under test and the metrics: bits per
element, KL(uncompressed || decoded) of next-token distributions, top-1 agreement, perplexity.
"""

from .docs import DEFAULT_DOCS, Document, load_document, load_documents
from .harness import (
    CONT_TOKENS,
    PREFIX_TOKENS,
    DocCase,
    Result,
    evaluate,
    pool,
    prepare,
    run_quality,
)
from .methods import DEFAULT_METHODS, METHODS, Method, codec_method, make_methods
from .metrics import TokenMetrics, compare
from .model import LoadedModel, continue_logits, load_model, prefill

__all__ = [
    "CONT_TOKENS",
    "DEFAULT_DOCS",
    "DEFAULT_METHODS",
    "METHODS",
    "PREFIX_TOKENS",
    "DocCase",
    "Document",
    "LoadedModel",
    "Method",
    "Result",
    "TokenMetrics",
    "codec_method",
    "compare",
    "continue_logits",
    "evaluate",
    "load_document",
    "load_documents",
    "load_model",
    "make_methods",
    "pool",
    "prefill",
    "prepare",
    "run_quality",
]
