"""Calls into the core, on the host or on the GPU the data is on (on the caller's current torch
or CuPy stream there)."""

from __future__ import annotations

from typing import Any

from . import _core
from .devices import require_cuda
from .plan import EncodePlan
from .tensors import (
    KVViews,
    current_stream,
    device_address,
    device_bytes,
    empty,
    is_device_blob,
)

#: The most worker threads a call may ask for (the core's own bound).
MAX_THREADS: int = _core.build_info()["max_threads"]


def threads_arg(threads: int | None) -> int:
    """A `threads=` argument as the core takes it (0: all cores)."""
    if threads is None:
        return 0
    if not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an int in [0, {MAX_THREADS}], got {threads!r}")
    return threads


def encode(plan: EncodePlan, v: KVViews, target: int | None, threads: int) -> Any:
    """The blob of `plan`, whose groups `v` views: host bytes, or with `target` (a GPU: see
    `devices.encode_target`) a uint8 array of `v`'s framework in device memory."""
    request = plan.request(threads)
    if v.device is None:
        return _core.encode(request)
    stream = current_stream(v.framework, v.device)
    if target is None:
        return _core.encode_cuda(request, v.device, stream)
    held: list[Any] = []

    def alloc(n: int) -> int:
        held.append(empty((n,), "uint8", v.framework, v.device))
        return device_address(held[0])

    _core.encode_cuda(request, v.device, stream, alloc)
    return held[0]


def parse(blob: Any, verify: bool = True) -> _core.Blob | _core.DeviceParsed:
    """A blob's head, parsed (its checksum checked if `verify`): bytes-like, or in GPU memory
    (uint8, 1-D, contiguous; checksum left to the GPU)."""
    if is_device_blob(blob):
        require_cuda()
        address, size, framework, gpu = device_bytes(blob)
        return _core.parse_device(address, size, gpu, current_stream(framework, gpu))
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError(f"blob must be bytes-like or a device blob, got {type(blob).__name__}")
    return _core.Blob(blob, verify)


def decode_into(parsed: _core.Blob | _core.DeviceParsed, v: KVViews, threads: int) -> None:
    """Decode a parsed blob into the groups `v` describes, on the host or on their GPU."""
    outs = [g.native() for g in v.groups]
    if v.device is None:
        parsed.decode_into(outs, threads)
        return
    require_cuda()
    stream = current_stream(v.framework, v.device)
    if isinstance(parsed, _core.DeviceParsed):
        if parsed.device != v.device:
            raise ValueError(f"blob on cuda:{parsed.device}, output on cuda:{v.device}")
        parsed.to_device(stream).decode_into(outs, stream)
    else:
        _core.to_device(parsed, v.device, stream).decode_into(outs, stream)
