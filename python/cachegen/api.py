"""encode / decode / inspect: the public codec API over the native core.

How each group is quantized is decided in `cachegen.plan`; where the work runs (host or GPU,
numpy, torch or CuPy) in `cachegen.devices` and `cachegen.dispatch`; a blob's facts are
`cachegen.info` types."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core, devices, dispatch
from .config import DEFAULT_LEVEL, CodecConfig
from .info import BlobInfo, GroupInfo, blob_info
from .outputs import check_outputs
from .plan import plan_encode
from .profile import ModelProfile
from .shaping import QueryDirections, key_shapings
from .tensors import (
    DTYPE_SIZES,
    allocate,
    check_writable,
    dtype_name,
    group_arrays,
    is_device_blob,
    is_torch,
    is_view_source,
    views,
)
from .transform import (
    Transform,
    Transforms,
    coefficient_buffers,
    coefficient_config,
    coefficient_profile,
    forward,
    inverse_groups,
    resolve,
)

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "FORMAT_VERSION",
    "MAX_THREADS",
    "BlobInfo",
    "FormatError",
    "GroupInfo",
    "QuantizedGroup",
    "build_info",
    "decode",
    "encode",
    "entropy_stats",
    "inspect",
    "quantize",
]

FormatError = _core.FormatError
FORMAT_VERSION: int = _core.build_info()["format_version"]
#: The most worker threads a call may ask for (the core's own bound).
MAX_THREADS: int = dispatch.MAX_THREADS

#: decode() refuses blobs that would expand past this many output bytes (8 GiB) unless told
#: otherwise with `max_output_bytes=`: a tiny hostile blob may legitimately describe a huge
#: all-zero cache. 8 GiB holds a 16k-token chunk of a 70B model's fp16 KV (80 layers, 8 KV
#: heads of 128) with room to spare; whole long contexts pass a larger cap explicitly.
DEFAULT_MAX_OUTPUT_BYTES = 8 << 30


def _config(level: int | None, config: CodecConfig | None) -> CodecConfig:
    if level is not None and config is not None:
        raise ValueError("pass either level or config, not both")
    if config is None:
        return CodecConfig.from_level(DEFAULT_LEVEL if level is None else level)
    if not isinstance(config, CodecConfig):
        raise TypeError(f"config must be a CodecConfig, got {type(config).__name__}")
    return config


def encode(
    kv: Any,
    level: int | None = None,
    *,
    config: CodecConfig | None = None,
    profile: ModelProfile | None = None,
    position: int = 0,
    context_end: int | None = None,
    threads: int | None = None,
    device: Any = None,
    transform: Transform | None = None,
    attention: Sequence[Any] | None = None,
    queries: QueryDirections | None = None,
) -> Any:
    """Compress a KV cache into a self-describing blob.

    Args:
        kv: a numpy array, torch tensor or CUDA array (CuPy) `[layers, 2, tokens, kv_heads,
            head_dim]`, or a sequence of per-layer `(K, V)` pairs `[1, kv_heads, tokens,
            head_dim]` (layers may differ in tokens, heads and head dim), or an engine's paged
            blocks (`cachegen.paged.PagedKV`, read in place). fp16, bf16 or fp32.
            CUDA input is encoded on its GPU, on the caller's current stream (same bytes).
        level: a level of the project ladder (`cachegen.LEVELS`; higher = larger, better);
            default `cachegen.DEFAULT_LEVEL`. Exclusive with `config`.
        config: an explicit `CodecConfig`, e.g. `CodecConfig.cachegen_reference(2)`.
        profile: a `cachegen.ModelProfile` calibrated for this model (`cachegen.calibrate`):
            finer steps in the layers and heads it found sensitive. Decoding does not need it.
        position: the context position of the cache's first token (0: it starts the context,
            so its first tokens are attention sinks; see `CodecConfig.sink_tokens`).
        context_end: the context position one past its last token, for the recency law
            (default: the cache ends the context).
        threads: worker threads; default all cores.
        device: where the blob goes. Default (or "cpu"): a `bytes` object in host memory.
            "cuda" / "cuda:N" (the KV's own GPU): the blob stays in device memory, as a 1-D
            uint8 torch tensor for torch input or a CuPy array for CuPy input, written on the
            caller's current stream and complete on return; the same bytes as the host blob.
            `decode` accepts it as is (decoding in place on that GPU); `bytes(blob.cpu())`
            (torch) or `cupy.asnumpy(blob).tobytes()` turn it into the host blob.
        transform: a per-model `cachegen.transform.Transform` (experimental): the blob holds
            the cache's coefficients (`transform.forward` at `position`), coded at the level
            without its key spread, and names the transform by digest (format version 5);
            decoding needs the transform (`decode(..., transforms=...)`). Host caches (numpy
            or CPU torch, fp16/bf16/fp32, stacked or per-layer pairs) and host blobs only; not
            the lossless level. With a `profile`, its weight per layer and K/V and its token
            importance (predicted from the raw keys) apply, not its weights per head or key
            band (`transform.coefficient_profile`).
        attention: what the engine saw at prefill: per layer, a 1-D array of the mean attention
            each of this cache's tokens in that layer drew from the context's last queries
            (`cachegen.hf.observed_attention`; slice it for a chunk of the context). Tokens
            that drew more get finer steps: alone, or averaged with a profile's prediction
            (`cachegen.importance`). Measured with a transform on held-out texts:
            bench/results/transform_profile.md, ladder_experiments.md 37.
            Decoding does not need it.
        queries: what the context's last queries share (`cachegen.hf.query_directions`),
            with a `transform` only: each key token's rounding is chosen so that the coming
            queries' scores move less (`cachegen.shaping`; ladder_experiments.md 42-43).
            Encoded on the CPU; decoding does not need it.
    """
    config = _config(level, config)
    record = keys = shaping = None
    if queries is not None and transform is None:
        raise ValueError("queries: shaping the keys' rounding needs a transform")
    if transform is not None:
        if "lossless" in (config.key_quantizer, config.value_quantizer):
            raise ValueError("lossless coding keeps the cache's own bits: not with a transform")
        if device not in (None, "cpu"):
            raise ValueError("a transform-coded blob is encoded on the host")
        config = coefficient_config(config, profile is not None, attention is not None)
        if profile is not None:
            keys, profile = (kv, views(kv)), coefficient_profile(profile)
        kv = forward(kv, transform, position)
        record = (bytes.fromhex(transform.digest()), position)
    v = views(kv)
    if queries is not None:
        shaping = key_shapings(queries, transform, [g.heads for g in v.groups[0::2]])
    target = devices.encode_target(device, v)
    n = dispatch.threads_arg(threads)
    plan = plan_encode(kv, v, config, profile, position, context_end, n, keys, attention, shaping)
    return dispatch.encode(dataclasses.replace(plan, transform=record), v, target, n)


@dataclass(frozen=True)
class QuantizedGroup:
    """The quantization stage of one layer's K or V: x' = symbols * a[:, None] * b + o, but for
    the first `len(raw)` tokens (attention sinks), which are kept verbatim, and the symbols
    beyond the 8-bit alphabet (`CodecConfig.overflow`), whose values `overflow` holds."""

    symbols: np.ndarray  # int8 [tokens, channels], an overflowing symbol clamped
    a: np.ndarray  # fp32 [tokens]
    b: np.ndarray  # fp32 [channels]
    o: np.ndarray  # fp32 [channels]
    raw: np.ndarray  # fp32 [raw rows, channels]
    overflow: np.ndarray  # int32 [n, 3]: token, channel, symbol

    def full_symbols(self) -> np.ndarray:
        """int32 [tokens, channels]: the symbols with the overflowing ones in place."""
        s = self.symbols.astype(np.int32)
        t, c, v = self.overflow.T
        s[t, c] = v
        return s

    def dequantize(self) -> np.ndarray:
        """fp32 reconstruction, with the decoder's operation order."""
        x = self.full_symbols().astype(np.float32) * self.a[:, None] * self.b + self.o
        x[: len(self.raw)] = self.raw
        return x


def quantize(
    kv: Any,
    level: int | None = None,
    *,
    config: CodecConfig | None = None,
    profile: ModelProfile | None = None,
    position: int = 0,
    context_end: int | None = None,
    threads: int | None = None,
    attention: Sequence[Any] | None = None,
) -> list[QuantizedGroup]:
    """Run only the quantizer of `encode` (same arguments): per (layer, K/V) group, K first."""
    v = views(kv)
    n = dispatch.threads_arg(threads)
    plan = plan_encode(
        kv, v, _config(level, config), profile, position, context_end, n, attention=attention
    )
    out = []
    for g, (sym, a, b, o, rows, over) in zip(
        v.groups, _core.quantize(plan.request(n)), strict=True
    ):
        channels = g.heads * g.head_dim
        out.append(
            QuantizedGroup(
                np.frombuffer(sym, np.int8).reshape(g.tokens, channels),
                np.frombuffer(a, np.float32),
                np.frombuffer(b, np.float32),
                np.frombuffer(o, np.float32),
                np.frombuffer(rows, np.float32).reshape(-1, channels),
                np.frombuffer(over, np.int32).reshape(-1, 3),
            )
        )
    return out


def inspect(blob: Any) -> BlobInfo:
    """Validate a blob's header, tables and checksum and return its facts (no payload decode).
    A device blob's checksum is not checked (that happens on the GPU when it is decoded)."""
    return blob_info(dispatch.parse(blob))


def decode(
    blob: bytes | bytearray | memoryview,
    *,
    out: Any = None,
    dtype: Any = None,
    framework: str | None = None,
    device: Any = None,
    threads: int | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    transforms: Transforms | None = None,
) -> Any:
    """Decompress a blob into a KV cache of the structure that was encoded.

    Args:
        blob: bytes-like, or a device blob from `encode(..., device="cuda")` (a 1-D uint8 torch
            CUDA tensor or CuPy array), which is decoded in place on its GPU (an `out=` or
            `device=` on the host copies it to the host first).
        out: a preallocated cache of the blob's structure and shapes to decode into (any
            supported dtype, any strides); returned.
        dtype: output dtype ("float16", "bfloat16", "float32" or a numpy/torch dtype); default
            the encoded dtype.
        framework: "numpy", "torch" or "cupy"; default torch if torch tensors were encoded or
            the output is on a GPU (CuPy if torch is missing), else numpy.
        device: "cuda" or "cuda:N" decodes on that GPU straight into device memory, on the
            caller's current stream; an `out=` on a GPU implies it. Default: host memory.
        threads: worker threads; default all cores.
        max_output_bytes: refuse blobs that would decode to more than this many bytes
            (default `DEFAULT_MAX_OUTPUT_BYTES`, 8 GiB) before allocating the output. Decoding
            needs the output plus memory proportional to the blob (parsing refuses blobs that
            claim more metadata than their size pays for).
        transforms: where to find the transform a blob names (`BlobInfo.transform`): a
            `Transform`, a digest -> transform mapping, or a function of the digest
            (`cachegen.transform.stored_transforms(store)`); unused for other blobs. The
            coefficients decode to fp32 on the host, the inverse runs there (numpy), and the
            result is converted into the requested output.

    Raises:
        FormatError: the blob is malformed, truncated, corrupted or of an unsupported version.
            A malformed head is reported before anything is written. A GPU decode checks the
            payload's checksum on the device alongside the decode kernels (a device blob) or
            before them (a host blob), and reports a bad rANS stream after them: when it raises
            for a corrupted payload, `out=` may already have been partly or fully overwritten
            (its contents are then unspecified); decode into a scratch buffer if that matters.
        cachegen.transform.TransformMissing (a FormatError): the blob names a transform that
            `transforms` does not hold; raised before anything is written.
    """
    if is_view_source(out):
        raise TypeError("decode into paged blocks with cachegen.paged.decode_paged")
    out_views = None if out is None else views(out)  # computed once: it walks every tensor
    blob, framework, device = devices.place_blob(blob, out_views, framework, device)
    # A GPU decode checks the checksum on the device, after the upload, not on the host first
    # (a device blob is always parsed without it).
    on_device = is_device_blob(blob)
    parsed = dispatch.parse(blob, on_device or devices.decode_target(device, out_views) is None)
    info = blob_info(parsed)
    # A transform blob: its transform found, and its fp32 coefficients allowed, before anything
    # is allocated or written.
    t = None if info.transform is None else resolve(info.transform.digest, transforms)
    if t is not None and 4 * info.elements > max_output_bytes:
        raise FormatError("blob's fp32 coefficients are over max_output_bytes")
    if out is None:
        out = _new_output(info, dtype, framework, device, max_output_bytes)
    v = _check_output(info, blob, out, out_views)
    if t is None:
        dispatch.decode_into(parsed, v, dispatch.threads_arg(threads))
    else:  # the inverse runs on the host
        host = dispatch.parse(devices.host_bytes(blob)) if on_device else parsed
        _decode_transformed(host, info, t, out, threads)
    return out


def _decode_transformed(
    parsed: Any, info: BlobInfo, t: Transform, out: Any, threads: int | None
) -> None:
    """A transform-coded blob into `out`: its coefficients decoded to fp32 group buffers on
    the host, inverted there, each group converted into its place in `out`."""
    coefficients, groups = coefficient_buffers(info.layout, info.shapes)
    dispatch.decode_into(parsed, views(coefficients), dispatch.threads_arg(threads))
    cache = inverse_groups(groups, t, info.transform.position)
    for dst, src in zip(group_arrays(out), cache, strict=True):
        _assign(dst, src)


def _new_output(
    info: BlobInfo, dtype: Any, framework: str | None, device: Any, max_output_bytes: int
) -> Any:
    """A fresh output for `info`'s cache, in the requested dtype, framework and device."""
    name = info.dtype if dtype is None else dtype_name(dtype)
    fw, gpu = devices.output_place(framework, device, info.from_torch)
    nbytes = info.elements * DTYPE_SIZES[name]
    if nbytes > max_output_bytes:
        raise FormatError(f"blob decodes to {nbytes} bytes, over max_output_bytes")
    return allocate(info.layout, info.shapes, name, fw, gpu)


def _check_output(info: BlobInfo, blob: Any, out: Any, out_views: Any) -> Any:
    """`out`'s views, once it is known to fit the blob and to be writable."""
    v = views(out) if out_views is None else out_views
    if v.layout != info.layout or [g.shape for g in v.groups] != info.shapes:
        raise ValueError("out= does not match the blob's layout and shapes")
    check_writable(out)
    if out_views is not None:  # the caller's memory (what decode allocates is fresh)
        check_outputs(out, v, blob)
    return v


def _assign(dst: Any, src: np.ndarray) -> None:
    if isinstance(dst, np.ndarray):
        dst[...] = src
    elif is_torch(dst):
        import torch

        dst.copy_(torch.from_numpy(src))
    else:  # CuPy
        import cupy

        dst[...] = cupy.asarray(src, dtype=dst.dtype)


def entropy_stats(blob: bytes, threads: int | None = None) -> dict[str, float]:
    """Coder efficiency: payload bytes against the ideal code length under the stored tables."""
    if is_device_blob(blob):
        blob = devices.host_bytes(blob)
    return dispatch.parse(blob).entropy_stats(dispatch.threads_arg(threads))


def build_info() -> dict[str, Any]:
    """What was built: backend, checksum implementation, format version, default threads,
    whether CUDA kernels were compiled in (`cuda_compiled`) and a GPU is usable
    (`cuda_available`)."""
    info = dict(_core.build_info())
    info["cpu_count"] = os.cpu_count()
    return info
