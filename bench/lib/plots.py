"""Plot the streaming sweep: TTFT and quality per strategy against bandwidth (docs/ttft.png).

Draws from bench/stream_sim.py's JSON (stream_sim plots at its end; bench/stream_plot.py redraws
from a results file without re-running). One context length and SLO; one row per engine
(recompute speed). Each point is the median over the traces of that mean bandwidth (steady,
noisy, 10x drop).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cachegen.plotting import MissingPlotting, pyplot, styles

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
STREAM_JSON = RESULTS / "stream.json"
TTFT_PNG = ROOT / "docs" / "ttft.png"
#: Strategies drawn (the rest of the ladder sits between its ends), in drawing order.
SHOWN = ("text only", "int8", "level 1", "level 4", "level 7", "CacheGen rule", "oracle", "ours")
#: KL 0 (every chunk recomputed from text) drawn at this floor of the log axis.
KL_FLOOR = 5e-5


def bandwidth_gbit(trace: str) -> float:
    """The mean bandwidth a trace is named by: 'noisy 0.3G #1' -> 0.3."""
    found = re.search(r"([0-9.]+)G", trace)
    if found is None:
        raise ValueError(f"trace name {trace!r} names no bandwidth")
    return float(found.group(1))


def medians(
    runs: list[dict[str, Any]], engine: str, tokens: int, slo: float, field: str
) -> dict[str, tuple[list[float], list[float]]]:
    """Per strategy: (bandwidths, median of `field` over that bandwidth's traces)."""
    cells: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if (r["engine"], r["tokens"], r["slo"]) != (engine, tokens, slo):
            continue
        for name in SHOWN:
            if name in r:
                cells[name][bandwidth_gbit(r["trace"])].append(r[name][field])
    return {
        name: (sorted(by_bw), [float(np.median(by_bw[b])) for b in sorted(by_bw)])
        for name, by_bw in cells.items()
    }


def plot_stream(
    data: dict[str, Any], out: Path = TTFT_PNG, *, tokens: int = 8192, slo: float = 1.0
) -> Path:
    """Draw `stream.json`'s runs of one context length and SLO into `out`."""
    plt = pyplot()
    engines = sorted({r["engine"] for r in data["runs"]})
    fig, axes = plt.subplots(len(engines), 2, figsize=(11, 3.6 * len(engines) + 0.8))
    axes = np.atleast_2d(axes)
    tps = data["run"]["prefill_tokens_per_s"]
    for (ttft_ax, kl_ax), engine in zip(axes, engines, strict=True):
        ttft = medians(data["runs"], engine, tokens, slo, "ttft")
        kl = medians(data["runs"], engine, tokens, slo, "kl")
        look = styles(list(ttft))
        for z, (name, (bw, values)) in enumerate(ttft.items()):
            colour, marker = look[name]
            line = {"marker": marker, "color": colour, "label": name, "zorder": 2 + z}
            ttft_ax.plot(bw, values, **line)
            kl_ax.plot(kl[name][0], np.maximum(kl[name][1], KL_FLOOR), **line)
        ttft_ax.axhline(slo, color="red", ls="--", lw=1, label=f"SLO {slo:g} s")
        ttft_ax.set_ylabel("TTFT, s (median over traces)")
        kl_ax.set_ylabel("mean KL vs uncompressed, nats")
        kl_ax.set_ylim(KL_FLOOR / 2, 2 * max(max(v) for _, v in kl.values()))
        kl_ax.annotate(
            "KL 0: every chunk recomputed from text",
            xy=(1, KL_FLOOR),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 5),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )
        bandwidths = sorted({b for bw, _ in ttft.values() for b in bw})
        _log_axes(ttft_ax, bandwidths, plain_y=True)
        _log_axes(kl_ax, bandwidths, plain_y=False)
        for ax in (ttft_ax, kl_ax):
            ax.set_title(f"{engine} engine (recompute {tps[engine]:g} tokens/s)", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    run = data["run"]
    fig.suptitle(
        f"Streaming sweep: {tokens}-token SmolLM2 contexts, TTFT SLO {slo:g} s "
        f"({run['machine']}, commit {run['commit'][:10]})",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _log_axes(ax: Any, bandwidths: list[float], plain_y: bool) -> None:
    """Log-log; the bandwidths as x ticks; with `plain_y`, 1-2-5 steps as y ticks (TTFT
    spans too few decades for powers of ten alone)."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(bandwidths)
    axes = [ax.xaxis]
    if plain_y:
        low, high = ax.get_ylim()
        steps = [m * 10.0**e for e in range(-2, 3) for m in (1, 2, 5)]
        ax.set_yticks([t for t in steps if low <= t <= high])
        axes.append(ax.yaxis)
    for axis in axes:
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("mean bandwidth, Gbit/s")
    ax.grid(True, which="both", alpha=0.3)


def plot_sweep_results(data: dict[str, Any], results: Path) -> int:
    """bench/stream_sim.py's last step: docs/ttft.png, or ttft.png next to results written
    elsewhere; 1 (with the reason) when it cannot plot."""
    try:
        png = plot_stream(data, TTFT_PNG if results.resolve() == RESULTS else results / "ttft.png")
    except MissingPlotting as e:
        print(f"no plot: {e}", file=sys.stderr)
        return 1
    print(f"wrote {png}", file=sys.stderr)
    return 0
