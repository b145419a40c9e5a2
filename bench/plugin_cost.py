"""The engine plug-ins on real SmolLM2 KV in 256-token chunks, one run (issue 13):

- bytes through the LMCache serde at the lowest level with pooled KL <= 0.01
  (bench/results/quality.json) vs LMCache's uncompressed `naive` serde on the same chunks;
- serialize/deserialize time through LMCache's serde API and through the SGLang backend vs
  calling `cachegen.encode`/`decode` directly in the same process (medians);
- position-unaware chunk coding (the plug-ins) vs position-aware (what `save_context` does:
  `position=` the chunk's start, `context_end=` the context's end): bits and KL per level on
  the quality harness's documents, and the unaware bits interpolated at the aware KL.

    python bench/plugin_cost.py  # writes bench/results/plugins.md and plugins.json

The engine halves run in their own environments (scripts/engine_env.sh lmcache|sglang).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cachegen
from cachegen.chunks import chunk_config
from lib import kvdata
from lib.kvquality import harness
from lib.kvquality.docs import load_documents
from lib.kvquality.methods import KV, Method
from lib.runinfo import RunInfo, describe

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CHUNK = 256
HEAD_DIM = 64
REPEATS = 5
KL_TARGET = 0.01
#: Documents of the position comparison (a subset of the quality report's, for time).
DOCS = ("GPL-3", "Apache-2.0", "python:argparse")


def kl_level() -> int:
    """The lowest ladder level with pooled KL <= KL_TARGET in the quality report."""
    pooled = json.loads((RESULTS / "quality.json").read_text())["pooled"]
    ok = [
        int(r["method"][2:])
        for r in pooled
        if r["method"].startswith("cg") and r["method"][2:].isdigit() and r["kl_mean"] <= KL_TARGET
    ]
    return min(ok)


def lmcache_chunks(folder: Path) -> Path:
    """Real SmolLM2 KV (fp16, 4096 tokens) as 256-token chunks in LMCache's layout
    `[2, layers, tokens, hidden]`, stacked `[chunks, ...]`."""
    kv = kvdata.real_kv()  # [L, 2, T, H, D]
    layers, _, tokens, heads, dim = kv.shape
    x = kv.transpose(1, 0, 2, 3, 4).reshape(2, layers, tokens // CHUNK, CHUNK, heads * dim)
    path = folder / "chunks.npy"
    np.save(path, np.ascontiguousarray(x.transpose(2, 0, 1, 3, 4)))
    return path


def run_engine(name: str, plan: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run bench/lib/plugin_drivers/NAME_bench.py in engine NAME's environment."""
    venv = subprocess.run(
        ["bash", str(ROOT / "scripts" / "engine_env.sh"), name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    link = folder / "pythonpath"
    link.mkdir(exist_ok=True)
    if not (link / "cachegen").exists():
        (link / "cachegen").symlink_to(Path(cachegen.__file__).parent)
    plan_file, out = folder / f"{name}_plan.json", folder / f"{name}_out.json"
    plan_file.write_text(json.dumps(plan))
    driver = HERE / "lib" / "plugin_drivers" / f"{name}_bench.py"
    env = dict(os.environ, PYTHONPATH=str(link))
    subprocess.run(
        [f"{venv}/bin/python", str(driver), str(plan_file), str(out)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads(out.read_text())


def _chunks_of(kv: KV) -> list[tuple[int, KV]]:
    tokens = kv[0][0].shape[2]
    return [
        (start, [(k[:, :, start : start + CHUNK], v[:, :, start : start + CHUNK]) for k, v in kv])
        for start in range(0, tokens, CHUNK)
    ]


def chunked_method(level: int, aware: bool) -> Method:
    """`level` over 256-token chunks, each coded knowing its place (aware) or not."""

    def encode(kv: KV) -> bytes:
        total = kv[0][0].shape[2]
        out = b""
        for start, part in _chunks_of(kv):
            if aware:
                blob = cachegen.encode(part, level=level, position=start, context_end=total)
            else:
                blob = cachegen.encode(part, config=chunk_config(level))
            out += struct.pack("<Q", len(blob)) + blob
        return out

    def decode(blob: bytes, like: KV) -> KV:
        parts, at = [], 0
        while at < len(blob):
            (n,) = struct.unpack_from("<Q", blob, at)
            parts.append(cachegen.decode(blob[at + 8 : at + 8 + n]))
            at += 8 + n
        return [
            tuple(torch.cat([p[layer][side] for p in parts], dim=2) for side in (0, 1))
            for layer in range(len(like))
        ]

    kind = "aware" if aware else "unaware"
    return Method(f"{kind}{level}", f"level {level}, position-{kind}", encode, decode)


def position_cost(level: int) -> list[dict[str, Any]]:
    """Aware around `level`; unaware further up too, to reach the aware KL."""
    methods = [chunked_method(lv, True) for lv in (level - 3, level, level + 3)]
    methods += [chunked_method(lv, False) for lv in range(level - 3, level + 10, 3)]
    results = harness.pool(harness.run_quality(methods, load_documents(DOCS)))
    return [
        {"method": r.method, "bits": r.bits_per_element, "kl": r.kl_mean, "top1": r.top1_agreement}
        for r in results
        if r.doc == "all"
    ]


def unaware_bits_at(kl: float, rows: list[dict[str, Any]]) -> float | None:
    """Unaware bits at a KL, interpolated in log KL between the measured levels."""
    pts = sorted((r["kl"], r["bits"]) for r in rows if r["method"].startswith("unaware"))
    for (k0, b0), (k1, b1) in zip(pts, pts[1:], strict=False):
        if k0 <= kl <= k1 and k0 > 0:
            t = (np.log(kl) - np.log(k0)) / (np.log(k1) - np.log(k0))
            return float(b0 + t * (b1 - b0))
    return None


def report(
    run: dict[str, Any],
    level: int,
    lm: dict[str, Any],
    sg: dict[str, Any],
    pos: list[dict[str, Any]],
) -> str:
    naive, serde = sum(lm["naive_bytes"]), sum(lm["serde_bytes"])
    aware = next(r for r in pos if r["method"] == f"aware{level}")
    at_kl = unaware_bits_at(aware["kl"], pos)
    lines = [
        "# Engine plug-ins: LMCache serde and SGLang HiCache backend (issue 13)",
        "",
        f"{describe(run)} One run. Real "
        f"SmolLM2 KV (4096 tokens, {lm['chunks']} chunks of {CHUNK} tokens, 30 layers x 3 KV "
        "heads x 64, bf16 in the engines). Reproduce: `python bench/plugin_cost.py`.",
        "",
        f"## Bytes at level {level} (lowest level with pooled KL <= {KL_TARGET} in quality.json)",
        "",
        "| serde | bytes | ratio vs naive |",
        "|---|--:|--:|",
        f"| LMCache `naive` | {naive} | 1.00x |",
        f"| cachegen serde, level {level} | {serde} | {naive / serde:.2f}x smaller |",
        "",
        f"Target >= 5x smaller: {'met' if naive / serde >= 5 else 'NOT met'}.",
        "",
        "## Speed: through the engine API vs `cachegen.encode`/`decode` directly (medians of "
        f"{REPEATS} interleaved rounds, all chunks)",
        "",
        "| path | plug-in s | direct s | plug-in speed / direct |",
        "|---|--:|--:|--:|",
    ]
    for path, a, b in (
        ("LMCache serialize (async serde processor)", lm["serialize_s"], lm["encode_s"]),
        ("LMCache deserialize", lm["deserialize_s"], lm["decode_s"]),
        ("SGLang batch_set (memory store)", sg["set_s"], sg["encode_s"]),
        ("SGLang batch_get (memory store)", sg["get_s"], sg["decode_s"]),
    ):
        lines.append(f"| {path} | {a:.3f} | {b:.3f} | {b / a:.2f}x |")
    lines += [
        "",
        "Target >= 0.8x of direct on every path. Each baseline runs in the engine's own process "
        "on the same chunks; the two processes' baselines differ (LMCache's environment runs "
        "torch 2.14 and its own thread setup), so compare within a row, not across engines.",
        "",
        "## Position-unaware chunks (the plug-ins) vs position-aware (`save_context`)",
        "",
        f"Quality harness (bench/lib/kvquality), documents {', '.join(DOCS)}, prefix "
        f"{harness.PREFIX_TOKENS} tokens in {CHUNK}-token chunks, KL over the next "
        f"{harness.CONT_TOKENS}.",
        "",
        "| method | bits/element | KL | top-1 |",
        "|---|--:|--:|--:|",
    ]
    lines += [f"| {r['method']} | {r['bits']:.3f} | {r['kl']:.5f} | {r['top1']:.3f} |" for r in pos]
    cost = "n/a (outside the measured levels)"
    if at_kl is not None:
        cost = f"{at_kl:.3f} bits vs {aware['bits']:.3f} ({at_kl / aware['bits'] - 1:+.1%})"
    lines += ["", f"At the KL of position-aware level {level}, position-unaware needs {cost}.", ""]
    return "\n".join(lines)


def main() -> None:
    info = RunInfo.capture()
    level = kl_level()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plan = {
            "chunks": str(lmcache_chunks(folder)),
            "level": level,
            "head_dim": HEAD_DIM,
            "repeats": REPEATS,
        }
        lm = run_engine("lmcache", plan, folder)
        sg = run_engine("sglang", plan, folder)
    pos = position_cost(level)
    run = info.finish().as_dict()
    RESULTS.joinpath("plugins.json").write_text(
        json.dumps(
            {"run": run, "level": level, "lmcache": lm, "sglang": sg, "position": pos}, indent=1
        )
    )
    text = report(run, level, lm, sg, pos)
    RESULTS.joinpath("plugins.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
