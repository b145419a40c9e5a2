"""Trace-driven sweep of the streaming controller against the baselines.

    python bench/stream_sim.py                  # writes bench/results/stream.json + stream.md
    python bench/stream_sim.py --quick          # fewer traces, for a smoke run

Contexts of SmolLM2-135M-Instruct (30 layers x 3 KV heads x 64) of several lengths, chunks of
256 tokens, over bandwidth traces from 0.1 to 10 Gbit/s (steady, noisy, 10x drop), for several
TTFT SLOs and two engines (recompute speeds). Strategies, all in the same run: text only;
int8 without entropy coding; each fixed level; CacheGen's rule; ours; the oracle (best plan in
hindsight). Per-level size and KL come from bench/results/quality.json (bench/codec_quality.py),
else are measured here on a short run of the real model; decode speed is measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import cachegen
from cachegen.stream import (
    TEXT,
    ChunkOptions,
    CostModel,
    OptionTable,
    measure_decode_eps,
    option_table,
)
from cachegen.stream.sim import (
    SimResult,
    Trace,
    cachegen_rule,
    fixed,
    oracle,
    ours,
    select,
    simulate,
)
from lib.plots import plot_sweep_results
from lib.runinfo import RunInfo, describe

RESULTS = Path(__file__).resolve().parent / "results"
#: SmolLM2-135M: 30 layers x (K, V) x 3 KV heads x head_dim 64.
ELEMENTS_PER_TOKEN = 30 * 2 * 3 * 64
CHUNK = 256
GBIT = 1e9 / 8


@dataclass(frozen=True)
class Ladder:
    """Per option: bits per element and mean KL (from the quality benchmark)."""

    bits: dict[str, float]
    kl: dict[str, float]
    source: str


def ladder(quick: bool) -> Ladder:
    """Sizes and KL of levels 1..5 and int8, from quality.json or measured now."""
    keys = [f"cg{lv}" for lv in cachegen.LEVELS] + ["int8"]
    path = RESULTS / "quality.json"
    if path.exists():
        pooled = {r["method"]: r for r in json.loads(path.read_text())["pooled"]}
        if all(k in pooled for k in keys):
            return Ladder(
                {k: pooled[k]["bits_per_element"] for k in keys},
                {k: pooled[k]["kl_mean"] for k in keys},
                str(path.relative_to(RESULTS.parent.parent)),
            )
    from lib.kvquality import load_documents, make_methods, pool, run_quality

    print("quality.json absent: measuring the ladder on GPL-3 (512+64 tokens)", file=sys.stderr)
    rows = pool(run_quality(make_methods(keys), load_documents(("GPL-3",)), prefix=512, cont=64))
    return Ladder(
        {r.method: r.bits_per_element for r in rows},
        {r.method: r.kl_mean for r in rows},
        "measured by stream_sim.py on GPL-3, 512-token prefix, 64 scored tokens",
    )


def measure_int8_eps() -> float:
    """Dequantization speed of int8 codes with per-token scales (elements/s), in numpy."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (CHUNK * 60, 192), dtype=np.int8)
    scales = rng.random((CHUNK * 60, 1), dtype=np.float32).astype(np.float16)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        _ = codes.astype(np.float16) * scales
        best = min(best, time.perf_counter() - t0)
    return codes.size / best


def context_table(
    tokens: int, lad: Ladder, decode_eps: float, int8_eps: float, prefill_tps: float
) -> OptionTable:
    """Every option's cost for a context of `tokens` tokens in chunks of 256."""
    choices = (*cachegen.LEVELS, "int8", TEXT)
    key = {c: "int8" if c == "int8" else f"cg{c}" for c in choices if c != TEXT}
    chunks = [
        ChunkOptions(
            start,
            min(start + CHUNK, tokens),
            {
                c: (min(start + CHUNK, tokens) - start) * ELEMENTS_PER_TOKEN * lad.bits[k] / 8
                for c, k in key.items()
            },
        )
        for start in range(0, tokens, CHUNK)
    ]
    costs = CostModel(decode_eps, prefill_tps)  # recompute at a flat rate per token
    kl = {c: lad.kl[k] for c, k in key.items()}
    return option_table(chunks, choices, kl, costs, ELEMENTS_PER_TOKEN, {"int8": int8_eps})


def traces(quick: bool) -> list[Trace]:
    """Steady, noisy (log-normal per 100 ms) and 10x-drop traces at 0.1 .. 10 Gbit/s."""
    means = [0.1, 1.0, 10.0] if quick else [0.1, 0.3, 1.0, 3.0, 10.0]
    seeds = 1 if quick else 3
    out = []
    for g in means:
        bps = g * GBIT
        out.append(Trace.constant(bps, name=f"steady {g:g}G"))
        for s in range(seeds):
            rates = np.random.default_rng(s).lognormal(np.log(bps), 0.35, 600)
            out.append(Trace(np.arange(600) * 0.1, rates, name=f"noisy {g:g}G #{s}"))
        times = np.array([0.0, 0.2])
        out.append(Trace(times, np.array([bps, bps / 10]), name=f"drop {g:g}G->{g / 10:g}G"))
    return out


