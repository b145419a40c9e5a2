"""KV cache quality benchmark on a real LLM (SmolLM2-135M-Instruct) and real documents.

    python bench/codec_quality.py                       # every method, default documents
    python bench/codec_quality.py --methods cg3,int8 --docs GPL-3 --out /tmp/q

Writes quality.json and quality.md (see ``lib.kvquality.report``) and prints the pooled table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lib.kvquality import (
    CONT_TOKENS,
    DEFAULT_DOCS,
    DEFAULT_METHODS,
    PREFIX_TOKENS,
    Result,
    load_documents,
    load_model,
    make_methods,
    pool,
    run_quality,
)
from lib.kvquality.report import run_info, table, write_report

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--docs",
        default=",".join(DEFAULT_DOCS),
        help="comma-separated names in /usr/share/common-licenses, python:MODULE, or paths",
    )
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated keys")
    p.add_argument("--prefix", type=int, default=PREFIX_TOKENS, help="prefix tokens (cached)")
    p.add_argument("--cont", type=int, default=CONT_TOKENS, help="continuation tokens scored")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for quality.json/.md")
    return p.parse_args(argv)


def _progress(r: Result) -> None:
    print(
        f"{r.doc:>12} {r.method:>7}: {r.bits_per_element:6.3f} bits/elt  KL {r.kl_mean:.2e}  "
        f"top-1 {r.top1_agreement:.4f}  dPPL {r.ppl_delta_pct:+.2f}%",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    args = parse_args(argv)
    methods = make_methods(args.methods.split(","))
    docs = load_documents(tuple(args.docs.split(",")))
    start = time.perf_counter()
    lm = load_model()
    info = run_info(lm.name, args.prefix, args.cont)
    results = run_quality(
        methods, docs, prefix=args.prefix, cont=args.cont, lm=lm, progress=_progress
    )
    paths = write_report(results, info, args.out)
    print("\n".join(table(pool(results))))
    elapsed = time.perf_counter() - start
    print(f"{elapsed:.0f} s; wrote {', '.join(map(str, paths))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
