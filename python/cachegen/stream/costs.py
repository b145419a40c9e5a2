"""The cost model: how long the engine takes to decode a chunk's blob and to recompute it.

Both speeds are measured, never assumed: KV decode speed by timing `cachegen.decode` on a
synthetic blob, the engine's recompute (prefill) speed by timing the engine itself. A calibration
is cached per engine in a small JSON file under the user cache dir, so only the first load on a
machine pays for it, and every load refines the speeds from its own timings.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import cachegen
from cachegen.paths import user_cache_dir

#: Weight of a new timing in the running speeds: recent loads matter most, one outlier little.
_EWMA = 0.3


def default_cache_file() -> Path:
    """``costs.json`` under the user cache dir (``CACHEGEN_COSTS`` overrides it)."""
    override = os.environ.get("CACHEGEN_COSTS")
    if override:
        return Path(override)
    return user_cache_dir() / "costs.json"


@dataclass
class CostModel:
    """Compute-side costs of one engine.

    Attributes:
        decode_eps: KV elements decoded (and handed to the engine) per second.
        prefill_tps: tokens per second the engine recomputes from text.
    """

    decode_eps: float
    prefill_tps: float

    def decode_time(self, elements: int) -> float:
        """Seconds to decode a blob of `elements` KV elements."""
        return elements / self.decode_eps

    def recompute_time(self, tokens: int) -> float:
        """Seconds for the engine to prefill `tokens` tokens."""
        return tokens / self.prefill_tps

    def observe_decode(self, elements: int, seconds: float) -> None:
        """Refine the decode speed with one measured decode."""
        self.decode_eps = _blend(self.decode_eps, elements / max(seconds, 1e-6))

    def observe_recompute(self, tokens: int, seconds: float) -> None:
        """Refine the recompute speed with one measured prefill."""
        self.prefill_tps = _blend(self.prefill_tps, tokens / max(seconds, 1e-6))

    @classmethod
    def calibrated(
        cls,
        key: str,
        measure_prefill: Callable[[], float],
        *,
        cache_file: Path | None = None,
        refresh: bool = False,
    ) -> CostModel:
        """The cached costs for engine `key`, measured and cached first if absent or `refresh`.

        `measure_prefill` returns the engine's prefill speed in tokens/s.
        """
        path = cache_file or default_cache_file()
        table = _read(path)
        entry = table.get(key)
        if entry is not None and not refresh:
            try:
                return cls(float(entry["decode_eps"]), float(entry["prefill_tps"]))
            except (KeyError, TypeError, ValueError):
                pass  # a damaged entry is measured again
        model = cls(measure_decode_eps(), measure_prefill())
        table[key] = asdict(model) | {"measured": time.time()}
        _write(path, table)
        return model

    def save(self, key: str, cache_file: Path | None = None) -> None:
        """Store the refined speeds for the next load of engine `key`."""
        path = cache_file or default_cache_file()
        table = _read(path)
        table[key] = asdict(self) | {"measured": time.time()}
        _write(path, table)


def _blend(old: float, new: float) -> float:
    return (1 - _EWMA) * old + _EWMA * new


def measure_decode_eps(tokens: int = 256, repeats: int = 3) -> float:
    """Decode speed of this machine in KV elements/s, on a synthetic model-sized chunk."""
    rng = np.random.default_rng(0)
    kv = rng.standard_normal((8, 2, tokens, 4, 64)).astype(np.float16)
    blob = cachegen.encode(kv, level=cachegen.DEFAULT_LEVEL)
    cachegen.decode(blob)  # warm: thread pool start, first-touch allocation
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        cachegen.decode(blob)
        best = min(best, time.perf_counter() - t0)
    return kv.size / best


def _read(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, table: dict[str, dict]) -> None:
    """Replace the file atomically, so concurrent loads never read half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
