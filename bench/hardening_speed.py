"""Encode/decode speed with the hardening checks against the same core without them, in one
process: the checked package (`cachegen` on PYTHONPATH) and a build of the base commit (loaded
as `cachegen_base` from --base) alternate round by round, so both see the same machine state.
Also times the out= checks (outputs.check_outputs) alone. Times are the process's CPU time by
default (`--clock cpu`, one thread): on a shared machine, wall time mostly measures the
neighbours.

    git archive 643fe12 | tar -x -C build/base && (cd build/base && cmake ... && cp ...)
    PYTHONPATH=python python bench/hardening_speed.py --base build/base/python
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

import cachegen
from cachegen.outputs import check_outputs
from cachegen.tensors import views
from lib.basebuild import ab_run, summary
from lib.runinfo import RunInfo


def workloads() -> dict[str, object]:
    rng = np.random.default_rng(0)
    stacked = rng.standard_normal((16, 2, 512, 8, 128)).astype(np.float16)
    pairs = [
        tuple(rng.standard_normal((1, 8, 128, 64)).astype(np.float16) for _ in range(2))
        for _ in range(32)
    ]
    return {"stacked 16x512x8x128": stacked, "pairs 32 layers x128x8x64": pairs}


CLOCK = time.process_time


def seconds(fn: Callable[[], object]) -> float:
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def compare(name: str, kv: object, base: ModuleType, rounds: int, threads: int) -> list[str]:
    impls = {"base": base, "checked": cachegen}
    blobs = {k: m.encode(kv, threads=threads) for k, m in impls.items()}
    assert blobs["base"] == blobs["checked"], "the checks must not change the bytes"
    outs = {k: m.decode(blobs[k]) for k, m in impls.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        order = list(impls.items()) if r % 2 == 0 else list(reversed(impls.items()))
        for key, m in order:
            enc = seconds(lambda m=m: m.encode(kv, threads=threads))
            dec = seconds(lambda m=m, key=key: m.decode(blobs[key], out=outs[key], threads=threads))
            times.setdefault(("encode", key), []).append(enc)
            times.setdefault(("decode out=", key), []).append(dec)
    out, blob, v = outs["checked"], blobs["checked"], views(outs["checked"])
    check = [seconds(lambda: check_outputs(out, v, blob)) for _ in range(50)]
    lines = []
    for op in ("encode", "decode out="):
        b, c = times[(op, "base")], times[(op, "checked")]
        ratio = statistics.median(c) / statistics.median(b)
        fastest = min(c) / min(b)
        lines.append(
            f"| {name} | {op} | {summary(b)} | {summary(c)} | {ratio:.3f} (min {fastest:.3f}) |"
        )
    dec = statistics.median(times[("decode out=", "checked")])
    share = statistics.median(check) / dec
    lines.append(f"| {name} | out= checks alone | | {summary(check)} | {share:.1%} of the decode |")
    return lines


def main() -> None:
    ab = ab_run(__doc__, rounds=11)
    global CLOCK
    CLOCK = ab.clock
    base = ab.base
    print(RunInfo.capture().line())
    print(f"rounds {ab.rounds}, threads {ab.threads}, {ab.clock_name} clock")
    print("| workload | op | base (no checks) | checked | checked / base, medians (mins) |")
    print("|---|---|---|---|---|")
    for name, kv in workloads().items():
        for line in compare(name, kv, base, ab.rounds, ab.threads):
            print(line, flush=True)


if __name__ == "__main__":
    main()
