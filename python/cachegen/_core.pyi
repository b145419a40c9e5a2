"""Types of the native core (csrc/module.cpp). Codes: dtype 1 float16, 2 bfloat16, 3 float32
(`tensors.DTYPE_CODES`); layout 0 stacked, 1 pairs; quantizer ids as `config.QUANTIZERS`.
Addresses and CUDA streams are raw integers. The names after `build_info` exist only in CUDA
builds (`build_info()["cuda_compiled"]`)."""

from collections.abc import Callable, Sequence
from typing import Any

import numpy.typing as npt

class FormatError(ValueError):
    """A blob is malformed, truncated, corrupted or of an unsupported version."""

class TensorView:
    """One K or V tensor in memory: element (token, head, dim) at address + token offset +
    head*s_head + dim*s_dim (strides in elements); a paged view finds token t in block
    block_table[t // block_size] (int32 ids in host memory, kept alive by the caller)."""

    def __init__(
        self,
        address: int,
        dtype: int,
        tokens: int,
        heads: int,
        head_dim: int,
        strides: Sequence[int],
        block_table: int = 0,
        block_size: int = 0,
        num_blocks: int = 0,
        s_block: int = 0,
    ) -> None: ...
    @property
    def address(self) -> int: ...
    @property
    def dtype(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def strides(self) -> list[int]: ...
    @property
    def block_table(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def num_blocks(self) -> int: ...
    @property
    def s_block(self) -> int: ...

class GroupSpec:
    """How to code one (layer, K/V) group (see `cachegen.plan.GroupPlan`)."""

    def __init__(
        self,
        view: TensorView,
        quantizer: int,
        param: float,
        max_tables: int,
        token_weights: npt.ArrayLike | None = None,
        channel_weights: npt.ArrayLike | None = None,
        raw_rows: int = 0,
        center: bool = False,
        overflow: bool = False,
        shape_count: int = 0,
        shape_dirs: npt.ArrayLike | None = None,
        shape_diag: npt.ArrayLike | None = None,
    ) -> None: ...
    @property
    def view(self) -> TensorView: ...
    @property
    def quantizer(self) -> int: ...
    @property
    def param(self) -> float: ...
    @property
    def max_tables(self) -> int: ...
    @property
    def token_weights(self) -> list[float]: ...
    @property
    def channel_weights(self) -> list[float]: ...
    @property
    def raw_rows(self) -> int: ...
    @property
    def center(self) -> bool: ...
    @property
    def overflow(self) -> bool: ...
    @property
    def shape_count(self) -> int: ...

class EncodeRequest:
    """Groups (K then V per layer) and blob header (see `cachegen.plan.EncodePlan`)."""

    def __init__(
        self,
        groups: Sequence[GroupSpec],
        dtype: int,
        layout: int,
        level: int,
        segment_symbols: int,
        flags: int = 0,
        threads: int = 0,
        transform: tuple[bytes, int] | None = None,
    ) -> None: ...
    @property
    def groups(self) -> list[GroupSpec]: ...
    @property
    def dtype(self) -> int: ...
    @property
    def layout(self) -> int: ...
    @property
    def level(self) -> int: ...
    @property
    def segment_symbols(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def threads(self) -> int: ...

class Blob:
    """A parsed blob in host memory; keeps the buffer it was parsed from alive."""

    def __init__(self, blob: bytes | bytearray | memoryview, verify: bool = True) -> None: ...
    def info(self) -> dict[str, Any]: ...
    def decode_into(self, outs: Sequence[TensorView], threads: int = 0) -> None: ...
    def entropy_stats(self, threads: int = 0) -> dict[str, float]: ...

def encode(request: EncodeRequest) -> bytes: ...
def quantize(request: EncodeRequest) -> list[tuple[bytes, bytes, bytes, bytes, bytes, bytes]]:
    """Per group: symbols (int8), a per token, b per channel, o per channel and raw rows
    (float32), and the overflow list (int32 token, channel, symbol triples), as bytes."""

def key_magnitudes(keys: TensorView, threads: int = 0) -> bytes: ...
def key_scores(
    keys: TensorView,
    coefficients: Any,
    inv_freq: Any = None,
    first: int = 0,
    threads: int = 0,
) -> bytes:
    """Float64 importance scores per token: RoPE pair magnitudes, then (with `inv_freq`) the
    keys rotated back to position 0 from context position `first`, times `coefficients`."""

def key_square_sums(keys: TensorView, skip: int, threads: int = 0) -> bytes: ...
def build_info() -> dict[str, Any]: ...

class DeviceBlob:
    """A blob uploaded to a GPU with its decode plan."""

    def decode_into(self, outs: Sequence[TensorView], stream: int) -> None: ...

class DeviceParsed:
    """A blob in device memory, parsed from its head."""

    @property
    def device(self) -> int: ...
    def info(self) -> dict[str, Any]: ...
    def to_device(self, stream: int) -> DeviceBlob: ...

def to_device(blob: Blob, device: int, stream: int) -> DeviceBlob: ...
def encode_cuda(
    request: EncodeRequest,
    device: int,
    stream: int,
    device_alloc: Callable[[int], int] | None = None,
) -> bytes | None: ...
def parse_device(address: int, size: int, device: int, stream: int) -> DeviceParsed: ...
def key_square_sums_cuda(keys: TensorView, skip: int, device: int, stream: int) -> bytes: ...
def cuda_device_name(device: int = 0) -> str: ...
def cuda_timings(which: str) -> dict[str, float]: ...
