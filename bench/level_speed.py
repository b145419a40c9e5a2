"""Decode and encode speed of the new default level (sink + recency, with and without the SmolLM2
profile, whose importance model reads signed key features, and with that profile's importance
cut to the RoPE pair magnitudes) against the previous default's steps without step weights, same
run, same cache.

    python bench/level_speed.py      # writes bench/results/level_speed.md

Real SmolLM2 KV (30 x 3 x 64 x 4096, `kvdata.real_kv`), 2 threads, medians of interleaved rounds.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np

import cachegen
from cachegen import profiles
from lib import kvdata
from lib.runinfo import RunInfo

ROUNDS = 9
OUT = Path(__file__).resolve().parent / "results" / "level_speed.md"


def magnitudes_only(p: cachegen.ModelProfile, width: int) -> cachegen.ModelProfile:
    """`p` with its importance model's first `width` coefficients (the pair magnitudes') only."""
    rows = tuple(row[:width] for row in p.importance)
    return dataclasses.replace(p, importance=rows, rope_thetas=())


def main() -> None:
    info = RunInfo.capture()
    kv = kvdata.real_kv()
    default = cachegen.CodecConfig.from_level(cachegen.DEFAULT_LEVEL)
    smollm2 = profiles.load(profiles.SMOLLM2)
    variants = {
        "previous default (k 0.35 / v 0.7, no step weights)": {
            "config": cachegen.CodecConfig(key_param=0.35, value_param=0.7)
        },
        f"level {cachegen.DEFAULT_LEVEL} (sink + recency)": {"config": default},
        f"level {cachegen.DEFAULT_LEVEL} + SmolLM2 profile": {
            "config": default,
            "profile": smollm2,
        },
        f"level {cachegen.DEFAULT_LEVEL} + SmolLM2 profile, magnitudes only": {
            "config": default,
            "profile": magnitudes_only(smollm2, kv.shape[3] * kv.shape[4] // 2),
        },
    }
    blobs = {name: cachegen.encode(kv, threads=2, **opts) for name, opts in variants.items()}
    out = np.empty_like(kv)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(ROUNDS):
        for name, opts in variants.items():
            t0 = time.perf_counter()
            cachegen.encode(kv, threads=2, **opts)
            t1 = time.perf_counter()
            cachegen.decode(blobs[name], out=out, threads=2)
            t2 = time.perf_counter()
            times.setdefault((name, "encode"), []).append(t1 - t0)
            times.setdefault((name, "decode"), []).append(t2 - t1)
    base = next(iter(variants))
    lines = [
        "# Speed of the step-weighted levels (issue 3: decode within 20% of the core figures)",
        "",
        f"{info.finish().line()} Real SmolLM2 KV {kv.shape}, 2 threads, median of {ROUNDS} "
        "interleaved rounds. "
        "Reproduce: `python bench/level_speed.py`.",
        "",
        "| variant | bits/element | encode M elt/s | decode (out=) M elt/s | decode vs previous |",
        "|---|--:|--:|--:|--:|",
    ]
    rate = {k: kv.size / statistics.median(v) / 1e6 for k, v in times.items()}
    for name in variants:
        bits = 8 * len(blobs[name]) / kv.size
        ratio = rate[(name, "decode")] / rate[(base, "decode")]
        lines.append(
            f"| {name} | {bits:.3f} | {rate[(name, 'encode')]:.1f} | "
            f"{rate[(name, 'decode')]:.1f} | {ratio:.2f}x |"
        )
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
