"""Time to first token of a vLLM request whose prompt prefix is stored, with the cachegen
connector against recomputing it, on the CPU vLLM serving the real SmolLM2.

    python bench/vllm_ttft.py            # root (a network namespace); writes
                                         # bench/results/vllm.json + vllm.md

moto's S3 server runs behind a tc-shaped veth link (`lib.netlink.NetLink`). Request A (a prefix of
2,048 or 4,096 tokens of GPL-3 plus a question) is served once with the connector, which saves
the prompt's whole chunks at levels whose pooled KL on SmolLM2 is at most 0.01 (with its
profile, `bench/results/quality.json`). Then, per link rate, a fresh engine with the connector
serves request B (the same prefix, another question): the controller chooses the cut point and
the levels (SLO 1 s). The baseline is a fresh engine without the connector.
TTFT is the time of a one-token generate call, after one warm-up request per engine; medians
of `--repeats` requests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import cachegen
from lib.netlink import NetLink
from lib.runinfo import RunInfo, describe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DRIVER = ROOT / "tests" / "engines" / "vllm_driver.py"
DOCUMENT = Path("/usr/share/common-licenses/GPL-3")
MBIT = 1e6 / 8
RATES_MBIT = (100, 1000)
PREFIXES = (2048, 4096)
CHUNK = 256
#: Levels with pooled KL <= 0.01 on SmolLM2 with its profile (quality.json: 10 -> 9.3e-3).
LEVELS = (10, 12, 15)
PROFILE = "smollm2-135m-instruct"
#: The controller's TTFT target for loading: levels and cut point that meet it, best quality.
SLO_S = 1.0
QUESTIONS = [
    "what does this license say about distributing copies?",
    "what are the conditions for conveying modified versions?",
]


def prompts(model_dir: Path) -> dict[str, list[int]]:
    from cachegen import smollm2

    text = DOCUMENT.read_text()
    out = {}
    for n in PREFIXES:
        out[f"A{n}"], out[f"B{n}"] = smollm2.shared_prefix_prompts(
            str(model_dir), text, n, QUESTIONS
        )
    out["warm"] = smollm2.shared_prefix_prompts(str(model_dir), text[-2000:], 300, QUESTIONS)[0]
    return out


def vllm_env(venv: Path, cache: Path) -> dict[str, str]:
    link = cache / "pythonpath"
    link.mkdir(exist_ok=True)
    if not (link / "cachegen").exists():
        (link / "cachegen").symlink_to(Path(cachegen.__file__).parent)
    return dict(
        os.environ,
        PYTHONPATH=str(link),
        LD_PRELOAD=str(venv / "lib" / "libiomp5.so"),
        VLLM_CPU_KVCACHE_SPACE="1",
        CACHEGEN_CACHE_DIR=str(cache),
        CACHEGEN_COSTS=str(cache / "costs.json"),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )


def drive(venv: Path, env: dict[str, str], plan: dict[str, Any], work: Path) -> dict[str, Any]:
    plan_file, out_file, log = work / "plan.json", work / "out.json", work / "vllm.log"
    plan_file.write_text(json.dumps(plan))
    with log.open("a") as f:
        done = subprocess.run(
            [str(venv / "bin" / "python"), str(DRIVER), str(plan_file), str(out_file)],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    if done.returncode:
        sys.exit(f"vLLM driver failed; see {log}")
    return json.loads(out_file.read_text())


def requests(p: dict[str, list[int]], repeats: int) -> list[dict[str, Any]]:
    steps = [{"name": "warm", "prompt": p["warm"], "max_tokens": 1}]
    for n in PREFIXES:
        steps += [{"name": f"B{n}", "prompt": p[f"B{n}"], "max_tokens": 1}] * repeats
    return steps


def summarize(out: dict[str, Any], stats_file: Path | None) -> dict[str, dict[str, Any]]:
    """Per prompt: TTFTs, tokens vLLM took from outside, and the connector's load stats."""
    loads = {}
    if stats_file is not None and stats_file.exists():
        for line in stats_file.read_text().splitlines():
            entry = json.loads(line)
            # vLLM's internal request id is the caller's with a suffix: "<id>-<random>".
            loads[entry["request_id"].split("-")[0]] = entry
    rows: dict[str, dict[str, Any]] = {}
    for q in out["runs"][0]["requests"]:
        if q["name"].startswith("B"):
            row = rows.setdefault(q["name"], {"ttft_s": [], "cached": [], "loads": []})
            row["ttft_s"].append(q["seconds"])
            row["cached"].append(q["num_cached_tokens"])
            row["loads"].append(loads.get(q["request_id"]))
    for row in rows.values():
        row["median_s"] = statistics.median(row["ttft_s"])
    return rows


