"""The cost model: how long the engine takes to decode a chunk's blob and to recompute it.

Both speeds are measured, never assumed: KV decode speed by timing `cachegen.decode` on a
synthetic blob, the engine's recompute (prefill) speed by timing the engine itself at a few
positions in a context, since every recomputed token attends to all the tokens before it and
so costs more the later it comes. A calibration is cached per engine in a small JSON file under
the user cache dir, so only the first load on a machine pays for it, and every load corrects
the speeds from its own timings (a calibration from a quieter machine does not sink a load).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import cachegen
from cachegen.paths import user_cache_dir

#: Weight of a new timing in the running speeds: a machine busier than at calibration shows
#: within two chunks, one outlier moves the model only half-way.
_EWMA = 0.5
#: Weight of a new timing in the compute spread: a few loads' worth of chunks.
_SPREAD_EWMA = 0.1
#: One-sided normal quantile of the planning margin (0.9), as for the link.
_Z = 1.28
#: The largest miss (measured/predicted - 1, either way) one timing adds to the spread: a
#: bigger one is a level shift (a busier machine) that the speeds follow at once, not noise
#: for every later plan to pay for.
_MAX_MISS = 2.0
#: Tokens the engine recomputes per calibration timing (one default chunk).
CALIBRATION_TOKENS = 256
#: Context lengths the engine's prefill is timed at, to fit the cost of attending to them.
CALIBRATION_POSITIONS = (0, 1024, 2048)

#: Calibrates the engine: tokens/s recomputing `CALIBRATION_TOKENS` tokens after each of
#: `positions` tokens of context (a plain float: one speed, independent of position).
MeasurePrefill = Callable[[Sequence[int]], "Sequence[float] | float"]


def default_cache_file() -> Path:
    """``costs.json`` under the user cache dir (``CACHEGEN_COSTS`` overrides it)."""
    override = os.environ.get("CACHEGEN_COSTS")
    if override:
        return Path(override)
    return user_cache_dir() / "costs.json"


@dataclass
class CostModel:
    """Compute-side costs of one engine.

    Recomputing `n` tokens after `p` tokens of context takes ``n * (1/prefill_tps +
    prefill_ctx_s * (p + n/2))`` seconds: a per-token cost (the weights) plus one that grows
    with the context each token attends to (on average ``p + n/2`` tokens).

    Attributes:
        decode_eps: KV elements decoded (and handed to the engine) per second.
        prefill_tps: tokens per second the engine recomputes at the start of a context.
        prefill_ctx_s: seconds per recomputed token per token of context before it.
        compute_cv: spread of measured compute times around the predictions (coefficient
            of variation): planning adds a margin for it, as for the link's (see `planning`).
    """

    decode_eps: float
    prefill_tps: float
    prefill_ctx_s: float = 0.0
    compute_cv: float = 0.0

    def decode_time(self, elements: int) -> float:
        """Seconds to decode a blob of `elements` KV elements."""
        return elements / self.decode_eps

    def recompute_time(self, tokens: int, position: int = 0) -> float:
        """Seconds for the engine to prefill `tokens` tokens after `position` tokens."""
        return tokens * (1 / self.prefill_tps + self.prefill_ctx_s * (position + tokens / 2))

    def planning(self, chunks: int) -> float:
        """Factor on predicted compute times that `chunks` chunks together should beat ~90% of
        the time (their noise partly averages out, as in `BandwidthEstimator.planning_bps`)."""
        return 1 + _Z * self.compute_cv / math.sqrt(max(chunks, 1))

    def observe_decode(self, elements: int, seconds: float) -> None:
        """Correct the decode speed with one measured decode."""
        self._observe_spread(seconds / self.decode_time(elements))
        self.decode_eps = _blend(self.decode_eps, elements / max(seconds, 1e-6))

    def _observe_spread(self, ratio: float) -> None:
        """Fold in one measured/predicted ratio: a miss by 2x counts alike either way."""
        ratio = max(ratio, 1e-9)
        miss = min(max(ratio, 1 / ratio) - 1, _MAX_MISS)
        var = (1 - _SPREAD_EWMA) * self.compute_cv**2 + _SPREAD_EWMA * miss**2
        self.compute_cv = math.sqrt(var)

    def observe_recompute(self, tokens: int, position: int, seconds: float) -> None:
        """Correct the recompute costs with one measured prefill: both terms scale by the
        ratio of measured to predicted time (a busier machine slows both alike)."""
        predicted = self.recompute_time(tokens, position)
        if predicted <= 0:
            return
        self._observe_spread(max(seconds, 1e-6) / predicted)
        scale = _blend(1.0, max(seconds, 1e-6) / predicted)
        self.prefill_tps /= scale
        self.prefill_ctx_s *= scale

    @classmethod
    def fit(cls, decode_eps: float, positions: Sequence[int], tps: Sequence[float]) -> CostModel:
        """The model whose recompute times best fit speeds `tps` measured at `positions`
        (least squares on seconds per token; the context term is never negative)."""
        per_token = np.array([1 / t for t in tps])
        mid = np.array(positions, dtype=float) + CALIBRATION_TOKENS / 2
        if len(set(positions)) < 2:
            return cls(decode_eps, float(np.mean(tps)))
        slope, base = np.polyfit(mid, per_token, 1)
        slope = max(float(slope), 0.0)
        base = float(np.mean(per_token - slope * mid))
        return cls(decode_eps, 1 / max(base, 1e-9), slope)

    @classmethod
    def measure(cls, measure_prefill: MeasurePrefill) -> CostModel:
        """Calibrate now: decode speed here, the engine's prefill at `CALIBRATION_POSITIONS`."""
        speeds = measure_prefill(CALIBRATION_POSITIONS)
        decode_eps = measure_decode_eps()
        if isinstance(speeds, int | float):
            return cls(decode_eps, float(speeds))
        return cls.fit(decode_eps, CALIBRATION_POSITIONS, speeds)

    @classmethod
    def calibrated(
        cls,
        key: str,
        measure_prefill: MeasurePrefill,
        *,
        cache_file: Path | None = None,
        refresh: bool = False,
    ) -> CostModel:
        """The cached costs for engine `key`, measured and cached first if absent or `refresh`.

        An entry without the position term (written before it existed) is measured again.
        """
        path = cache_file or default_cache_file()
        entry = read_json(path).get(key)
        if entry is not None and not refresh:
            try:
                return cls(
                    float(entry["decode_eps"]),
                    float(entry["prefill_tps"]),
                    float(entry["prefill_ctx_s"]),
                    float(entry.get("compute_cv", 0.0)),
                )
            except (KeyError, TypeError, ValueError):
                pass  # damaged or from an older model: measured again
        model = cls.measure(measure_prefill)
        model.save(key, path)
        return model

    def save(self, key: str, cache_file: Path | None = None) -> None:
        """Store the corrected speeds for the next load of engine `key`."""
        path = cache_file or default_cache_file()
        table = read_json(path)
        table[key] = asdict(self) | {"measured": time.time()}
        write_json(path, table)


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


def read_json(path: Path) -> dict[str, dict]:
    """A JSON object file of the cache dir; {} when absent or damaged."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, table: dict[str, dict]) -> None:
    """Replace the file atomically, so concurrent loads never read half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
