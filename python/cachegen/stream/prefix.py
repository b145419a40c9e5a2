"""The scheduler's side of a "prefix" engine: how many stored tokens to take, decided before
any transfer (vLLM asks this when it schedules a request, then loads that many tokens)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cachegen.context import Context

from .controller import probe_choice, with_probe
from .costs import CostModel
from .estimator import BandwidthEstimator
from .options import context_table
from .planner import TEXT, ConstantLink, Planner


@dataclass(frozen=True)
class PrefixPlan:
    """What to load: the first `tokens` tokens, chunk i at `levels[i]`.

    Attributes:
        tokens: stored tokens to load (a whole number of chunks; 0: recompute everything).
        levels: the planned level of each loaded chunk.
        predicted_s: predicted time to first token: the load, then the engine's recompute of
            the rest (inf when the bandwidth is unknown).
        feasible: whether that meets the SLO.
        probe: the first chunk is loaded only to measure the link (see `with_probe`).
    """

    tokens: int
    levels: tuple[int, ...]
    predicted_s: float
    feasible: bool
    probe: bool = False


def plan_prefix(
    ctx: Context | None,
    costs: CostModel,
    estimator: BandwidthEstimator,
    slo_s: float,
    kv_elements_per_token: int,
    total_tokens: int,
    *,
    margin: float = 0.05,
) -> PrefixPlan:
    """The prefix of `ctx` to load for a context of `total_tokens` tokens within `slo_s`.

    Plans as the loader's `Controller` does for a "prefix" engine at the start of a load:
    among "chunks 0..k-1 at stored levels, then recompute the rest", the least quality loss
    that fits the SLO on the estimator's pessimistic bound, else the fastest plan; when that
    loads nothing, the first chunk as a probe (`with_probe`: the load is how the estimate
    gets measured again, and it may take that chunk at most its recompute time). With no
    bandwidth measured yet (`estimator_for` keeps one per store across loads and processes),
    all-recompute when that fits, else the whole stored prefix at the middle level.
    """
    table = context_table(ctx, costs, kv_elements_per_token, total_tokens)
    planner = Planner(slo_s, margin, prefix=True)
    bps = estimator.bps
    if bps is None:
        text = planner.all_text(table, 0.0, 0.0)
        if text is not None or len(table) == 0:
            return PrefixPlan(0, (), text.finish if text else 0.0, True)
        level = probe_choice(table)
        stored = int(ctx.prefix_tokens) if ctx and level != TEXT else 0
        n = len(ctx.chunks) if stored else 0
        return PrefixPlan(stored, (int(level),) * n, math.inf, False)
    safe = ConstantLink(estimator.planning_bps(len(table)) or bps)
    plan, decision = with_probe(table, *planner.plan(table, 0.0, 0.0, ConstantLink(bps), safe))
    levels = []
    for choice in plan:
        if choice == TEXT:
            break
        levels.append(int(choice))
    tokens = int(table.tokens[: len(levels)].sum())
    return PrefixPlan(tokens, tuple(levels), decision.finish, decision.feasible, decision.probe)
