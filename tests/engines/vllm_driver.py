"""Runs vLLM (CPU) scenarios for the connector tests and benchmark, in the vLLM environment.

    python vllm_driver.py plan.json out.json

The plan lists runs; each run builds a fresh `vllm.LLM` (with or without the connector), sends
its requests one at a time (greedy), and between requests may damage a stored object. The result
per request: generated token ids, `num_cached_tokens`, the connector's stats and the seconds to
the first token (a generation of one token, timed separately).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _llm(run: dict[str, Any]) -> Any:
    from vllm import LLM
    from vllm.config import KVTransferConfig

    kwargs: dict[str, Any] = {}
    if run.get("connector") is not None:
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="CacheGenConnector",
            kv_connector_module_path="cachegen.vllm",
            kv_role="kv_both",
            kv_load_failure_policy="recompute",
            kv_connector_extra_config=run["connector"],
        )
    return LLM(
        model=run["model"],
        skip_tokenizer_init=True,
        enable_prefix_caching=False,
        dtype="bfloat16",
        max_model_len=8192,
        max_num_batched_tokens=8192,
        seed=0,
        # torch.compile's first warm-up takes minutes on two cores; eager runs start in seconds.
        enforce_eager=True,
        **kwargs,
    )


def _corrupt(folder: str, pattern: str, index: int) -> str:
    """Flip a byte in the middle of the `index`-th (sorted) stored object matching `pattern`."""
    paths = sorted(Path(folder).rglob(pattern))
    path = paths[index]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return str(path)


def _request(llm: Any, req: dict[str, Any]) -> dict[str, Any]:
    from vllm import SamplingParams

    extra = {"kv_transfer_params": {"cachegen": req["params"]}} if req.get("params") else None
    params = SamplingParams(
        temperature=0.0, max_tokens=req.get("max_tokens", 32), detokenize=False, extra_args=extra
    )
    prompt = {"prompt_token_ids": req["prompt"]}
    t0 = time.perf_counter()
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    seconds = time.perf_counter() - t0
    return {
        "name": req["name"],
        "tokens": list(out.outputs[0].token_ids),
        "num_cached_tokens": out.num_cached_tokens,
        "cachegen": (out.kv_transfer_params or {}).get("cachegen"),
        "seconds": seconds,
    }


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    results = []
    for run in plan["runs"]:
        t0 = time.perf_counter()
        llm = _llm(run)
        started = time.perf_counter() - t0
        rows = []
        for req in run["requests"]:
            if "corrupt" in req:
                c = req["corrupt"]
                rows.append(
                    {"name": "corrupt", "path": _corrupt(c["folder"], c["pattern"], c["index"])}
                )
                continue
            rows.append(_request(llm, req))
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        results.append({"name": run["name"], "start_s": started, "requests": rows})
        Path(sys.argv[2]).write_text(json.dumps({"runs": results}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main()
