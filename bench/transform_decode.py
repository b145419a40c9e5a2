"""Transform coding through the wire format: the size and decode time of
`cachegen.encode(kv, level, transform=t)` / `cachegen.decode(blob, transforms=t)` against the
plain level, on real caches, all in one run.

    export OPENBLAS_NUM_THREADS=1 PYTHONPATH=python:bench
    python bench/transform_decode.py      # writes bench/results/transform_decode.{json,md}
    python bench/transform_decode.py --models smollm2 --rounds 3 --out /tmp/td

Per model the transform is learned as `bench/transform_codec.py` learns it (no key spread, on
the fit documents' prefix caches); the cache is the document's prefix. Rounds interleave every
case (plain decode, transform decode end to end, the inverse alone on decoded coefficients; 1
and 2 threads); figures are medians. Quality at equal KL is in `transform_codec.md`: this
measures what the shipped API costs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

import cachegen
from cachegen.transform import Transform, coefficient_config, forward, inverse
from lib import runinfo
from lib.cli import ints, words
from lib.rounds import Case, run_rounds
from transform_codec import prefix_cache, transform_of

RESULTS = Path(__file__).resolve().parent / "results"


def cases(model: str, kv: Any, t: Transform, level: int) -> tuple[list[Case], dict[str, Any]]:
    """The timed cases of one model and level, and the blobs' sizes."""
    plain = cachegen.encode(kv, level)
    coded = cachegen.encode(kv, level, transform=t)
    config = coefficient_config(cachegen.CodecConfig.from_level(level))
    coefficients = cachegen.decode(cachegen.encode(forward(kv, t), config=config), dtype="float32")
    n = cachegen.inspect(plain).elements
    facts = {
        "model": model,
        "level": level,
        "elements": n,
        "plain_bits": 8 * len(plain) / n,
        "transform_bits": 8 * len(coded) / n,
    }
    name = f"{model} level {level}"
    found = [Case(name, "inverse alone", 1, n, lambda: inverse(coefficients, t))]
    for th in (1, 2):
        found += [
            Case(name, "decode plain", th, n, lambda th=th: cachegen.decode(plain, threads=th)),
            Case(
                name,
                "decode transform",
                th,
                n,
                lambda th=th: cachegen.decode(coded, transforms=t, threads=th),
            ),
        ]
    return found, facts


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Transform coding through the wire format (bench/transform_decode.py)",
        "",
        runinfo.describe(report["run"]),
        f"Cache: the first {report['prefix']} tokens of {report['doc']}; transforms learned on "
        f"{', '.join(report['fit'])} (no key spread), {report['rounds']} interleaved rounds, "
        "medians. `decode transform` is `cachegen.decode(blob, transforms=t)` end to end: the "
        "coefficients decoded to fp32 on the host, `inverse` (numpy, one BLAS thread), the "
        "result converted into the cache's dtype and framework. `inverse alone` is the middle "
        "step on already decoded coefficients.",
        "",
        "| model | level | plain bits/elt | transform bits/elt | transform / plain |",
        "|---|--:|--:|--:|--:|",
    ]
    for f in report["facts"]:
        lines.append(
            f"| {f['model']} | {f['level']} | {f['plain_bits']:.3f} | {f['transform_bits']:.3f} "
            f"| {f['transform_bits'] / f['plain_bits']:.3f} |"
        )
    lines += [
        "",
        "| cache | op | threads | median ms | M elements/s | vs plain decode, same threads |",
        "|---|---|--:|--:|--:|--:|",
    ]
    t = {(r["cache"], r["op"], r["threads"]): r["median_s"] for r in report["rows"]}
    for r in report["rows"]:
        base = t.get((r["cache"], "decode plain", r["threads"]))
        rel = f"{r['median_s'] / base:.2f}x" if base else ""
        lines.append(
            f"| {r['cache']} | {r['op']} | {r['threads']} | {r['median_s'] * 1e3:.1f} | "
            f"{r['items_per_s'] / 1e6:.0f} | {rel} |"
        )
    lines += [
        "",
        "Bits here are the level's bits on this one document (with the transform at the same "
        "level, not at equal KL); the equal-KL comparison is in `transform_codec.md`. The blob "
        "names the transform in a 40-byte record; the transform object itself "
        f"({', '.join(f'{m}: {b / 1e6:.1f} MB' for m, b in report['objects'].items())}) is "
        "stored once per model, not per blob.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--doc", default="GPL-3")
    ap.add_argument("--fit", default="GPL-2,LGPL-2.1,python:difflib,python:typing")
    ap.add_argument("--prefix", type=int, default=1536)
    ap.add_argument("--levels", default="5,15,27")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    info = runinfo.RunInfo.capture()
    found, facts, objects = [], [], {}
    for model in words(a.models):
        t = transform_of(model, tuple(words(a.fit)), a.prefix, 0.0)
        objects[model] = len(t.to_bytes())
        kv = prefix_cache(model, a.doc, a.prefix)
        for level in ints(a.levels):
            c, f = cases(model, kv, t, level)
            found += c
            facts.append(f)
    run_rounds(found, a.rounds, float("inf"))
    report = {
        "run": info.finish().as_dict(),
        "doc": a.doc,
        "fit": words(a.fit),
        "prefix": a.prefix,
        "rounds": a.rounds,
        "objects": objects,
        "facts": facts,
        "rows": [c.row() for c in found],
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "transform_decode.json").write_text(json.dumps(report, indent=1))
    (a.out / "transform_decode.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