def rate_cells(
    venv: Path,
    env: dict[str, str],
    work: Path,
    link: NetLink,
    model: dict[str, str],
    p: dict[str, list[int]],
    base: dict[str, dict[str, Any]],
    mbit: int,
    repeats: int,
) -> list[dict[str, Any]]:
    """Save the A prompts over a fast link, then time B over `mbit` with a fresh engine."""
    link.shape(10_000 * MBIT)
    store = link.store_url()
    conn = {
        "store": store,
        "levels": list(LEVELS),
        "chunk_tokens": CHUNK,
        "profile": PROFILE,
        "slo_s": SLO_S,
        "timeout_s": 5.0,
    }
    saves: list[dict[str, Any]] = [
        {"name": f"A{n}", "prompt": p[f"A{n}"], "max_tokens": 1} for n in PREFIXES
    ]
    # The prompts share their first 2,048 tokens: 16 distinct chunks in all.
    saves.append({"wait_records": {"store": store, "count": 16, "timeout_s": 600}})
    drive(venv, env, {"runs": [{"name": "save", **model, "connector": conn, "steps": saves}]}, work)
    link.shape(mbit * MBIT)
    stats = work / f"loads-{mbit}.jsonl"
    load = {
        "name": f"{mbit}",
        **model,
        "connector": conn | {"save": False, "stats_file": str(stats)},
        "steps": requests(p, repeats),
    }
    got = summarize(drive(venv, env, {"runs": [load]}, work), stats)
    cells = []
    for n in PREFIXES:
        row, ref = got[f"B{n}"], base[f"B{n}"]
        cells.append(
            {
                "prefix_tokens": n,
                "link_mbit": mbit,
                "ttft_connector_s": row["median_s"],
                "ttft_recompute_s": ref["median_s"],
                "speedup": ref["median_s"] / row["median_s"],
                "runs_connector_s": row["ttft_s"],
                "runs_recompute_s": ref["ttft_s"],
                "cached_tokens": row["cached"],
                "loads": row["loads"],
            }
        )
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    info = RunInfo.capture()
    venv = Path(
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "engine_env.sh"), "vllm"],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    from cachegen import smollm2

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = Path(smollm2.write_checkpoint(str(work / "smollm2")))
        p = prompts(model_dir)
        env = vllm_env(venv, work)
        model = {"model": str(model_dir), "served_model_name": "smollm2"}
        base_run = {"name": "base", **model, "connector": None, "steps": requests(p, args.repeats)}
        base = summarize(drive(venv, env, {"runs": [base_run]}, work), None)
        cells = []
        for mbit in RATES_MBIT:
            # A fresh server, store and bandwidth estimate per rate: nothing carries over.
            (work / "bandwidth.json").unlink(missing_ok=True)
            with NetLink() as link:
                cells += rate_cells(venv, env, work, link, model, p, base, mbit, args.repeats)
    report = {
        "run": info.finish().as_dict(),
        "levels": LEVELS,
        "profile": PROFILE,
        "chunk_tokens": CHUNK,
        "repeats": args.repeats,
        "cells": cells,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vllm.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "vllm.md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# vLLM: time to first token with the cachegen connector vs recompute",
        "",
        f"{describe(r['run'])} vLLM 0.32.0 (vllm-cpu), SmolLM2-135M-Instruct bf16, "
        f"chunks of {r['chunk_tokens']} tokens stored at levels {list(r['levels'])} with the "
        f"model's profile (pooled KL <= 0.01), controller SLO {SLO_S} s; moto S3 behind a "
        f"tc-shaped link (a fresh server per rate). Medians of {r['repeats']} one-token "
        "requests after a warm-up, each engine fresh. "
        "Reproduce: `sudo python bench/vllm_ttft.py`.",
        "",
        "| prefix tokens | link | TTFT recompute (s) | TTFT connector (s) | speedup "
        "| tokens loaded | levels |",
        "|--:|--:|--:|--:|--:|--:|---|",
    ]
    for c in r["cells"]:
        stats = c["loads"][-1] or {}
        lines.append(
            f"| {c['prefix_tokens']} | {c['link_mbit']} Mbit/s | {c['ttft_recompute_s']:.3f} | "
            f"{c['ttft_connector_s']:.3f} | {c['speedup']:.2f}x | "
            f"{stats.get('loaded_tokens', 0)} | "
            f"{','.join(stats.get('levels', []))} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
