"""encode / decode / inspect: the public codec API over the native core."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from .config import DEFAULT_LEVEL, QUANTIZER_NAMES, QUANTIZERS, CodecConfig
from .importance import importance_weights, layer_magnitudes, token_scores
from .kvstats import key_channel_weights
from .outputs import check_outputs
from .profile import ModelProfile
from .tensors import (
    DTYPE_CODES,
    DTYPE_NAMES,
    DTYPE_SIZES,
    LAYOUT_NAMES,
    LAYOUTS,
    KVViews,
    allocate,
    check_writable,
    current_stream,
    device_address,
    device_bytes,
    device_of,
    dtype_name,
    empty,
    is_device_blob,
    is_torch,
    views,
)
from .weights import TOKEN_WEIGHT_BOUNDS, sink_rows, token_weights

FormatError = _core.FormatError
FORMAT_VERSION: int = _core.build_info()["format_version"]
_FLAG_TORCH_SOURCE = 1

#: decode() refuses blobs that would expand past this many output bytes (8 GiB) unless told
#: otherwise with `max_output_bytes=`: a tiny hostile blob may legitimately describe a huge
#: all-zero cache. 8 GiB holds a 16k-token chunk of a 70B model's fp16 KV (80 layers, 8 KV
#: heads of 128) with room to spare; whole long contexts pass a larger cap explicitly.
DEFAULT_MAX_OUTPUT_BYTES = 8 << 30


@dataclass(frozen=True)
class GroupInfo:
    """One layer's K or V as stored."""

    tokens: int
    heads: int
    head_dim: int
    quantizer: str
    param: float
    tables: int
    segments: int
    raw_rows: int = 0  # first tokens (attention sinks) stored verbatim

    @property
    def elements(self) -> int:
        return self.tokens * self.heads * self.head_dim


@dataclass(frozen=True)
class BlobInfo:
    """Header facts of a blob, read without decoding its payload."""

    version: int
    num_layers: int
    dtype: str
    layout: str
    level: int
    total_bytes: int
    payload_bytes: int
    segments: int
    checksum: int
    from_torch: bool
    keys: list[GroupInfo]
    values: list[GroupInfo]

    @property
    def elements(self) -> int:
        return sum(g.elements for g in self.keys + self.values)

    @property
    def bits_per_element(self) -> float:
        """Every byte of the blob, headers and tables included, per KV element."""
        return 8 * self.total_bytes / self.elements


#: The most worker threads a call may ask for (the core's own bound).
MAX_THREADS: int = _core.build_info()["max_threads"]


def _threads(threads: int | None) -> int:
    if threads is None:
        return 0
    if not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an int in [0, {MAX_THREADS}], got {threads!r}")
    return threads


def _config(level: int | None, config: CodecConfig | None) -> CodecConfig:
    if level is not None and config is not None:
        raise ValueError("pass either level or config, not both")
    if config is None:
        return CodecConfig.from_level(DEFAULT_LEVEL if level is None else level)
    if not isinstance(config, CodecConfig):
        raise TypeError(f"config must be a CodecConfig, got {type(config).__name__}")
    return config


def _specs(
    kv: Any,
    v: KVViews,
    config: CodecConfig,
    profile: ModelProfile | None = None,
    position: int = 0,
    context_end: int | None = None,
    threads: int = 1,
) -> list[tuple]:
    num_layers = len(v.groups) // 2
    if profile is not None:
        profile.check(v.groups)
    tokens = max(g.tokens for g in v.groups)
    end = position + tokens if context_end is None else context_end
    if position < 0 or end < position + tokens:
        raise ValueError("need 0 <= position and context_end >= position + tokens")
    # Sinks and recency weights depend only on a group's token count (a layer holding fewer
    # tokens, a sliding window, holds the last ones): computed once per distinct count.
    place = functools.cache(lambda n: token_weights(n, position + tokens - n, end, config.recency))
    sinks = functools.cache(lambda n: sink_rows(n, position + tokens - n, config.sink_tokens))
    specs = []
    for layer in range(num_layers):
        params = config.layer_params(layer, num_layers)
        pair = v.groups[2 * layer : 2 * layer + 2]
        token_w = b""
        if QUANTIZERS["token"] in (q for q, _ in params):
            token_w = _floats(_token_weights(kv, v, layer, place(pair[0].tokens), profile, threads))
        for side, (group, (quantizer, param)) in enumerate(zip(pair, params, strict=True)):
            weights, channel_w, raw_rows = b"", None, 0
            if quantizer == QUANTIZERS["token"]:
                weights, raw_rows = token_w, sinks(group.tokens)
                if profile is not None:
                    param *= profile.layer_weight(layer, side)
                    channel_w = profile.channel_weights(layer, side, group.head_dim)
                elif side == 0 and config.key_spread > 0:
                    channel_w = _key_spread(kv, v, layer, raw_rows, config.key_spread, threads)
            spec = (group.as_tuple(), quantizer, param, config.max_tables, weights)
            specs.append((*spec, _floats(channel_w), raw_rows))
    return specs


