"""A base build of cachegen beside this checkout, for A/B timings in one process: the package at
`path`/cachegen loaded as `cachegen_base` with its own native core, and how a list of timings
is summarised."""

from __future__ import annotations

import importlib.util
import statistics
import sys
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
