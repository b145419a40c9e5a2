"""Streaming: load a stored context into an engine's KV cache within a TTFT target.

    from cachegen.stream import HFEngine, load
    result = load(store, HFEngine(model), "my-model", token_ids, slo_s=0.5)
    model(question_ids, cache=result.cache)      # generate on top of the loaded context
    print(result.report.table())                 # per chunk: level or text, bytes, times

Per chunk the controller picks a stored level or "text" (the engine recomputes the chunk),
from bandwidth it measures on the transfers themselves (kept per store across loads) and
compute speeds it calibrates once and corrects on every load. An engine that takes loaded KV
only as a prefix (`Engine.recompute == "prefix"`, as vLLM) gets the longest prefix worth
loading; `plan_prefix` decides it before any transfer, for a scheduler.
"""

from __future__ import annotations

from typing import Any

from cachegen.context import DEFAULT_CHUNK_TOKENS
from cachegen.context.auth import AuthKey
from cachegen.store import Store

from .controller import CacheGenRule, Controller, Fixed, fixed, probe_choice
from .costs import CostModel, measure_decode_eps
from .deadline import BoundedStore, DeadlineExceeded
from .engine import Engine, Recompute
from .estimator import BandwidthEstimator, estimator_for, save_estimate
from .hf_engine import HFEngine
from .loader import Loader, LoadResult
from .options import ChunkOptions, context_chunks, context_table, option_table
from .planner import TEXT, Choice, ConstantLink, Decision, OptionTable, Planner, Policy, Step
from .prefix import PrefixPlan, plan_prefix
from .report import CAUSES, ChunkReport, LoadReport

__all__ = [
    "CAUSES",
    "TEXT",
    "BandwidthEstimator",
    "BoundedStore",
    "CacheGenRule",
    "Choice",
    "ChunkOptions",
    "ChunkReport",
    "ConstantLink",
    "Controller",
    "CostModel",
    "DeadlineExceeded",
    "Decision",
    "Engine",
    "Fixed",
    "HFEngine",
    "LoadReport",
    "LoadResult",
    "Loader",
    "OptionTable",
    "Planner",
    "Policy",
    "PrefixPlan",
    "Recompute",
    "Step",
    "context_chunks",
    "context_table",
    "estimator_for",
    "fixed",
    "load",
    "measure_decode_eps",
    "option_table",
    "plan_prefix",
    "probe_choice",
    "save_estimate",
]


def load(
    store: Store,
    engine: Engine,
    model_id: str,
    token_ids: Any,
    *,
    slo_s: float,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    costs: CostModel | None = None,
    salt: str | bytes | None = None,
    auth_key: AuthKey = None,
    **options: Any,
) -> LoadResult:
    """Load the context of `token_ids` into `engine` within `slo_s` seconds if possible.

    Without `costs`, the engine's speeds come from the calibration cache (measured on first
    use) and go back into it refined by this load. `salt` and `auth_key` as for
    `Loader.load`; `options` go to `Loader`.
    """
    cached = costs is None
    costs = costs or CostModel.calibrated(engine.key, engine.measure_prefill)
    result = Loader(store, engine, costs, slo_s, **options).load(
        model_id, token_ids, chunk_tokens=chunk_tokens, salt=salt, auth_key=auth_key
    )
    if cached:
        costs.save(engine.key)
    return result