def _token_weights(
    kv: Any,
    v: KVViews,
    layer: int,
    place: np.ndarray | None,
    profile: ModelProfile | None,
    threads: int,
) -> np.ndarray | None:
    """A layer's token step weights: its place in the context times the importance the
    profile predicts from its keys."""
    if profile is None or not profile.importance:
        return place
    w = importance_weights(token_scores(kv, v, layer, profile.importance[layer], threads))
    if place is not None:
        w = np.clip(w * place, TOKEN_WEIGHT_BOUNDS[0], TOKEN_WEIGHT_BOUNDS[1])
    return w


def _key_spread(
    kv: Any, v: KVViews, layer: int, skip: int, strength: float, threads: int
) -> np.ndarray | None:
    """Model-free key channel weights (`cachegen.kvstats`); None for an odd head_dim."""
    head_dim = v.groups[2 * layer].head_dim
    if head_dim % 2:
        return None
    mag = layer_magnitudes(kv, v, layer, threads)
    return key_channel_weights(mag, head_dim, skip, strength)


def _floats(w: np.ndarray | None) -> bytes:
    """Weights as the core takes them: float32 bytes, empty for none."""
    return b"" if w is None else np.ascontiguousarray(w, dtype="<f4").tobytes()


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
) -> Any:
    """Compress a KV cache into a self-describing blob.

    Args:
        kv: a numpy array, torch tensor or CUDA array (CuPy) `[layers, 2, tokens, kv_heads,
            head_dim]`, or a sequence of per-layer `(K, V)` pairs `[1, kv_heads, tokens,
            head_dim]` (layers may differ in tokens, heads and head dim). fp16, bf16 or fp32.
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
    """
    return encode_views(
        kv, views(kv), _config(level, config), profile, position, context_end, threads, device
    )


def encode_views(
    kv: Any,
    v: KVViews,
    config: CodecConfig,
    profile: ModelProfile | None = None,
    position: int = 0,
    context_end: int | None = None,
    threads: int | None = None,
    device: Any = None,
) -> Any:
    """`encode` of the groups `v` describes (plain or paged views); `kv` is what they view
    (read only for a profile's importance on a GPU: see `importance.layer_keys`)."""
    target = _device_index(device)
    flags = _FLAG_TORCH_SOURCE if v.framework == "torch" else 0
    specs = _specs(kv, v, config, profile, position, context_end, _threads(threads))
    args = (specs, DTYPE_CODES[v.dtype], LAYOUTS[v.layout], config.level)
    args += (config.segment_symbols, flags)
    if v.device is None:
        if target is not None:
            raise ValueError("device= output needs the KV cache on that GPU")
        return _core.encode(*args, _threads(threads))
    _require_cuda()
    if target is not None and str(device) != "cuda" and target != v.device:
        raise ValueError(f"device={device!r} but the KV cache is on cuda:{v.device}")
    stream = current_stream(v.framework, v.device)
    if target is None:
        return _core.encode_cuda(*args, v.device, stream, _threads(threads))
    held: list[Any] = []

    def alloc(n: int) -> int:
        held.append(empty((n,), "uint8", v.framework, v.device))
        return device_address(held[0])

    _core.encode_cuda(*args, v.device, stream, _threads(threads), alloc)
    return held[0]


