"""Plots: the streaming sweep's TTFT and KL against bandwidth (docs/ttft.png) and
`cachegen demo --plot`; a one-line error without matplotlib."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cachegen import plotting
from cachegen.cli import main

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_sweep_medians_by_bandwidth() -> None:
    from lib.plots import bandwidth_gbit, medians

    assert [bandwidth_gbit(t) for t in ("steady 0.3G", "noisy 10G #2", "drop 1G->0.1G")] == [
        0.3,
        10.0,
        1.0,
    ]
    runs = [
        {"engine": "cpu", "tokens": 8, "slo": 1.0, "trace": t, "ours": {"ttft": v}}
        for t, v in (("steady 1G", 1.0), ("noisy 1G #0", 3.0), ("drop 1G->0.1G", 9.0))
    ] + [{"engine": "gpu", "tokens": 8, "slo": 1.0, "trace": "steady 1G", "ours": {"ttft": 7.0}}]
    assert medians(runs, "cpu", 8, 1.0, "ttft") == {"ours": ([1.0], [3.0])}


def test_stream_plot_from_the_sweep_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from lib.plots import plot_sweep_results

    data = json.loads((BENCH / "results" / "stream.json").read_text())
    assert plot_sweep_results(data, tmp_path) == 0
    width, height = _png_size(tmp_path / "ttft.png")
    assert width > 1000 and height > 800


def test_demo_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [
        {"strategy": name, "ttft_s": t, "kl": kl}
        for name, t, kl in (("text only", 5.0, 0.0), ("level 3", 0.4, 0.05), ("ours", 0.6, 0.001))
    ]
    result = {
        "model": "m",
        "context_tokens": 2048,
        "bandwidth_mbit": 100.0,
        "latency_ms": 2.0,
        "slo_s": 1.0,
        "strategies": rows,
    }
    plotting.plot_demo(result, tmp_path / "demo.png")
    assert _png_size(tmp_path / "demo.png")[0] > 500


def test_missing_matplotlib_is_one_line_before_the_demo_runs(monkeypatch, capsys) -> None:
    import cachegen.demo

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(cachegen.demo, "run_demo", lambda *a: pytest.fail("demo ran"))
    with pytest.raises(plotting.MissingPlotting, match="pip install 'cachegen\\[bench\\]'"):
        plotting.pyplot()
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--plot", "x.png"])
    assert str(exit_.value).count("\n") == 0 and "matplotlib" in str(exit_.value)
