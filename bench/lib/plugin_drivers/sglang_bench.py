"""Runs in the SGLang environment for bench/plugin_cost.py: 256-token pages through the cachegen
HiCache backend (created by SGLang's factory, memory store) and the same pages through
`cachegen.encode`/`decode` directly. Writes JSON.

    python sglang_bench.py PLAN.json OUT.json
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
from timing import timed

import cachegen


def main() -> None:
    plan = json.loads(open(sys.argv[1]).read())
    chunks = torch.from_numpy(np.load(plan["chunks"])).to(torch.bfloat16)  # [N, 2, L, T, hidden]
    level, hd, repeats = plan["level"], plan["head_dim"], plan["repeats"]
    n, _, layers, tokens, hidden = chunks.shape
    # layer_first pages [2, L, P, H, D], one page per chunk
    pages = [c.reshape(2, layers, tokens, hidden // hd, hd).contiguous().flatten() for c in chunks]
    extra = {
        "backend_name": "cachegen", "module_path": "cachegen.sglang",
        "class_name": "CachegenHiCacheStorage", "store": "memory://", "level": level,
    }  # fmt: skip
    cfg = HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=False,
        model_name="smollm2", extra_config=extra,
    )  # fmt: skip
    pool = SimpleNamespace(
        layout="layer_first", layer_num=layers, page_size=tokens, dtype=torch.bfloat16,
        head_num=hidden // hd, head_dim=hd,
    )  # fmt: skip
    backend = StorageBackendFactory.create_backend("dynamic", cfg, pool)
    backend.register_mem_pool_host(pool)
    keys = [f"page-{i}" for i in range(n)]
    targets = [torch.zeros_like(p) for p in pages]
    backend.batch_set(keys, pages)

    views = [backend._pairs(p) for p in pages]
    out_views = [backend._pairs(t) for t in targets]
    blobs: list[bytes] = []

    def encode() -> None:
        blobs[:] = [cachegen.encode(v, config=backend.codec.config) for v in views]

    def decode() -> None:
        for blob, v in zip(blobs, out_views, strict=True):
            cachegen.decode(blob, out=v)

    encode()
    set_s, encode_s = timed([lambda: backend.batch_set(keys, pages), encode], repeats)
    get_s, decode_s = timed([lambda: backend.batch_get(keys, targets), decode], repeats)
    stored = [len(backend.store.get(backend.prefix + k)) for k in keys]
    json.dump(
        {"set_s": set_s, "get_s": get_s, "encode_s": encode_s, "decode_s": decode_s,
         "stored_bytes": stored, "direct_bytes": [len(b) for b in blobs]},
        open(sys.argv[2], "w"),
    )  # fmt: skip


if __name__ == "__main__":
    main()
