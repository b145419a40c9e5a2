"""cachegen.hf: DynamicCache <-> per-layer (K, V) lists, on tiny random models and on SmolLM2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cachegen.hf import from_cache, to_cache  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _tiny(layer_types: list[str], window: int = 8) -> transformers.PreTrainedModel:
    """A 4-layer random Qwen2 whose layers are full or sliding-window attention."""
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
        max_position_embeddings=128,
    )
    return transformers.Qwen2ForCausalLM(config).eval()


def _continue(
    model: transformers.PreTrainedModel, cache: object, ids: torch.Tensor
) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, cache=cache, use_cache=True).logits


def _prefill(model: transformers.PreTrainedModel, ids: torch.Tensor) -> Any:
    with torch.inference_mode():
        return model(ids, use_cache=True).cache


def _copy(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fresh tensors, as a decoder would return."""
    return [(k.clone(), v.clone()) for k, v in kv]


def test_from_cache_layout_with_sliding_layers() -> None:
    model = _tiny(["sliding_attention", "full_attention"] * 2, window=8)
    ids = torch.randint(0, 64, (1, 20))
    kv = from_cache(_prefill(model, ids))
    # Sliding layers keep window - 1 tokens, full layers all 20: [batch, kv_heads, tokens, dim].
    assert [tuple(k.shape) for k, _ in kv] == [(1, 2, 7, 8), (1, 2, 20, 8)] * 2
    assert all(k.shape == v.shape for k, v in kv)


@pytest.mark.parametrize("window", [8, 32])  # window exceeded / not reached by 20 tokens
def test_round_trip_mixed_sliding_gives_identical_logits(window: int) -> None:
    model = _tiny(["sliding_attention", "full_attention"] * 2, window=window)
    ids = torch.randint(0, 64, (1, 26))
    original = _prefill(model, ids[:, :20])
    rebuilt = to_cache(_copy(from_cache(original)), model.config)
    assert rebuilt.get_seq_length() == 20
    assert torch.equal(
        _continue(model, rebuilt, ids[:, 20:]), _continue(model, original, ids[:, 20:])
    )


def test_generate_continues_from_rebuilt_cache() -> None:
    model = _tiny(["sliding_attention", "full_attention"] * 2, window=8)
    ids = torch.randint(0, 64, (1, 20))
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    # As with any cache handed to generate(), it covers all but the last prompt token.
    rebuilt = to_cache(_copy(from_cache(_prefill(model, ids[:, :19]))), model.config)
    assert torch.equal(
        model.generate(ids, cache=rebuilt, max_new_tokens=6, do_sample=False), expected
    )


def test_decoded_cache_feeds_the_model() -> None:
    cachegen = pytest.importorskip("cachegen")
    model = _tiny(["sliding_attention", "full_attention"] * 2, window=8)
    ids = torch.randint(0, 64, (1, 26))
    kv = from_cache(_prefill(model, ids[:, :20]))
    decoded = cachegen.decode(cachegen.encode(kv, level=max(cachegen.LEVELS)))
    assert [(k.shape, v.shape, k.dtype) for k, v in decoded] == [
        (k.shape, v.shape, k.dtype) for k, v in kv
    ]
    logits = _continue(model, to_cache(decoded, model.config), ids[:, 20:])
    assert logits.shape == (1, 6, 64) and torch.isfinite(logits).all()


def test_all_sliding_needs_seq_length() -> None:
    model = _tiny(["sliding_attention"] * 2, window=8)
    ids = torch.randint(0, 64, (1, 26))
    original = _prefill(model, ids[:, :20])
    kv = from_cache(original)
    expected = _continue(model, original, ids[:, 20:])
    rebuilt = to_cache(_copy(kv), model.config, seq_length=20)
    assert torch.equal(_continue(model, rebuilt, ids[:, 20:]), expected)
    # Without the true length the masks and positions would be those of a 7-token context.
    assert not torch.equal(
        _continue(model, to_cache(_copy(kv), model.config), ids[:, 20:]), expected
    )


def test_from_cache_rejects_non_cache() -> None:
    with pytest.raises(TypeError, match="layers"):
        from_cache([(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))])


def test_from_cache_rejects_empty_layers() -> None:
    model = _tiny(["full_attention"] * 2)
    with pytest.raises(ValueError, match="layer 0"):
        from_cache(transformers.DynamicCache(config=model.config))


def test_to_cache_rejects_bad_input() -> None:
    config = _tiny(["full_attention"] * 2).config
    good = (torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8))
    with pytest.raises(ValueError, match="2 cache layers, kv has 1"):
        to_cache([good], config)
    with pytest.raises(ValueError, match="disagree"):
        to_cache([good, (torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 4, 8))], config)
    with pytest.raises(ValueError, match="4-D"):
        to_cache([good, (torch.zeros(2, 5, 8), torch.zeros(2, 5, 8))], config)
    with pytest.raises(ValueError, match="pair"):
        to_cache([good, torch.zeros(1, 2, 5, 8)], config)
    with pytest.raises(ValueError, match="seq_length"):
        to_cache([good, good], config, seq_length=4)


