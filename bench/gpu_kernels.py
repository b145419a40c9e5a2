"""One encode to a device blob and one decode of it at gpu_speed.py's shape: the program that
gpu_check.sh hands to Nsight Compute, so the profile sees each codec kernel's real launch."""

import torch

import cachegen
from gpu_speed import kv_cache

kv = kv_cache()
blob = cachegen.encode(kv, device="cuda")
cachegen.decode(blob, out=torch.empty_like(kv))
torch.cuda.synchronize()
