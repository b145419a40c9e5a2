"""Tiny random transformers LMs for the tests that need a model's structure, not its knowledge."""

from __future__ import annotations

import torch
import transformers


def tiny_qwen2(
    layer_types: list[str], window: int = 8, positions: int = 128
) -> transformers.PreTrainedModel:
    """A random Qwen2 (hidden 32, 4 query heads, 2 KV heads) whose layers are full or
    sliding-window attention."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=len(layer_types),
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=window,
        layer_types=layer_types,
        max_position_embeddings=positions,
    )
    return transformers.Qwen2ForCausalLM(config).eval()


def sharpened(model: transformers.PreTrainedModel) -> transformers.PreTrainedModel:
    """Larger query and key projections: peaked attention, so keys matter as in a trained LM."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


def tiny_qwen3(layers: int = 2) -> transformers.PreTrainedModel:
    """A random Qwen3 (hidden 32, 4 query heads, 2 KV heads, head_dim 8): its queries pass a
    per-head norm (`q_norm`) after the projection, as Gemma-3's do."""
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
    )
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():  # unequal norm scales, one RoPE pair zeroed: energies that differ
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.2, 3.0)
            layer.self_attn.q_norm.weight[[1, 5]] = 0.0
    return model