@dataclass(frozen=True)
class QuantizedGroup:
    """The quantization stage of one layer's K or V: x' = symbols * a[:, None] * b + o, but for
    the first `len(raw)` tokens (attention sinks), which are kept verbatim."""

    symbols: np.ndarray  # int8 [tokens, channels]
    a: np.ndarray  # fp32 [tokens]
    b: np.ndarray  # fp32 [channels]
    o: np.ndarray  # fp32 [channels]
    raw: np.ndarray  # fp32 [raw rows, channels]

    def dequantize(self) -> np.ndarray:
        """fp32 reconstruction, with the decoder's operation order."""
        x = self.symbols.astype(np.float32) * self.a[:, None] * self.b + self.o
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
) -> list[QuantizedGroup]:
    """Run only the quantizer of `encode` (same arguments): per (layer, K/V) group, K first."""
    v = views(kv)
    config = _config(level, config)
    specs = _specs(kv, v, config, profile, position, context_end, _threads(threads))
    raw = _core.quantize(specs, _threads(threads))
    out = []
    for g, (sym, a, b, o, rows) in zip(v.groups, raw, strict=True):
        channels = g.heads * g.head_dim
        out.append(
            QuantizedGroup(
                np.frombuffer(sym, np.int8).reshape(g.tokens, channels),
                np.frombuffer(a, np.float32),
                np.frombuffer(b, np.float32),
                np.frombuffer(o, np.float32),
                np.frombuffer(rows, np.float32).reshape(-1, channels),
            )
        )
    return out


def _group_info(d: dict) -> GroupInfo:
    return GroupInfo(
        d["tokens"],
        d["heads"],
        d["head_dim"],
        QUANTIZER_NAMES[d["quantizer"]],
        d["param"],
        d["tables"],
        d["segments"],
        d["raw_rows"],
    )


def _info(parsed: Any) -> BlobInfo:
    d = parsed.info()
    groups = [_group_info(g) for g in d["groups"]]
    return BlobInfo(
        version=d["version"],
        num_layers=d["num_layers"],
        dtype=DTYPE_NAMES[d["dtype"]],
        layout=LAYOUT_NAMES[d["layout"]],
        level=d["level"],
        total_bytes=d["total_bytes"],
        payload_bytes=d["payload_bytes"],
        segments=d["segments"],
        checksum=d["checksum"],
        from_torch=bool(d["flags"] & _FLAG_TORCH_SOURCE),
        keys=groups[0::2],
        values=groups[1::2],
    )


def _parse(blob: Any, verify: bool = True) -> Any:
    if is_device_blob(blob):
        return _parse_device(blob)
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError(f"blob must be bytes-like or a device blob, got {type(blob).__name__}")
    return _core.Blob(blob, verify)


def _parse_device(blob: Any) -> Any:
    """A blob in GPU memory (uint8, 1-D, contiguous), parsed from its head; CRC left to the GPU."""
    _require_cuda()
    address, size, framework, gpu = device_bytes(blob)
    return _core.parse_device(address, size, gpu, current_stream(framework, gpu))


def _host_bytes(blob: Any) -> bytes:
    if is_torch(blob):
        return blob.cpu().numpy().tobytes()
    import cupy

    return cupy.asnumpy(blob).tobytes()


def inspect(blob: Any) -> BlobInfo:
    """Validate a blob's header, tables and checksum and return its facts (no payload decode).
    A device blob's checksum is not checked (that happens on the GPU when it is decoded)."""
    return _info(_parse(blob))


@functools.cache
def _cuda_status() -> tuple[bool, bool]:
    """(compiled, usable): asked of the driver once per process, not on every GPU call."""
    info = _core.build_info()
    return info["cuda_compiled"], info["cuda_available"]


def _require_cuda() -> None:
    compiled, available = _cuda_status()
    if not compiled:
        raise RuntimeError("cachegen was built without CUDA (build with CACHEGEN_CUDA=ON)")
    if not available:
        raise RuntimeError("no usable CUDA device")


def _device_index(device: Any) -> int | None:
    """None for host memory, else the CUDA device index of "cuda", "cuda:N" or a torch device."""
    if device is None:
        return None
    name = str(device)
    if name == "cpu":
        return None
    if name == "cuda":
        return 0
    if name.startswith("cuda:") and name[5:].isdigit():
        return int(name[5:])
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _default_framework(info: BlobInfo) -> str:
    if info.from_torch:
        try:
            import torch  # noqa: F401

            return "torch"
        except ImportError:
            pass
    return "numpy"


