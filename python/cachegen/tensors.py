"""Tensor adapters: numpy arrays, torch tensors (CPU or CUDA) and CUDA arrays such as CuPy's
(`__cuda_array_interface__`) in, strided raw views out, without copies.

A KV cache is either one array `[layers, 2, tokens, kv_heads, head_dim]` ("stacked") or a
sequence of per-layer `(K, V)` pairs in the Hugging Face layout `[1, kv_heads, tokens, head_dim]`
("pairs"), whose layers may differ in token count, head count and head dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import _core

DTYPE_CODES: dict[str, int] = {"float16": 1, "bfloat16": 2, "float32": 3}
DTYPE_NAMES = {v: k for k, v in DTYPE_CODES.items()}
DTYPE_SIZES: dict[str, int] = {"float16": 2, "bfloat16": 2, "float32": 4}
LAYOUTS: dict[str, int] = {"stacked": 0, "pairs": 1}
LAYOUT_NAMES = {v: k for k, v in LAYOUTS.items()}


@dataclass(frozen=True)
class Paging:
    """Where a paged view's tokens live (a serving engine's KV blocks): token t starts at
    `table[t // block_size] * s_block + (t % block_size) * s_token` elements past the view's
    address. `table` is the address of int32 block ids in host memory, which the caller keeps
    alive; valid ids are [0, num_blocks)."""

    table: int
    block_size: int
    num_blocks: int
    s_block: int


@dataclass(frozen=True)
class GroupView:
    """One layer's K or V: address and element strides of (token, head, dim), and for a paged
    view its block table."""

    address: int
    dtype: str
    tokens: int
    heads: int
    head_dim: int
    strides: tuple[int, int, int]
    paging: Paging | None = None

    def native(self) -> _core.TensorView:
        """The view as the core takes it."""
        p = self.paging or Paging(0, 0, 0, 0)
        return _core.TensorView(
            self.address,
            DTYPE_CODES[self.dtype],
            self.tokens,
            self.heads,
            self.head_dim,
            self.strides,
            p.table,
            p.block_size,
            p.num_blocks,
            p.s_block,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.tokens, self.heads, self.head_dim)


@dataclass(frozen=True)
class KVViews:
    layout: str
    framework: str  # "numpy", "torch" or "cupy"
    dtype: str
    groups: list[GroupView]  # 2 per layer, K then V
    device: int | None = None  # CUDA device index, None for host memory
    #: What the views point into beyond the tensors the caller holds (a paged view's block
    #: table), kept alive with them.
    owner: Any = field(default=None, compare=False, repr=False)


@runtime_checkable
class ViewSource(Protocol):
    """A KV cache that is neither an array nor pairs (e.g. an engine's paged blocks) gives its
    views itself."""

    def kv_views(self) -> KVViews: ...


def is_view_source(x: Any) -> bool:
    """Whether `x` gives its views itself (a `ViewSource`): what `isinstance` against the
    protocol decides, without its cost on Python 3.11 (~12 us a call, on every decode)."""
    return callable(getattr(x, "kv_views", None))


def is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def dtype_name(x: Any) -> str:
    """Canonical dtype name of an array, a tensor, or a dtype given by the user."""
    name = str(getattr(x, "dtype", x)).removeprefix("torch.")
    name = {"half": "float16", "float": "float32", "bf16": "bfloat16"}.get(name, name)
    if name not in DTYPE_CODES:
        raise TypeError(f"unsupported dtype {name!r}; use float16, bfloat16 or float32")
    return name


_CAI_DTYPES = {"<f2": "float16", "<f4": "float32"}


def device_of(x: Any) -> int | None:
    """CUDA device index of a tensor or CUDA array, None if it lives in host memory."""
    if is_torch(x):
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"tensor is on {x.device}; use CPU or CUDA tensors")
        return x.device.index if x.device.type == "cuda" else None
    if hasattr(x, "__cuda_array_interface__"):
        return int(x.device.id) if hasattr(x, "device") else 0
    return None


def _cuda_array(x: Any) -> tuple[int, tuple[int, ...], tuple[int, ...], str]:
    cai = x.__cuda_array_interface__
    if cai["typestr"] not in _CAI_DTYPES:
        raise TypeError(f"unsupported CUDA array dtype {cai['typestr']!r}; use float16 or float32")
    name = _CAI_DTYPES[cai["typestr"]]
    item = DTYPE_SIZES[name]
    shape = tuple(cai["shape"])
    strides = cai.get("strides")
    if strides is None:  # C-contiguous
        strides, acc = [], item
        for n in reversed(shape):
            strides.insert(0, acc)
            acc *= n
    if any(s % item for s in strides):
        raise ValueError("array strides must be multiples of its item size")
    return cai["data"][0], shape, tuple(s // item for s in strides), name


def _raw(x: Any) -> tuple[int, tuple[int, ...], tuple[int, ...], str]:
    """(address, shape, element strides, dtype) of an array or tensor, host or CUDA."""
    if is_torch(x):
        device_of(x)
        return x.data_ptr(), tuple(x.shape), tuple(x.stride()), dtype_name(x)
    if hasattr(x, "__cuda_array_interface__"):
        return _cuda_array(x)
    if isinstance(x, np.ndarray):
        name = dtype_name(x)
        item = x.dtype.itemsize
        if any(s % item for s in x.strides):
            raise ValueError("array strides must be multiples of its item size")
        return x.ctypes.data, x.shape, tuple(s // item for s in x.strides), name
    raise TypeError(f"expected a numpy array, torch tensor or CUDA array, got {type(x).__name__}")


def _group(address: int, dtype: str, shape, strides, offset: int = 0) -> GroupView:
    """The view of (token, head, dim) `shape` at `offset` elements past `address`."""
    tokens, heads, dim = shape
    if min(shape) < 1:
        raise ValueError(f"every KV tensor needs >= 1 token, head and dim, got shape {shape}")
    return GroupView(
        address + offset * DTYPE_SIZES[dtype], dtype, tokens, heads, dim, tuple(strides)
    )


def array_group(x: Any) -> GroupView:
    """The view of one `[tokens, heads, head_dim]` array or tensor."""
    address, shape, strides, dtype = _raw(x)
    if len(shape) != 3:
        raise ValueError(f"expected [tokens, heads, head_dim], got shape {tuple(shape)}")
    return _group(address, dtype, shape, strides)


def on_host(x: Any) -> Any:
    """`x` itself in host memory, else a host copy of it (`to_host`)."""
    return to_host(x) if device_of(x) is not None else x


def to_host(x: Any) -> Any:
    """A host copy of a CUDA tensor or array (torch stays torch, anything else becomes numpy)."""
    if is_torch(x):
        return x.cpu()
    import cupy

    return cupy.asnumpy(x)


def _stacked_views(x: Any) -> tuple[str, list[GroupView]]:
    address, shape, st, dtype = _raw(x)
    if len(shape) != 5 or shape[1] != 2:
        raise ValueError(f"stacked KV must be [layers, 2, tokens, heads, head_dim], got {shape}")
    groups = [
        _group(address, dtype, shape[2:], st[2:], layer * st[0] + kv * st[1])
        for layer in range(shape[0])
        for kv in range(2)
    ]
    return dtype, groups


def _hf_view(x: Any, what: str) -> GroupView:
    address, shape, st, dtype = _raw(x)
    if len(shape) != 4 or shape[0] != 1:
        raise ValueError(f"{what} must be [1, kv_heads, tokens, head_dim], got {tuple(shape)}")
    return _group(address, dtype, (shape[2], shape[1], shape[3]), (st[2], st[1], st[3]))


def _pair_views(kv: Sequence) -> tuple[str, list[GroupView]]:
    groups: list[GroupView] = []
    for i, pair in enumerate(kv):
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"layer {i} must be a (K, V) pair")
        groups += [_hf_view(pair[0], f"layer {i} K"), _hf_view(pair[1], f"layer {i} V")]
    dtypes = {g.dtype for g in groups}
    if len(dtypes) != 1:
        raise TypeError(f"all KV tensors must share one dtype, got {sorted(dtypes)}")
    return dtypes.pop(), groups


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or is_torch(x) or hasattr(x, "__cuda_array_interface__")


def _framework(x: Any) -> str:
    if is_torch(x):
        return "torch"
    return "numpy" if isinstance(x, np.ndarray) else "cupy"


def _device(arrays: list) -> int | None:
    devices = {device_of(a) for a in arrays}
    if len(devices) != 1:
        raise ValueError(f"all KV tensors must be on one device, got {sorted(map(str, devices))}")
    return devices.pop()


def views(kv: Any) -> KVViews:
    """Zero-copy views of a KV cache in either layout, or of a `ViewSource`."""
    if is_view_source(kv):
        return kv.kv_views()
    if _is_array(kv):
        dtype, groups = _stacked_views(kv)
        return KVViews("stacked", _framework(kv), dtype, groups, device_of(kv))
    if isinstance(kv, Sequence) and not isinstance(kv, str | bytes) and len(kv) > 0:
        dtype, groups = _pair_views(kv)
        device = _device([t for pair in kv for t in pair])
        return KVViews("pairs", _framework(kv[0][0]), dtype, groups, device)
    raise TypeError(
        "kv must be an array/tensor [layers, 2, tokens, heads, head_dim] or a non-empty "
        "sequence of (K, V) pairs [1, heads, tokens, head_dim]"
    )


def group_arrays(kv: Any) -> list[Any]:
    """Each (layer, K/V) group of a cache in either layout as a `[tokens, heads, head_dim]` view
    in the cache's own framework (numpy, torch or CuPy), K then V per layer; checked as `views`
    checks a cache."""
    if views(kv).layout == "stacked":
        return [kv[i // 2, i % 2] for i in range(2 * len(kv))]
    return [t[0].swapaxes(0, 1) for pair in kv for t in pair]


def is_device_blob(x: Any) -> bool:
    """Whether x is a blob in GPU memory: a torch CUDA tensor or a CUDA array (CuPy)."""
    if is_torch(x):
        return x.device.type == "cuda"
    return hasattr(x, "__cuda_array_interface__")


def device_address(x: Any) -> int:
    return x.data_ptr() if is_torch(x) else int(x.__cuda_array_interface__["data"][0])


def device_bytes(blob: Any) -> tuple[int, int, str, int]:
    """(address, size, framework, device) of a device blob: 1-D, contiguous uint8."""
    if is_torch(blob):
        ok = str(blob.dtype) == "torch.uint8" and blob.dim() == 1 and blob.is_contiguous()
        size = blob.numel()
    else:
        cai = blob.__cuda_array_interface__
        strides = cai.get("strides")
        ok = cai["typestr"] in ("|u1", "<u1") and len(cai["shape"]) == 1 and strides in (None, (1,))
        size = int(cai["shape"][0]) if ok else 0
    if not ok:
        raise TypeError("a device blob must be a 1-D contiguous uint8 CUDA tensor or array")
    return device_address(blob), size, _framework(blob), device_of(blob)


def current_stream(framework: str, device: int) -> int:
    """The caller's current CUDA stream on `device`, as a raw handle."""
    if framework == "torch":
        import torch

        return torch.cuda.current_stream(device).cuda_stream
    import cupy

    with cupy.cuda.Device(device):
        return cupy.cuda.get_current_stream().ptr


def empty(shape: tuple[int, ...], dtype: str, framework: str, device: int | None) -> Any:
    """An uninitialized array of `framework` ("numpy", "torch", "cupy") on `device` (None: host)."""
    if framework == "torch":
        import torch

        where = "cpu" if device is None else f"cuda:{device}"
        return torch.empty(shape, dtype=getattr(torch, dtype), device=where)
    if framework == "cupy":
        import cupy

        if dtype == "bfloat16":
            raise TypeError("CuPy has no bfloat16; pass framework='torch'")
        with cupy.cuda.Device(device or 0):
            return cupy.empty(shape, dtype=dtype)
    if dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as e:
            raise TypeError("bfloat16 numpy output needs ml_dtypes; pass framework='torch'") from e
        return np.empty(shape, dtype=ml_dtypes.bfloat16)
    return np.empty(shape, dtype=dtype)


def allocate(
    layout: str,
    shapes: list[tuple[int, int, int]],
    dtype: str,
    framework: str,
    device: int | None = None,
) -> Any:
    """An uninitialized KV cache of the given per-group (tokens, heads, head_dim) shapes, in
    host memory or on CUDA `device`."""
    if layout == "stacked":
        return empty((len(shapes) // 2, 2, *shapes[0]), dtype, framework, device)
    return [
        tuple(empty((1, h, t, d), dtype, framework, device) for t, h, d in shapes[i : i + 2])
        for i in range(0, len(shapes), 2)
    ]


def check_writable(kv: Any) -> None:
    arrays = [kv] if _is_array(kv) else [a for p in kv for a in p]
    for a in arrays:
        if isinstance(a, np.ndarray) and not a.flags.writeable:
            raise ValueError("out= array is read-only")
