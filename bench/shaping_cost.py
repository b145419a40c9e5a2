"""What shaped key rounding (`encode(..., queries=)`) costs to encode, against the same encode
without it, same run, same cache: a real model's 1536-token cache of GPL-1, the transform with
the profile and the observed attention (as `transform_profile.py`'s `tpo` and `tpq` curves code
it), one thread, median of interleaved rounds; and, inside the shaped encode, the time
`shaping.key_shaping` takes to map the directions into coefficient space (numpy) for every layer.

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=python:bench python bench/shaping_cost.py \\
        --models gemma3,smollm2      # writes bench/results/shaping_cost.md

Decoding is unchanged by the shaping (the format is the same).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import cachegen
from cachegen.shaping import key_shaping
from lib.cli import words
from lib.runinfo import RunInfo
from transform_codec import prefix_cache, transform_of
from transform_profile import directions, observed, profile_of, profile_paths

ROUNDS = 5
PREFIX = 1536
LEVEL = 10
DOC = "GPL-1"
FIT = ("GPL-2", "LGPL-2.1", "python:difflib", "python:typing")
GEMMA_PROFILE = "gemma3=bench/results/gemma3-270m-profile.json"
OUT = Path(__file__).resolve().parent / "results" / "shaping_cost.md"


def seconds(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def measure(model: str, paths: dict[str, str]) -> dict[str, float]:
    """Median seconds of the plain and the shaped encode and of the directions' mapping (the
    model, its caches and the directions are made before any timing)."""
    t, p = transform_of(model, FIT, PREFIX, 0.0, paths[model]), profile_of(paths[model])
    kv, attention = prefix_cache(model, DOC, PREFIX), observed(model, DOC, PREFIX)
    q = directions(model, DOC, PREFIX)
    heads = [k.shape[1] for k, _ in kv]

    def encode(queries=None):
        args = dict(transform=t, profile=p, attention=attention, queries=queries, threads=1)
        return lambda: cachegen.encode(kv, LEVEL, **args)

    def mapping():
        for layer, (k, _) in enumerate(kv):
            key_shaping(q, t, layer, np.arange(PREFIX - k.shape[2], PREFIX), heads[layer])

    runs = {"plain": encode(), "shaped": encode(q), "mapping": mapping}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            times[name].append(seconds(run))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="gemma3,smollm2")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(1)
    paths = profile_paths([GEMMA_PROFILE])
    info = RunInfo.capture()
    rows = []
    for model in words(a.models):
        m = measure(model, paths)
        rows.append(
            f"| {model} | {m['plain']:.3f} | {m['shaped']:.3f} | {m['shaped'] / m['plain']:.1f}x "
            f"| {m['mapping']:.3f} | {m['shaped'] - m['plain'] - m['mapping']:.3f} |"
        )
    md = [
        "# What shaped key rounding costs to encode",
        "",
        f"{info.finish().line()} Level {LEVEL}, {DOC}'s first {PREFIX} tokens, the transform "
        f"with the profile and the observed attention, one thread, median of {ROUNDS} "
        "interleaved rounds. `rest` is the shaped encode less the plain one and the mapping: "
        "the core's flips and the directions' copies into the core's request.",
        "",
        "| model | plain encode s | shaped encode s | ratio | directions mapped (numpy) s "
        "| rest s |",
        "|---|--:|--:|--:|--:|--:|",
        *rows,
    ]
    a.out.write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
