"""Measured load time on a real throttled link against the simulator's prediction.

    python bench/stream_link.py        # root: makes a network namespace; writes
                                       # bench/results/stream_link.json + stream_link.md

moto's S3 server runs in a network namespace behind a veth pair shaped by tc (tbf) to
20 Mbit/s, 200 Mbit/s and 2 Gbit/s. A SmolLM2-shaped context (30 layers x 3 KV heads x 64,
2048 tokens, chunks of 256) is stored at every level and loaded through the real loader with
fixed levels and with the controller; the engine decodes for real and emulates recompute at a
fixed prefill speed. The simulator predicts each load from the stored sizes, the same cost
model and the link's rate plus its measured per-request overhead.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import cachegen
import cachegen.store
from cachegen.context import save_context
from cachegen.stream import CostModel, Loader, context_table
from cachegen.stream.sim import Trace, fixed, ours, simulate
from netlink import NetLink

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS, HEADS, DIM, TOKENS, CHUNK = 30, 3, 64, 2048, 256
MBIT = 1e6 / 8


class DecodeEngine:
    """Decodes blobs for real (numpy); recomputes text by sleeping at `prefill_tps`."""

    key = "bench-decode"
    kv_elements_per_token = LAYERS * 2 * HEADS * DIM
    recompute = "chunk"

    def __init__(self, prefill_tps: float) -> None:
        self.prefill_tps = prefill_tps

    def begin(self) -> None:
        self.parts: list[Any] = []

    def append_kv(self, blob: bytes) -> None:
        self.parts.append(cachegen.decode(blob, framework="numpy"))

    def append_text(self, token_ids: np.ndarray) -> None:
        time.sleep(len(token_ids) / self.prefill_tps)

    def measure_prefill(self, positions: list[int]) -> list[float]:
        return [self.prefill_tps for _ in positions]

    def finish(self) -> list[Any]:
        return self.parts


def quality() -> dict[str, Any] | None:
    """The ladder's KL from bench/results/quality.json, if there."""
    path = RESULTS / "quality.json"
    if not path.exists():
        return None
    pooled = {r["method"]: r["kl_mean"] for r in json.loads(path.read_text())["pooled"]}
    return {"kl": {str(lv): pooled[f"cg{lv}"] for lv in cachegen.LEVELS if f"cg{lv}" in pooled}}


def _median_get(store: Any, key: str, end: int) -> float:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        store.get_range(key, 0, end)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def link_model(store: Any, key: str, size: int, rate: float) -> tuple[float, float]:
    """The link as one GET sees it: fixed cost per request (a 1-byte read) and goodput (a
    chunk-sized read), never above the shaped `rate`. TCP under a tbf gets a little less
    than the nominal rate; the simulator is told what a transfer actually gets."""
    overhead = _median_get(store, key, 1)
    whole = _median_get(store, key, size)
    return overhead, min(rate, size / max(whole - overhead, 1e-6))


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    kv = rng.standard_normal((LAYERS, 2, TOKENS, HEADS, DIM)).astype(np.float16)
    ids = np.arange(TOKENS, dtype=np.uint32)
    rows = []
    with NetLink() as link:
        link.shape(10_000 * MBIT)
        # A short request timeout: moto now and then leaves a kept-alive request unanswered.
        store = cachegen.store.open(link.store_url(), timeout=5.0, **link.credentials)
        ctx = save_context(store, "bench", ids, kv, levels=cachegen.LEVELS, quality=quality())
        engine = DecodeEngine(args.prefill_tps)
        blob = ctx.fetch(0, 3)
        t0 = time.perf_counter()
        cachegen.decode(blob, framework="numpy")
        decode_eps = CHUNK * engine.kv_elements_per_token / (time.perf_counter() - t0)
        for mbit in args.rates:
            link.shape(mbit * MBIT)
            ref = ctx.chunks[0].levels[max(ctx.levels)]
            overhead, goodput = link_model(store, ref.key, ref.size, mbit * MBIT)
            trace = Trace.constant(goodput, latency=overhead)
            strategies = {f"level {lv}": fixed(lv) for lv in (1, 3, 5)}
            strategies["ours"] = None
            for name, policy in strategies.items():
                measured = []
                for _ in range(args.repeats):
                    costs = CostModel(decode_eps, args.prefill_tps)
                    loader = Loader(store, engine, costs, args.slo, ranges=1, policy=policy)
                    measured.append(loader.load("bench", ids).report)
                ttft = statistics.median(r.total_s for r in measured)
                sim_policy = policy or ours(args.slo)
                costs = CostModel(decode_eps, args.prefill_tps)
                predicted = simulate(
                    context_table(ctx, costs, engine.kv_elements_per_token),
                    trace,
                    sim_policy,
                    args.slo,
                )
                rows.append(
                    {
                        "mbit": mbit,
                        "strategy": name,
                        "request_overhead_ms": overhead * 1e3,
                        "goodput_mbit": goodput / MBIT,
                        "measured_s": ttft,
                        "predicted_s": predicted.ttft,
                        "error_pct": 100 * (ttft / predicted.ttft - 1),
                        "measured_plan": [str(c) for c in measured[0].choices],
                        "predicted_plan": [str(c) for c in predicted.choices],
                        "mb": measured[0].nbytes / 1e6,
                    }
                )
                print(_line(rows[-1]), file=sys.stderr, flush=True)
        store.close()
    import os
    import platform

    from kvquality.report import cpu_model, git_commit

    return {
        "run": {
            "machine": f"{platform.node()}: {cpu_model()}, {os.cpu_count()} CPUs",
            "platform": platform.platform(),
            "commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "slo_s": args.slo,
            "prefill_tps": args.prefill_tps,
            "decode_elements_per_s": decode_eps,
            "context": f"{TOKENS} tokens, {LAYERS}x{HEADS}x{DIM} fp16 synthetic, chunks {CHUNK}",
        },
        "rows": rows,
    }


def _line(r: dict[str, Any]) -> str:
    return (
        f"| {r['mbit']:g} | {r['goodput_mbit']:.0f} | {r['strategy']} | {r['mb']:.2f} | "
        f"{r['request_overhead_ms']:.1f} | "
        f"{r['measured_s'] * 1e3:.0f} | {r['predicted_s'] * 1e3:.0f} | {r['error_pct']:+.1f}% |"
    )


def markdown(data: dict[str, Any]) -> str:
    run = data["run"]
    lines = [
        "# Streaming over a real throttled link: measured vs simulated",
        "",
        f"Machine: {run['machine']} ({run['platform']}); {run['date']}, commit `{run['commit']}`.",
        f"Context: {run['context']}; SLO {run['slo_s']} s for `ours`; decode "
        f"{run['decode_elements_per_s'] / 1e6:.0f} M elements/s; recompute emulated at "
        f"{run['prefill_tps']:g} tokens/s. Link: moto S3 in a netns, veth + tc tbf.",
        "",
        "Simulated: the same strategy over a constant link of the goodput one chunk-sized GET "
        "measured (at most the shaped rate) plus the measured per-request overhead.",
        "",
        "| Mbit/s (tbf) | goodput | strategy | MB | req. overhead ms | measured ms | "
        "simulated ms | error |",
        "|--:|--:|---|--:|--:|--:|--:|--:|",
        *(_line(r) for r in data["rows"]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rates", type=float, nargs="+", default=[20, 200], help="Mbit/s")
    p.add_argument("--slo", type=float, default=1.0)
    p.add_argument("--prefill-tps", type=float, default=400.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    # A timeout's SIGTERM unwinds like an exception, so the namespace is always removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stream_link.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "stream_link.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
