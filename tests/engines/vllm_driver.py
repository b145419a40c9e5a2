"""Runs vLLM (CPU) scenarios for the connector tests and benchmark, in the vLLM environment.

    python vllm_driver.py plan.json out.json

The plan lists runs; each run builds a fresh `vllm.LLM` (with or without the connector, in
bf16 or the run's "dtype") and goes through its steps in order: a request (greedy;
`max_tokens` 1 times the first token), a stored object to damage, or a wait until the
background saves have written a number of chunk records. The result per request: generated
token ids, `num_cached_tokens`, the connector's stats (`kv_transfer_params["cachegen"]`) and
the seconds the generate call took.
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
        served_model_name=run.get("served_model_name"),
        skip_tokenizer_init=True,
        enable_prefix_caching=run.get("prefix_caching", False),
        dtype=run.get("dtype", "bfloat16"),
        max_model_len=8192,
        max_num_batched_tokens=8192,
        seed=0,
        # torch.compile's first warm-up takes minutes on two cores; eager runs start in seconds.
        enforce_eager=True,
        **kwargs,
    )


def _corrupt(folder: str, start: int, level: int) -> str:
    """Flip a byte in the middle of the blob at `level` of the stored chunk starting at token
    `start` (found through the chunk records of a file store; the first stored at `level`)."""
    for record in Path(folder).rglob("record.json"):
        chunk = json.loads(record.read_text())["body"]["chunk"]
        if chunk["start"] == start and str(level) in chunk["levels"]:
            path = Path(folder) / chunk["levels"][str(level)]["key"]
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
            return str(path)
    raise SystemExit(f"no stored chunk starts at token {start}")


def _wait_records(store: str, count: int, timeout_s: float) -> int:
    """Wait until `store` (a URL) holds `count` chunk records: the saves run in the background."""
    import cachegen.store

    objects = cachegen.store.open(store)
    deadline = time.monotonic() + timeout_s
    while True:
        found = sum(key.endswith("/record.json") for key in objects.list("chunks/"))
        if found >= count:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(f"only {found} of {count} chunk records saved in {timeout_s} s")
        time.sleep(0.2)


def _margins(steps: list[dict[int, Any]]) -> list[float]:
    """Per generated token, the log-probability lead of the top token over the runner-up."""
    out = []
    for step in steps:
        best = sorted((lp.logprob for lp in step.values()), reverse=True)
        out.append(best[0] - best[1] if len(best) > 1 else float("inf"))
    return out


def _request(llm: Any, req: dict[str, Any]) -> dict[str, Any]:
    from vllm import SamplingParams

    extra = {"kv_transfer_params": {"cachegen": req["params"]}} if req.get("params") else None
    # ignore_eos: a greedy continuation of fixed length, comparable token for token.
    params = SamplingParams(
        temperature=0.0,
        max_tokens=req.get("max_tokens", 32),
        ignore_eos=True,
        detokenize=False,
        logprobs=2,
        extra_args=extra,
    )
    prompt = {"prompt_token_ids": req["prompt"]}
    t0 = time.perf_counter()
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    seconds = time.perf_counter() - t0
    return {
        "name": req["name"],
        "request_id": out.request_id,
        "tokens": list(out.outputs[0].token_ids),
        "margins": _margins(out.outputs[0].logprobs or []),
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
        rows: list[dict[str, Any]] = []
        for step in run["steps"]:
            if "corrupt" in step:
                rows.append({"name": "corrupt", "path": _corrupt(**step["corrupt"])})
            elif "wait_records" in step:
                rows.append({"name": "saved", "records": _wait_records(**step["wait_records"])})
            else:
                rows.append(_request(llm, step))
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        results.append({"name": run["name"], "start_s": started, "requests": rows})
        Path(sys.argv[2]).write_text(json.dumps({"runs": results}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main()
