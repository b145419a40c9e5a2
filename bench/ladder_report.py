"""Rate-quality report against the CacheGen reference, from transform_profile_256.json and
quality.json.

    python bench/ladder_report.py [--results bench/results]

Writes docs/rate_quality.png (bits/element vs mean KL, log scale) and
bench/results/ladder.md: first both models' curves at the KL targets (the rows of
`bench/transform_profile.py --curves ... --cont 256`), then SmolLM2's ladder: per document and
KL target, the smallest ladder level that meets the target, the CacheGen reference's bits at
the same KL (log-KL interpolation between its levels), and the ratio.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from lib.equal_kl import TARGETS, reference_bits
from lib.kvquality.docs import CALIBRATION_DOCS
from lib.runinfo import short_commit
from transform_codec import by_scope
from transform_profile import equal_kl, observed_table

ROOT = Path(__file__).resolve().parents[1]
# CacheGen as shipped stores a 33-entry 16-bit CDF per (layer, K/V, channel) in every 256-token
# chunk: 33 * 16 / 256 = 2.06 bits per element on top of its symbols (CacheGen's paper and
# LMCache's CacheGen code).
SHIPPED_CDF_BITS = 33 * 16 / 256
LADDERS = (
    ("cgp", "levels + SmolLM2 profile (`encode(kv, level=n, profile=...)`)"),
    ("cg", "levels without a profile (`encode(kv, level=n)`)"),
)


def is_level(method: str, prefix: str) -> bool:
    return method.startswith(prefix) and method[len(prefix) :].isdigit()


def points(rows: list[dict], prefix: str) -> list[tuple[float, float]]:
    """(bits/element, KL) of the methods whose key is prefix + digit, by level."""
    return sorted(
        (r["bits_per_element"], r["kl_mean"]) for r in rows if is_level(r["method"], prefix)
    )


def targets_section(path: Path) -> list[str]:
    """Both models at the KL targets, from `bench/transform_profile.py --curves ...`'s rows:
    each curve's bits and their ratio to the reference, pooled and per document."""
    data = json.loads(path.read_text())
    rows, run = data["rows"], data["run"]
    docs = list(dict.fromkeys(r["doc"] for r in rows))
    curves = list(dict.fromkeys(r["method"].rstrip("0123456789") for r in rows))
    curves = [c for c in curves if c != "ref" and not c.endswith("x")]
    methods = {r["method"] for r in rows}
    levels = sorted(int(m[len(curves[0]) :]) for m in methods if is_level(m, curves[0]))
    refs = sorted(int(m[3:]) for m in methods if is_level(m, "ref"))
    at = by_scope(rows, docs, lambda rs: equal_kl(rs, levels, refs))
    return [
        f"## Both models at the KL targets ({run['continuation_tokens']} scored tokens)",
        "",
        f"From `{path.name}` ({run['model']}, {run['cpu']}, {run['cpus']} cores, commit "
        f"{short_commit(run['commit'])}, {run['date']}; {run['prefix_tokens']}-token prefix). The "
        "transform (a RoPE-aware KLT per layer) given the attention the prefix's last queries "
        "paid each token at prefill (`encode(kv, n, transform=t, attention=a)`: no profile), and "
        "with the model's calibrated profile and keys shaped by those queries too "
        "(`encode(kv, n, transform=t, profile=p, attention=a, queries=q)`), on texts never tuned "
        "on; bits/element at each KL target (log-KL interpolation; `<=`: the coarsest setting "
        "already beats the target, so a bound) and the ratio to the reference below. Method and "
        "history: `transform_profile.md`. Reproduce: `OPENBLAS_NUM_THREADS=1 PYTHONPATH=python:"
        "bench python bench/transform_profile.py --models smollm2,gemma3 --profile gemma3=bench/"
        "results/gemma3-270m-profile.json --refs 1,2,3,4,5,6 --curves to,tpq --cont 256 --out "
        "/tmp/tp256`, the rows copied to `bench/results/transform_profile_256.json`, then "
        "`python bench/ladder_report.py`.",
        "",
        *observed_table(at, curves),
    ]


