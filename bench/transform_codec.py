"""Transform coding at equal KL: a per-model RoPE-aware KLT (`cachegen.transform`) in front of
the level ladder, against the ladder alone and the CacheGen reference, on real models.

    OPENBLAS_NUM_THREADS=1 python bench/transform_codec.py --models smollm2,gemma3 \\
        --fit GPL-2,LGPL-2.1,python:difflib,python:typing \\
        --docs GPL-3,python:argparse,Apache-2.0,MPL-2.0 --levels 1,5,10,15,20,27,34 \\
        --refs 1,3,5 --cont 128

Per model the transform is learned on the prefix caches of the `--fit` texts (the ones
calibration tunes on) and evaluated on `--docs` (never tuned on). Per level: bits/element of
the whole blob and mean KL of the continuation for the ladder (`cgN`), its levels without the
key spread (`flatN`), and transform -> level -> inverse: `tN` the level without the key
spread (whose RoPE-pair statistics mean nothing on coefficients), `twN` the same with the
ladder's key spread folded into the transform (key channels divided by the weights the
level's key spread gives them on the fit, then the KLT), `tsN` the level as it is (the pair
statistics read on coefficients). Then each curve's bits at the KL targets (log-KL
interpolation) and the ratios. The decode cost: `cachegen.decode` of the coefficients' blob
alone and the inverse transform (re-RoPE included), one thread, medians. Results are stored
and resumed as `bench/ladder_models.py` does (the transform's digest in their keys); the
transform itself is a per-model object and not counted in the blob's bits (its size is
reported). Writes transform_codec.json and prints the tables of
bench/results/transform_codec.md.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from pathlib import Path

import torch

import cachegen
from cachegen.hf import learn_model_transform
from cachegen.transform import Transform, coefficient_config, forward, inverse
from ladder_models import PLAIN, Variant, codings, curve, pooled, run
from lib.cli import add_scoring_args, ints, words
from lib.equal_kl import TARGETS, reference_bits
from lib.kvquality import Result, load_document, load_model, prefill
from lib.kvquality.methods import KV, Method
from lib.kvquality.report import run_info
from lib.rounds import median_seconds
from lib.runinfo import short_commit

RESULTS = Path(__file__).resolve().parent / "results"
DECODE_LEVEL = 15


def prefix_cache(model: str, doc: str, prefix: int) -> KV:
    """The cache of the document's first `prefix` tokens (prefilled once, then from disk)."""
    lm = load_model(model)
    ids = lm.tokenizer(load_document(doc).text, return_tensors="pt")["input_ids"]
    return prefill(lm, ids[:, :prefix])


@functools.cache
def transform_of(
    model: str, fit: tuple[str, ...], prefix: int, key_spread: float, profile: str | None = None
) -> Transform:
    """The model's transform, learned on the `fit` documents' first `prefix` tokens by
    `cachegen.hf.learn_model_transform` (key channels weighted by their queries' energy), with
    the weights of the profile at path `profile` where one is named."""
    lm = load_model(model)
    texts = [lm.first_ids(load_document(name).text, prefix) for name in fit]
    weights = cachegen.ModelProfile.load(profile) if profile else None
    return learn_model_transform(lm.model, texts, key_spread, profile=weights)


def transform_method(t: Transform, key: str, config: cachegen.CodecConfig) -> Method:
    def encode(kv: KV) -> bytes:
        return cachegen.encode(forward(kv, t), config=config)

    def decode(blob: bytes, like: KV) -> KV:
        return inverse(list(cachegen.decode(blob)), t)

    return Method(key, f"KLT + {config.name}", encode, decode)


def transform_variant(fit: tuple[str, ...], prefix: int, key_spread: float) -> Variant:
    def get(model: str) -> Transform:
        return transform_of(model, fit, prefix, key_spread)

    return Variant(
        tag=lambda model: f"klt-{get(model).digest()[:16]}|",
        method=lambda model, key, config, doc: transform_method(get(model), key, config),
    )


def transform_codings(levels: list[int], prefix: str, pair_spread: bool = False) -> dict:
    """`{prefix}N`: level N without the key spread, and with `pair_spread` also `tsN`: level N
    as it is (the key spread's RoPE-pair statistics read on coefficients)."""
    out = {}
    for lv in levels:
        c = cachegen.CodecConfig.from_level(lv)
        out[f"{prefix}{lv}"] = coefficient_config(c)
        if pair_spread:
            out[f"ts{lv}"] = c
    return out


def decode_cost(model: str, doc: str, t: Transform, prefix: int) -> dict[str, float]:
    """Seconds (median of 5, one thread) to decode level `DECODE_LEVEL` plain, and with the
    transform: the coefficients' decode and the inverse transform."""
    kv = prefix_cache(model, doc, prefix)
    config = coefficient_config(cachegen.CodecConfig.from_level(DECODE_LEVEL))
    plain = cachegen.encode(kv, level=DECODE_LEVEL)
    coded = cachegen.encode(forward(kv, t), config=config)
    coeffs = list(cachegen.decode(coded, threads=1))
    out = {
        "decode_s": median_seconds(lambda: cachegen.decode(plain, threads=1)),
        "coefficients_decode_s": median_seconds(lambda: cachegen.decode(coded, threads=1)),
        "inverse_s": median_seconds(lambda: inverse(coeffs, t)),
    }
    return out | {"inverse_over_decode": out["inverse_s"] / out["decode_s"]}


