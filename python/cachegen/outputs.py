"""Checks that decode may write into `out=`: no tensor that autograd tracks, no element that two
outputs (or one output twice) share, nothing that overlaps the blob being decoded.

Outputs are compared by address arithmetic only (host or device memory alike, nothing is read):
interleaved views into one allocation, as paged engines lay out K and V, are fine as long as no
element belongs to two of them.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from .tensors import DTYPE_SIZES, GroupView, KVViews, device_bytes, is_device_blob, is_torch

# Work bound of numpy's exact overlap solver per pair of views; real layouts need a handful of
# steps, a pathological stride set is refused rather than searched.
_MAX_WORK = 1 << 16


def check_outputs(out: Any, v: KVViews, blob: Any) -> None:
    """Raise ValueError unless decode can write every output without touching another or
    the blob."""
    _check_no_grad(out)
    probes = [_probe(g.address, DTYPE_SIZES[g.dtype], g.shape, g.strides) for g in v.groups]
    for i, g in enumerate(v.groups):
        if not _self_disjoint(g):
            raise ValueError(f"out= group {i} maps several elements to one address")
    _check_pairwise(probes, "out= groups {} and {} share elements")
    address, size = _blob_range(blob)
    if size:
        blob_probe = _probe(address, 1, (size,), (1,))
        for i, p in enumerate(probes):
            if _shares(p, blob_probe):
                raise ValueError(f"out= group {i} overlaps the blob being decoded")


def _check_no_grad(out: Any) -> None:
    arrays = [out] if not isinstance(out, list | tuple) else [a for p in out for a in p]
    for a in arrays:
        if is_torch(a) and a.requires_grad:
            raise ValueError("out= tensor requires grad; pass a tensor without autograd history")


def _probe(address: int, itemsize: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    """An ndarray with exactly the view's addresses, over memory it never reads."""
    byte_strides = tuple(s * itemsize for s in strides)
    low = sum(min(0, (n - 1) * s) for n, s in zip(shape, byte_strides, strict=True))
    high = sum(max(0, (n - 1) * s) for n, s in zip(shape, byte_strides, strict=True)) + itemsize
    span = (ctypes.c_char * (high - low)).from_address(address + low)
    return np.ndarray(shape, f"V{itemsize}", span, -low, byte_strides)


def _self_disjoint(g: GroupView) -> bool:
    """Whether no two (token, head, dim) of one view share an element: with strides sorted,
    each must step past everything the smaller ones reach (every real layout does)."""
    span = 1
    for stride, n in sorted((abs(s), n) for n, s in zip(g.shape, g.strides, strict=True) if n > 1):
        if stride < span:
            return False
        span += stride * (n - 1)
    return True


def _check_pairwise(probes: list[Any], message: str) -> None:
    """Exact test of every pair whose address ranges meet (sorted sweep: disjoint ranges, the
    common case, cost one comparison each)."""
    bounds = sorted((_bounds(p), i) for i, p in enumerate(probes))
    for k, ((_, high), i) in enumerate(bounds):
        for (low_j, _), j in bounds[k + 1 :]:
            if low_j >= high:
                break
            if _shares(probes[i], probes[j]):
                raise ValueError(message.format(min(i, j), max(i, j)))


def _bounds(p: Any) -> tuple[int, int]:
    low, high = np.lib.array_utils.byte_bounds(p)
    return low, high


def _shares(a: Any, b: Any) -> bool:
    try:
        return bool(np.shares_memory(a, b, max_work=_MAX_WORK))
    except np.exceptions.TooHardError:
        return True  # not provably disjoint: refused


def _blob_range(blob: Any) -> tuple[int, int]:
    if is_device_blob(blob):
        address, size, _, _ = device_bytes(blob)
        return address, size
    host = np.frombuffer(blob, np.uint8)
    return host.ctypes.data, host.size
