"""Runs in the LMCache environment (tests/engines/test_lmcache.py): LMCache memory objects
through the cachegen serde by LMCache's own code paths, results as JSON.

    python lmcache_driver.py PLAN.json OUT.json

PLAN: {"kv": "file.npy" ([2, L, T, hidden] fp32 real KV), "head_dim": int, "levels": [...]}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from driver_errors import error_messages
from lmcache.v1.distributed.api import ObjectKey
from lmcache.v1.distributed.serde.base import SerdeConfig
from lmcache.v1.distributed.serde.factory import create_serde_processor, get_registered_serde_types
from lmcache.v1.memory_management import MemoryObjMetadata, TensorMemoryObj

import cachegen.lmcache  # noqa: F401  (registers the serde)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def memobj(t: torch.Tensor) -> TensorMemoryObj:
    """An LMCache memory object holding a copy of `t`."""
    raw = t.contiguous().view(torch.uint8).reshape(-1).clone()
    meta = MemoryObjMetadata(
        shape=t.shape,
        dtype=t.dtype,
        address=0,
        phy_size=raw.numel(),
        ref_count=1,
        shapes=[t.shape],
        dtypes=[t.dtype],
    )
    return TensorMemoryObj(raw, meta, None)


def buffer(size: int) -> TensorMemoryObj:
    shape = torch.Size([size])
    meta = MemoryObjMetadata(
        shape=shape,
        dtype=torch.uint8,
        address=0,
        phy_size=size,
        ref_count=1,
        shapes=[shape],
        dtypes=[torch.uint8],
    )
    return TensorMemoryObj(torch.zeros(size, dtype=torch.uint8), meta, None)


def key(i: int) -> ObjectKey:
    return ObjectKey(chunk_hash=i.to_bytes(8, "little"), model_name="test", kv_rank=0)


def wait(query: Any, task: int) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = query(task)
        if result is not None:
            return result
        time.sleep(0.001)
    raise TimeoutError("serde task did not finish")


def roundtrip(serde: Any, t: torch.Tensor) -> dict[str, Any]:
    """Serialize and deserialize `t` through LMCache's async serde processor."""
    from lmcache.v1.distributed.api import MemoryLayoutDesc

    src = memobj(t)
    size = serde.estimate_serialized_size(MemoryLayoutDesc([t.shape], [t.dtype]))
    dst = buffer(size)
    ok_s = wait(serde.query_serialize_result, serde.submit_serialize([src], [dst], [key(0)]))
    out = memobj(torch.zeros_like(t))
    ok_d = wait(serde.query_deserialize_result, serde.submit_deserialize([dst], [out], [key(0)]))
    got = out.get_tensor(0)
    diff = (got.float() - t.float()).abs()
    return {
        "serialize_ok": ok_s,
        "deserialize_ok": ok_d,
        "bytes": dst.get_size(),
        "estimate": size,
        "raw": t.numel() * t.element_size(),
        "exact": bool(torch.equal(got.view(torch.uint8), t.contiguous().view(torch.uint8))),
        "max_err": float(diff.max()),
        "rel_rms": float(diff.pow(2).mean().sqrt() / t.float().pow(2).mean().sqrt()),
    }


