"""Time `cachegen.calibrate()` on one model and keep the profile it makes.

    OMP_NUM_THREADS=1 python bench/calibrate_time.py --model smollm2 --out /tmp/fast.json
    OMP_NUM_THREADS=1 python bench/calibrate_time.py --model smollm2 --full --out /tmp/full.json
    python bench/calibrate_time.py --model smollm2 --threads 2 --out /tmp/fast2.json

Texts: GPL-2, LGPL-2.1 and difflib's source, the first `--prefix` + `--cont` tokens of each (the
quality benchmark never scores them). One torch thread by default: the figure for the 2 cores
is then the process's CPU time / 2, the wall time on both cores if they stay busy; `--threads 2`
measures the wall time on both cores directly. `--full` runs every pass
in full (`replay=False`), the method before layer replay. Prints one JSON line: CPU seconds,
CPU / 2, wall seconds, passes, the run record and where the profile went.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import cachegen
from lib.kvquality import load_documents, load_model
from lib.runinfo import RunInfo

TEXTS = ("GPL-2", "LGPL-2.1", "python:difflib")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prefix", type=int, default=1536)
    ap.add_argument("--cont", type=int, default=256)
    ap.add_argument("--full", action="store_true", help="full passes (replay=False)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=Path, required=True, help="where the profile is written")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = RunInfo.capture()
    lm = load_model(args.model)
    texts = [lm.first_ids(d.text, args.prefix + args.cont) for d in load_documents(TEXTS)]
    cpu, wall = time.process_time(), time.perf_counter()
    profile = cachegen.calibrate(
        lm.model,
        texts,
        name=args.model,
        continuation=args.cont,
        progress=False,
        resume=False,
        replay=not args.full,
    )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    profile.save(args.out)
    heads = sum(len(row) for row in profile.key_weights + profile.value_weights)
    record = {
        "model": args.model,
        "mode": "full" if args.full else "replay",
        "texts": list(TEXTS),
        "tokens": [args.prefix, args.cont],
        "threads": args.threads,
        "passes": len(texts) * (1 + heads + len(profile.key_bands)),
        "cpu_s": round(cpu, 1),
        "cpu_s_per_2_cores": round(cpu / 2, 1),
        "wall_s": round(wall, 1),
        "profile": str(args.out),
        "run": info.finish().as_dict(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
