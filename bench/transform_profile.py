"""A calibrated profile in front of the KLT, at equal KL: the profile's weight per layer and K/V
and its token importance (read on the raw keys) on the transform's coefficients, against the
ladder with the same profile and the CacheGen reference, on real models.

    OPENBLAS_NUM_THREADS=1 python bench/calibrate_time.py --model gemma3 --out /tmp/gemma3.json
    OPENBLAS_NUM_THREADS=1 python bench/transform_profile.py --models smollm2,gemma3 \\
        --profile gemma3=/tmp/gemma3.json --docs GPL-3,python:argparse,Apache-2.0,MPL-2.0 \\
        --levels 1,2,3,5,8,10,13,15,18,20,24,27 --refs 1,2,3,4,5 --cont 128

SmolLM2 takes its shipped profile unless `--profile smollm2=PATH` names another. The transform
is `bench/transform_codec.py`'s (learned on `--fit`, the texts calibration tunes on); the
documents scored are never tuned on. Per level: bits/element of the whole blob and mean KL of
the continuation for the ladder with the profile (`cgpN`), the transform without a profile
(`tN`) and with it (`tpN`, and `tpxN`: level 1 made 2^(N/4) times as coarse, since its level 1
is already far below KL 0.05; with `--observed` the curves given the prefix's observed
attention, and `tpqN` with the keys' rounding shaped by its last queries too); then each curve's
bits at the KL targets (log-KL interpolation; "<= x": the curve's coarsest level already beats
the target, so x bounds its bits there) and their ratios to the reference's. Results are stored
and resumed as `bench/ladder_models.py` does. Writes transform_profile.json and prints the
tables of bench/results/transform_profile.md; `--curves to,tpq` runs only the curves named (and
the reference) and prints their one table (the 256-token rows there).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json

import torch

import cachegen
from cachegen import profiles
from cachegen.hf import observed_attention, query_directions
from cachegen.importance import OBSERVATION_WINDOW, OBSERVED_SHARE
from cachegen.shaping import SHAPE_AHEAD, SHAPE_DIRECTIONS, SHAPING_VERSION, QueryDirections
from cachegen.transform import COEFFICIENT_VERSION, OBSERVED_RECENCY, coefficient_config
from ladder_models import PLAIN, Variant, codings, curve, pooled, run
from lib.cli import ints, words
from lib.equal_kl import TARGETS, bits_at
from lib.kvquality import Result, load_document, load_model
from lib.kvquality.methods import KV, Method, codec_method
from lib.kvquality.report import run_info
from transform_codec import add_transform_args, by_scope, transform_of

CURVES = {"cgp": "ladder + profile", "t": "KLT", "tp": "KLT + profile", "ref": "reference"}
OBSERVED = {
    "cg": "ladder",
    "cgo": "ladder + observed",
    "cgpo": "ladder + profile + observed",
    "to": "KLT + observed",
    "tpo": "KLT + profile + observed",
    "tpq": "KLT + profile + observed + shaped keys",
}
#: Curves whose level 1 is far below KL 0.05: they take `coarser` settings too.
COARSE = ("tp", "to", "tpo", "tpq")


def profile_paths(specs: list[str]) -> dict[str, str]:
    """`model=path` pairs; SmolLM2's shipped profile unless one is named for it."""
    paths = {"smollm2": str(profiles.path(profiles.SMOLLM2))}
    return paths | dict(s.split("=", 1) for s in specs)


@functools.cache
def profile_of(path: str) -> cachegen.ModelProfile:
    return cachegen.ModelProfile.load(path)


@functools.cache
def observed(model: str, doc: str, prefix: int) -> tuple:
    """The attention the document's prefix drew from its own last queries (per layer)."""
    lm = load_model(model)
    ids = lm.first_ids(load_document(doc).text, prefix)
    return tuple(observed_attention(lm.model, ids)[1])


@functools.cache
def directions(model: str, doc: str, prefix: int) -> QueryDirections:
    """What the document's prefix's last queries share (`encode(..., queries=)`)."""
    lm = load_model(model)
    return query_directions(lm.model, lm.first_ids(load_document(doc).text, prefix))


def coded(
    transform,
    profile: cachegen.ModelProfile | None,
    key: str,
    config,
    attention=None,
    queries: QueryDirections | None = None,
) -> Method:
    """The transform's blob (`cachegen.encode(..., transform=, profile=, attention=,
    queries=)`) and its decode."""

    def encode(kv: KV) -> bytes:
        return cachegen.encode(
            kv,
            config=config,
            transform=transform,
            profile=profile,
            attention=attention,
            queries=queries,
        )

    def decode(blob: bytes, like: KV) -> KV:
        return list(cachegen.decode(blob, transforms=transform))

    return Method(key, key, encode, decode)


