"""Hugging Face ``transformers`` cache adapters.

``from_cache`` turns a model's ``DynamicCache`` into the per-layer ``(K, V)`` list that
``cachegen.encode`` takes; ``to_cache`` turns a decoded list back into a ``DynamicCache`` that the
same model can continue from. Both use the layered cache API of ``transformers`` >= 4.56
(``cache.layers[i].keys``/``.values``), including sliding-window layers, which keep only the
last ``sliding_window - 1`` tokens and so may be shorter than full-attention layers.
``learn_model_transform`` learns a model's `cachegen.transform` from the caches of some texts,
weighting key channels by the energy of the queries that read them (``query_energy``).
``observed_attention`` prefills a context and records the attention its last queries pay to each
token, which `cachegen.encode(attention=...)` turns into finer steps where it went.

torch and transformers are imported only when a function is called, so ``import cachegen``
works without them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import DynamicCache, PretrainedConfig

    from .profile import ModelProfile
    from .shaping import QueryDirections
    from .transform import Transform

KVPair = tuple["torch.Tensor", "torch.Tensor"]

__all__ = ["from_cache", "learn_model_transform", "observed_attention", "query_energy", "to_cache"]


def learn_model_transform(
    model: Any,
    texts: Sequence[Any],
    key_spread: float = 0.0,
    *,
    profile: ModelProfile | None = None,
    query_weights: bool = True,
) -> Transform:
    """`model`'s transform (`cachegen.transform.learn_transform`), learned on the KV caches of
    `texts` (`[1, n]` token-id tensors, each prefilled from position 0) with the RoPE its config
    describes. Learn on text you will not evaluate on: a few texts of 1-2K tokens
    (`bench/results/transform_codec.md` measured 2 and 4 texts of 1535 tokens).

    The channels are weighted as `cachegen.transform.channel_weights` says: by a `profile`'s
    weights per head and key band (then encode with that profile), or without one the keys by
    the energy of the queries that read them, measured in the same prefill (`query_weights`;
    False learns the plain KLT)."""
    import torch

    from .transform import Rope, TransformError, channel_weights, learn_transform

    rope = Rope.from_config(model.config)  # unsupported RoPE variants fail before any prefill
    if not texts:
        raise TransformError("need at least one text to learn from")
    measure = query_weights and profile is None
    caches, energies = [], []
    with torch.inference_mode():
        for ids in texts:
            with _query_energy(model) if measure else contextlib.nullcontext([]) as energy:
                kv = from_cache(model(ids, use_cache=True).cache)
            caches.append([(k.float(), v.float()) for k, v in kv])
            energies.append(energy)
    shapes = [(k.shape[1], k.shape[3]) for k, _ in caches[0]]
    summed = [sum(e) for e in zip(*energies, strict=True)] if measure else None
    weights = channel_weights(shapes, summed, profile)
    return learn_transform(caches, rope, key_spread, weights=weights)


def query_energy(model: Any, ids: Any) -> list[np.ndarray]:
    """Per layer of `model`, the energy of the queries that read each key RoPE pair over `ids`
    (`[1, n]`, prefilled from position 0; the first token's query left out, as the transform's
    fit leaves out its key): per key head `[kv_heads * head_dim/2]`, the sum over its query
    heads and over tokens of the squared query pair (i, i + head_dim/2), the pair that reads key
    pair i whatever RoPE turns it by. Read at the query projection (after the query norm where
    the model has one).

    Raises:
        ValueError: the model's layers have no `self_attn.q_proj` to read queries at.
    """
    import torch

    with torch.inference_mode(), _query_energy(model) as energy:
        model(ids)
    return energy


@contextlib.contextmanager
def _query_energy(model: Any) -> Iterator[list[np.ndarray]]:
    """Within the block, the model's forward passes add each layer's `query_energy` to the list
    yielded (filled at exit)."""
    from .transform import FIT_SKIP_TOKENS

    out: list[np.ndarray] = []
    sums: dict[int, np.ndarray] = {}

    def add(layer: int, q: Any) -> None:  # q [tokens, heads, head_dim]
        s = (q[FIT_SKIP_TOKENS:].double() ** 2).sum(0).cpu().numpy()
        sums[layer] = sums.get(layer, 0) + s

    with _queries(model, add) as shape:
        yield out
    heads, kv_heads, head_dim = shape
    for layer in sorted(sums):  # per key head (its query heads summed), per pair
        s = sums[layer].reshape(kv_heads, heads // kv_heads, 2, head_dim // 2)
        out.append(s.sum((1, 2)).ravel())


@contextlib.contextmanager
def _queries(model: Any, take: Any) -> Iterator[tuple[int, int, int]]:
    """Within the block, each forward pass hands `take(layer, q)` every layer's queries `[tokens,
    heads, head_dim]` of the batch's first row, before RoPE and after the query norm where the
    model has one (it rescales channels, zeroing some: Gemma-3); yields (query heads, key heads,
    head_dim)."""
    from .replay import decoder_layers
    from .transform import config_head_dim

    c = model.config
    heads, kv_heads, head_dim = c.num_attention_heads, c.num_key_value_heads, config_head_dim(c)
    layers = decoder_layers(model, c.num_hidden_layers)
    attns = [getattr(layer, "self_attn", None) for layer in layers]
    if not attns or any(getattr(a, "q_proj", None) is None for a in attns):
        raise ValueError("the model's layers have no self_attn.q_proj to read queries at")

    def hook(i: int) -> Any:
        norm = getattr(attns[i], "q_norm", None)

        def read(module: Any, args: Any, output: Any) -> None:
            q = output.reshape(*output.shape[:-1], heads, head_dim)
            take(i, (norm(q) if norm is not None else q)[0])

        return read

    handles = [a.q_proj.register_forward_hook(hook(i)) for i, a in enumerate(attns)]
    try:
        yield heads, kv_heads, head_dim
    finally:
        for h in handles:
            h.remove()


def query_directions(model: Any, ids: Any, window: int | None = None) -> QueryDirections:
    """What the last `window` queries of `ids` (`[1, n]`, prefilled from position 0; default
    `importance.OBSERVATION_WINDOW`) share, per layer, for `encode(..., queries=)`
    (`cachegen.shaping.query_directions`). One prefill; an engine can take the same queries in
    its own."""
    import numpy as np
    import torch

    from .importance import OBSERVATION_WINDOW
    from .shaping import query_directions as directions
    from .transform import Rope

    rope = Rope.from_config(model.config)
    n = ids.shape[1]
    w = min(window or OBSERVATION_WINDOW, n)
    seen: dict[int, np.ndarray] = {}

    def take(layer: int, q: Any) -> None:
        seen[layer] = q[-w:].float().cpu().numpy()

    with torch.inference_mode(), _queries(model, take):
        model(ids)
    return directions([seen[i] for i in sorted(seen)], rope, np.arange(n - w, n))


def observed_attention(
    model: Any, ids: Any, window: int | None = None
) -> tuple[list[KVPair], list[np.ndarray]]:
    """Prefill `ids` (`[1, n]`) and return its cache (`from_cache`) with, per layer, the mean
    attention each token the layer keeps drew from the context's last `window` queries (default
    `cachegen.importance.OBSERVATION_WINDOW`), over query heads and the queries that see it:
    `cachegen.encode(..., attention=...)` takes it (a chunk takes its tokens' slice).

    The first n - window tokens are prefilled with the model's own attention; the last `window`
    run with eager attention, the one that returns its weights (window x n per head and layer).

    Raises:
        ValueError: `ids` is not `[1, n]` with n > window >= 1.
    """
    import torch

    from .importance import OBSERVATION_WINDOW

    window = OBSERVATION_WINDOW if window is None else window
    if ids.dim() != 2 or ids.shape[0] != 1 or not 1 <= window < ids.shape[1]:
        raise ValueError(f"need ids [1, n] with n > window >= 1; got {tuple(ids.shape)}, {window}")
    n = ids.shape[1]
    with torch.inference_mode():
        cache = model(ids[:, :-window], use_cache=True).cache
        with eager_attention(model):
            weights = model(ids[:, -window:], cache=cache, output_attentions=True).attentions
    kv, queries = from_cache(cache), range(n - window, n)
    attention = [
        mean_attention(a, slice(-k.shape[2], None), n - k.shape[2], queries, layer_window(layer))
        for (k, _), a, layer in zip(kv, weights, cache.layers, strict=True)
    ]
    return kv, attention


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """`model` runs with eager attention, the one that returns its weights (the fused kernels
    return none); its own attention is back afterwards."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def mean_attention(
    weights: Any, columns: slice, first: int, queries: range, sliding: int | None
) -> np.ndarray:
    """Per key token of a layer's attention `weights` (`[1, heads, queries, keys]`; the tokens
    are `columns` of its keys, at context positions `first`, `first + 1`, ...): the attention
    it drew, averaged over the query heads and the queries (at context positions `queries`)
    that see it: those at or after it, and in a `sliding` window less than `sliding` after it
    (a token none sees drew nothing: 0)."""
    import numpy as np

    drawn = weights[0, :, :, columns].double().sum((0, 1)).cpu().numpy()
    positions = np.arange(first, first + len(drawn))
    last = queries.stop - 1
    if sliding is not None:
        last = np.minimum(last, positions + sliding - 1)
    seeing = np.maximum(last - np.maximum(positions, queries.start) + 1, 1)
    return drawn / (weights.shape[1] * seeing)


def layer_window(layer: Any) -> int | None:
    """A cache layer's sliding window, None for full attention."""
    return int(layer.sliding_window) if getattr(layer, "is_sliding", False) else None


def from_cache(cache: Any) -> list[KVPair]:
    """Per-layer ``(K, V)`` tensors of ``cache``, each ``[batch, kv_heads, tokens, head_dim]``.

    The tensors are the cache's own (no copy). A sliding-window layer yields only the tokens it
    keeps, so layers may differ in token count; ``to_cache`` restores them.

    Raises:
        TypeError: ``cache`` is not a layered ``transformers`` cache.
        ValueError: a layer holds no key/value states (uninitialised, linear-attention or
            KV-sharing layers), or its keys and values disagree in batch or token count.
    """
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(
            f"expected a transformers Cache with a .layers list (transformers >= 4.56), "
            f"got {type(cache).__name__}"
        )
    return [_layer_kv(i, layer) for i, layer in enumerate(layers)]


def _layer_kv(index: int, layer: Any) -> KVPair:
    """The ``(keys, values)`` of one cache layer."""
    kind = type(layer).__name__
    return _check_kv(index, getattr(layer, "keys", None), getattr(layer, "values", None), kind)


def _check_kv(index: int, keys: Any, values: Any, kind: str) -> KVPair:
    """Check that ``keys`` and ``values`` are 4-D torch tensors agreeing in batch and tokens."""
    import torch

    if not (isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor)):
        raise ValueError(
            f"layer {index} ({kind}) holds no key/value tensors; "
            "only attention layers with 4-D torch keys and values can be converted"
        )
    if keys.dim() != 4 or values.dim() != 4:
        raise ValueError(
            f"layer {index} ({kind}): keys {tuple(keys.shape)} and values {tuple(values.shape)} "
            "must be 4-D [batch, kv_heads, tokens, head_dim]"
        )
    # Keys and values may differ in head_dim (e.g. MLA), never in batch or token count.
    if keys.shape[0] != values.shape[0] or keys.shape[2] != values.shape[2]:
        raise ValueError(
            f"layer {index} ({kind}): keys {tuple(keys.shape)} and values {tuple(values.shape)} "
            "disagree in batch or token count"
        )
    return keys, values


def to_cache(
    kv: Sequence[KVPair],
    config: PretrainedConfig,
    seq_length: int | None = None,
) -> DynamicCache:
    """Build a ``DynamicCache`` for the model described by ``config`` holding ``kv``.

    Args:
        kv: per-layer ``(K, V)`` tensors as returned by ``from_cache`` or ``cachegen.decode``,
            one pair per layer of the model.
        config: the model's config; it tells which layers use a sliding window.
        seq_length: how many tokens the cache has seen. A sliding-window layer keeps fewer
            tokens than that, but attention masks and positions need the true count. Defaults to
            the longest layer's token count, which is right whenever the model has at least one
            full-attention layer; pass it for models whose layers all slide.

    ``generate()`` expects, as with any cache, input ids longer than the cached tokens: cache
    all but a prompt's last token, or pass new tokens after the cached ones.

    Raises:
        ValueError: ``kv`` has the wrong number of layers, a pair's K and V disagree, or
            ``seq_length`` is shorter than a layer.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    if len(cache.layers) != len(kv):
        raise ValueError(f"config describes {len(cache.layers)} cache layers, kv has {len(kv)}")
    pairs = [_checked_pair(i, pair) for i, pair in enumerate(kv)]
    longest = max((k.shape[2] for k, _ in pairs), default=0)
    total = longest if seq_length is None else seq_length
    if total < longest:
        raise ValueError(f"seq_length {total} is shorter than a layer's {longest} tokens")
    for layer, (keys, values) in zip(cache.layers, pairs, strict=True):
        layer.update(keys, values)
        if getattr(layer, "is_sliding", False):
            # update() counted only the kept tokens; the mask offset needs all tokens seen.
            layer.cumulative_length = total
    return cache


def _checked_pair(index: int, pair: Any) -> KVPair:
    """Validate one ``(K, V)`` entry of ``to_cache``'s input."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"kv[{index}] must be a (K, V) pair, got {type(pair).__name__}")
    return _check_kv(index, pair[0], pair[1], "kv pair")
