"""tasks.md and tasks.png from the suite's answers (tasks.json)."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cachegen import LOSSLESS
from cachegen.plotting import MissingPlotting, pyplot

from ..runinfo import describe
from .runner import EXACT, Row
from .stats import (
    DECIDED_GAP,
    NEED_LOW,
    NEED_SHARE,
    accuracy,
    agreement,
    best_low,
    bits_per_element,
    by_margin,
    decided,
    instances_needed,
    smallest_meeting,
    where_right,
    word_agreement,
)

FAMILIES = {"cg": "ladder level", "ref": "CacheGen reference", "int": "int", "fp": "fp"}
#: Families named by their bits (int4, fp16) rather than as "family N".
BITS_NAMED = ("int", "fp")


def _family(method: str) -> str:
    return next(f for f in FAMILIES if method.startswith(f))


def _number(method: str) -> int:
    return int(method.removeprefix(_family(method)))


def _methods(rows: Sequence[Row]) -> list[str]:
    """The codings in ``rows``: ladder levels, then references, then int-N, each ascending."""
    found = {r.method for r in rows if r.method != EXACT}
    return sorted(found, key=lambda m: (list(FAMILIES).index(_family(m)), _number(m)))


def _lossless(method: str) -> bool:
    return method == f"cg{LOSSLESS}"


def _label(method: str) -> str:
    family = _family(method)
    if family in BITS_NAMED:
        return method
    if _lossless(method):
        return f"lossless (level {LOSSLESS})"
    return f"{FAMILIES[family]} {_number(method)}"


def coding_table(rows: Sequence[Row]) -> list[str]:
    """Per coding: bits, agreement and accuracy with intervals, agreement per task, seconds."""
    tasks = list(dict.fromkeys(r.task for r in rows))
    head = "| coding | bits/elt | agreement [95% CI] | first-word agreement | agreement where "
    head += "uncompressed is right | agreement on decided answers | accuracy [95% CI] | "
    lines = [
        head + " | ".join(f"{t} agree" for t in tasks) + " | s/instance |",
        "|---|--:|--:|--:|--:|--:|--:|" + "--:|" * len(tasks) + "--:|",
    ]
    exact = [r for r in rows if r.method == EXACT]
    right, sure = where_right(rows), decided(rows)
    lines.append(
        f"| uncompressed | - | - | - | - | - | {accuracy(rows, EXACT)} | "
        + " | ".join("-" for _ in tasks)
        + f" | {statistics.median(r.seconds for r in exact):.1f} (prefill) |"
    )
    for m in _methods(rows):
        per_task = [agreement([r for r in rows if r.task == t], m) for t in tasks]
        seconds = statistics.median(r.seconds for r in rows if r.method == m)
        lines.append(
            f"| {_label(m)} | {bits_per_element(rows, m):.3f} | {agreement(rows, m)} | "
            f"{word_agreement(rows, m)} | {agreement(right, m) if right else '-'} | "
            f"{agreement(sure, m) if sure else '-'} | {accuracy(rows, m)} | "
            + " | ".join(f"{100 * a.share:.0f}%" for a in per_task)
            + f" | {seconds:.1f} |"
        )
    return lines


def accuracy_table(rows: Sequence[Row]) -> list[str]:
    """The uncompressed cache's accuracy per task: what the model itself can do."""
    tasks = list(dict.fromkeys(r.task for r in rows))
    lines = ["| task | instances | accuracy [95% CI] |", "|---|--:|--:|"]
    for t in tasks:
        rate = accuracy([r for r in rows if r.task == t], EXACT)
        lines.append(f"| {t} | {rate.n} | {rate} |")
    return lines


def _smallest(rows: Sequence[Row], family: str, score: Any = agreement) -> str:
    rates = {_number(m): score(rows, m) for m in _methods(rows) if _family(m) == family}
    if not rates:
        return "not run"
    found = smallest_meeting(rates)
    if found is None:
        return f"none of {sorted(rates)}"
    m = f"{family}{found}"
    name = "lossless" if _lossless(m) else found
    return f"{name}: {bits_per_element(rows, m):.3f} b/e, {rates[found]}"


def _baseline_cell(rows: Sequence[Row], m: str, score: Any = agreement) -> str:
    if not any(r.method == m for r in rows):
        return "not run"
    rate = score(rows, m)
    verdict = "meets" if rate.meets() else "does not meet"
    return f"{bits_per_element(rows, m):.3f} b/e, {rate}, {verdict}"


