"""How a context's KV cache maps onto token chunks, layer by layer.

Layers may hold different numbers of tokens: a sliding-window layer keeps only the most recent
ones. Token positions are absolute: a layer holding ``n`` of a context's ``T`` tokens holds
positions ``[T - n, T)``. Chunk ``[start, stop)`` therefore holds, of each layer, the part of
that span inside the chunk, which is always a suffix of the chunk; a layer with no token in a
chunk is left out of that chunk's blob. `ChunkInfo.layer_tokens` records the counts per layer
(None when every layer holds every token of the chunk).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cachegen.paged import PagedKV


def layer_counts(kv: Any) -> list[int]:
    """Tokens per layer of a KV cache in either layout (tokens on axis 2 in both), or of an
    engine's paged cache (every layer holds every token)."""
    if isinstance(kv, PagedKV):
        return [kv.num_tokens] * len(kv.layer_caches)
    if isinstance(kv, list | tuple):
        counts = []
        for i, pair in enumerate(kv):
            k, v = pair
            if k.shape[2] != v.shape[2] or k.shape[2] == 0:
                raise ValueError(
                    f"layer {i}: keys hold {k.shape[2]} tokens and values {v.shape[2]}; "
                    "both must hold the same, at least one"
                )
            counts.append(int(k.shape[2]))
        if not counts:
            raise ValueError("kv has no layers")
        return counts
    if len(kv.shape) != 5:
        raise ValueError(f"kv must be [layers, 2, tokens, heads, dim], got shape {kv.shape}")
    return [int(kv.shape[2])] * int(kv.shape[0])


def chunk_layer_tokens(counts: Sequence[int], start: int, stop: int) -> tuple[int, ...] | None:
    """Tokens of each layer inside chunk ``[start, stop)``; None if every layer holds all."""
    total = max(counts)
    inside = tuple(max(0, stop - max(start, total - n)) for n in counts)
    return None if all(n == stop - start for n in inside) else inside


def slice_chunk(kv: Any, start: int, stop: int) -> Any:
    """Chunk ``[start, stop)`` of `kv`: every layer's part of it, layers without one left out
    (their counts per `chunk_layer_tokens` are 0)."""
    if isinstance(kv, PagedKV):
        return kv.tokens(start, stop)
    if not isinstance(kv, list | tuple):
        return kv[:, :, start:stop]
    total = max(k.shape[2] for k, _ in kv)
    spans = [_span(total, k.shape[2], start, stop) for k, _ in kv]
    return [(k[:, :, s], v[:, :, s]) for (k, v), s in zip(kv, spans, strict=True) if s]


def slice_attention(attention: Sequence[Any], start: int, stop: int) -> list[Any]:
    """Chunk ``[start, stop)`` of per-layer 1-D arrays over each layer's tokens (an engine's
    observed attention, `cachegen.encode(attention=)`), laid out as `slice_chunk` lays out the
    cache they belong to."""
    total = max(len(a) for a in attention)
    spans = [_span(total, len(a), start, stop) for a in attention]
    return [a[s] for a, s in zip(attention, spans, strict=True) if s]


def _span(total: int, count: int, start: int, stop: int) -> slice | None:
    """Where chunk ``[start, stop)`` lies in a layer holding the last `count` of `total`
    tokens; None where it holds none of them."""
    first = total - count  # the absolute position of the layer's first token
    lo, hi = max(start, first) - first, stop - first
    return slice(lo, hi) if hi > lo else None


def _cat(parts: list[Any]) -> Any:
    """Tensors (torch or numpy) joined along the token axis, 2."""
    if hasattr(parts[0], "detach"):
        import torch

        return torch.cat(parts, dim=2)
    import numpy as np

    return np.concatenate(parts, axis=2)


def _check_contiguous(inside: Sequence[tuple[int, ...] | None], spans: Sequence[int]) -> None:
    """Refuse chunks whose parts of some layer do not join into one run of tokens ending at
    the last chunk's end (chunks stored by contexts of different lengths)."""
    layers = len(next((c for c in inside if c is not None), ()))
    for layer in range(layers):
        counts = [span if c is None else c[layer] for c, span in zip(inside, spans, strict=True)]
        first = next((i for i, n in enumerate(counts) if n), None)
        if first is None:
            raise LookupError(f"layer {layer} holds no token of the stored chunks")
        if any(n != span for n, span in zip(counts[first + 1 :], spans[first + 1 :], strict=True)):
            raise LookupError(f"layer {layer}'s stored tokens do not join into one run")


def assemble(
    decoded: Sequence[Any], inside: Sequence[tuple[int, ...] | None], spans: Sequence[int]
) -> Any:
    """Decoded chunks joined per layer along tokens, in the layout they were saved in;
    `inside` is each chunk's `chunk_layer_tokens` and `spans` its token count. `LookupError`
    when a layer's parts do not form one run ending at the last chunk."""
    if not isinstance(decoded[0], list | tuple):
        return _cat(list(decoded))
    _check_contiguous(inside, spans)
    layers = next((len(c) for c in inside if c is not None), len(decoded[0]))
    per_layer: list[list[Any]] = [[] for _ in range(layers)]
    for chunk, counts in zip(decoded, inside, strict=True):
        present = range(layers) if counts is None else [i for i, n in enumerate(counts) if n]
        for layer, pair in zip(present, chunk, strict=True):
            per_layer[layer].append(pair)
    return [(_cat([k for k, _ in pairs]), _cat([v for _, v in pairs])) for pairs in per_layer]
