"""The baseline coder: torchac (PyPI ``torchac==0.9.3``), CacheGen's prototype arithmetic coder.

torchac takes one CDF row per symbol (int16, 16-bit precision). As in CacheGen, the model is one
CDF per (layer, K/V, channel): the histogram of that channel's symbols over the chunk's tokens
(here the whole 4096-token context), normalised with torchac's own float -> int16 conversion.
The symbols are cachegen's own (``cachegen.quantize`` at the same level), shifted to start at 0.

Two builds of the same C++ source are timed: ``shipped`` is the extension as torchac JIT-compiles
it at import (torch's default flags, no ``-O``), ``O3`` is the same file compiled with ``-O3``.
Only the coder calls are timed; building and expanding the CDFs is not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

LAYERS = 2  # layers coded by torchac, spread over the depth
SYMBOLS = 3_200_000  # about this many symbols per cache (tokens cut to fit)


@dataclass(frozen=True)
class TorchacCase:
    """Symbols of some (layer, K/V) groups with their per-symbol CDF rows, ready to code."""

    cdfs: list[Any]  # torch int16 [symbols, Lp] per group
    symbols: list[Any]  # torch int16 [symbols] per group

    @property
    def count(self) -> int:
        return sum(int(s.numel()) for s in self.symbols)


def backends() -> dict[str, Any]:
    """The torchac extension as shipped and rebuilt with ``-O3`` (compiled once, then cached)."""
    import torchac.torchac as tac
    from torch.utils.cpp_extension import load

    source = os.path.join(os.path.dirname(tac.__file__), "backend", "torchac_backend.cpp")
    o3 = load(name="torchac_backend_o3", sources=[source], extra_cflags=["-O3"], verbose=False)
    return {"shipped": tac.torchac_backend, "O3": o3}


def channel_cdf(symbols: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-channel float CDFs ``[channels, Lp]`` of int ``symbols [tokens, channels]``, and the
    offset subtracted so that symbols start at 0."""
    offset = int(symbols.min())
    shifted = (symbols.astype(np.int64) - offset).T  # [channels, tokens]
    levels = int(shifted.max()) + 1
    flat = shifted + levels * np.arange(shifted.shape[0])[:, None]
    counts = np.bincount(flat.ravel(), minlength=levels * shifted.shape[0])
    counts = counts.reshape(shifted.shape[0], levels)
    cdf = np.cumsum(counts, axis=1) / symbols.shape[0]
    return np.concatenate([np.zeros((cdf.shape[0], 1)), cdf], axis=1).astype(np.float32), offset


def prepare(groups: list[np.ndarray], tokens: int | None = None) -> TorchacCase:
    """CDF rows for each group's first ``tokens`` tokens (all by default); the model (the
    histogram) is always taken over all of the group's tokens."""
    import torch
    import torchac.torchac as tac

    cdfs, syms = [], []
    for sym in groups:
        cdf, offset = channel_cdf(sym)
        cdf_int = tac._convert_to_int_and_normalize(torch.from_numpy(cdf), True)
        coded = sym[:tokens].astype(np.int16) - np.int16(offset)
        rows = cdf_int[None].expand(coded.shape[0], -1, -1).reshape(-1, cdf_int.shape[1])
        cdfs.append(rows.contiguous())
        syms.append(torch.from_numpy(np.ascontiguousarray(coded).ravel()))
    return TorchacCase(cdfs, syms)


def encode(backend: Any, case: TorchacCase) -> list[bytes]:
    """One torchac stream per group."""
    return [backend.encode_cdf(c, s) for c, s in zip(case.cdfs, case.symbols, strict=True)]


def decode(backend: Any, case: TorchacCase, streams: list[bytes]) -> list[Any]:
    """Decode each group's stream with its CDF rows."""
    return [backend.decode_cdf(c, b) for c, b in zip(case.cdfs, streams, strict=True)]


def matches(case: TorchacCase, decoded: list[Any]) -> bool:
    """Whether torchac's decode returned exactly the symbols that were encoded."""
    import torch

    return all(torch.equal(d.reshape(-1), s) for d, s in zip(decoded, case.symbols, strict=True))


def layers_spread(num_layers: int, n: int = LAYERS) -> list[int]:
    """``n`` layer indices spread evenly from the first to the last layer."""
    return sorted({int(round(x)) for x in np.linspace(0, num_layers - 1, n)})


def subset(kv: np.ndarray, groups: list[Any]) -> tuple[TorchacCase, dict]:
    """The symbols torchac codes: K and V of a few layers, tokens cut to ~SYMBOLS."""
    layers = layers_spread(kv.shape[0])
    chosen = [groups[2 * layer + kv_index].symbols for layer in layers for kv_index in (0, 1)]
    per_token = sum(g.shape[1] for g in chosen)
    tokens = min(kv.shape[2], max(1, SYMBOLS // per_token))
    case = prepare(chosen, tokens)
    return case, {"layers": layers, "tokens": tokens, "symbols": case.count}
