"""Decode into paged KV blocks against decode into a contiguous array (issue 12: >= 0.95x), and
the lossless level's size on real KV against zstd-3 of the same bytes.

    python bench/paged_speed.py      # writes bench/results/paged.md and paged.json

Real SmolLM2 KV (30 layers x 3 KV heads x 64, `kvdata.real_kv`), the default level's blob of the
first 2048 / 4096 tokens decoded with 2 threads into (a) a contiguous `[layers, 2, tokens, heads,
head_dim]` array and (b) each vLLM layout's per-layer caches at a shuffled block table (twice
the blocks needed, so the used ones are scattered); medians of interleaved rounds, one process,
the order of the pair alternating between rounds (the machine is shared: the per-round ratio,
whose two runs share the load of the moment, is reported too).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import zstandard

import cachegen
import kvdata
from cachegen import paged
from kvquality.report import cpu_model, git_commit

ROUNDS = 21
THREADS = 2
TOKENS = (2048, 4096)
# (layout, block size): the CPU backend takes multiples of 32 (128 by default), FlashAttention 16.
CASES = (("vllm-cpu", 128), ("flash-nhd", 16), ("flash-hnd", 16), ("flash-hnd", 128))
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class SpeedRow:
    tokens: int
    layout: str
    block_size: int
    contiguous_melts: float  # M elements/s, median
    paged_melts: float
    ratio: float  # paged / contiguous, of the medians
    round_ratio: float  # median over rounds of that round's paged / contiguous


@dataclass
class SizeRow:
    dtype: str
    lossless_bits: float  # per element, whole blob
    lossless_ratio: float  # vs the raw 16-bit (or 32-bit) values
    zstd3_bits: float
    zstd3_ratio: float


def layer_caches(layout: str, block: int, tokens: int, heads: int, dim: int, layers: int):
    """Per-layer caches of the layout (logical [blocks, heads, block, 2 * dim]) with twice the
    blocks the tokens need, and a shuffled table of distinct blocks."""
    blocks = 2 * -(-tokens // block)
    shape = (blocks, block, heads, 2 * dim) if layout == "flash-nhd" else None
    caches = []
    for _ in range(layers):
        x = torch.zeros(shape or (blocks, heads, block, 2 * dim), dtype=torch.float16)
        caches.append(x.permute(0, 2, 1, 3) if shape else x)
    ids = np.random.default_rng(tokens + block).permutation(blocks)[: -(-tokens // block)]
    return caches, ids


def speed(kv: np.ndarray) -> list[SpeedRow]:
    layers, _, _, heads, dim = kv.shape
    work = []
    for tokens in TOKENS:
        part = np.ascontiguousarray(kv[:, :, :tokens])
        blob = cachegen.encode(part, level=cachegen.DEFAULT_LEVEL, threads=THREADS)
        for layout, block in CASES:
            caches, ids = layer_caches(layout, block, tokens, heads, dim, layers)
            out = np.empty_like(part)
            paged.decode_paged(blob, caches, layout, ids)  # every page touched once
            cachegen.decode(blob, out=out)
            work.append((tokens, layout, block, blob, out, caches, ids))
    times: dict[tuple[int, str], list[float]] = {}
    for r in range(ROUNDS):
        for i, (_, layout, _, blob, out, caches, ids) in enumerate(work):
            for name in ("paged", "contiguous") if r % 2 else ("contiguous", "paged"):
                t0 = time.perf_counter()
                if name == "paged":
                    paged.decode_paged(blob, caches, layout, ids, threads=THREADS)
                else:
                    cachegen.decode(blob, out=out, threads=THREADS)
                times.setdefault((i, name), []).append(time.perf_counter() - t0)
    rows = []
    for i, (tokens, layout, block, _, out, _, _) in enumerate(work):
        rate = {
            k: out.size / statistics.median(times[(i, k)]) / 1e6 for k in ("contiguous", "paged")
        }
        pairs = zip(times[(i, "contiguous")], times[(i, "paged")], strict=True)
        per_round = statistics.median(c / p for c, p in pairs)
        ratio = rate["paged"] / rate["contiguous"]
        rows.append(
            SpeedRow(tokens, layout, block, rate["contiguous"], rate["paged"], ratio, per_round)
        )
    return rows


def sizes(kv: np.ndarray) -> list[SizeRow]:
    rows = []
    for name, x in (
        ("float16", torch.from_numpy(kv)),
        ("bfloat16", torch.from_numpy(kv).bfloat16()),
    ):
        raw = x.contiguous().view(torch.int16).numpy().tobytes()
        blob = cachegen.encode(x, level=cachegen.LOSSLESS, threads=THREADS)
        z = zstandard.ZstdCompressor(level=3).compress(raw)
        n = x.numel()
        rows.append(
            SizeRow(
                name, 8 * len(blob) / n, len(raw) / len(blob), 8 * len(z) / n, len(raw) / len(z)
            )
        )
    return rows


def markdown(info: dict, speed_rows: list[SpeedRow], size_rows: list[SizeRow]) -> str:
    lines = [
        "# Paged KV decode and the lossless level (issue 12)",
        "",
        f"{info['cpu']} ({info['cpus']} cores), commit {info['commit'][:12]}, {info['date']}. "
        f"Real SmolLM2 KV (30 layers x 3 KV heads x 64, fp16), level {cachegen.DEFAULT_LEVEL}, "
        f"{THREADS} threads, median of {ROUNDS} interleaved rounds in one process. "
        "Reproduce: `python bench/paged_speed.py`.",
        "",
        "## Decode into paged blocks vs into a contiguous array (target: paged >= 0.95x)",
        "",
        "| tokens | layout | block | contiguous M elt/s | paged M elt/s | paged / contiguous | "
        "per-round median |",
        "|--:|---|--:|--:|--:|--:|--:|",
    ]
    for r in speed_rows:
        lines.append(
            f"| {r.tokens} | {r.layout} | {r.block_size} | {r.contiguous_melts:.1f} | "
            f"{r.paged_melts:.1f} | {r.ratio:.3f}x | {r.round_ratio:.3f}x |"
        )
    lines += [
        "",
        "## The lossless level (`cachegen.LOSSLESS`) on the same KV (4096 tokens)",
        "",
        "Bits per element count the whole blob; the ratio is against the raw 16-bit values; "
        "zstd-3 compresses the same bytes (the `[layers, 2, tokens, heads, head_dim]` array). "
        "bf16 is the fp16 cache rounded to bf16 (the model computes in fp32).",
        "",
        "| dtype | lossless bits/element | lossless ratio | zstd-3 bits/element | zstd-3 ratio |",
        "|---|--:|--:|--:|--:|",
    ]
    for r in size_rows:
        lines.append(
            f"| {r.dtype} | {r.lossless_bits:.3f} | {r.lossless_ratio:.3f}x | {r.zstd3_bits:.3f} | "
            f"{r.zstd3_ratio:.3f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "cachegen_build": cachegen.build_info(),
        "kv": kvdata.REAL_SOURCE,
    }
    kv = kvdata.real_kv()
    speed_rows = speed(kv)
    size_rows = sizes(kv)
    RESULTS.mkdir(exist_ok=True)
    report = {
        "info": info,
        "speed": [asdict(r) for r in speed_rows],
        "lossless": [asdict(r) for r in size_rows],
    }
    (RESULTS / "paged.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(info, speed_rows, size_rows)
    (RESULTS / "paged.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
