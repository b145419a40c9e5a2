"""Redraw the streaming sweep's plot (docs/ttft.png) from its results, without re-running it.

python bench/stream_plot.py [--results bench/results/stream.json] [--out docs/ttft.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lib.plots import STREAM_JSON, TTFT_PNG, plot_stream


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--results", type=Path, default=STREAM_JSON)
    p.add_argument("--out", type=Path, default=TTFT_PNG)
    p.add_argument("--tokens", type=int, default=8192, help="context length drawn")
    p.add_argument("--slo", type=float, default=1.0, help="TTFT SLO drawn, s")
    args = p.parse_args(argv)
    data = json.loads(args.results.read_text())
    print(plot_stream(data, args.out, tokens=args.tokens, slo=args.slo))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