def variants(fit: tuple[str, ...], prefix: int, paths: dict[str, str]) -> dict[str, Variant]:
    """How each curve codes a model's cache, tagged with what it adds to the codec: a
    transform curve's rows are keyed by the level, which `encode` turns into coefficient
    settings, so their tags name the coefficient version too."""

    def t(model: str):
        return transform_of(model, fit, prefix, 0.0)

    def tw(model: str):  # learned with the profile's channel weights
        return transform_of(model, fit, prefix, 0.0, paths[model])

    def tp_tag(m: str) -> str:
        return f"kltp-{tw(m).digest()[:12]}-{p(m).digest[:12]}-c{COEFFICIENT_VERSION}"

    def p(model: str) -> cachegen.ModelProfile:
        return profile_of(paths[model])

    def seen(m: str, doc: str) -> tuple:
        return observed(m, doc, prefix)

    obs = f"o{OBSERVATION_WINDOW}-{OBSERVED_SHARE}"
    on_coefficients = f"{obs}-r{OBSERVED_RECENCY}"  # the transform's own recency law with it
    shaped = f"s{SHAPING_VERSION}-q{SHAPE_DIRECTIONS}-{SHAPE_AHEAD}-{OBSERVATION_WINDOW}"
    return {
        "cg": PLAIN,
        "cgo": Variant(
            lambda m: f"{obs}|",
            lambda m, key, c, doc: codec_method(key, key, config=c, attention=seen(m, doc)),
        ),
        "cgpo": Variant(
            lambda m: f"prof-{p(m).digest[:12]}-{obs}|",
            lambda m, key, c, doc: codec_method(
                key, key, config=c, profile=p(m), attention=seen(m, doc)
            ),
        ),
        "cgp": Variant(
            lambda m: f"prof-{p(m).digest[:12]}|",
            lambda m, key, c, doc: codec_method(key, key, config=c, profile=p(m)),
        ),
        "t": Variant(
            lambda m: f"klt-{t(m).digest()[:16]}-c{COEFFICIENT_VERSION}|",
            lambda m, key, c, doc: coded(t(m), None, key, c),
        ),
        "tp": Variant(
            lambda m: f"{tp_tag(m)}|",
            lambda m, key, c, doc: coded(tw(m), p(m), key, c),
        ),
        "to": Variant(
            lambda m: f"klt-{t(m).digest()[:16]}-c{COEFFICIENT_VERSION}-{on_coefficients}|",
            lambda m, key, c, doc: coded(t(m), None, key, c, seen(m, doc)),
        ),
        "tpo": Variant(
            lambda m: f"{tp_tag(m)}-{on_coefficients}|",
            lambda m, key, c, doc: coded(tw(m), p(m), key, c, seen(m, doc)),
        ),
        "tpq": Variant(
            lambda m: f"{tp_tag(m)}-{on_coefficients}-{shaped}|",
            lambda m, key, c, doc: coded(
                tw(m), p(m), key, c, seen(m, doc), directions(m, doc, prefix)
            ),
        ),
    }


def coarser(steps: int, profiled: bool, observed: bool) -> dict[str, cachegen.CodecConfig]:
    """`xN`: level 1 as coefficients coded with token importance (a profile's, `profiled`, or
    the `observed` attention) take it, both steps 2^(N/4) times as coarse, N = 1..`steps`, for
    a curve whose level 1 is already below the KL targets (so its bits there are measured, not
    bounded)."""
    one = coefficient_config(cachegen.CodecConfig.from_level(1), profiled, observed)
    return {
        f"x{n}": dataclasses.replace(
            one, key_param=one.key_param * 2 ** (n / 4), value_param=one.value_param * 2 ** (n / 4)
        )
        for n in range(1, steps + 1)
    }


def equal_kl(rs: dict[str, Result], levels: list[int], refs: list[int]) -> dict:
    curves = [c for c in CURVES | OBSERVED if c == "ref" or f"{c}{levels[0]}" in rs]
    keys = {c: [f"{c}{lv}" for lv in (refs if c == "ref" else levels)] for c in curves}
    for c in COARSE:
        if c in keys:
            keys[c] += [k for k in rs if k.startswith(f"{c}x")]
    return {t: {c: bits_at(curve(rs, keys[c]), t) for c in curves} for t in TARGETS}


def cell(b: tuple[float | None, str]) -> str:
    return f"{b[1]}{b[0]:.3f}" if b[0] else "out of range"


def ratio(a: tuple[float | None, str], b: tuple[float | None, str]) -> str:
    return f"{a[1]}{a[0] / b[0]:.3f}" if a[0] and b[0] and not b[1] else "n/a"