def test_import_without_torch() -> None:
    # torch and transformers are imported lazily: the module loads without them.
    block = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None"
    subprocess.run([sys.executable, "-c", f"{block}; import cachegen.hf"], check=True)


@pytest.mark.slow
def test_smollm2_round_trip_identical_logits() -> None:
    sys.path.insert(0, str(BENCH))
    from kvquality import continue_logits, load_document, load_model

    lm = load_model()
    ids = lm.tokenizer(load_document("Apache-2.0").text, return_tensors="pt")["input_ids"][:, :96]
    original = _prefill(lm.model, ids[:, :64])
    kv = from_cache(original)
    assert len(kv) == 30 and tuple(kv[0][0].shape) == (1, 3, 64, 64)
    expected = _continue(lm.model, original, ids[:, 64:])[0]
    assert torch.equal(continue_logits(lm, _copy(kv), ids[:, 64:]), expected)


def _sharp(model: transformers.PreTrainedModel) -> transformers.PreTrainedModel:
    """Larger query and key projections: peaked attention, so keys matter as in a trained LM."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


def test_calibrate_profile_on_a_tiny_model() -> None:
    """calibrate(): one KL measurement per (layer, K/V, head), turned into clipped step weights
    that encode() accepts; strength 0 gives all-ones weights."""
    import cachegen
    from cachegen.calibrate import MEASURE_CONFIG, _sensitivity

    model = _sharp(_tiny(["full_attention"] * 4))
    texts = [
        torch.randint(0, 64, (1, 100), generator=torch.Generator().manual_seed(s)) for s in (1, 2)
    ]
    prof = cachegen.calibrate(model, texts, name="tiny", continuation=16, bound=2.0)
    assert prof.num_layers == 4 and all(len(w) == 2 for w in prof.key_weights + prof.value_weights)
    # The weights are the measured sensitivities, normalized per text, to the power -0.35.
    config = MEASURE_CONFIG
    measured = [_sensitivity(model, t, config, 16, 4, torch) for t in texts]
    relative = lambda s: s / np.exp(np.log(s).mean())  # noqa: E731
    mean = sum(relative(np.concatenate(heads)) for heads, _ in measured) / len(texts)
    want = np.clip(mean**-0.35, 0.5, 2.0).reshape(4, 2, 2)  # layer, K/V, head
    np.testing.assert_allclose(np.stack([prof.key_weights, prof.value_weights], 1), want)
    assert len({round(w, 6) for w in want.ravel()}) > 1  # heads really differ
    bands = relative(np.clip((sum(relative(b) for _, b in measured) / 2) ** -0.35, 0.5, 2.0))
    np.testing.assert_allclose(prof.key_bands, bands)
    assert len(prof.key_bands) == 4 and len(set(prof.key_bands)) == 4
    flat = cachegen.calibrate(model, texts[:1], name="tiny", continuation=16, strength=0.0)
    assert set(flat.key_weights[0] + flat.value_weights[3] + flat.key_bands) == {1.0}
    assert (
        cachegen.calibrate(model, texts[:1], name="t", continuation=16, key_bands=0).key_bands == ()
    )
    kv = from_cache(_prefill(model, texts[0]))
    blob = cachegen.encode(kv, level=5, profile=prof)
    assert blob != cachegen.encode(kv, level=5) and len(cachegen.decode(blob)) == 4


def test_calibrate_fits_token_importance_to_attention() -> None:
    """Per layer, the importance model is fitted to the attention mass each prefix token (less
    the sink and the recency tail) draws from the continuation, against its key features."""
    import cachegen
    from cachegen.calibrate import _attention_mass
    from cachegen.importance import fit

    model = _tiny(["full_attention"] * 4)
    text = torch.randint(0, 64, (1, 120), generator=torch.Generator().manual_seed(3))
    prof = cachegen.calibrate(model, [text], name="tiny", continuation=16)
    assert [len(row) for row in prof.importance] == [2 * 4] * 4  # kv heads * head_dim / 2
    features, mass = _attention_mass(model, text, 16, torch)
    assert model.config._attn_implementation != "eager"  # restored
    for layer, (f, m) in enumerate(zip(features, mass, strict=True)):
        assert f.shape == (120 - 16 - 1 - 64, 8) and m.shape == (len(f),)
        assert np.all(m > 0) and np.all(m < 1)  # mean attention weights
        np.testing.assert_allclose(prof.importance[layer], fit([f], [m]))
    again = cachegen.ModelProfile.from_json(prof.to_json())
    assert again.importance == tuple(
        tuple(float(f"{x:.5g}") for x in row) for row in prof.importance
    )
