"""The `cachegen` command: `demo`, `inspect` and `bench`.

cachegen demo [--bandwidth 100] [--slo 1.0] [--json]
cachegen inspect blob.cg                 # a blob's header, groups and size
cachegen inspect file:///path/to/store   # the contexts stored there
cachegen gc STORE_URL [--grace 3600] [--dry-run] [--json]   # remove unreachable objects
cachegen bench stream-sim [args...]      # a benchmark from bench/ (source checkout)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import runpy
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

#: `cachegen bench NAME` runs bench/<script>.
BENCHMARKS = {
    "quality": "quality.py",
    "stream-sim": "stream_sim.py",
    "stream-link": "stream_link.py",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cachegen` console script."""
    args = _parser().parse_args(argv)
    return int(args.run(args) or 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cachegen", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(required=True, metavar="command")

    d = sub.add_parser("demo", help="store a document's KV, stream it back within an SLO")
    d.add_argument("--doc", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    d.add_argument("--tokens", type=int, default=2048, help="context tokens (default 2048)")
    d.add_argument("--chunk-tokens", type=int, default=256)
    d.add_argument("--bandwidth", type=float, default=100.0, help="link Mbit/s (default 100)")
    d.add_argument("--latency-ms", type=float, default=2.0, help="per request (default 2)")
    d.add_argument("--slo", type=float, default=1.0, help="load TTFT target, s (default 1)")
    d.add_argument("--store", type=Path, help="file store folder (default: a temp folder)")
    d.add_argument("--json", action="store_true", help="print the results as JSON")
    d.set_defaults(run=_demo)

    i = sub.add_parser("inspect", help="a blob file, or the contexts in a store URL")
    i.add_argument("target", help="a blob file, or a store URL (file:///..., s3://...)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(run=_inspect)

    g = sub.add_parser("gc", help="remove the objects no stored context reaches")
    g.add_argument("store", help="a store URL (file:///..., s3://..., redis://...)")
    g.add_argument(
        "--grace",
        type=float,
        default=3600.0,
        help="seconds: younger objects are kept, as a writer may still commit them "
        "(default 3600; must exceed the longest save)",
    )
    g.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    g.add_argument("--json", action="store_true")
    g.set_defaults(run=_gc)

    b = sub.add_parser("bench", help=f"run a benchmark: {', '.join(BENCHMARKS)}")
    b.add_argument("name", choices=sorted(BENCHMARKS))
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    b.set_defaults(run=_bench)
    return p


@contextlib.contextmanager
def _progress(desc: str, total: int | None) -> Iterator[Any]:
    """A progress bar on stderr for one long step (a spinner-like counter without a total)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, file=sys.stderr, leave=True, dynamic_ncols=True) as bar:
        yield bar


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, format_table, run_demo

    opts = DemoOptions(
        doc=args.doc,
        tokens=args.tokens,
        chunk_tokens=args.chunk_tokens,
        bandwidth_mbit=args.bandwidth,
        latency_ms=args.latency_ms,
        slo_s=args.slo,
        store=args.store,
    )
    result = run_demo(opts, _progress)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    target = args.target
    info = _inspect_store(target) if "://" in target else _inspect_blob(Path(target))
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print("\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


def _inspect_blob(path: Path) -> dict[str, Any]:
    import cachegen

    blob = path.read_bytes()
    info = cachegen.inspect(blob)
    facts = asdict(info)
    facts.pop("keys"), facts.pop("values")
    first = info.keys[0]
    return facts | {
        "file": str(path),
        "elements": info.elements,
        "bits_per_element": round(info.bits_per_element, 4),
        "tokens": first.tokens,
        "key_quantizers": sorted({g.quantizer for g in info.keys}),
        "value_quantizers": sorted({g.quantizer for g in info.values}),
    }


def _inspect_store(url: str) -> dict[str, Any]:
    import cachegen.store
    from cachegen.context.keys import unseal

    contexts = []
    with cachegen.store.open(url) as store:
        for key in store.list("contexts/"):
            body = unseal(key, store.get(key))
            chunks = body.get("chunks", [])
            sizes = {
                lv: sum(c["levels"][lv]["size"] for c in chunks if lv in c["levels"])
                for lv in (str(x) for x in body.get("levels", []))
            }
            contexts.append(
                {
                    "key": key,
                    "model_id": body.get("model_id"),
                    "tokens": body.get("num_tokens"),
                    "chunk_tokens": body.get("chunk_tokens"),
                    "chunks": len(chunks),
                    "bytes_per_level": sizes,
                    "quality": body.get("quality"),
                }
            )
    return {"store": url, "contexts": contexts}


def _gc(args: argparse.Namespace) -> int:
    import cachegen.store
    from cachegen.context import collect_garbage

    try:
        with cachegen.store.open(args.store) as store:
            report = collect_garbage(store, grace_s=args.grace, dry_run=args.dry_run)
            shown = store.url  # without the URL's secrets
    except (cachegen.store.StoreError, ValueError) as e:
        print(f"cachegen gc: {e}", file=sys.stderr)
        return 2
    facts = {"store": shown, **asdict(report)}
    if args.json:
        print(json.dumps(facts, indent=1))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{shown}: {report.objects} objects, {report.live} live, {report.waiting} waiting for "
        f"the {args.grace:g} s grace period; {verb} {len(report.deleted)} "
        f"({report.bytes_freed} bytes)"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    bench = Path(__file__).resolve().parents[2] / "bench"
    script = bench / BENCHMARKS[args.name]
    if not script.exists():
        print(f"{script} not found: the benchmarks live in the source checkout", file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, str(bench))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