def ratio_table(at: dict[str, dict]) -> list[str]:
    lines = [
        "| model | docs | KL target | " + " | ".join(CURVES.values()) + " | ladder + profile "
        "/ ref | KLT + profile / ref | KLT + profile / ladder + profile |",
        "|---|---|--:|" + "--:|" * (len(CURVES) + 3),
    ]
    for name, by_target in at.items():
        for target, b in by_target.items():
            cells = [cell(b[c]) for c in CURVES]
            cells += [ratio(b["cgp"], b["ref"]), ratio(b["tp"], b["ref"])]
            cells.append(ratio(b["tp"], b["cgp"]))
            lines.append(f"| {name} | {target} | " + " | ".join(cells) + " |")
    return lines


def observed_table(at: dict[str, dict], names: list[str]) -> list[str]:
    """Bits and ratios to the reference of the curves `names` (those given observed attention
    beside the same coding without it)."""
    labels = [(CURVES | OBSERVED)[c] for c in names]
    lines = [
        "| model | docs | KL target | " + " | ".join(f"{n} | {n} / ref" for n in labels) + " |",
        "|---|---|--:|" + "--:|" * (2 * len(names)),
    ]
    for name, by_target in at.items():
        for target, b in by_target.items():
            cells = [f"{cell(b[c])} | {ratio(b[c], b['ref'])}" for c in names]
            lines.append(f"| {name} | {target} | " + " | ".join(cells) + " |")
    return lines


def level_table(p: dict[str, dict[str, Result]], levels: list[int]) -> list[str]:
    names = [CURVES[c] for c in ("cgp", "t", "tp")]
    lines = [
        "| model | level | " + " | ".join(f"{n} bits/elt | {n} KL" for n in names) + " |",
        "|---|--:|" + "--:|" * 6,
    ]
    for m, rs in p.items():
        for lv in levels:
            cells = [rs[f"{c}{lv}"] for c in ("cgp", "t", "tp")]
            txt = " | ".join(f"{r.bits_per_element:.3f} | {r.kl_mean:.2e}" for r in cells)
            lines.append(f"| {m} | {lv} | {txt} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_transform_args(ap, levels="1,2,3,5,8,9,10,11,12,13,14,15,18,20,24,27")
    ap.add_argument("--profile", action="append", default=[], help="model=path of its profile")
    ap.add_argument("--coarser", type=int, default=6, help="settings coarser than level 1 (tp)")
    ap.add_argument("--observed", action="store_true", help="also the curves given attention")
    ap.add_argument(
        "--curves", default="", help="only these curves (e.g. to,tpq) and the reference: one table"
    )
    a = ap.parse_args()
    torch.set_num_threads(1)
    levels, refs = ints(a.levels), ints(a.refs)
    models, docs, fit = words(a.models), words(a.docs), tuple(words(a.fit))
    paths = profile_paths(a.profile)
    only = words(a.curves) if a.curves else []
    if unknown := set(only) - set(CURVES | OBSERVED) - {"ref"}:
        ap.error(f"--curves: unknown {sorted(unknown)}; known {sorted(CURVES | OBSERVED)}")
    info = run_info(", ".join(models), a.prefix, a.cont)
    rows = run(models, docs, codings([], [], [], refs), a.prefix, a.cont, PLAIN)
    for name, variant in variants(fit, a.prefix, paths).items():
        # --curves names exactly what runs; without it --observed adds the observed curves
        wanted = name in only if only else a.observed or name not in OBSERVED
        if not wanted:
            continue
        todo = {f"{name}{lv}": cachegen.CodecConfig.from_level(lv) for lv in levels}
        if name in COARSE:
            profiled = name.startswith("tp")  # tp, tpo, tpq: the KLT with the profile
            settings = coarser(a.coarser, profiled, name in OBSERVED)
            todo |= {f"{name}{k}": c for k, c in settings.items()}
        rows += run(models, docs, todo, a.prefix, a.cont, variant)
    p = pooled(rows)
    at = by_scope(rows, docs, lambda rs: equal_kl(rs, levels, refs))
    record = {
        "run": info,
        "profiles": {m: profile_of(p).calibration for m, p in paths.items() if m in models},
        "rows": rows,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "transform_profile.json").write_text(json.dumps(record, indent=1) + "\n")
    if only:
        print("\n".join(observed_table(at, [c for c in only if c != "ref"])))
        return
    md = [
        "### Bits/element and mean KL per level (pooled over the documents)",
        "",
        *level_table(p, levels),
        "",
        "### Bits/element at equal KL (log-KL interpolation; reference: CacheGen's quantizer)",
        "",
        *ratio_table(at),
    ]
    if a.observed:
        md += ["", "### Given the attention the prefix's last queries drew", ""]
        md += observed_table(at, ["t", "to", "tp", "tpo", "tpq"])
        md += ["", "The ladder (raw channels) given it:", ""]
        md += observed_table(at, ["cg", "cgo", "cgp", "cgpo"])
    print("\n".join(md))


if __name__ == "__main__":
    main()
