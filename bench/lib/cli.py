"""Command-line pieces the model-scoring benchmarks share."""

from __future__ import annotations

import argparse


def add_scoring_args(ap: argparse.ArgumentParser, *, docs: str, levels: str) -> None:
    """Which models score which documents' continuations, at which ladder levels and CacheGen
    reference levels, after how long a prefix: comma-separated lists (see `ints`, `words`)."""
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--docs", default=docs)
    ap.add_argument("--levels", default=levels)
    ap.add_argument("--refs", default="1,3,5")
    ap.add_argument("--prefix", type=int, default=1536)
    ap.add_argument("--cont", type=int, default=128)


def ints(text: str) -> list[int]:
    """A comma-separated list of integers ("" is none)."""
    return [int(x) for x in text.split(",") if x]


def words(text: str) -> list[str]:
    """A comma-separated list of names ("" is none)."""
    return [x for x in text.split(",") if x]
