"""Runs in the LMCache environment for bench/plugin_cost.py: bytes and speed of 256-token chunks
through LMCache's naive serde and the cachegen serde (LMCache's async serde processor), and
the same chunks through `cachegen.encode`/`decode` directly. Writes JSON.

    python lmcache_bench.py PLAN.json OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import torch
from lmcache.v1.distributed.api import MemoryLayoutDesc, ObjectKey
from lmcache.v1.distributed.serde.base import SerdeConfig
from lmcache.v1.distributed.serde.factory import create_serde_processor
from lmcache.v1.memory_management import MemoryObjMetadata, TensorMemoryObj
from lmcache.v1.storage_backend.naive_serde.naive_serde import NaiveSerializer
from timing import timed

import cachegen
import cachegen.lmcache
from cachegen.chunks import ChunkCodec
from cachegen.lmcache import ChunkLayout


def memobj(t: torch.Tensor) -> TensorMemoryObj:
    raw = t.contiguous().view(torch.uint8).reshape(-1).clone()
    meta = MemoryObjMetadata(
        shape=t.shape, dtype=t.dtype, address=0, phy_size=raw.numel(), ref_count=1,
        shapes=[t.shape], dtypes=[t.dtype],
    )  # fmt: skip
    return TensorMemoryObj(raw, meta, None)


def wait(query: Any, task: int) -> None:
    while (ok := query(task)) is None:
        time.sleep(0.0002)
    if not ok:
        raise RuntimeError("serde task failed")


def main() -> None:
    plan = json.loads(open(sys.argv[1]).read())
    chunks = torch.from_numpy(np.load(plan["chunks"])).to(torch.bfloat16)  # [N, 2, L, T, hidden]
    level, hd, repeats = plan["level"], plan["head_dim"], plan["repeats"]
    srcs = [memobj(c) for c in chunks]
    keys = [ObjectKey(i.to_bytes(8, "little"), "smollm2", 0) for i in range(len(srcs))]
    naive = [NaiveSerializer().serialize(m).get_size() for m in srcs]

    serde = create_serde_processor(SerdeConfig("cachegen", {"level": level, "head_dim": hd}))
    size = serde.estimate_serialized_size(MemoryLayoutDesc([chunks[0].shape], [torch.bfloat16]))
    bufs = [memobj(torch.zeros(size, dtype=torch.uint8)) for _ in srcs]
    outs = [memobj(torch.zeros_like(c)) for c in chunks]

    def serialize() -> None:
        for b in bufs:
            b._used_size_override = None  # a fresh temp buffer, as LMCache allocates per task
        wait(serde.query_serialize_result, serde.submit_serialize(srcs, bufs, keys))

    def deserialize() -> None:
        wait(serde.query_deserialize_result, serde.submit_deserialize(bufs, outs, keys))

    serialize()
    deserialize()
    serde_bytes = [b.get_size() for b in bufs]

    codec, layout = ChunkCodec(level=level), ChunkLayout(head_dim=hd)
    views = [layout.pairs([c]) for c in chunks]
    out_views = [layout.pairs([o.get_tensor(0)]) for o in outs]
    blobs: list[bytes] = []

    def encode() -> None:
        blobs[:] = [cachegen.encode(v, config=codec.config) for v in views]

    def decode() -> None:
        for blob, v in zip(blobs, out_views, strict=True):
            cachegen.decode(blob, out=v)

    encode()
    serialize_s, encode_s = timed([serialize, encode], repeats)
    deserialize_s, decode_s = timed([deserialize, decode], repeats)
    json.dump(
        {
            "chunks": len(srcs),
            "naive_bytes": naive,
            "serde_bytes": serde_bytes,
            "direct_bytes": [len(b) for b in blobs],
            "serialize_s": serialize_s,
            "deserialize_s": deserialize_s,
            "encode_s": encode_s,
            "decode_s": decode_s,
        },
        open(sys.argv[2], "w"),
    )


if __name__ == "__main__":
    main()
