"""The option table: what each way of loading each chunk costs, built in one place for the
loader, the simulator and the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cachegen.context import Context

from .costs import CostModel
from .planner import TEXT, Choice, OptionTable, level_kl


@dataclass(frozen=True)
class ChunkOptions:
    """Tokens ``[start, stop)`` and the size of each stored object of the chunk by option
    (empty for a chunk that is not stored: text only)."""

    start: int
    stop: int
    sizes: Mapping[Choice, float] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.stop - self.start


def context_chunks(ctx: Context | None, total_tokens: int, chunk_tokens: int) -> list[ChunkOptions]:
    """The stored chunks of `ctx`, then text-only chunks up to `total_tokens`."""
    stored = [
        ChunkOptions(c.start, c.stop, {lv: ref.size for lv, ref in c.levels.items()})
        for c in (ctx.chunks if ctx else [])
    ]
    first = stored[-1].stop if stored else 0
    rest = [
        ChunkOptions(s, min(s + chunk_tokens, total_tokens))
        for s in range(first, total_tokens, chunk_tokens)
    ]
    return stored + rest


def option_table(
    chunks: Sequence[ChunkOptions],
    choices: Sequence[Choice],
    loss_per_token: Mapping[Choice, float],
    costs: CostModel,
    elements_per_token: int,
    decode_eps: Mapping[Choice, float] | None = None,
) -> OptionTable:
    """Costs of `choices` for `chunks`: bytes and requests of the stored object (infinite
    bytes and loss where the chunk lacks it), decode or position-aware recompute time, and
    loss (`loss_per_token` x tokens, 0 for text). Compute times carry the cost model's
    planning margin for its measured spread. `decode_eps` overrides the cost model's decode
    speed for some options (e.g. a plain int8 baseline)."""
    shape = (len(chunks), len(choices))
    nbytes, requests = np.zeros(shape), np.zeros(shape)
    compute, loss = np.zeros(shape), np.zeros(shape)
    speeds = decode_eps or {}
    margin = costs.planning(len(chunks))
    for r, chunk in enumerate(chunks):
        elements = chunk.tokens * elements_per_token
        for c, choice in enumerate(choices):
            if choice == TEXT:
                compute[r, c] = costs.recompute_time(chunk.tokens, chunk.start) * margin
                continue
            size = chunk.sizes.get(choice)
            nbytes[r, c] = size if size is not None else math.inf
            requests[r, c] = 1
            eps = speeds.get(choice, costs.decode_eps)
            compute[r, c] = elements / eps * margin
            loss[r, c] = loss_per_token[choice] * chunk.tokens if size is not None else math.inf
    tokens = np.array([c.tokens for c in chunks], dtype=np.int64)
    return OptionTable(tuple(choices), nbytes, requests, compute, loss, tokens)


def context_table(
    ctx: Context | None,
    costs: CostModel,
    elements_per_token: int,
    total_tokens: int | None = None,
    chunk_tokens: int | None = None,
) -> OptionTable:
    """The option table of a stored context: its levels (KL from its quality record) and
    text, for its chunks and text-only chunks up to `total_tokens`."""
    total = total_tokens if total_tokens is not None else (ctx.num_tokens if ctx else 0)
    size = chunk_tokens or (ctx.chunk_tokens if ctx else 256)
    levels = ctx.levels if ctx else []
    kl = level_kl(ctx.quality if ctx else None, levels)
    return option_table(
        context_chunks(ctx, total, size), (*levels, TEXT), kl, costs, elements_per_token
    )
