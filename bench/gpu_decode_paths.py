"""The GPU decode kernels alone (a blob resident on the device with its plan), for the path this
process takes: run once with CACHEGEN_GPU_DECODE=direct (per-symbol stores) and once without
(staged rows) to compare them on the same machine; gpu_check.sh interleaves the two."""

import os

import torch

import cachegen
from cachegen import _core
from gpu_speed import kv_cache, median_seconds

kv = kv_cache()
blob = cachegen.encode(kv.cpu())
out = torch.empty_like(kv)
stream = torch.cuda.current_stream().cuda_stream
resident = _core.to_device(_core.Blob(blob), 0, stream)
outs = [g.native() for g in cachegen.tensors.views(out).groups]
seconds, _ = median_seconds(lambda: resident.decode_into(outs, stream), 15)
want = cachegen.decode(blob, framework="torch").view(torch.int16)
exact = bool(torch.equal(out.cpu().view(torch.int16), want))
path = os.environ.get("CACHEGEN_GPU_DECODE", "staged")
print(
    f"decode kernels, {path}: {seconds * 1e3:.3f} ms, {kv.numel() * 2 / seconds / 1e9:.1f} GB/s "
    f"of fp16, equal to the CPU decode: {exact}"
)
