"""Runs in the LMCache environment (tests/engines/test_lmcache.py): LMCache memory objects
through the cachegen serde by LMCache's own code paths, results as JSON.

    python lmcache_driver.py PLAN.json OUT.json

PLAN: {"kv": "file.npy" ([2, L, T, hidden] fp32 real KV), "head_dim": int, "levels": [...]}.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import torch
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
    out = {}
    for name, call in cases.items():
        try:
            call()
            out[name] = "no error"
        except Exception as e:  # the test checks the type and message
            out[name] = f"{type(e).__name__}: {e}"
    return out


def _serialized(ser: Any, kv: torch.Tensor) -> TensorMemoryObj:
    dst = buffer(1 << 22)
    dst.set_used_size(ser.serialize(memobj(kv), dst, key(0)))
    return dst


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
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
