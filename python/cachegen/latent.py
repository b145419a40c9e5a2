"""Single-tensor KV layers: a layer that caches one latent per token instead of K and V, as
DeepSeek's multi-head latent attention (MLA) does (512 compressed-KV channels + 64 RoPE key
channels = 576 per token).

The wire format needs no new layout: a latent layer is stored as a "pairs" layer whose "K" is
the latent's first `split` channels and whose "V" is the rest (zero-copy strided views). Both
parts feed attention scores (the RoPE part only there), so both take the key steps of the
level: `latent_config` gives the value side the key side's quantizer and step.

    blob = cachegen.latent.encode_latent(latent, level=12)   # latent [layers, tokens, 576]
    latent2 = cachegen.latent.decode_latent(blob)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .api import BlobInfo, _config, decode, encode, inspect
from .config import CodecConfig
from .tensors import empty

#: DeepSeek-V2/V3's compressed-KV width (`kv_lora_rank`); the rest of a latent is its RoPE key.
MLA_SPLIT = 512


def latent_config(config: CodecConfig) -> CodecConfig:
    """`config` with the value side coded like the key side (a latent has no value side)."""
    return dataclasses.replace(
        config, value_quantizer=config.key_quantizer, value_param=config.key_param
    )


def latent_pairs(layers: Sequence[Any], split: int = MLA_SPLIT) -> list[tuple[Any, Any]]:
    """Zero-copy `(K, V)` views `[1, 1, tokens, ...]` of per-layer latents `[tokens, width]`
    (numpy or torch): K = channels [0, split), V = [split, width)."""
    pairs = []
    for i, x in enumerate(layers):
        if len(x.shape) != 2 or not 0 < split < x.shape[1]:
            raise ValueError(
                f"latent layer {i} must be [tokens, width] with width > split={split}, "
                f"got shape {tuple(x.shape)}"
            )
        pairs.append((x[None, None, :, :split], x[None, None, :, split:]))
    return pairs


def encode_latent(
    latent: Any,
    level: int | None = None,
    *,
    config: CodecConfig | None = None,
    split: int = MLA_SPLIT,
    position: int = 0,
    context_end: int | None = None,
    threads: int | None = None,
) -> bytes:
    """Compress a latent KV cache `[layers, tokens, width]` (numpy or torch, fp16/bf16/fp32)
    like `cachegen.encode` compresses K and V; `level`/`config`/`position`/`context_end` as
    there."""
    if len(latent.shape) != 3:
        raise ValueError(f"latent KV must be [layers, tokens, width], got {tuple(latent.shape)}")
    pairs = latent_pairs(list(latent), split)
    cfg = latent_config(_config(level, config))
    return encode(pairs, config=cfg, position=position, context_end=context_end, threads=threads)


def _latent_shape(info: BlobInfo) -> tuple[tuple[int, int, int], int]:
    """(latent shape, split) of a blob holding a latent cache; ValueError for any other blob."""
    split, rest, tokens = info.keys[0].head_dim, info.values[0].head_dim, info.keys[0].tokens
    same = all(
        g.heads == 1 and g.tokens == tokens and g.head_dim == dim
        for groups, dim in ((info.keys, split), (info.values, rest))
        for g in groups
    )
    if info.layout != "pairs" or not same:
        raise ValueError("blob is not a latent KV cache (one head, one split, one token count)")
    return (info.num_layers, tokens, split + rest), split


def decode_latent(blob: Any, out: Any = None, threads: int | None = None) -> Any:
    """The latent cache `[layers, tokens, width]` of a blob from `encode_latent` (torch if it
    was encoded from torch, else numpy), or decoded into `out=` of that shape."""
    info = inspect(blob)
    shape, split = _latent_shape(info)
    if out is None:
        out = empty(shape, info.dtype, "torch" if info.from_torch else "numpy", None)
    elif tuple(out.shape) != shape:
        raise ValueError(f"out= must be {shape} for this blob, got {tuple(out.shape)}")
    decode(blob, out=latent_pairs(list(out), split), threads=threads)
    return out
