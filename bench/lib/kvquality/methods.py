"""Compression methods under test, each a pair of functions KV -> bytes -> KV.

Every method produces a real byte string and is charged ``len(blob)`` bytes. The baselines'
blobs carry no header: the tensor shapes are taken from the original KV at decode time (a few
bytes in any real format, negligible against megabytes of payload).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import cachegen
from cachegen.config import REFERENCE_LEVELS

KV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Method:
    """A named codec: ``decode(encode(kv), kv)`` approximates ``kv``.

    ``decode`` gets the original KV only for its shapes and dtype (see module docstring).
    """

    key: str
    label: str
    encode: Callable[[KV], bytes]
    decode: Callable[[bytes, KV], KV]


def _tensors(kv: KV) -> list[torch.Tensor]:
    """K0, V0, K1, V1, ... in a fixed order."""
    return [t for pair in kv for t in pair]


def _pairs(tensors: list[torch.Tensor]) -> KV:
    """Inverse of ``_tensors``."""
    return list(zip(tensors[0::2], tensors[1::2], strict=True))


def raw_method(bits: int) -> Method:
    """Uncompressed tensors as float32 or float16 (``bits`` 32 or 16): the reference rows."""
    dtype_name = f"float{bits}"
    dtype = getattr(torch, dtype_name)
    np_dtype = np.dtype(dtype_name)

    def encode(kv: KV) -> bytes:
        return b"".join(t.to(dtype).contiguous().numpy().tobytes() for t in _tensors(kv))

    def decode(blob: bytes, like: KV) -> KV:
        return _pairs(_split_raw(blob, np_dtype, _tensors(like)))

    return Method(f"fp{bits}", f"{dtype_name}, uncompressed", encode, decode)


def _split_raw(blob: bytes, np_dtype: np.dtype, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Cut a concatenation of raw arrays back into tensors shaped and typed like ``like``."""
    flat = np.frombuffer(blob, dtype=np_dtype)
    out, offset = [], 0
    for ref in like:
        n = ref.numel()
        part = torch.from_numpy(flat[offset : offset + n].copy()).view(ref.shape)
        out.append(part.to(ref.dtype))
        offset += n
    if offset != flat.size:
        raise ValueError(f"blob holds {flat.size} elements, KV has {offset}")
    return out


def zstd_method(level: int) -> Method:
    """zstd (package ``zstandard``) on the fp16 bytes of the whole cache: lossless on fp16."""
    import zstandard

    raw = raw_method(16)

    def encode(kv: KV) -> bytes:
        # All cores, as cachegen.encode uses by default.
        return zstandard.ZstdCompressor(level=level, threads=-1).compress(raw.encode(kv))

    def decode(blob: bytes, like: KV) -> KV:
        return raw.decode(zstandard.ZstdDecompressor().decompress(blob), like)

    return Method(f"zstd{level}", f"zstd -{level} on fp16", encode, decode)


def int_method(bits: int) -> Method:
    """Uniform symmetric per-token quantisation to ``bits`` bits, no entropy coding.

    One fp16 scale per (layer, K/V, token) over all of that token's channels (heads x head_dim),
    CacheGen's scale granularity; levels -(2^(b-1)-1) .. 2^(b-1)-1. int4 packs two codes a byte.
    """
    qmax = 2 ** (bits - 1) - 1

    def encode(kv: KV) -> bytes:
        return b"".join(_quantize(t, qmax, bits) for t in _tensors(kv))

    def decode(blob: bytes, like: KV) -> KV:
        out, offset = [], 0
        for ref in _tensors(like):
            tensor, offset = _dequantize(blob, offset, ref, qmax, bits)
            out.append(tensor)
        if offset != len(blob):
            raise ValueError(f"blob has {len(blob) - offset} trailing bytes")
        return _pairs(out)

    return Method(f"int{bits}", f"int{bits} per-token, fp16 scales", encode, decode)


def _token_rows(t: torch.Tensor) -> torch.Tensor:
    """``[1, heads, tokens, dim]`` -> ``[tokens, heads * dim]`` float32."""
    return t[0].permute(1, 0, 2).reshape(t.shape[2], -1).float()


def _quantize(t: torch.Tensor, qmax: int, bits: int) -> bytes:
    """Codes (one byte each, or two 4-bit codes a byte) followed by fp16 scales."""
    rows = _token_rows(t)
    # Quantise with the fp16-rounded scale that decode will see, so both agree exactly.
    scale = (rows.abs().amax(dim=1) / qmax).half()
    safe = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    codes = torch.round(rows / safe[:, None]).clamp(-qmax, qmax).to(torch.int8).flatten()
    return _pack(codes, bits) + scale.numpy().tobytes()