def layouts(kv: np.ndarray) -> dict[str, torch.Tensor]:
    """The chunk in LMCache's K/V layout and two MLA-shaped latents made from its values."""
    t = torch.from_numpy(kv)
    # An MLA-shaped latent (576 channels) from real values: K and V rows side by side, cycled.
    rows = torch.cat([t[0], t[1]], dim=-1)
    latent = rows.repeat(1, 1, -(-576 // rows.shape[-1]))[..., :576]
    return {"kv": t, "mla": latent.contiguous(), "mla4": latent.unsqueeze(0).contiguous()}


def sync_errors(options: dict[str, Any], kv: torch.Tensor) -> dict[str, str]:
    """What the sync serializer/deserializer raise for wrong input."""
    from cachegen.chunks import ChunkCodec
    from cachegen.lmcache import CachegenDeserializer, CachegenSerializer, ChunkLayout

    codec, layout = ChunkCodec(level=15), ChunkLayout(head_dim=options["head_dim"])
    ser, de = CachegenSerializer(codec, layout), CachegenDeserializer(codec, layout)
    cases = {
        "bad_shape": lambda: ser.serialize(memobj(kv[:, :, :, None]), buffer(1 << 20), key(0)),
        "bad_dtype": lambda: ser.serialize(memobj(kv.to(torch.int16)), buffer(1 << 20), key(0)),
        "bad_heads": lambda: ser.serialize(memobj(kv[..., :-1]), buffer(1 << 20), key(0)),
        "small_buffer": lambda: ser.serialize(memobj(kv), buffer(100), key(0)),
        "not_a_blob": lambda: de.deserialize(buffer(4096), memobj(kv.clone()), key(0)),
        "wrong_dst": lambda: de.deserialize(_serialized(ser, kv), memobj(kv[:, :, :-1]), key(0)),
    }
    return error_messages(cases)


def _serialized(ser: Any, kv: torch.Tensor) -> TensorMemoryObj:
    dst = buffer(1 << 22)
    dst.set_used_size(ser.serialize(memobj(kv), dst, key(0)))
    return dst


def poll(check: Any) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = check()
        if result is not None:
            return result
        time.sleep(0.005)
    raise TimeoutError("L2 task did not finish")


def through_fs_adapter(folder: str, options: dict[str, Any], t: torch.Tensor) -> dict[str, Any]:
    """Store and load `t` through LMCache's serde L2 wrapper over its fs adapter (L1 temp
    buffers from its L1 manager): the path LMCache's storage manager builds for an adapter
    config with a "serde" entry."""
    from lmcache.v1.distributed.config import L1ManagerConfig, L1MemoryManagerConfig
    from lmcache.v1.distributed.l1_manager import L1Manager
    from lmcache.v1.distributed.l2_adapters import create_l2_adapter
    from lmcache.v1.distributed.l2_adapters.fs_l2_adapter import FSL2AdapterConfig
    from lmcache.v1.distributed.l2_adapters.serde_wrapper import SerdeL2AdapterWrapper

    memory = L1MemoryManagerConfig(size_in_bytes=64 << 20, use_lazy=False, shm_name="")
    l1 = L1Manager(L1ManagerConfig(memory))
    inner = create_l2_adapter(FSL2AdapterConfig(base_path=folder), l1.get_l1_memory_desc())
    serde = create_serde_processor(SerdeConfig("cachegen", options))
    wrapper = SerdeL2AdapterWrapper(inner, serde, l1)
    task = wrapper.submit_store_task([key(7)], [memobj(t)])
    stored = poll(lambda: wrapper.pop_completed_store_tasks().get(task))
    out = memobj(torch.zeros_like(t))
    task = wrapper.submit_load_task([key(7)], [out])
    loaded = poll(lambda: wrapper.query_load_result(task))
    got = out.get_tensor(0)
    wrapper.close()
    files = [os.path.join(folder, f) for f in os.listdir(folder)]
    return {
        "stored": stored >= 0,
        "loaded": loaded.test(0),
        "exact": bool(torch.equal(got.view(torch.uint8), t.view(torch.uint8))),
        "rel_rms": float(
            (got.float() - t.float()).pow(2).mean().sqrt() / t.float().pow(2).mean().sqrt()
        ),
        "file_bytes": [os.path.getsize(f) for f in files if f.endswith(".data")],
        "raw": t.numel() * t.element_size(),
    }


def main() -> None:
    plan = json.loads(open(sys.argv[1]).read())
    kv = np.load(plan["kv"])
    results: dict[str, Any] = {"registered": "cachegen" in get_registered_serde_types()}
    for dname, dtype in DTYPES.items():
        for lname, t in layouts(kv).items():
            for level in plan["levels"]:
                options = {"level": level, "head_dim": plan["head_dim"]}
                serde = create_serde_processor(SerdeConfig("cachegen", options))
                results[f"{dname}/{lname}/{level}"] = roundtrip(serde, t.to(dtype))
                serde.close()
    results["errors"] = sync_errors(plan, torch.from_numpy(kv).to(torch.bfloat16))
    for level, slot in plan["fs_slots"].items():
        options = {"level": level, "head_dim": plan["head_dim"], "slot_ratio": slot}
        folder = os.path.join(plan["work"], f"fs-{level}")
        os.makedirs(folder)
        results[f"fs/{level}"] = through_fs_adapter(
            folder, options, torch.from_numpy(kv).to(torch.bfloat16)
        )
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
