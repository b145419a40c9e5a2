"""CPU encode of real SmolLM2 KV at the default level, scalar path against the widest vector
path, for this checkout and a base build in the same run: before/after of the encoder's SIMD
work. Two builds' native cores cannot share a process (pybind11 registers their types once), so
each (build, path) case runs in its own child process, and the cases alternate round by round
so that all of them see the same machine state. A child times `--per-child` encodes after one
warm-up, on the process's CPU time by default (`--clock cpu`: on a shared machine, wall time
mostly measures the neighbours).

    PYTHONPATH=python python bench/encode_paths_ab.py --base build/base/python --threads 2
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
from pathlib import Path

import cachegen
from lib import kvdata
from lib.basebuild import summary
from lib.runinfo import RunInfo

BENCH = Path(__file__).resolve().parent


def child(threads: int, count: int, clock_name: str) -> None:
    """Time `count` encodes with the cachegen on sys.path; print the times as JSON."""
    kv = kvdata.real_kv()
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    blob = cachegen.encode(kv, threads=threads)
    times = []
    for _ in range(count):
        t0 = clock()
        cachegen.encode(kv, threads=threads)
        times.append(clock() - t0)
    print(json.dumps({"times": times, "blob": hashlib.sha256(blob).hexdigest()}))


def run_case(pythonpath: Path, path: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{pythonpath}:{BENCH}", CACHEGEN_CPU_PATH=path)
    cmd = [sys.executable, __file__, "--child", "--threads", str(args.threads)]
    cmd += ["--per-child", str(args.per_child), "--clock", args.clock]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="folder holding the base build's cachegen/")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-child", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.threads, args.per_child, args.clock)
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
            hashes.add(res["blob"])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(info.line())
    print(f"Load average at the end {'/'.join(f'{x:.2f}' for x in os.getloadavg())}.")
    print(
        f"{args.rounds} rounds x {args.per_child} encodes per case, threads {args.threads}, "
        f"{args.clock} clock; base {builds['base']}. Same bytes everywhere: {len(hashes) == 1}."
    )
    print()
    print("| build | path | encode |")
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