def decode(
    blob: bytes | bytearray | memoryview,
    *,
    out: Any = None,
    dtype: Any = None,
    framework: str | None = None,
    device: Any = None,
    threads: int | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
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

    Raises:
        FormatError: the blob is malformed, truncated, corrupted or of an unsupported version.
            A malformed head is reported before anything is written. A GPU decode checks the
            payload's checksum on the device alongside the decode kernels (a device blob) or
            before them (a host blob), and reports a bad rANS stream after them: when it raises
            for a corrupted payload, `out=` may already have been partly or fully overwritten
            (its contents are then unspecified); decode into a scratch buffer if that matters.
    """
    out_views = None if out is None else views(out)  # computed once: it walks every tensor
    if is_device_blob(blob):
        if framework is None and out is None and str(device) != "cpu":
            framework = "torch" if is_torch(blob) else "cupy"
        to_host = str(device) == "cpu" if out_views is None else out_views.device is None
        if to_host:
            blob = _host_bytes(blob)
        elif out is None and device is None:
            device = f"cuda:{device_of(blob)}"
    # A GPU decode checks the checksum on the device, after the upload, not on the host first
    # (a device blob is always parsed without it).
    on_device = is_device_blob(blob)
    parsed = _parse(blob, verify=on_device or _target_device(device, out_views) is None)
    info = _info(parsed)
    pairs = zip(info.keys, info.values, strict=True)
    shapes = [(g.tokens, g.heads, g.head_dim) for pair in pairs for g in pair]
    if out is None:
        name = info.dtype if dtype is None else dtype_name(dtype)
        gpu = _device_index(device)
        if gpu is not None:
            _require_cuda()
        fw = framework or (_default_framework(info) if gpu is None else _default_gpu_framework())
        host_only, gpu_only = fw == "numpy", fw == "cupy"
        if (
            fw not in ("numpy", "torch", "cupy")
            or (host_only and gpu is not None)
            or (gpu_only and gpu is None)
        ):
            raise ValueError(f"framework {fw!r} does not fit device {device!r}")
        nbytes = info.elements * DTYPE_SIZES[name]
        if nbytes > max_output_bytes:
            raise FormatError(f"blob decodes to {nbytes} bytes, over max_output_bytes")
        out = allocate(info.layout, shapes, name, fw, gpu)
    v = views(out) if out_views is None else out_views
    if v.layout != info.layout or [g.shape for g in v.groups] != shapes:
        raise ValueError("out= does not match the blob's layout and shapes")
    check_writable(out)
    if out_views is not None:  # the caller's memory (what decode allocates is fresh)
        check_outputs(out, v, blob)
    decode_views(parsed, v, threads)
    return out


def decode_views(parsed: Any, v: KVViews, threads: int | None = None) -> None:
    """Decode a parsed blob (`parse`) into the groups `v` describes (plain or paged views, of
    the blob's shapes), on the host or on their GPU."""
    outs = [g.as_tuple() for g in v.groups]
    if v.device is None:
        parsed.decode_into(outs, _threads(threads))
        return
    _require_cuda()
    stream = current_stream(v.framework, v.device)
    if isinstance(parsed, _core.DeviceParsed):
        if parsed.device != v.device:
            raise ValueError(f"blob on cuda:{parsed.device}, output on cuda:{v.device}")
        parsed.to_device(stream).decode_into(outs, stream)
    else:
        _core.to_device(parsed, v.device, stream).decode_into(outs, stream)


def _target_device(device: Any, out_views: KVViews | None) -> int | None:
    """The CUDA device a decode will run on, None for the host (or if unclear: verify first)."""
    try:
        return _device_index(device) if out_views is None else out_views.device
    except Exception:  # noqa: BLE001 - reported properly once the blob has been parsed
        return None


def _default_gpu_framework() -> str:
    try:
        import torch  # noqa: F401

        return "torch"
    except ImportError:
        return "cupy"


def entropy_stats(blob: bytes, threads: int | None = None) -> dict[str, float]:
    """Coder efficiency: payload bytes against the ideal code length under the stored tables."""
    if is_device_blob(blob):
        blob = _host_bytes(blob)
    return _parse(blob).entropy_stats(_threads(threads))


def build_info() -> dict[str, Any]:
    """What was built: backend, checksum implementation, format version, default threads,
    whether CUDA kernels were compiled in (`cuda_compiled`) and a GPU is usable
    (`cuda_available`)."""
    info = dict(_core.build_info())
    info["cpu_count"] = os.cpu_count()
    return info
