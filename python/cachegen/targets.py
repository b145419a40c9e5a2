"""Ask for a quality instead of a level: the smallest level expected to meet a KL target.

What a KL target means here: the mean, over next-token predictions of a continuation that
attends to the decoded cache, of KL(p with the original cache || p with the decoded cache), in
nats, pooled over documents (the metric of `bench/ladder_models.py`). The encoder sees the cache
but not the model, so it cannot measure that itself; it reads it from a table of levels' measured
KL. The shipped table (`LEVEL_KL`) holds, per level, the larger of the pooled KLs measured
without a profile on two real architectures (SmolLM2-135M: 30 layers, 3 KV heads of 64;
Gemma-3-270M: one KV head of 256, sliding-window layers, outlier key channels) on texts never
tuned on; `bench/results/ladder_models.md` states the spread across models and documents. A
model you have measured yourself (e.g. with that script, or with a profile) gives its own table.
Between measured levels log KL is interpolated linearly in the level: steps fall geometrically
with the level, and KL with the squared step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .config import LEVELS, LOSSLESS

#: Pooled mean KL (nats) per measured level without a profile, the worse of the two models
#: (bench/results/ladder_models.md, ladder version 3: GPL-3 and argparse's source, 1536-token
#: prefix, 128 scored tokens). The two models' KLs at one level differ by 1.01-1.43x at levels
#: 1-34, 1.29-1.79x at levels 40-44.
LEVEL_KL: dict[int, float] = {
    1: 0.172,
    5: 0.0782,
    10: 0.0305,
    15: 0.0103,
    20: 0.00350,
    27: 0.00142,
    34: 0.000311,
    40: 0.00019,
    41: 0.000120,
    42: 0.000103,
    43: 0.0000924,
    44: 0.0000805,
}


def expected_kl(level: int, table: Mapping[int, float] | None = None) -> float:
    """The KL `level` is expected to give (0 for `LOSSLESS`), from `table` (default
    `LEVEL_KL`): log-interpolated between measured levels, the finest measured KL for finer
    levels, and infinite (unknown) for levels coarser than every measured one."""
    if level == LOSSLESS:
        return 0.0
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or LOSSLESS, got {level!r}")
    measured = dict(LEVEL_KL if table is None else table)
    points = sorted(measured.items())
    if not points or any(not (kl > 0 and math.isfinite(kl)) for _, kl in points):
        raise ValueError("a KL table needs at least one level with a finite KL > 0")
    if level in measured:
        return measured[level]
    if level < points[0][0]:
        return math.inf
    for (l0, k0), (l1, k1) in zip(points, points[1:], strict=False):
        if level <= l1:
            f = (level - l0) / (l1 - l0)
            return math.exp(math.log(k0) + f * (math.log(k1) - math.log(k0)))
    return points[-1][1]


def level_for_kl(target: float, table: Mapping[int, float] | None = None) -> int:
    """The smallest level whose expected KL (`expected_kl`) is at most `target`, or `LOSSLESS`
    when no level is expected to meet it.

        blob = cachegen.encode(kv, level=cachegen.level_for_kl(0.01))
    """
    if not (target >= 0 and math.isfinite(target)):
        raise ValueError(f"KL target must be a finite number >= 0, got {target!r}")
    for level in LEVELS:
        if expected_kl(level, table) <= target:
            return level
    return LOSSLESS
