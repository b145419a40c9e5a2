"""Where a call runs and what it makes: host memory or a CUDA device, and which framework
(numpy, torch or CuPy) new outputs are."""

from __future__ import annotations

import functools
from typing import Any

from . import _core
from .tensors import KVViews, device_of, is_device_blob, is_torch


def device_index(device: Any) -> int | None:
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


@functools.cache
def _cuda_status() -> tuple[bool, bool]:
    """(compiled, usable): asked of the driver once per process, not on every GPU call."""
    info = _core.build_info()
    return info["cuda_compiled"], info["cuda_available"]


def require_cuda() -> None:
    compiled, available = _cuda_status()
    if not compiled:
        raise RuntimeError("cachegen was built without CUDA (build with CACHEGEN_CUDA=ON)")
    if not available:
        raise RuntimeError("no usable CUDA device")


def encode_target(device: Any, v: KVViews) -> int | None:
    """The GPU an encode's `device=` puts the blob on (None: host bytes), checked against the
    GPU the KV cache is on (None: host)."""
    target = device_index(device)
    if v.device is None:
        if target is not None:
            raise ValueError("device= output needs the KV cache on that GPU")
        return None
    require_cuda()
    if target is not None and str(device) != "cuda" and target != v.device:
        raise ValueError(f"device={device!r} but the KV cache is on cuda:{v.device}")
    return target


def host_bytes(blob: Any) -> bytes:
    """A device blob's bytes in host memory."""
    if is_torch(blob):
        return blob.cpu().numpy().tobytes()
    import cupy

    return cupy.asnumpy(blob).tobytes()


def place_blob(
    blob: Any, out_views: KVViews | None, framework: str | None, device: Any
) -> tuple[Any, str | None, Any]:
    """(blob, framework, device) for a decode: a device blob stays on its GPU (decoded in
    place, into its own framework by default) unless the output is on the host, where it is
    copied to."""
    if not is_device_blob(blob):
        return blob, framework, device
    if framework is None and out_views is None and str(device) != "cpu":
        framework = "torch" if is_torch(blob) else "cupy"
    to_host = str(device) == "cpu" if out_views is None else out_views.device is None
    if to_host:
        return host_bytes(blob), framework, device
    if out_views is None and device is None:
        device = f"cuda:{device_of(blob)}"
    return blob, framework, device


def decode_target(device: Any, out_views: KVViews | None) -> int | None:
    """The CUDA device a decode will run on, None for the host (or if unclear: verify first)."""
    try:
        return device_index(device) if out_views is None else out_views.device
    except Exception:  # noqa: BLE001 - reported properly once the blob has been parsed
        return None


def output_place(framework: str | None, device: Any, from_torch: bool) -> tuple[str, int | None]:
    """(framework, CUDA device or None) of a new decode output: `framework` if given, else
    torch where the blob came from torch or the output is on a GPU (CuPy without torch), else
    numpy."""
    gpu = device_index(device)
    if gpu is not None:
        require_cuda()
    fw = framework or _default_framework(from_torch or gpu is not None, gpu is not None)
    fits = {"numpy": gpu is None, "torch": True, "cupy": gpu is not None}
    if not fits.get(fw, False):
        raise ValueError(f"framework {fw!r} does not fit device {device!r}")
    return fw, gpu


def _default_framework(want_torch: bool, gpu: bool) -> str:
    if want_torch:
        try:
            import torch  # noqa: F401

            return "torch"
        except ImportError:
            pass
    return "cupy" if gpu else "numpy"
