"""Blob size under the table-count cost model against a base build, on real SmolLM2 KV: every
level, the 4096-token cache cut into chunks as a stored context is (each chunk encoded at its
context position), bits per element with everything in the blob counted. The current package
(`cachegen` on PYTHONPATH) and a build of the base commit (loaded as `cachegen_base` from
--base) encode the same chunks in one process; encode times are the process's CPU time, one
thread, the two builds alternating, medians.

    git archive <base> | tar -x -C build/base && (cd build/base && cmake ... && cp ...)
    PYTHONPATH=python python bench/table_cost.py --base build/base/python
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

import cachegen
from lib.basebuild import load_base
from lib.kvdata import REAL_SOURCE, real_kv
from lib.runinfo import RunInfo

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    level: int
    chunk_tokens: int
    base_bits: float  # bits per element, all chunks' blobs together
    new_bits: float
    base_tables: float  # mean tables per group
    new_tables: float
    base_encode_s: float  # CPU seconds to encode all chunks, median
    new_encode_s: float


def chunks(kv: np.ndarray, chunk_tokens: int) -> list[tuple[int, np.ndarray]]:
    """(position, chunk) pairs of a stacked [layers, 2, tokens, heads, dim] cache."""
    tokens = kv.shape[2]
    return [(t, kv[:, :, t : t + chunk_tokens]) for t in range(0, tokens, chunk_tokens)]


def encode_all(m: ModuleType, parts: list[tuple[int, np.ndarray]], level: int) -> list[bytes]:
    end = parts[-1][0] + parts[-1][1].shape[2]
    return [m.encode(c, level, position=p, context_end=end, threads=1) for p, c in parts]


def mean_tables(m: ModuleType, blobs: list[bytes]) -> float:
    counts = [g.tables for info in map(m.inspect, blobs) for g in info.keys + info.values]
    return sum(counts) / len(counts)


def cpu_seconds(m: ModuleType, parts: list[tuple[int, np.ndarray]], level: int) -> float:
    t0 = time.process_time()
    encode_all(m, parts, level)
    return time.process_time() - t0


def measure(base: ModuleType, kv: np.ndarray, level: int, chunk_tokens: int, rounds: int) -> Row:
    parts = chunks(kv, chunk_tokens)
    blobs = {k: encode_all(m, parts, level) for k, m in (("base", base), ("new", cachegen))}
    bits = {k: 8 * sum(map(len, b)) / kv.size for k, b in blobs.items()}
    times: dict[str, list[float]] = {"base": [], "new": []}
    for r in range(rounds):
        order = [("base", base), ("new", cachegen)]
        for key, m in order if r % 2 == 0 else reversed(order):
            times[key].append(cpu_seconds(m, parts, level))
    return Row(
        level,
        chunk_tokens,
        bits["base"],
        bits["new"],
        mean_tables(base, blobs["base"]),
        mean_tables(cachegen, blobs["new"]),
        statistics.median(times["base"]),
        statistics.median(times["new"]),
    )


def table(rows: list[Row]) -> list[str]:
    out = [
        "| level | chunk | base bits/elem | new bits/elem | new / base | tables/group base -> new "
        "| encode CPU s base -> new |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r.level} | {r.chunk_tokens} | {r.base_bits:.4f} | {r.new_bits:.4f} "
            f"| {r.new_bits / r.base_bits:.4f} | {r.base_tables:.2f} -> {r.new_tables:.2f} "
            f"| {r.base_encode_s:.2f} -> {r.new_encode_s:.2f} |"
        )
    return out


def ratio_summary(rows: list[Row], chunk_tokens: int) -> str:
    sel = [r for r in rows if r.chunk_tokens == chunk_tokens]
    size = [r.new_bits / r.base_bits for r in sel]
    speed = [r.new_encode_s / r.base_encode_s for r in sel]
    return (
        f"- {chunk_tokens}-token chunks: size new/base median {statistics.median(size):.4f} "
        f"(range {min(size):.4f}-{max(size):.4f}); encode CPU time new/base median "
        f"{statistics.median(speed):.2f}"
    )


def report(rows: list[Row], run: RunInfo, rounds: int) -> str:
    lines = [
        "# Table-count cost model: blob size on real KV",
        "",
        f"{REAL_SOURCE}. {run.line()} Base: the encoder charging 6 bits per table entry "
        "and 8 bits per table-map column; new: the size as written (symbols at their ideal code "
        "length under the normalized tables, tables and bit-packed map byte for byte). Bits per "
        "element count everything in the blobs. Encode times: process CPU time, one thread, "
        f"builds alternating, median of {rounds} (a shared machine: a guide, not a benchmark).",
        "",
        *(ratio_summary(rows, c) for c in sorted({r.chunk_tokens for r in rows})),
        "",
        *table(rows),
        "",
        "Reproduce: `git archive <base> | tar -x -C build/base`, build its core into "
        "build/base/python/cachegen, then "
        "`PYTHONPATH=python python bench/table_cost.py --base build/base/python "
        "--levels 1 3 6 9 12 15 18 21 24 27`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", type=Path, required=True, help="python/ folder of the base build")
    p.add_argument("--levels", type=int, nargs="*", default=list(cachegen.LEVELS))
    p.add_argument("--chunks", type=int, nargs="*", default=[256, 1024])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "table_cost")
    args = p.parse_args()
    run = RunInfo.capture()
    base = load_base(args.base)
    kv = real_kv()
    rows = []
    for chunk_tokens in args.chunks:
        for level in args.levels:
            rows.append(measure(base, kv, level, chunk_tokens, args.rounds))
            print(table(rows[-1:])[-1], flush=True)
    run = run.finish()
    meta = {"source": REAL_SOURCE, "run": run.as_dict(), "rounds": args.rounds}
    rows_json = {**meta, "rows": [asdict(r) for r in rows]}
    args.out.with_suffix(".json").write_text(json.dumps(rows_json, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(rows, run, args.rounds))
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
