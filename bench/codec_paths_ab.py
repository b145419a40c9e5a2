"""CPU encode, decode, `inspect` (the head parsed and checksummed) or a vLLM load (256-token
chunks through the engine adapter into vLLM CPU pages) of a KV cache (real SmolLM2 or synthetic)
at the default level, scalar path against the widest vector path, for this checkout and a base
build in the same run: before/after of a change to the coder. Two builds' native cores cannot
share a process (pybind11 registers their types once), so each (build, path) case runs in its
own child process, and the cases alternate round by round so that all of them see the same
machine state. A child times `--per-child` calls after one warm-up, on the process's CPU time by
default (`--clock cpu`: on a shared machine, wall time mostly measures the neighbours; `--clock
wall` where the thread pool's waits should count). `--tokens N` takes the cache's first N tokens
(a stored context's chunk is 256); decode writes into a preallocated fp16 array.

    PYTHONPATH=python python bench/codec_paths_ab.py --base build/base/python --threads 2
    PYTHONPATH=python python bench/codec_paths_ab.py --base build/base/python --op decode
    PYTHONPATH=python python bench/codec_paths_ab.py --base build/base/python --op vllm-load \
        --tokens 2048 --clock wall
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import cachegen
from lib import kvdata
from lib.basebuild import summary
from lib.runinfo import RunInfo

BENCH = Path(__file__).resolve().parent


CHUNK = 256  # tokens per stored chunk, as the vLLM connector loads them
VLLM_BLOCK = 128  # the vLLM CPU backend's default block size


def op_call(
    args: argparse.Namespace, kv: np.ndarray
) -> tuple[Callable[[], Any], Callable[[], bytes]]:
    """The op as a call, and what it gives as bytes (compared across builds)."""
    if args.op == "vllm-load":
        return vllm_load(kv)
    blob = cachegen.encode(kv, threads=args.threads)
    if args.op == "encode":
        return (lambda: cachegen.encode(kv, threads=args.threads)), lambda: blob
    if args.op == "inspect":
        return (lambda: cachegen.inspect(blob)), lambda: repr(cachegen.inspect(blob)).encode()
    out = np.empty_like(kv)
    return (lambda: cachegen.decode(blob, out=out, threads=args.threads)), out.tobytes


def vllm_load(kv: np.ndarray) -> tuple[Callable[[], Any], Callable[[], bytes]]:
    """The cache's 256-token chunks loaded through the vLLM engine adapter into vLLM CPU pages
    at a shuffled block table (it decodes on every core)."""
    from cachegen.vllm.engine import VllmEngine
    from paged_speed import layer_caches

    layers, _, tokens, heads, dim = kv.shape
    chunks = [cachegen.encode(kv[:, :, i : i + CHUNK]) for i in range(0, tokens, CHUNK)]
    caches, ids = layer_caches("vllm-cpu", VLLM_BLOCK, tokens, heads, dim, layers)

    def load() -> int:
        engine = VllmEngine("ab", caches, "vllm-cpu", VLLM_BLOCK, layers * 2 * heads * dim, 1e4)
        engine.bind([int(b) for b in ids])
        engine.begin()
        for chunk in chunks:
            engine.append_kv(chunk)
        return engine.finish()

    return load, lambda: b"".join(c.numpy().tobytes() for c in caches)


def child(args: argparse.Namespace) -> None:
    """Time `--per-child` calls of the op with the cachegen on sys.path; print the times and a
    digest of what the op gives (the blob, the decoded bits, the facts, the loaded pages) as
    JSON."""
    full = kvdata.real_kv() if args.cache == "real" else kvdata.synthetic_kv()
    kv = np.ascontiguousarray(full[:, :, : args.tokens or None])
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    call, result = op_call(args, kv)
    call()
    times = []
    for _ in range(args.per_child):
        t0 = clock()
        call()
        times.append(clock() - t0)
    print(json.dumps({"times": times, "digest": hashlib.sha256(result()).hexdigest()}))


def run_case(pythonpath: Path, path: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{pythonpath}:{BENCH}", CACHEGEN_CPU_PATH=path)
    cmd = [sys.executable, __file__, "--child", "--threads", str(args.threads), "--op", args.op]
    cmd += ["--per-child", str(args.per_child), "--clock", args.clock, "--tokens", str(args.tokens)]
    cmd += ["--cache", args.cache]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="folder holding the base build's cachegen/")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-child", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--op", choices=("encode", "decode", "inspect", "vllm-load"), default="encode")
    ap.add_argument("--tokens", type=int, default=0, help="the cache's first N tokens (0: all)")
    ap.add_argument(
        "--cache",
        choices=("real", "synthetic"),
        default="real",
        help="SmolLM2's real KV (30 x 3 x 64) or kvdata's synthetic 32 layers x 8 heads x 128",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    info = RunInfo.capture()
    paths = ["scalar", cachegen.build_info()["cpu_paths"][-1]]
    builds = {"base": args.base.resolve(), "this": Path(cachegen.__file__).parents[1]}
    times: dict[tuple[str, str], list[float]] = {(b, p): [] for b in builds for p in paths}
    hashes = set()
    for r in range(args.rounds):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for b, p in order:
            res = run_case(builds[b], p, args)
            times[(b, p)] += res["times"]
            hashes.add(res["digest"])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(info.line())
    print(f"Load average at the end {'/'.join(f'{x:.2f}' for x in os.getloadavg())}.")
    tokens = args.tokens or "all"
    print(
        f"{args.op}, {args.cache} cache, first {tokens} tokens: {args.rounds} rounds x "
        f"{args.per_child} calls per case, threads {args.threads}, {args.clock} clock; "
        f"base {builds['base']}. Same bytes everywhere: {len(hashes) == 1}."
    )
    print()
    print(f"| build | path | {args.op} |")
    print("|---|---|---|")
    for (b, p), xs in times.items():
        print(f"| {b} | {p} | {summary(xs)} |")
    print()
    for b in builds:
        print(f"- {b}: {paths[1]} over scalar {med[(b, 'scalar')] / med[(b, paths[1])]:.2f}x")
    for p in paths:
        print(f"- {p}: this over base {med[('base', p)] / med[('this', p)]:.2f}x")


if __name__ == "__main__":
    main()
