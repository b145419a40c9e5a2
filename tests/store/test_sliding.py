"""Contexts whose layers hold different token counts (sliding-window attention), on a tiny
random transformers model with sliding and full layers: chunks by absolute position, saved,
loaded and fed back to the model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import cachegen  # noqa: E402
from cachegen.context import open_context, save_context  # noqa: E402
from cachegen.hf import from_cache, to_cache  # noqa: E402
from cachegen.store import ObjectMissing, Store  # noqa: E402

WINDOW, TOKENS, CHUNK = 12, 30, 8
TOP = max(cachegen.LEVELS)


def tiny_model() -> transformers.PreTrainedModel:
    """A 4-layer random Qwen2, sliding and full attention alternating."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"] * 2,
        max_position_embeddings=128,
    )
    return transformers.Qwen2ForCausalLM(config).eval()


def prefill(model: transformers.PreTrainedModel, ids: torch.Tensor) -> list:
    with torch.inference_mode():
        return from_cache(model(ids, use_cache=True).cache)


def logits(model: transformers.PreTrainedModel, kv: list, ids: torch.Tensor, seen: int):
    cache = to_cache([(k.clone(), v.clone()) for k, v in kv], model.config, seen)
    with torch.inference_mode():
        return model(ids, cache=cache, use_cache=True).logits


def test_sliding_layers_chunk_by_absolute_position(store: Store) -> None:
    model = tiny_model()
    ids = torch.randint(0, 64, (1, TOKENS + 5), generator=torch.Generator().manual_seed(1))
    kv = prefill(model, ids[:, :TOKENS])
    held = [k.shape[2] for k, _ in kv]
    assert held == [WINDOW - 1, TOKENS] * 2  # sliding layers keep the last window - 1

    save_context(store, "tiny", ids[0, :TOKENS], kv, levels=[TOP], chunk_tokens=CHUNK)
    ctx = open_context(store, "tiny", ids[0, :TOKENS], chunk_tokens=CHUNK)
    # Sliding layers hold positions [19, 30): none of chunks [0, 8) and [8, 16), 5 of
    # [16, 24) and all 6 of [24, 30).
    assert [c.layer_tokens for c in ctx.chunks] == [(0, 8, 0, 8), (0, 8, 0, 8), (5, 8, 5, 8), None]
    assert [len(ctx.load(i, TOP)) for i in range(4)] == [2, 2, 4, 4]

    loaded = ctx.load_prefix(TOP)
    assert [k.shape for k, _ in loaded] == [k.shape for k, _ in kv]
    for (k, v), (k0, v0) in zip(loaded, kv, strict=True):
        # Aligned to the right positions: close to the original, not merely the same shape.
        assert (k - k0).abs().max() < 0.05 * k0.abs().max()
        assert (v - v0).abs().max() < 0.05 * v0.abs().max()
    want = logits(model, kv, ids[:, TOKENS:], TOKENS)
    got = logits(model, loaded, ids[:, TOKENS:], TOKENS)
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_prefixes_of_other_lengths(store: Store) -> None:
    model = tiny_model()
    ids = torch.randint(0, 64, (1, TOKENS), generator=torch.Generator().manual_seed(2))
    save_context(store, "tiny", ids[0], prefill(model, ids), levels=[TOP], chunk_tokens=CHUNK)
    # The first 16 tokens' chunks are stored, but the sliding layers of the 30-token context
    # hold none of them: not this prefix's KV, so a miss.
    short = open_context(store, "tiny", ids[0, :20], chunk_tokens=CHUNK)
    assert short.prefix_tokens == 16
    with pytest.raises(ObjectMissing, match="layer 0"):
        short.load_prefix(TOP)
    # Saving the 20-token context replaces the chunks whose layer spans differ; both load.
    kv20 = prefill(model, ids[:, :20])
    save_context(store, "tiny", ids[0, :20], kv20, levels=[TOP], chunk_tokens=CHUNK)
    again = open_context(store, "tiny", ids[0, :20], chunk_tokens=CHUNK)
    assert again.complete
    assert [k.shape[2] for k, _ in again.load_prefix(TOP)] == [WINDOW - 1, 20] * 2
    full = open_context(store, "tiny", ids[0], chunk_tokens=CHUNK)
    assert full.complete
    assert [k.shape[2] for k, _ in full.load_prefix(TOP)] == [WINDOW - 1, TOKENS] * 2


def test_bad_layer_counts_are_refused(store: Store) -> None:
    kv = [(torch.zeros(1, 2, 10, 8), torch.zeros(1, 2, 9, 8))]
    with pytest.raises(ValueError, match="same"):
        save_context(store, "tiny", list(range(10)), kv)
    with pytest.raises(ValueError, match="tokens"):  # no layer holds all the context
        save_context(store, "tiny", list(range(12)), [(torch.zeros(1, 2, 10, 8),) * 2])
    assert store.list() == []


def test_observed_attention_is_sliced_per_chunk(store: Store) -> None:
    """`save_context(attention=)` codes each chunk with its slice of every layer's attention
    (sliding layers by absolute position), as `encode(attention=)` of the chunk alone would."""
    from tiny_lm import sharpened

    from cachegen.context.layers import slice_attention, slice_chunk
    from cachegen.hf import observed_attention

    model = sharpened(tiny_model())  # peaked attention: tokens draw very different shares
    ids = torch.randint(0, 64, (1, TOKENS), generator=torch.Generator().manual_seed(3))
    kv, attention = observed_attention(model, ids, 6)
    save_context(store, "tiny", ids[0], kv, levels=[5], chunk_tokens=CHUNK, attention=attention)
    ctx = open_context(store, "tiny", ids[0], chunk_tokens=CHUNK)
    for i, c in enumerate(ctx.chunks):
        start, stop = c.span
        part = slice_attention(attention, start, stop)
        assert [len(a) for a in part] == [k.shape[2] for k, _ in slice_chunk(kv, start, stop)]
        want = cachegen.encode(
            slice_chunk(kv, start, stop), 5, position=start, context_end=TOKENS, attention=part
        )
        assert ctx.fetch(i, 5) == want
        plain = cachegen.encode(slice_chunk(kv, start, stop), 5, position=start, context_end=TOKENS)
        assert want != plain  # the attention moved the steps
    with pytest.raises(ValueError, match="one array per layer"):
        save_context(store, "tiny", ids[0], kv, levels=[5], attention=attention[:3])
