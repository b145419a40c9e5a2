"""Bits at equal KL: where a rate-quality curve crosses a KL target."""

from __future__ import annotations

import math

#: The KL targets the reports read every curve at (issue 15's).
TARGETS = (0.002, 0.01, 0.05)


def reference_bits(ref: list[tuple[float, float]], kl: float) -> float | None:
    """Bits a curve of (bits, KL) points needs for `kl`, interpolating log KL linearly between
    its points; None if `kl` is outside the range they reach (no honest value without
    extrapolating)."""
    for (b0, k0), (b1, k1) in zip(ref, ref[1:], strict=False):
        if min(k0, k1) <= kl <= max(k0, k1) and k0 != k1:
            f = (math.log(k0) - math.log(kl)) / (math.log(k0) - math.log(k1))
            return b0 + f * (b1 - b0)
    return None


def bits_at(points: list[tuple[float, float]], target: float) -> tuple[float | None, str]:
    """Bits at `target` and "" (interpolated), or the coarsest point's bits and "<= " where
    every point is already below the target; (None, "") where none reaches it."""
    b = reference_bits(points, target)
    if b is None and points and all(kl < target for _, kl in points):
        return points[0][0], "<= "
    return b, ""
