"""Task accuracy of coded KV caches: long-context tasks answered from each coding's cache.

    python bench/tasks.py --models smollm2,gemma3 --per-task 50 \
        --levels 15,20,27,34,40,44,100 --refs 3,5 --ints 4,8

Generated tasks (passkey and key-value retrieval at depths 0.1-0.9, variable tracking,
two-hop lookup; contexts of 2K-4K tokens; ``lib.longtasks.generators``) are prefilled once per
model; the context's exact KV is coded in chunks of ``--chunk`` tokens at their positions,
decoded, and the model answers greedily after the question. Per coding: agreement of the answer
with the uncompressed cache's and accuracy against the ground truth, with Wilson 95% intervals,
and the smallest level whose answers agree on >= 99% of instances with a lower bound >= 97%.
Writes tasks.json, tasks.md and tasks.png. Answers are kept in ``KV_CACHE/tasks.jsonl``: a rerun
recomputes nothing and an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from lib.cli import ints
from lib.kvquality.model import KV_CACHE, load_model
from lib.kvquality.report import run_info
from lib.longtasks.generators import LENGTHS, TASKS, suite
from lib.longtasks.report import write_report
from lib.longtasks.runner import AnswerStore, Row, coder, run_instance

RESULTS = Path(__file__).resolve().parent / "results"


def models(text: str, per_task: int) -> dict[str, int]:
    """``smollm2,gemma3:5`` -> instances per task of each model (``per_task`` unless given)."""
    out = {}
    for item in text.split(","):
        name, _, count = item.partition(":")
        out[name] = int(count) if count else per_task
    return out


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="smollm2", help="MODEL[:PER_TASK],...")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--per-task", type=int, default=50)
    ap.add_argument("--levels", default="15,20,27,34,40", help="ladder levels")
    ap.add_argument("--refs", default="3,5", help="CacheGen reference levels")
    ap.add_argument("--ints", default="4,8", help="per-token int-N baselines")
    ap.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the control: the cache rounded to fp16, as a serving engine holds it",
    )
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="context tokens")
    ap.add_argument("--chunk", type=int, default=256, help="tokens per stored chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads (one is faster than two on a loaded shared 2-core machine)",
    )
    ap.add_argument("--store", type=Path, default=KV_CACHE / "tasks.jsonl")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args()


def main() -> None:
    a = parse()
    torch.set_num_threads(a.torch_threads)
    keys = [f"cg{x}" for x in ints(a.levels)] + [f"ref{x}" for x in ints(a.refs)]
    keys += [f"int{x}" for x in ints(a.ints)] + ["fp16"] * a.fp16
    coders = [coder(k) for k in keys]
    store = AnswerStore(a.store)
    info = run_info(a.models, 0, 0)
    rows: list[Row] = []
    for model, per_task in models(a.models, a.per_task).items():
        instances = suite(a.tasks.split(","), per_task, a.seed, tuple(ints(a.lengths)))
        lm = load_model(model)
        for n, inst in enumerate(instances, 1):
            t0 = time.perf_counter()
            rows += run_instance(lm, inst, coders, a.chunk, store)
            print(
                f"{model} {n}/{len(instances)} {inst.task} #{inst.index}: "
                f"{time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    command = " ".join(["python", "bench/tasks.py", *sys.argv[1:]])
    settings = {"command": command, "chunk_tokens": a.chunk, "lengths": a.lengths}
    settings["load_average_end"] = os.getloadavg()[0]  # how busy the machine was
    data = {"run": info | settings, "rows": [r.__dict__ for r in rows]}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "tasks.json").write_text(json.dumps(data, indent=1) + "\n")
    print(write_report(data, a.out))


if __name__ == "__main__":
    main()
