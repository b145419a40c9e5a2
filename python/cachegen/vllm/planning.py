"""The scheduler-side decision: how many stored prompt tokens a request takes from the store.

vLLM takes external KV only as a prefix, so the choice is a cut point on chunk boundaries: the
first k stored chunks are loaded, vLLM recomputes the rest. The controller's `plan_prefix`
chooses it from the bandwidth measured on earlier loads from this store and the engine's
measured decode and recompute speeds, within the SLO.
"""

from __future__ import annotations

from cachegen.context import Context
from cachegen.stream import BandwidthEstimator, CostModel, plan_prefix


def loadable_tokens(prompt_tokens: int, chunk_tokens: int) -> int:
    """Whole chunks of the prompt vLLM can take: at least one token must be left to compute."""
    return max(prompt_tokens - 1, 0) // chunk_tokens * chunk_tokens


def tokens_to_load(
    ctx: Context,
    costs: CostModel | None,
    estimator: BandwidthEstimator,
    slo_s: float,
    kv_elements_per_token: int,
    prompt_tokens: int,
    fixed_level: int | None,
) -> int:
    """Stored tokens of `ctx` (a prefix of the prompt) to load.

    Every stored chunk is taken when the level is fixed (the user chose exactness or a size
    over speed) or while the engine's speeds are unmeasured (a first load is also how they
    get measured); otherwise the controller's plan decides.
    """
    if fixed_level is not None:
        return _chunks_with(ctx, fixed_level)
    if costs is None:
        return ctx.prefix_tokens
    plan = plan_prefix(ctx, costs, estimator, slo_s, kv_elements_per_token, prompt_tokens)
    return plan.tokens


def _chunks_with(ctx: Context, level: int) -> int:
    """Tokens of the leading chunks stored at `level`."""
    tokens = 0
    for chunk in ctx.chunks:
        if level not in chunk.levels:
            break
        tokens = chunk.stop
    return tokens
