"""The level ladder on several real models: does a level mean the same quality everywhere?

    python bench/ladder_models.py --models smollm2,gemma3 --docs GPL-3,python:argparse \
        --levels 1,5,10,15,20,27,34,40,41,42,43,44 --refs 1,2,3,4,5 --cont 128

For every model and document: the uncompressed cache's continuation against each level's
decoded cache (no profile) and the CacheGen reference's. Writes ladder_models.json and
ladder_models.md: KL per level and model pooled over the documents, its spread across models,
whether it falls monotonically with the level, and per model the bits the ladder needs at each
KL target against the reference's bits there. Each (model, document, coding) result is kept in
a JSON-lines file under the KV cache folder (``lib.kvquality.model.KV_CACHE``), keyed by the
coding's full settings, so an interrupted run resumes and a rerun recomputes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cachegen
from lib import RESULTS_FORMAT
from lib.cli import add_scoring_args, ints, words
from lib.equal_kl import TARGETS, reference_bits
from lib.kvquality import Result, evaluate, load_document, load_model, pool, prepare
from lib.kvquality.methods import Method, codec_method
from lib.kvquality.model import KV_CACHE
from lib.kvquality.report import run_info
from lib.runinfo import short_commit

RESULTS = Path(__file__).resolve().parent / "results"
STORE = KV_CACHE / "ladder_models.jsonl"


def codings(
    levels: list[int], flat: list[int], fixed: list[int], refs: list[int]
) -> dict[str, cachegen.CodecConfig]:
    """Method key -> settings: `cgN` ladder levels, `flatN` the same without the key spread
    (ladder version 1's levels), `fixedN` with the key spread's strength fixed at its bound
    (version 2's), `refN` the CacheGen reference."""
    out = {f"cg{lv}": cachegen.CodecConfig.from_level(lv) for lv in levels}
    plain = [cachegen.CodecConfig.from_level(lv) for lv in flat]
    out |= {
        f"flat{c.level}": dataclasses.replace(c, key_spread=0.0, key_spread_auto=False)
        for c in plain
    }
    spread = [cachegen.CodecConfig.from_level(lv) for lv in fixed]
    out |= {f"fixed{c.level}": dataclasses.replace(c, key_spread_auto=False) for c in spread}
    out |= {f"ref{r}": cachegen.CodecConfig.cachegen_reference(r) for r in refs}
    return out


@dataclass(frozen=True)
class Variant:
    """How a model's cache is coded around the codec: `method(model, key, config, doc)` makes
    the method for a document, `tag(model)` names what it adds (a transform's digest; "" for
    the plain codec) in the keys of stored results."""

    tag: Callable[[str], str]
    method: Callable[[str, str, cachegen.CodecConfig, str], Method]


PLAIN = Variant(
    lambda model: "", lambda model, key, config, doc: codec_method(key, key, config=config)
)


def cache_key(
    model: str, doc: str, prefix: int, cont: int, config: cachegen.CodecConfig, tag: str = ""
) -> str:
    settings = json.dumps(config.to_json(), sort_keys=True)
    return f"{tag}{model}|{doc}|{prefix}|{cont}|{RESULTS_FORMAT}|{settings}"


def stored_results() -> dict[str, dict]:
    if not STORE.exists():
        return {}
    rows = (json.loads(line) for line in STORE.read_text().splitlines() if line.strip())
    return {r["key"]: r["result"] for r in rows}


def run(
    models: list[str],
    docs: list[str],
    todo: dict,
    prefix: int,
    cont: int,
    variant: Variant = PLAIN,
) -> list[dict]:
    """Every (model, document, coding) result as a dict with a `model` field."""
    done = stored_results()
    out = []
    for name in docs:  # every model on a document before the next document
        for model in models:
            tag = variant.tag(model)
            keys = {m: cache_key(model, name, prefix, cont, c, tag) for m, c in todo.items()}
            missing = [m for m in todo if keys[m] not in done]
            if missing:
                lm = load_model(model)
                case = prepare(lm, load_document(name), prefix, cont)
                for m in missing:
                    r = evaluate(lm, case, variant.method(model, m, todo[m], name))
                    done[keys[m]] = dataclasses.asdict(r)
                    with STORE.open("a") as f:
                        f.write(json.dumps({"key": keys[m], "result": done[keys[m]]}) + "\n")
                    print(
                        f"{model} {name} {m}: {r.bits_per_element:.3f} b/e KL {r.kl_mean:.2e}",
                        file=sys.stderr,
                        flush=True,
                    )
                del case
            # a stored result may come from another method key with the same settings
            out += [{"model": model, **done[keys[m]], "method": m} for m in todo]
    return out


def pooled(rows: list[dict]) -> dict[str, dict[str, Result]]:
    """model -> method -> result pooled over documents."""
    by_model: dict[str, list[Result]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(Result(**{k: v for k, v in r.items() if k != "model"}))
    return {m: {r.method: r for r in pool(rs)} for m, rs in by_model.items()}


def level_table(p: dict[str, dict[str, Result]], levels: list[int], prefix: str) -> list[str]:
    models = list(p)
    head = "| level | " + " | ".join(f"{m} bits/elt | {m} KL" for m in models)
    lines = [head + " | KL max/min across models |", "|---" * (2 * len(models) + 2) + "|"]
    for lv in levels:
        rs = [p[m][f"{prefix}{lv}"] for m in models]
        kls = [r.kl_mean for r in rs]
        cells = " | ".join(f"{r.bits_per_element:.3f} | {r.kl_mean:.2e}" for r in rs)
        lines.append(f"| {lv} | {cells} | {max(kls) / min(kls):.2f} |")
    return lines


def level_section(
    p: dict[str, dict[str, Result]], levels: list[int], prefix: str, title: str
) -> list[str]:
    """A titled level table, or nothing for a ladder this run left out."""
    return [f"## {title}", "", *level_table(p, levels, prefix), ""] if levels else []


def monotone(p: dict[str, dict[str, Result]], levels: list[int]) -> list[str]:
    out = []
    for m, rs in p.items():
        kls = [rs[f"cg{lv}"].kl_mean for lv in levels]
        steps = zip(levels, levels[1:], kls, kls[1:], strict=False)
        bad = [(a, b) for a, b, x, y in steps if y > x]
        out.append(f"- {m}: " + ("monotone" if not bad else f"NOT monotone at {bad}"))
    return out


LADDER_NAMES = {
    "cg": "ladder",
    "flat": "no spread (v1)",
    "fixed": "fixed spread (v2)",
}


def curve(rs: dict[str, Result], keys: list[str]) -> list[tuple[float, float]]:
    return sorted((rs[k].bits_per_element, rs[k].kl_mean) for k in keys)


def bits(b: float | None) -> str:
    return f"{b:.3f}" if b else "out of range"


def ratio_table(p: dict[str, dict[str, Result]], ladders: dict[str, list[int]]) -> list[str]:
    """Bits at each KL target (log-KL interpolation between measured points) of each ladder
    (method prefix -> its levels; `ref` the reference's), and their ratios to the reference."""
    if "ref" not in ladders:
        return ["(no CacheGen reference levels in this run: `--refs` was empty)"]
    names = [n for n in ladders if n != "ref"]
    lines = [
        "| model | KL target | reference bits/elt | "
        + " | ".join(f"{LADDER_NAMES[n]} bits/elt | / reference" for n in names)
        + " |",
        "|---" * (3 + 2 * len(names)) + "|",
    ]
    for m, rs in p.items():
        curves = {n: curve(rs, [f"{n}{lv}" for lv in lvs]) for n, lvs in ladders.items()}
        for t in TARGETS:
            rb = reference_bits(curves["ref"], t)
            cells = []
            for n in names:
                b = reference_bits(curves[n], t)
                cells += [bits(b), f"{b / rb:.3f}" if b and rb else "n/a"]
            lines.append(f"| {m} | {t} | {bits(rb)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_scoring_args(ap, docs="GPL-3,python:argparse", levels="1,5,10,15,20,27,34,40,41,42,43,44")
    ap.add_argument("--flat", default="5,15,27,40", help="levels also run without key spread")
    ap.add_argument(
        "--fixed", default="", help="levels also run with the spread's strength fixed (v2)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="ladder_models", help="the results' file name stem")
    a = ap.parse_args()
    levels, refs, flat, fixed = ints(a.levels), ints(a.refs), ints(a.flat), ints(a.fixed)
    models, docs = words(a.models), words(a.docs)
    info = run_info(", ".join(models), a.prefix, a.cont)
    rows = run(models, docs, codings(levels, flat, fixed, refs), a.prefix, a.cont)
    p = pooled(rows)
    ladders = {"cg": levels, "flat": flat, "fixed": fixed, "ref": refs}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps({"run": info, "rows": rows}, indent=1))
    md = [
        "# The ladder on several models (no profile)",
        "",
        f"Models {', '.join(models)}; documents {', '.join(docs)} (never tuned on); "
        f"{a.prefix}-token prefix, {a.cont} scored continuation tokens; ladder version "
        f"{cachegen.config.LADDER_VERSION}. {info['cpu']}, {info['cpus']} cores shared, "
        f"commit {short_commit(info['commit'])}, {info['date']}. "
        "Reproduce: `python bench/ladder_models.py "
        f"--models {a.models} --docs {a.docs} --levels {a.levels} --flat {a.flat} "
        f"--fixed {a.fixed} --refs {a.refs} "
        f"--cont {a.cont} --name {a.name}`.",
        "",
        "## Mean KL per level, pooled over the documents",
        "",
        *level_table(p, levels, "cg"),
        "",
        *level_section(
            p, flat, "flat", "The same levels without the key spread (ladder version 1)"
        ),
        *level_section(
            p,
            fixed,
            "fixed",
            "The same levels with the key spread's strength fixed at 0.5 (ladder version 2)",
        ),
        "## KL falls with the level (pooled)",
        "",
        *monotone(p, levels),
        "",
        "## Bits at the issue's KL targets against the CacheGen reference",
        "",
        *ratio_table(p, {n: lv for n, lv in ladders.items() if lv}),
    ]
    (a.out / f"{a.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
