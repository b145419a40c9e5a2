"""Plots of load results: `cachegen demo --plot FILE` (and the helpers bench/lib/plots.py shares).

matplotlib is optional (the `bench` extra); `pyplot()` says so in one line when it is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: One colour and marker per strategy kind, the same in every plot.
STYLES: dict[str, tuple[str, str]] = {
    "text only": ("tab:gray", "s"),
    "int8": ("tab:brown", "D"),
    "CacheGen rule": ("tab:orange", "^"),
    "ours": ("tab:blue", "o"),
    "cachegen (ours)": ("tab:blue", "o"),
    "oracle": ("black", "*"),
}


class MissingPlotting(RuntimeError):
    """matplotlib is not installed."""


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend; `MissingPlotting` without matplotlib."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingPlotting(
            "plotting needs matplotlib: pip install 'cachegen[bench]' (or matplotlib)"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def styles(names: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per strategy; the others (fixed levels, in their order) get greens from
    light to dark."""
    others = [n for n in names if n not in STYLES]
    shades = greens(len(others))
    return {n: STYLES.get(n) or (shades[others.index(n)], "v") for n in names}


def greens(n: int) -> list[str]:
    """`n` greens from light to dark."""
    return [_GREENS[round(i * (len(_GREENS) - 1) / max(n - 1, 1))] for i in range(n)]


#: A KL below this is rounding noise (text only recomputes exactly): drawn as ~0, no bar.
_KL_ZERO = 1e-9
_GREENS = ("#a1d99b", "#74c476", "#41ab5d", "#238b45", "#006d2c", "#00441b")


def plot_demo(result: dict[str, Any], path: str | Path) -> None:
    """TTFT (with the SLO) and quality (mean KL) per strategy of a `run_demo` result, each bar
    labelled with its value."""
    plt = pyplot()
    rows = result["strategies"]
    names = [r["strategy"] for r in rows]
    look = styles(names)
    colours = [look[n][0] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.6), sharey=True)
    y = list(range(len(rows)))
    ttft = [r["ttft_s"] for r in rows]
    left.barh(y, ttft, color=colours)
    left.axvline(result["slo_s"], color="red", ls="--", lw=1, label=f"SLO {result['slo_s']:g} s")
    left.set_xscale("log")
    left.set_xlim(min(ttft + [result["slo_s"]]) / 3, max(ttft) * 4)
    left.set_yticks(y, names)
    left.invert_yaxis()
    left.set_xlabel("time to first token, s (load + question prefill)")
    left.legend(loc="lower right", fontsize=8)
    kl = [r["kl"] if r["kl"] >= _KL_ZERO else 0.0 for r in rows]
    floor = min([k for k in kl if k > 0], default=1e-3) / 10
    right.barh(
        y,
        [max(k, floor) for k in kl],
        color=[c if k > 0 else "none" for c, k in zip(colours, kl, strict=True)],
    )
    right.set_xscale("log")
    right.set_xlim(floor, max(kl + [floor]) * 8)
    right.set_xlabel("mean KL vs uncompressed, nats (lower is better)")
    for i, (t, k) in enumerate(zip(ttft, kl, strict=True)):
        left.annotate(
            f"{t:.3g} s", (t, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8
        )
        label = f"{k:.2g}" if k > 0 else "~0"
        right.annotate(
            label,
            (max(k, floor), i),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(
        f"{result['model']}, {result['context_tokens']} tokens, link "
        f"{result['bandwidth_mbit']:g} Mbit/s + {result['latency_ms']:g} ms",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
