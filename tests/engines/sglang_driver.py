"""Runs in the SGLang environment (tests/engines/test_sglang.py): SGLang's backend factory
creates the cachegen backend from the dynamic config; pages round trip through every store.

    python sglang_driver.py PLAN.json OUT.json

PLAN: {"kv": "file.npy" ([2, L, T, heads*dim] fp32), "head_dim": int, "page_size": int,
       "stores": {name: url}, "levels": [...]}.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from driver_errors import error_messages
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

MHA_LAYOUTS = ("layer_first", "page_first", "page_first_direct", "page_head")
MLA_LAYOUTS = ("layer_first", "page_first", "page_first_direct")


def storage_config(url: str, level: Any, mla: bool) -> HiCacheStorageConfig:
    extra = {
        "backend_name": "cachegen",
        "module_path": "cachegen.sglang",
        "class_name": "CachegenHiCacheStorage",
        "store": url,
        "level": level,
    }
    return HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=mla, enable_storage_metrics=False, is_page_first_layout=False,
        model_name="test/model", extra_config=extra,
    )  # fmt: skip


def mha_pages(kv: torch.Tensor, head_dim: int, page: int, layout: str) -> list[torch.Tensor]:
    """Flat host pages of `kv` [2, L, T, hidden] in an MHA pool layout."""
    _, layers, tokens, hidden = kv.shape
    x = kv.reshape(2, layers, tokens, hidden // head_dim, head_dim)
    pages = []
    for start in range(0, tokens, page):
        p = x[:, :, start : start + page]  # [2, L, P, H, D]
        p = {
            "layer_first": p,
            "page_first": p.permute(0, 2, 1, 3, 4),
            "page_first_direct": p.unsqueeze(1),
            "page_head": p.permute(0, 3, 2, 1, 4).unsqueeze(1),
        }[layout]
        pages.append(p.contiguous().flatten())
    return pages


def mla_pages(latent: torch.Tensor, page: int, layout: str) -> list[torch.Tensor]:
    """Flat host pages of a latent [L, T, 576] in an MLA pool layout."""
    pages = []
    for start in range(0, latent.shape[1], page):
        p = latent[:, start : start + page].unsqueeze(2)  # [L, P, 1, D]
        p = {
            "layer_first": p,
            "page_first": p.permute(1, 0, 2, 3),
            "page_first_direct": p.unsqueeze(0),
        }[layout]
        pages.append(p.contiguous().flatten())
    return pages


def pool(layout: str, kv_shape: tuple, head_dim: int, page: int, dtype: Any, mla: bool) -> Any:
    """The host-pool geometry SGLang registers (its pools need a device pool to construct)."""
    if mla:
        return SimpleNamespace(
            layout=layout, layer_num=kv_shape[0], page_size=page, dtype=dtype,
            kv_lora_rank=512, qk_rope_head_dim=64,
        )  # fmt: skip
    return SimpleNamespace(
        layout=layout, layer_num=kv_shape[1], page_size=page, dtype=dtype,
        head_num=kv_shape[3] // head_dim, head_dim=head_dim,
    )  # fmt: skip


def roundtrip(backend: Any, pages: list[torch.Tensor], tag: str) -> dict[str, Any]:
    keys = [f"{tag}-{i}" for i in range(len(pages))]
    absent_before = not any(backend.exists(k) for k in keys)
    stored = backend.batch_set(keys, pages)
    targets = [torch.zeros_like(p) for p in pages]
    got = backend.batch_get(keys, targets)
    x, y = torch.cat(pages).float(), torch.cat(targets).float()
    return {
        "absent_before": absent_before,
        "stored": stored,
        "exists": all(backend.exists(k) for k in keys),
        "returned_targets": all(g is t for g, t in zip(got, targets, strict=True)),
        "missing_is_none": backend.get(f"{tag}-missing", torch.zeros_like(pages[0])) is None,
        "exact": all(
            torch.equal(a.view(torch.uint8), b.view(torch.uint8))
            for a, b in zip(pages, targets, strict=True)
        ),
        "rel_rms": float((x - y).pow(2).mean().sqrt() / x.pow(2).mean().sqrt()),
    }


def errors(backend: Any, page: torch.Tensor) -> dict[str, str]:
    cases = {
        "bad_dtype": lambda: backend.set("bad", page.to(torch.float32)),
        "bad_size": lambda: backend.set("bad", page[:-1]),
    }
    return error_messages(cases)


def main() -> None:
    plan = json.loads(open(sys.argv[1]).read())
    kv = torch.from_numpy(np.load(plan["kv"]))
    hd, page = plan["head_dim"], plan["page_size"]
    rows = torch.cat([kv[0], kv[1]], dim=-1)
    latent = rows.repeat(1, 1, -(-576 // rows.shape[-1]))[..., :576].contiguous()
    results: dict[str, Any] = {}
    for sname, url in plan["stores"].items():
        for level in plan["levels"]:
            for mla, layouts in ((False, MHA_LAYOUTS), (True, MLA_LAYOUTS)):
                cfg = storage_config(url, level, mla)
                for layout in layouts:
                    for dtype in (torch.bfloat16, torch.float16):
                        src = (latent if mla else kv).to(dtype)
                        host = pool(layout, tuple(src.shape), hd, page, dtype, mla)
                        backend = StorageBackendFactory.create_backend("dynamic", cfg, host)
                        backend.register_mem_pool_host(host)
                        pages = (
                            mla_pages(src, page, layout)
                            if mla
                            else mha_pages(src, hd, page, layout)
                        )
                        name = (
                            f"{sname}/{level}/{'mla' if mla else 'mha'}/{layout}/{str(dtype)[6:]}"
                        )
                        results[name] = roundtrip(backend, pages, name.replace("/", "_"))
                        if sname == "file" and layout == "layer_first":
                            results[name]["errors"] = errors(backend, pages[0])
                        backend.close()
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
