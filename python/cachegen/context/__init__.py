"""Stored contexts: a token sequence's KV cache kept in a `cachegen.store.Store` as chunks,
each encoded at several levels, found again by any context that shares the prefix.

    from cachegen.context import open_context, save_context
    save_context(store, "my-model", token_ids, kv, levels=(1, 15, 27))
    ctx = open_context(store, "my-model", token_ids)
    blob = ctx.fetch(0, level=15)

`salt=` keys contexts to a tenant, `auth_key=` MACs every object; `collect_garbage(store)`
removes what no context reaches.
"""

from .gc import GcReport, collect_garbage
from .keys import ObjectRef
from .listing import ContextSummary, list_contexts
from .stored import DEFAULT_CHUNK_TOKENS, ChunkInfo, Context, open_context, save_context

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "ChunkInfo",
    "Context",
    "ContextSummary",
    "GcReport",
    "ObjectRef",
    "collect_garbage",
    "list_contexts",
    "open_context",
    "save_context",
]