def level_table(p: dict[str, dict[str, Result]], levels: list[int]) -> list[str]:
    lines = [
        "| model | level | ladder bits/elt | ladder KL | flat bits/elt | flat KL "
        "| KLT bits/elt | KLT KL | KLT+spread bits/elt | KLT+spread KL "
        "| KLT, pair spread bits/elt | KLT, pair spread KL |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m, rs in p.items():
        for lv in levels:
            cells = [rs[f"{k}{lv}"] for k in ("cg", "flat", "t", "tw", "ts")]
            txt = " | ".join(f"{r.bits_per_element:.3f} | {r.kl_mean:.2e}" for r in cells)
            lines.append(f"| {m} | {lv} | {txt} |")
    return lines


CURVES = ("cg", "flat", "t", "tw", "ts", "ref")


def equal_kl(rs: dict[str, Result], levels: list[int], refs: list[int]) -> dict[float, dict]:
    """KL target -> curve -> bits there (None where the curve does not reach it)."""
    keys = {c: [f"{c}{lv}" for lv in (refs if c == "ref" else levels)] for c in CURVES}
    return {t: {c: reference_bits(curve(rs, keys[c]), t) for c in CURVES} for t in TARGETS}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3f}" if a and b else "n/a"


def bits(b: float | None) -> str:
    return f"{b:.3f}" if b else "out of range"


def ratio_table(at: dict[str, dict[float, dict]]) -> list[str]:
    lines = [
        "| model | docs | KL target | ladder | flat | KLT | KLT+spread | KLT, pair spread "
        "| reference | KLT / ladder | KLT+spread / ladder | ladder / ref | KLT / ref "
        "| KLT+spread / ref |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, by_target in at.items():
        for target, b in by_target.items():
            cells = [bits(b[c]) for c in CURVES]
            cells += [ratio(b["t"], b["cg"]), ratio(b["tw"], b["cg"]), ratio(b["cg"], b["ref"])]
            cells += [ratio(b["t"], b["ref"]), ratio(b["tw"], b["ref"])]
            lines.append(f"| {name} | {target} | " + " | ".join(cells) + " |")
    return lines


def add_transform_args(ap: argparse.ArgumentParser, levels: str) -> None:
    """The transform benches' options: the scoring ones, the texts the transform is learned on
    and where results go."""
    add_scoring_args(ap, docs="GPL-3,python:argparse,Apache-2.0,MPL-2.0", levels=levels)
    ap.add_argument("--fit", default="GPL-2,LGPL-2.1,python:difflib,python:typing")
    ap.add_argument("--out", type=Path, default=RESULTS)


def by_scope(rows: list[dict], docs: list[str], measure: Callable[[dict], dict]) -> dict:
    """`measure` of each model's results pooled over the documents, then of each document's."""
    at = {f"{m} | pooled": measure(rs) for m, rs in pooled(rows).items()}
    for doc in docs:
        per = pooled([r for r in rows if r["doc"] == load_document(doc).name])
        at |= {f"{m} | {doc}": measure(rs) for m, rs in per.items()}
    return at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_transform_args(ap, levels="1,5,10,15,20,27,34")
    a = ap.parse_args()
    torch.set_num_threads(1)
    levels, refs = ints(a.levels), ints(a.refs)
    models, docs, fit = words(a.models), words(a.docs), tuple(words(a.fit))
    info = run_info(", ".join(models), a.prefix, a.cont)
    spreads = {"t": 0.0, "tw": cachegen.config.LEVEL_KEY_SPREAD}
    rows = run(models, docs, codings(levels, levels, [], refs), a.prefix, a.cont, PLAIN)
    for name, spread in spreads.items():
        variant = transform_variant(fit, a.prefix, spread)
        todo = transform_codings(levels, name, pair_spread=spread == 0)
        rows += run(models, docs, todo, a.prefix, a.cont, variant)
    p = pooled(rows)
    at = by_scope(rows, docs, lambda rs: equal_kl(rs, levels, refs))
    transforms = {
        (m, k): transform_of(m, fit, a.prefix, s) for m in models for k, s in spreads.items()
    }
    cost = {m: decode_cost(m, docs[0], transforms[m, "tw"], a.prefix) for m in models}
    objects = {
        f"{m} {k}": {"digest": t.digest(), "bytes": len(t.to_bytes()), "layers": t.num_layers}
        for (m, k), t in transforms.items()
    }
    report = {"run": info, "fit": fit, "transforms": objects, "decode": cost, "rows": rows}
    report["equal_kl"] = {k: {str(t): b for t, b in v.items()} for k, v in at.items()}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "transform_codec.json").write_text(json.dumps(report, indent=1))
    md = [
        f"Run: {info['cpu']}, {info['cpus']} cores shared, commit {short_commit(info['commit'])}, "
        f"{info['date']}; transforms learned on {', '.join(fit)}; evaluated on "
        f"{', '.join(docs)}; {a.prefix}-token prefix, {a.cont} scored continuation tokens.",
        "",
        "### Bits/element and mean KL per level (pooled over the documents)",
        "",
        *level_table(p, levels),
        "",
        "### Bits/element at equal KL (log-KL interpolation; reference: CacheGen's quantizer)",
        "",
        *ratio_table(at),
        "",
        f"### Decode cost at level {DECODE_LEVEL}, one thread, medians of 5 ({docs[0]})",
        "",
        "| model | decode (plain blob) s | decode (coefficients) s | inverse + re-RoPE s "
        "| inverse / decode | transform object |",
        "|---|--:|--:|--:|--:|--:|",
        *(
            f"| {m} | {c['decode_s']:.3f} | {c['coefficients_decode_s']:.3f} | "
            f"{c['inverse_s']:.3f} | {c['inverse_over_decode']:.2f}x | "
            f"{objects[m + ' tw']['bytes'] / 1e6:.2f} MB fp32 |"
            for m, c in cost.items()
        ),
    ]
    print("\n".join(md))


if __name__ == "__main__":
    main()
