"""A base build of cachegen beside this checkout, for A/B timings in one process: the package at
`path`/cachegen loaded as `cachegen_base` with its own native core, and how a list of timings
is summarised."""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType


def load_base(path: Path) -> ModuleType:
    """The package at `path`/cachegen under the name cachegen_base (its own _core)."""
    spec = importlib.util.spec_from_file_location(
        "cachegen_base", path / "cachegen" / "__init__.py", submodule_search_locations=[]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["cachegen_base"] = module
    spec.submodule_search_locations.append(str(path / "cachegen"))
    spec.loader.exec_module(module)
    return module


def summary(xs: list[float]) -> str:
    """Median, interquartile range and minimum of timings in seconds, as milliseconds."""
    q = statistics.quantiles(xs, n=4)
    iqr = f"IQR {q[0] * 1e3:.2f}-{q[2] * 1e3:.2f}, min {min(xs) * 1e3:.2f}"
    return f"{statistics.median(xs) * 1e3:.2f} ms ({iqr})"


@dataclass(frozen=True)
class ABRun:
    """An A/B benchmark's command line, read: the base build loaded and the clock chosen."""

    base: ModuleType
    rounds: int
    threads: int
    clock_name: str
    clock: Callable[[], float]


def ab_run(doc: str, rounds: int) -> ABRun:
    """Parse `--base`, `--rounds`, `--threads` and `--clock` (process CPU time by default: on a
    shared machine wall time mostly measures the neighbours)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="folder holding the base cachegen/")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    return ABRun(load_base(args.base), args.rounds, args.threads, args.clock, clock)
