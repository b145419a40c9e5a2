"""The `cachegen` command: `demo`, `inspect` and `bench`.

cachegen demo [--bandwidth 100] [--slo 1.0] [--json] [--plot ttft.png]
cachegen inspect blob.cg                 # a blob's header, groups and size
cachegen inspect file:///path/to/store   # the contexts stored there, one line each
cachegen gc STORE_URL [--grace 3600] [--dry-run] [--json]   # remove unreachable objects
cachegen bench stream-sim [args...]      # a benchmark from bench/ (source checkout)
cachegen --version
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachegen.context import ContextSummary
    from cachegen.store import StoreError

    Listed = ContextSummary | StoreError

#: `cachegen bench NAME` runs bench/<script>.
BENCHMARKS = {
    "quality": "codec_quality.py",
    "stream-sim": "stream_sim.py",
    "stream-link": "stream_link.py",
}


#: The extras each command uses beyond the core install (numpy), named when one is missing.
NEEDS = {"demo": "hf,store", "inspect": "store", "gc": "store", "bench": "hf,store,bench"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cachegen` console script."""
    from .extras import missing_extra

    args = _parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ModuleNotFoundError as e:
        line = missing_extra(e, NEEDS[args.command])
        if line is None:
            raise
        print(f"cachegen {args.command}: {line}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    from cachegen import __version__

    p = argparse.ArgumentParser(prog="cachegen", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"cachegen {__version__}")
    sub = p.add_subparsers(required=True, metavar="command", dest="command")

    d = sub.add_parser("demo", help="store a document's KV, stream it back within an SLO")
    d.add_argument("--doc", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    d.add_argument("--tokens", type=int, default=2048, help="context tokens (default 2048)")
    d.add_argument("--chunk-tokens", type=int, default=256)
    d.add_argument("--bandwidth", type=float, default=100.0, help="link Mbit/s (default 100)")
    d.add_argument("--latency-ms", type=float, default=2.0, help="per request (default 2)")
    d.add_argument("--slo", type=float, default=1.0, help="load TTFT target, s (default 1)")
    d.add_argument("--store", type=Path, help="file store folder (default: a temp folder)")
    d.add_argument("--json", action="store_true", help="print the results as JSON")
    d.add_argument("--plot", type=Path, metavar="FILE", help="also draw TTFT and KL per strategy")
    d.set_defaults(run=_demo)

    i = sub.add_parser(
        "inspect",
        help="a blob file, or the contexts in a store URL (one line each; exit 1 if any is "
        "damaged)",
    )
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
    if args.plot:
        _plotting()  # fails before the minutes of the demo, not after
    result = run_demo(opts, _progress)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    if args.plot:
        _plotting().plot_demo(result, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def _plotting() -> Any:
    """`cachegen.plotting`, once matplotlib is known to be there; else exit with the reason."""
    from cachegen import plotting

    try:
        plotting.pyplot()
    except plotting.MissingPlotting as e:
        raise SystemExit(f"cachegen: {e}") from None
    return plotting


def _inspect(args: argparse.Namespace) -> int:
    target = args.target
    if "://" in target:
        return _inspect_store(target, args.json)
    info = _inspect_blob(Path(target))
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


#: `cachegen inspect STORE` prints lines no longer than this.
LINE_WIDTH = 120


def _inspect_store(url: str, as_json: bool) -> int:
    """Every context in the store: one line each (or JSON); a context whose manifest cannot
    be read is reported on its line. Exit status 1 when any could not."""
    import cachegen.store
    from cachegen.context import ContextSummary, list_contexts
    from cachegen.context.listing import shared_chunks

    try:
        with cachegen.store.open(url) as store:
            listed = list(list_contexts(store))
    except cachegen.store.StoreError as e:
        print(f"cachegen inspect: {e}", file=sys.stderr)
        return 2
    shared = shared_chunks([s for _, s in listed if isinstance(s, ContextSummary)])
    if as_json:
        contexts = [_context_json(key, s, shared) for key, s in listed]
        print(json.dumps({"store": url, "contexts": contexts}, indent=1))
    else:
        for key, s in listed:
            print(_context_line(key, s, shared))
    return int(any(not isinstance(s, ContextSummary) for _, s in listed))


def _context_json(key: str, s: Listed, shared: dict[str, int]) -> dict[str, Any]:
    if isinstance(s, Exception):
        return {"key": key, "error": str(s)}
    return {
        "key": key,
        "model_id": s.model_id,
        "tokens": s.num_tokens,
        "chunk_tokens": s.chunk_tokens,
        "chunks": len(s.chunks),
        "shared_chunks": shared[key],
        "levels": s.levels,
        "bytes_per_level": {str(lv): n for lv, n in s.bytes_per_level().items()},
        "quality": s.quality,
    }


def _context_line(key: str, s: Listed, shared: dict[str, int]) -> str:
    """`hash-prefix  model  tokens  chunks  shared  L<level> <bytes> ...`, clipped to
    `LINE_WIDTH`; or the reason the manifest could not be read."""
    name = Path(key).stem[:12]
    if isinstance(s, Exception):
        reason = str(s).replace(repr(key), "manifest")
        return _clip(f"{name:<12}  ERROR {type(s).__name__}: {reason}", LINE_WIDTH)
    sizes = " ".join(f"L{lv}:{_size(n)}" for lv, n in s.bytes_per_level().items())
    line = (
        f"{name:<12}  {_clip(s.model_id, 28):<28} {s.num_tokens:>7} tok {len(s.chunks):>4} "
        f"chunks {shared[key]:>4} shared  {sizes}"
    )
    return _clip(line, LINE_WIDTH)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _size(n: float) -> str:
    """Bytes in at most 3 significant digits: 950B, 1.2K, 35.1M, 4.07G."""
    for unit in ("B", "K", "M", "G"):
        if n < 999.5:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.0f}T"


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
