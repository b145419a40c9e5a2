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
    for i, g in enumerate(v.groups):
        if not _self_disjoint(g):
            raise ValueError(f"out= group {i} maps several elements to one address")
    # Byte ranges first (plain arithmetic); only views whose ranges meet get the exact test.
    extents = [_extent(g) for g in v.groups]
    ranges = sorted((e, i) for i, e in enumerate(extents))
    for k, ((_, high), i) in enumerate(ranges):
        for (low_j, _), j in ranges[k + 1 :]:
            if low_j >= high:
                break
            if _shares(_probe(v.groups[i]), _probe(v.groups[j])):
                raise ValueError(f"out= groups {min(i, j)} and {max(i, j)} share elements")
    address, size = _blob_range(blob)
    for i, (low, high) in enumerate(extents):
        if size and low < address + size and address < high:
            blob_probe = _span(address, size, 1, (size,), (1,), 0)
            if _shares(_probe(v.groups[i]), blob_probe):
                raise ValueError(f"out= group {i} overlaps the blob being decoded")


def _check_no_grad(out: Any) -> None:
    arrays = [out] if not isinstance(out, list | tuple) else [a for p in out for a in p]
    for a in arrays:
        if is_torch(a) and a.requires_grad:
            raise ValueError("out= tensor requires grad; pass a tensor without autograd history")


def _extent(g: GroupView) -> tuple[int, int]:
    """[low, high) byte addresses the view touches."""
    item = DTYPE_SIZES[g.dtype]
    low = high = g.address
    for n, s in zip(g.shape, g.strides, strict=True):
        reach = (n - 1) * s * item
        if reach < 0:
            low += reach
        else:
            high += reach
    return low, high + item


def _probe(g: GroupView) -> Any:
    low, high = _extent(g)
    item = DTYPE_SIZES[g.dtype]
    strides = tuple(s * item for s in g.strides)
    return _span(low, high - low, item, g.shape, strides, g.address - low)


def _span(low: int, size: int, item: int, shape: tuple, byte_strides: tuple, offset: int) -> Any:
    """An ndarray with exactly a view's addresses, over memory it never reads."""
    memory = (ctypes.c_char * size).from_address(low)
    return np.ndarray(shape, f"V{item}", memory, offset, byte_strides)


def _self_disjoint(g: GroupView) -> bool:
    """Whether no two (token, head, dim) of one view share an element: with strides sorted,
    each must step past everything the smaller ones reach (every real layout does)."""
    span = 1
    for stride, n in sorted([(abs(s), n) for n, s in zip(g.shape, g.strides, strict=True)]):
        if n > 1:
            if stride < span:
                return False
            span += stride * (n - 1)
    return True


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
