"""Store throughput and open_context latency, per backend, on loopback servers.

    python bench/store_speed.py            # writes bench/results/store.json and store.md

Backends: memory, file (a temp dir), s3 (moto's ThreadedMotoServer on 127.0.0.1) and redis
(redis-server on 127.0.0.1). Each case moves fresh random bytes; MB/s are 10**6 bytes/s.
`concurrency` is the number of requests in flight: for one S3 object larger than a part
(8 MiB) a get is split into that many parallel range gets, a put into as many multipart parts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import cachegen
import cachegen.store
from cachegen.context import open_context, save_context
from cachegen.store import Store
from lib.runinfo import RunInfo, describe

MiB = 1 << 20
RESULTS = Path(__file__).with_name("results")
CREDS = {"access_key_id": "bench", "secret_access_key": "bench"}
# (label, object size, objects moved at concurrency 1, at concurrency 8)
S3_NOTE = (
    "S3 figures are bounded by moto, not by the client: moto (pure Python, one GIL, here on "
    "2 cores) answers every range GET by reading the whole object and slicing it, so 8 range "
    "gets of a 64 MiB object make the server read 512 MiB; the '64 MiB, one GET' row is the "
    "same object in one request. Memory figures only time Python overhead (no copies)."
)
CASES = [
    ("1 MiB", MiB, 32, 64),
    ("16 MiB", 16 * MiB, 4, 8),
    ("64 MiB", 64 * MiB, 2, 8),
    ("1000 x 64 KiB", 64 << 10, 1000, 1000),
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def servers() -> Iterator[dict[str, tuple[str, dict]]]:
    """Start moto and redis-server; yield `backend -> (url, options)`."""
    import boto3
    import redis
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s3_port, redis_port = _port(), _port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ).create_bucket(Bucket="bench")
    redis_bin = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen(
        [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    tmp = tempfile.mkdtemp(prefix="cachegen-bench-")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=redis_port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield {
            "memory": ("memory://", {}),
            "file": (Path(tmp).as_uri(), {}),
            "s3": (f"s3://bench/kv?endpoint={endpoint}&region=us-east-1", CREDS),
            "redis": (f"redis://127.0.0.1:{redis_port}/0", {}),
        }
    finally:
        proc.terminate()
        proc.wait(10)
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def throughput(store: Store, size: int, count: int) -> dict[str, float]:
    """Put then get `count` objects of `size` bytes through the batched API."""
    blob = os.urandom(size)
    keys = [f"bench/{uuid.uuid4().hex}" for _ in range(count)]
    put_s = _timed(lambda: store.put_many([(k, blob) for k in keys]))
    get_s = _timed(lambda: store.get_many(keys))
    for k in keys:
        store.delete(k)
    total = size * count / 1e6
    return {"put_MBps": total / put_s, "get_MBps": total / get_s}


def open_latency(store: Store, repeats: int) -> dict[str, float]:
    """Median ms of open_context for a stored 2048-token context (SmolLM2-135M's KV shape)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 49152, size=2048)
    kv = rng.normal(size=(30, 2, 2048, 3, 64)).astype(np.float16)
    save_context(store, "bench", ids, kv, levels=[3], chunk_tokens=256)
    exact = [_timed(lambda: open_context(store, "bench", ids)) for _ in range(repeats)]
    longer = np.concatenate([ids, ids[:300]])  # no manifest: found through 8 chunk records
    prefix = [_timed(lambda: open_context(store, "bench", longer)) for _ in range(repeats)]
    return {
        "exact_ms": 1e3 * statistics.median(exact),
        "prefix_ms": 1e3 * statistics.median(prefix),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="memory,file,s3,redis")
    parser.add_argument("--repeats", type=int, default=20, help="open_context timings")
    args = parser.parse_args()
    info = RunInfo.capture()
    rows, latency = [], {}
    with servers() as urls:
        for backend in args.backends.split(","):
            url, options = urls[backend]
            for conc in (1, 8):
                # s3 and redis size their connection pools to the concurrency when opened.
                sized = {"concurrency": conc} if backend in ("s3", "redis") else {}
                with cachegen.store.open(url, **options, **sized) as store:
                    store.concurrency = conc
                    for label, size, n1, n8 in CASES:
                        r = throughput(store, size, n1 if conc == 1 else n8)
                        rows.append({"backend": backend, "case": label, "concurrency": conc} | r)
                        print(
                            f"{backend:6} {label:14} c={conc}: put {r['put_MBps']:8.0f} MB/s"
                            f"  get {r['get_MBps']:8.0f} MB/s",
                            flush=True,
                        )
            if backend == "s3":
                # Baseline for the ranged get: the same 64 MiB object as one plain GET.
                with cachegen.store.open(url, **options, part_size=128 * MiB) as store:
                    r = throughput(store, 64 * MiB, 2)
                    rows.append(
                        {"backend": backend, "case": "64 MiB, one GET", "concurrency": 1} | r
                    )
                    print(f"s3     64 MiB one GET: get {r['get_MBps']:8.0f} MB/s", flush=True)
            with cachegen.store.open(url, **options) as store:
                latency[backend] = open_latency(store, args.repeats)
                print(f"{backend:6} open_context {latency[backend]}", flush=True)
    report = {
        "run": info.finish().as_dict(),
        "cachegen": cachegen.__version__,
        "throughput": rows,
        "open_context": latency,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "store.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "store.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "# Store throughput (bench/store_speed.py)",
        "",
        f"{describe(report['run'])} Servers on loopback: moto (S3), redis-server.",
        "",
        "| backend | case | concurrency | put MB/s | get MB/s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in report["throughput"]:
        lines.append(
            f"| {r['backend']} | {r['case']} | {r['concurrency']} | "
            f"{r['put_MBps']:.0f} | {r['get_MBps']:.0f} |"
        )
    lines += [
        "",
        "open_context of a 2048-token, 8-chunk context (median ms):",
        "",
        "| backend | exact (manifest) | prefix (chunk records) |",
        "| --- | ---: | ---: |",
    ]
    for b, v in report["open_context"].items():
        lines.append(f"| {b} | {v['exact_ms']:.2f} | {v['prefix_ms']:.2f} |")
    lines += ["", S3_NOTE]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
