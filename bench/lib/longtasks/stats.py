"""Scoring the answers: agreement with the uncompressed cache, accuracy against the ground
truth, Wilson 95% intervals, and the smallest level that meets an agreement criterion."""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .runner import EXACT, Row

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
#: The issue's criterion: agreement >= 99% with a 95% lower bound >= 97%.
NEED_SHARE, NEED_LOW = 0.99, 0.97


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``hits / n``."""
    if n <= 0 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n and n > 0, got {hits}/{n}")
    p, z2 = hits / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """``hits`` of ``n`` with its Wilson 95% interval."""

    hits: int
    n: int

    @property
    def share(self) -> float:
        return self.hits / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.hits, self.n)

    def meets(self, share: float = NEED_SHARE, low: float = NEED_LOW) -> bool:
        return self.share >= share and self.interval[0] >= low

    def __str__(self) -> str:
        low, high = self.interval
        return f"{100 * self.share:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({self.hits}/{self.n})"


def correct(answer: str, truth: str) -> bool:
    """The answer holds the ground truth as a whole word (``12345`` is not in ``123456``)."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(truth)}(?![0-9A-Za-z])", answer) is not None


def _instance(r: Row) -> tuple[str, str, int]:
    return r.model, r.task, r.index


def first_word(answer: str) -> str:
    """The answer's first run of letters and digits: what it names, without what follows."""
    found = re.search(r"[0-9A-Za-z]+", answer)
    return found[0] if found else ""


def agreement(rows: Sequence[Row], method: str, part: Callable[[str], str] = lambda a: a) -> Rate:
    """How often ``part`` of ``method``'s answer (all of it by default) equals the same part of
    the uncompressed cache's answer on the same instance."""
    exact = {_instance(r): part(r.answer) for r in rows if r.method == EXACT}
    mine = [r for r in rows if r.method == method]
    missing = [_instance(r) for r in mine if _instance(r) not in exact]
    if missing:
        raise ValueError(f"no uncompressed answer for {missing[:3]}")
    return Rate(sum(part(r.answer) == exact[_instance(r)] for r in mine), len(mine))


def word_agreement(rows: Sequence[Row], method: str) -> Rate:
    """Agreement of the answers' first words (``first_word``)."""
    return agreement(rows, method, first_word)


def where_right(rows: Sequence[Row]) -> list[Row]:
    """The rows of the instances that the uncompressed cache answers correctly."""
    right = {_instance(r) for r in rows if r.method == EXACT and correct(r.answer, r.truth)}
    return [r for r in rows if _instance(r) in right]


#: An uncompressed answer is decided when every token it took led the runner-up by this many
#: logits (a 10% odds ratio); below, a near-tie flips on changes far below any coding's error.
DECIDED_GAP = 0.1


def by_margin(rows: Sequence[Row], edges: Sequence[float]) -> list[list[Row]]:
    """The rows split by their instance's uncompressed margin: below ``edges[0]``, between
    consecutive edges, from ``edges[-1]`` on (instances without a margin left out)."""
    margins = {_instance(r): r.margin for r in rows if r.method == EXACT and r.margin is not None}
    bins: list[list[Row]] = [[] for _ in range(len(edges) + 1)]
    for r in rows:
        if _instance(r) in margins:
            bins[bisect.bisect_right(edges, margins[_instance(r)])].append(r)
    return bins


def decided(rows: Sequence[Row], gap: float = DECIDED_GAP) -> list[Row]:
    """The rows of the instances whose uncompressed answer is decided (``answer``'s margin >=
    ``gap``); an instance whose margin was not kept counts as undecided."""
    return by_margin(rows, (gap,))[1]


def accuracy(rows: Iterable[Row], method: str) -> Rate:
    """How often ``method``'s answer holds the ground truth."""
    mine = [r for r in rows if r.method == method]
    return Rate(sum(correct(r.answer, r.truth) for r in mine), len(mine))


def bits_per_element(rows: Iterable[Row], method: str) -> float:
    """All of ``method``'s blob bytes x 8 over all KV elements it coded."""
    mine = [r for r in rows if r.method == method]
    return 8 * sum(r.blob_bytes for r in mine) / sum(r.elements for r in mine)


def smallest_meeting(rates: dict[int, Rate]) -> int | None:
    """The smallest level whose agreement meets the criterion, or None."""
    return min((lv for lv, r in rates.items() if r.meets()), default=None)


def best_low(n: int) -> float:
    """The lower bound that ``n`` instances give at best (all agree)."""
    return wilson(n, n)[0]


def instances_needed(low: float = NEED_LOW) -> int:
    """The fewest instances whose lower bound can reach ``low`` (all agreeing)."""
    n = 1
    while best_low(n) < low:
        n += 1
    return n