def strategies(table: OptionTable, slo: float) -> dict[str, tuple[OptionTable, Any]]:
    """Strategy name -> (the options it may use, its policy)."""
    ours_table = select(table, (*cachegen.LEVELS, TEXT))
    out: dict[str, tuple[OptionTable, Any]] = {
        "text only": (select(table, (TEXT,)), fixed(TEXT)),
        "int8": (select(table, ("int8",)), fixed("int8")),
    }
    for lv in cachegen.LEVELS:
        out[f"level {lv}"] = (select(table, (lv,)), fixed(lv))
    out["CacheGen rule"] = (ours_table, cachegen_rule(slo, len(table)))
    out["ours"] = (ours_table, ours(slo))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = RunInfo.capture()
    lad = ladder(args.quick)
    decode_eps, int8_eps = measure_decode_eps(), measure_int8_eps()
    engines = {"cpu": args.cpu_prefill_tps, "gpu": args.gpu_prefill_tps}
    lengths = [2048, 8192] if args.quick else [2048, 8192, 32768]
    slos = [0.5, 1.0, 2.0] if args.quick else [0.25, 0.5, 1.0, 2.0, 4.0]
    runs = []
    for engine, tps in engines.items():
        for tokens in lengths:
            table = context_table(tokens, lad, decode_eps, int8_eps, tps)
            for trace in traces(args.quick):
                for slo in slos:
                    row = {"engine": engine, "tokens": tokens, "trace": trace.name, "slo": slo}
                    for name, (t, policy) in strategies(table, slo).items():
                        row[name] = _brief(simulate(t, trace, policy, slo))
                    row["oracle"] = _brief(
                        oracle(select(table, (*cachegen.LEVELS, TEXT)), trace, slo)
                    )
                    runs.append(row)
        print(f"{engine}: {len(runs)} runs", file=sys.stderr)
    return {
        "run": info.finish().as_dict()
        | {
            "decode_elements_per_s": decode_eps,
            "int8_dequant_elements_per_s": int8_eps,
            "prefill_tokens_per_s": engines,
            "ladder": asdict(lad),
            "chunk_tokens": CHUNK,
            "elements_per_token": ELEMENTS_PER_TOKEN,
        },
        "summary": summarize(runs),
        "runs": runs,
    }


def _brief(r: SimResult) -> dict[str, Any]:
    choices = "".join("T" if c == TEXT else "8" if c == "int8" else str(c) for c in r.choices)
    return {"ttft": r.ttft, "met": r.met, "mb": r.nbytes / 1e6, "kl": r.mean_kl, "plan": choices}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's numbers: per SLO and overall, over runs where some plan meets the SLO."""
    names = [k for k in runs[0] if isinstance(runs[0][k], dict)]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if any(r[n]["met"] for n in names):
            groups[f"slo {r['slo']:g}s"].append(r)
            groups["all"].append(r)
    out = {}
    for group, rows in sorted(groups.items(), key=lambda kv: (kv[0] != "all", kv[0])):
        out[group] = {"runs": len(rows)} | {
            n: {
                "met_pct": 100 * float(np.mean([r[n]["met"] for r in rows])),
                "mean_kl": float(np.mean([r[n]["kl"] for r in rows])),
                "ttft_vs_oracle": float(
                    np.mean([r[n]["ttft"] / r["oracle"]["ttft"] for r in rows])
                ),
            }
            for n in names
        }
    return out


def markdown(data: dict[str, Any]) -> str:
    run = data["run"]
    lad = run["ladder"]
    lines = [
        "# Streaming controller: trace-driven sweep",
        "",
        describe(run),
        f"SmolLM2-135M KV ({run['elements_per_token']} elements/token), chunks of "
        f"{run['chunk_tokens']} tokens; ladder from {lad['source']}.",
        f"Decode {run['decode_elements_per_s'] / 1e6:.0f} M elements/s (measured), int8 "
        f"dequant {run['int8_dequant_elements_per_s'] / 1e6:.0f} M elements/s; recompute "
        + ", ".join(f"{k} {v:g} tokens/s" for k, v in run["prefill_tokens_per_s"].items())
        + ".",
        "",
        "Runs where some strategy meets the SLO. met: % of them meeting it; KL: mean per-token "
        "KL vs uncompressed; TTFT/oracle: mean ratio to the best plan in hindsight.",
        "",
    ]
    for group, stats in data["summary"].items():
        lines += [f"## {group} ({stats['runs']} runs)", ""]
        lines += ["| strategy | met % | mean KL | TTFT / oracle |", "|---|--:|--:|--:|"]
        for name, s in stats.items():
            if name == "runs":
                continue
            lines.append(
                f"| {name} | {s['met_pct']:.1f} | {s['mean_kl']:.2e} | {s['ttft_vs_oracle']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer traces, lengths and SLOs")
    p.add_argument("--cpu-prefill-tps", type=float, default=400.0, help="SmolLM2 on 2 cores")
    p.add_argument("--gpu-prefill-tps", type=float, default=20000.0, help="a GPU-class engine")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    data = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stream.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "stream.md").write_text(markdown(data))
    print(markdown(data))
    print(
        f"{time.perf_counter() - t0:.0f} s; wrote {args.out}/stream.json, stream.md",
        file=sys.stderr,
    )
    return plot_sweep_results(data, args.out)


if __name__ == "__main__":
    sys.exit(main())