def headline(by_model: dict[str, list[Row]], score: Any = agreement) -> list[str]:
    """The issue's number per model: the smallest coding whose answers agree enough."""
    lines = [
        "| model | instances | smallest ladder level | smallest CacheGen reference | int4 | int8 "
        "| fp16 (control) |",
        "|---|--:|---|---|---|---|---|",
    ]
    for model, rows in by_model.items():
        n = sum(r.method == EXACT for r in rows)
        cells = [
            _smallest(rows, "cg", score),
            _smallest(rows, "ref", score),
            *(_baseline_cell(rows, m, score) for m in ("int4", "int8", "fp16")),
        ]
        lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
    return lines


#: Edges of the margin classes in `margin_table` (logits).
MARGIN_EDGES = (DECIDED_GAP, 0.5, 1.0)


def margin_table(rows: Sequence[Row]) -> list[str]:
    """Agreement per coding within classes of the uncompressed answer's margin."""
    bins = by_margin(rows, MARGIN_EDGES)
    bounds = ["0", *map(str, MARGIN_EDGES), "inf"]
    names = [
        f"margin {a}-{b} ({sum(r.method == EXACT for r in part)})"
        for a, b, part in zip(bounds, bounds[1:], bins, strict=False)
    ]
    lines = ["| coding | " + " | ".join(names) + " |", "|---|" + "--:|" * len(bins)]
    for m in _methods(rows):
        cells = [str(agreement(part, m)) if part else "-" for part in bins]
        lines.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    return lines


def near_ties(by_model: dict[str, list[Row]]) -> list[str]:
    """How many uncompressed answers hang on a near-tie, and the criterion without them."""
    counts = []
    for model, rows in by_model.items():
        ties, sure = (
            sum(r.method == EXACT for r in part) for part in by_margin(rows, (DECIDED_GAP,))
        )
        unkept = sum(r.method == EXACT for r in rows) - ties - sure
        counts.append(f"{model} {ties} of {ties + sure}" + (" with margins kept" if unkept else ""))
    return [
        "## Decided answers",
        "",
        f"An answer is decided when each token it took led the runner-up by >= {DECIDED_GAP} "
        f"logits (`answer`'s margin); below that, a near-tie flips on changes far smaller than "
        f"any coding's error. Uncompressed answers holding a near-tie: {'; '.join(counts)}. The "
        f"criterion on the decided instances only:",
        "",
        *headline({m: decided(rows) for m, rows in by_model.items()}),
    ]


def cost_lines(by_model: dict[str, list[Row]]) -> list[str]:
    """Measured seconds: prefill per context length, and per coding per instance."""
    out = []
    for model, rows in by_model.items():
        exact = [r for r in rows if r.method == EXACT]
        lengths = sorted({r.tokens for r in exact})
        prefill = ", ".join(
            f"{n} tokens {statistics.median(r.seconds for r in exact if r.tokens == n):.1f} s"
            for n in lengths
        )
        codings = [r for r in rows if r.method != EXACT]
        per_coding = statistics.median(r.seconds for r in codings)
        instance = sum(r.seconds for r in rows) / len(exact)
        out.append(
            f"- {model}: prefill (median) {prefill}; round trip + answer "
            f"per coding {per_coding:.1f} s (median); {instance:.0f} s per instance with "
            f"{len(_methods(rows))} codings (mean)."
        )
    return out


