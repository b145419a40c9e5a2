"""Encode and quantize speed of this checkout (`cachegen` on PYTHONPATH) against a base build
(loaded as `cachegen_base` from --base), in one process, alternating round by round: what the
per-call work around the core (the encode plan, the typed request, device routing) costs.
SmolLM2-shaped 256-token chunks, where that work is the largest share, with and without the
shipped profile (token importance read from the keys), a paged one, and a large cache. CPU time
of the process by default (one thread): on a shared machine wall time mostly measures the
neighbours.

    git worktree add build/base <commit> && (build it there) && cp ... build/base/python/cachegen/
    PYTHONPATH=python python bench/plan_speed.py --base build/base/python
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

import cachegen
from cachegen import profiles
from lib.basebuild import ab_run, summary
from lib.runinfo import RunInfo

SMOLLM2 = (30, 256, 3, 64)  # layers, tokens, kv heads, head dim
BLOCK = 16
CLOCK = time.process_time


def chunk(layers: int, tokens: int, heads: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((layers, 2, tokens, heads, dim)).astype(np.float16)


def paged_chunk(kv: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """`kv`'s layers as flash-nhd block caches (blocks in reverse order) and its block ids."""
    layers, _, tokens, heads, dim = kv.shape
    blocks = tokens // BLOCK
    ids = list(range(blocks))[::-1]
    caches = []
    for layer in kv:
        cache = np.zeros((blocks, BLOCK, heads, 2 * dim), np.float16)
        for side in range(2):
            by_block = layer[side].reshape(blocks, BLOCK, heads, dim)
            cache[ids, :, :, side * dim : (side + 1) * dim] = by_block
        caches.append(cache.transpose(0, 2, 1, 3))
    return caches, ids


def workloads(threads: int) -> dict[str, Callable[[ModuleType], object]]:
    small = chunk(*SMOLLM2)
    large = chunk(16, 512, 8, 128, seed=1)
    profile = profiles.load(profiles.SMOLLM2)
    caches, ids = paged_chunk(small)
    tokens = small.shape[2]
    return {
        "encode smollm2 chunk": lambda m: m.encode(small, threads=threads),
        "encode smollm2 chunk, profile": lambda m: m.encode(
            small, profile=profile, position=512, context_end=2048, threads=threads
        ),
        "quantize smollm2 chunk, profile": lambda m: m.quantize(
            small, profile=profile, threads=threads
        ),
        "encode_paged smollm2 chunk": lambda m: m.paged.encode_paged(
            caches, "flash-nhd", ids, tokens, threads=threads
        ),
        "encode 16x512x8x128": lambda m: m.encode(large, threads=threads),
    }


def same_output(a: object, b: object) -> bool:
    if isinstance(a, bytes):
        return a == b
    return all(np.array_equal(x.symbols, y.symbols) for x, y in zip(a, b, strict=True))


def compare(name: str, run: Callable[[ModuleType], object], base: ModuleType, rounds: int) -> str:
    impls = {"base": base, "this": cachegen}
    assert same_output(run(base), run(cachegen)), f"{name}: outputs differ"
    times: dict[str, list[float]] = {k: [] for k in impls}
    for r in range(rounds):
        order = list(impls.items()) if r % 2 == 0 else list(reversed(impls.items()))
        for key, m in order:
            t0 = CLOCK()
            run(m)
            times[key].append(CLOCK() - t0)
    b, t = times["base"], times["this"]
    ratio = statistics.median(t) / statistics.median(b)
    return f"| {name} | {summary(b)} | {summary(t)} | {ratio:.3f} (min {min(t) / min(b):.3f}) |"


def main() -> None:
    ab = ab_run(__doc__, rounds=21)
    global CLOCK
    CLOCK = ab.clock
    base = ab.base
    print(RunInfo.capture().line())
    print(f"rounds {ab.rounds}, threads {ab.threads}, {ab.clock_name} clock, same bytes checked")
    print("| workload | base | this | this / base, medians (mins) |")
    print("|---|---|---|---|")
    for name, run in workloads(ab.threads).items():
        print(compare(name, run, base, ab.rounds), flush=True)


if __name__ == "__main__":
    main()