def _pack(codes: torch.Tensor, bits: int) -> bytes:
    """Bytes of int8 codes; for 4 bits, offset to 0..15 and two to a byte (odd counts padded)."""
    if bits == 8:
        return codes.numpy().tobytes()
    nibbles = (codes + 8).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).numpy().tobytes()


def _dequantize(
    blob: bytes, offset: int, ref: torch.Tensor, qmax: int, bits: int
) -> tuple[torch.Tensor, int]:
    """Read one tensor shaped like ``ref`` at ``offset``; return it and the next offset."""
    _, heads, tokens, dim = ref.shape
    n = heads * tokens * dim
    code_bytes = n if bits == 8 else (n + 1) // 2
    raw = np.frombuffer(blob, dtype=np.uint8, count=code_bytes, offset=offset)
    codes = _unpack(torch.from_numpy(raw.copy()), n, bits).float()
    offset += code_bytes
    scale = np.frombuffer(blob, dtype=np.float16, count=tokens, offset=offset)
    offset += 2 * tokens
    rows = codes.view(tokens, heads * dim) * torch.from_numpy(scale.copy()).float()[:, None]
    tensor = rows.view(tokens, heads, dim).permute(1, 0, 2).unsqueeze(0)
    return tensor.to(ref.dtype).contiguous(), offset


def _unpack(raw: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Inverse of ``_pack``: ``n`` signed codes."""
    if bits == 8:
        return raw.view(torch.int8)
    both = torch.stack([raw & 0x0F, raw >> 4], dim=1).flatten()[:n]
    return both.to(torch.int16) - 8


def codec_method(key: str, label: str, **options: Any) -> Method:
    """``cachegen.encode(kv, **options)``: ``level=``, ``config=`` or nothing (the default).

    A level-tuning search can pass each candidate ``config=`` here and hand the methods to
    ``run_quality``.
    """

    def encode(kv: KV) -> bytes:
        return cachegen.encode(kv, **options)

    def decode(blob: bytes, like: KV) -> KV:
        return list(cachegen.decode(blob))

    return Method(key, label, encode, decode)


def cachegen_method(level: int | None = None) -> Method:
    """cachegen's own quantiser at ``level`` (``None``: the library default)."""
    if level is None:
        return codec_method("cg", "cachegen default level")
    default = " (default)" if level == cachegen.DEFAULT_LEVEL else ""
    return codec_method(f"cg{level}", f"cachegen level {level}{default}", level=level)


def profiled_method(level: int) -> Method:
    """A ladder level with the shipped SmolLM2 profile (calibrated on `docs.CALIBRATION_DOCS`,
    which the benchmark never scores)."""
    from cachegen import profiles

    prof = profiles.load(profiles.SMOLLM2)
    label = f"cachegen level {level} + SmolLM2 profile"
    return codec_method(f"cgp{level}", label, level=level, profile=prof)


def reference_method(level: int) -> Method:
    """cachegen's implementation of the CacheGen reference quantiser (`REFERENCE_LEVELS`: its
    artifact's 1-3 and finer settings past them)."""
    config = cachegen.CodecConfig.cachegen_reference(level)
    return codec_method(f"ref{level}", f"CacheGen reference level {level}", config=config)


# Factories, so that naming a method does not import what it needs (zstandard).
METHODS: dict[str, Callable[[], Method]] = {
    "fp32": lambda: raw_method(32),
    "fp16": lambda: raw_method(16),
    **{f"cg{lv}": (lambda lv=lv: cachegen_method(lv)) for lv in cachegen.LEVELS},
    **{f"cgp{lv}": (lambda lv=lv: profiled_method(lv)) for lv in cachegen.LEVELS},
    **{f"ref{lv}": (lambda lv=lv: reference_method(lv)) for lv in REFERENCE_LEVELS},
    "int8": lambda: int_method(8),
    "int4": lambda: int_method(4),
    "zstd3": lambda: zstd_method(3),
    "zstd19": lambda: zstd_method(19),
    "cg": cachegen_method,
}

# Everything in one report; "cg" (the default level) repeats one of the levels.
DEFAULT_METHODS = tuple(k for k in METHODS if k != "cg")


def make_methods(keys: tuple[str, ...] | list[str]) -> list[Method]:
    """Instantiate methods by key (see ``METHODS``)."""
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise KeyError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    return [METHODS[k]() for k in keys]