def markdown(data: dict[str, Any]) -> str:
    run = data["run"]
    rows = [Row(**r) for r in data["rows"]]
    by_model: dict[str, list[Row]] = {}
    for r in rows:
        by_model.setdefault(r.model, []).append(r)
    n = max(sum(r.method == EXACT for r in rs) for rs in by_model.values())
    lines = [
        "# Task accuracy of coded KV caches",
        "",
        f"Long-context tasks generated in-process (`bench/lib/longtasks`; seed 0): passkey and "
        f"key-value retrieval with the asked-about fact at depths 0.1-0.9, variable tracking "
        f"(a 3-hop assignment chain beside a distractor chain), two-hop lookup (person -> city "
        f"-> postal code); filler from Python's reference documentation (`pydoc_data`, never "
        f"used to tune or report the ladder); contexts of {run['lengths'].replace(',', ', ')} "
        f"tokens. Each "
        f"instance is prefilled once; its exact KV is coded in chunks of {run['chunk_tokens']} "
        f"tokens at their positions (as `save_context` stores them), decoded, and the model "
        f"answers greedily after the question (up to the first newline, answer tokens + 4 at "
        f"most). Agreement: the answer equals the uncompressed cache's. Accuracy: the answer "
        f"holds the ground truth as a whole word. Intervals: Wilson 95%. bits/elt: all chunk "
        f"blobs' bytes x 8 / KV elements. int4/int8: uniform per-token quantisation with one "
        f"fp16 scale per token and layer (`lib.kvquality.methods.int_method`).",
        "",
        f"{describe(run)} Reproduce: `{run['command']}`.",
        "",
        f"## The smallest coding whose answers agree with the uncompressed cache "
        f"(>= {NEED_SHARE:.0%} of instances, lower bound >= {NEED_LOW:.0%})",
        "",
        *headline(by_model),
        "",
        "The same on the answers' first words (the number or name the answer gives; an answer "
        "that goes on after it, e.g. `79959. Remember it.` against `79959.`, agrees here):",
        "",
        *headline(by_model, word_agreement),
        "",
        f"With {n} instances a model's lower bound is at most {100 * best_low(n):.1f}% "
        f"(every answer agreeing); the criterion needs at least {instances_needed()} instances to "
        f"be reachable.",
        "",
        *near_ties(by_model),
    ]
    for model, rs in by_model.items():
        lines += ["", f"## {model}", "", *coding_table(rs), "", *accuracy_table(rs)]
        lines += ["", "Agreement by the uncompressed answer's margin (logits; instances):", ""]
        lines += margin_table(rs)
    lines += [
        "",
        "## Cost (this machine)",
        "",
        "Seconds as measured when each answer was first computed (a resumed run keeps them), "
        "so at the load of that time, not necessarily the one in the header.",
        "",
        *cost_lines(by_model),
        "",
    ]
    return "\n".join(lines)


LOOKS = {
    "cg": ("tab:blue", "o", "-"),
    "ref": ("tab:orange", "^", "-"),
    "int": ("tab:brown", "D", ""),
    "fp": ("tab:gray", "s", ""),
}


def _draw(ax: Any, rows: Sequence[Row], family: str, score: Any) -> None:
    """One family's ``score`` (agreement or accuracy) against bits, each point with its
    interval and labelled with its level."""
    ms = [m for m in _methods(rows) if _family(m) == family]
    if not ms:
        return
    colour, marker, line = LOOKS[family]
    x = [bits_per_element(rows, m) for m in ms]
    rates = [score(rows, m) for m in ms]
    y = [r.share for r in rates]
    low = [max(0.0, s - r.interval[0]) for s, r in zip(y, rates, strict=True)]
    high = [max(0.0, r.interval[1] - s) for s, r in zip(y, rates, strict=True)]
    name = FAMILIES[family] + ("-N" if family in BITS_NAMED else "s")
    ax.errorbar(x, y, yerr=[low, high], marker=marker, color=colour, ls=line, capsize=3, label=name)
    for m, xy in zip(ms, zip(x, y, strict=True), strict=True):
        ax.annotate(
            str(_number(m)), xy, xytext=(3, 3), textcoords="offset points", fontsize=7, color=colour
        )


def plot(data: dict[str, Any], path: Path) -> Path:
    """Agreement and accuracy against bits/element, one row per model, with 95% intervals."""
    plt = pyplot()
    rows = [Row(**r) for r in data["rows"]]
    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for (agree_ax, acc_ax), model in zip(axes, models, strict=True):
        mine = [r for r in rows if r.model == model]
        for family in LOOKS:
            _draw(agree_ax, mine, family, agreement)
            _draw(acc_ax, mine, family, accuracy)
        exact = accuracy(mine, EXACT)
        acc_ax.axhline(exact.share, color="black", ls="--", lw=1, label="uncompressed")
        acc_ax.axhspan(*exact.interval, color="black", alpha=0.08)
        agree_ax.axhline(NEED_SHARE, color="red", ls=":", lw=1, label=f"{NEED_SHARE:.0%}")
        agree_ax.set_ylabel("answers equal to the uncompressed cache's")
        acc_ax.set_ylabel("answers holding the ground truth")
        for ax in (agree_ax, acc_ax):
            ax.set_xlabel("bits per KV element")
            ax.set_title(model, fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Long-context tasks, Wilson 95% intervals ({data['run']['commit'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(data: dict[str, Any], out: Path) -> str:
    """Write tasks.md and tasks.png under ``out``; return the markdown."""
    md = markdown(data)
    (out / "tasks.md").write_text(md)
    try:
        plot(data, out / "tasks.png")
    except MissingPlotting as e:
        print(f"no plot: {e}", file=sys.stderr)
    return md