def ratio_rows(per_doc: list[dict], prefix: str) -> list[str]:
    by_doc: dict[str, list[dict]] = defaultdict(list)
    for r in per_doc:
        by_doc[r["doc"]].append(r)
    lines = [
        "| document | KL target | our level | our bits/elt | our KL | reference bits/elt | ratio "
        "| ratio vs CacheGen as shipped (modelled) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for doc, rows in by_doc.items():
        ours = [(r["bits_per_element"], r["kl_mean"], r["method"]) for r in rows]
        ours = sorted(o for o in ours if is_level(o[2], prefix))
        ref = points(rows, "ref")
        for target in TARGETS:
            meet = [o for o in ours if o[1] <= target]
            if not meet:
                lines.append(f"| {doc} | {target} | none | | | | | |")
                continue
            bits, kl, key = meet[0]
            rb = reference_bits(ref, target)
            # three decimals: a target of 0.6x must not read as met at 0.6039x
            ratio = f"{bits / rb:.3f}" if rb else "reference never reaches it"
            shipped = f"{bits / (rb + SHIPPED_CDF_BITS):.3f}" if rb else ""
            rbs = f"{rb:.3f}" if rb else f"> {ref[-1][0]:.3f}"
            cells = (doc, target, key, f"{bits:.3f}", f"{kl:.2e}", rbs, ratio, shipped)
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def level_rows(pooled: list[dict]) -> list[str]:
    """The README's levels table: pooled bits, compression, KL and top-1 per level, with and
    without the profile, then the baselines."""
    import cachegen

    by = {r["method"]: r for r in pooled}
    lines = [
        "| level | K / V step | bits/elt | vs fp16 | mean KL | top-1 | bits/elt + profile "
        "| KL + profile | top-1 + profile |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for lv in cachegen.LEVELS:
        plain, prof = by.get(f"cg{lv}"), by.get(f"cgp{lv}")
        if not plain or not prof:
            continue
        c = cachegen.CodecConfig.from_level(lv)
        name = f"**{lv} (default)**" if lv == cachegen.DEFAULT_LEVEL else str(lv)
        cells = (
            name,
            f"{c.key_param:g} / {c.value_param:g}",
            f"{plain['bits_per_element']:.2f}",
            f"{16 / plain['bits_per_element']:.1f}x",
            f"{plain['kl_mean']:.2e}",
            f"{plain['top1_agreement']:.3f}",
            f"{prof['bits_per_element']:.2f}",
            f"{prof['kl_mean']:.2e}",
            f"{prof['top1_agreement']:.3f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    refs = [by[k] for k in sorted(by) if is_level(k, "ref")]
    if refs:
        join = " / ".join
        lines.append(
            "| CacheGen reference 1 / 2 / 3 (64 / 128 bins) | | "
            + join(f"{r['bits_per_element']:.2f}" for r in refs)
            + " | | "
            + join(f"{r['kl_mean']:.2e}" for r in refs)
            + " | "
            + join(f"{r['top1_agreement']:.3f}" for r in refs)
            + " | | | |"
        )
    for key, label in (
        ("int8", "int8 per token"),
        ("int4", "int4 per token"),
        ("zstd3", "zstd-3 on fp16"),
    ):
        if key in by:
            r = by[key]
            kl = "lossless" if r["kl_mean"] == 0 else f"{r['kl_mean']:.2e}"
            bits = r["bits_per_element"]
            lines.append(
                f"| {label} | | {bits:.2f} | {16 / bits:.1f}x | {kl} | "
                f"{r['top1_agreement']:.3f} | | | |"
            )
    return lines


def plot(per_doc: list[dict], out: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = sorted({r["doc"] for r in per_doc})
    fig, axes = plt.subplots(1, len(docs), figsize=(4.2 * len(docs), 4), sharey=True)
    for ax, doc in zip(axes, docs, strict=False):
        rows = [r for r in per_doc if r["doc"] == doc and r["kl_mean"] > 0]
        for prefix, style, label in (
            ("cgp", "o-", "cachegen + profile"),
            ("cg", "^:", "cachegen, no profile"),
            ("ref", "s--", "CacheGen ref."),
        ):
            pts = points(rows, prefix)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        for r in rows:
            if r["method"] in ("int8", "int4", "zstd3", "zstd19"):
                ax.plot(r["bits_per_element"], r["kl_mean"], "x", ms=8, label=r["method"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([1, 1.5, 2, 3, 4, 6, 8, 16])
        ax.set_title(doc)
        ax.set_xlabel("bits per element (all blob bytes)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean KL(original || decoded), nats")
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M, 1536-token prefix, 256 scored tokens")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    data = json.loads((args.results / "quality.json").read_text())
    plot(data["per_doc"], ROOT / "docs" / "rate_quality.png")
    run = data["run"]
    head = ["# Level ladder vs the CacheGen reference", ""]
    head += [*targets_section(args.results / "transform_profile_256.json"), ""]
    head += [
        "## The ladder on SmolLM2",
        "",
        f"From `quality.json` ({run['model']}, {run['cpu']}, commit {short_commit(run['commit'])}, "
        f"{run['date']}). Reference = CacheGen's quantizer and levels coded with cachegen's own "
        "coder and compact tables (stricter than CacheGen as shipped, which adds ~2 bits/element "
        "of per-chunk CDFs at 256-token chunks; the last column adds those 2.06 bits to the "
        "reference). The profile (per layer, K/V and head step weights, key weights per RoPE "
        "band and a token-importance model: a 41 KB file once per model) was calibrated on "
        f"{', '.join(CALIBRATION_DOCS)}, which are never scored; its per-channel scales "
        "inside each blob are counted in the bits. Reproduce: "
        "`python bench/codec_quality.py && python bench/ladder_report.py`.",
    ]
    for prefix, title in LADDERS:
        head += ["", f"### {title}", "", *ratio_rows(data["per_doc"], prefix)]
    head += ["", "### Levels, pooled over the documents (the README's table)", ""]
    head += level_rows(data["pooled"])
    (args.results / "ladder.md").write_text("\n".join(head) + "\n")


if __name__ == "__main__":
    main()
