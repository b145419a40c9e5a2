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

from tiny_lm import sharpened, tiny_qwen2, tiny_qwen3  # noqa: E402

from cachegen.hf import from_cache, observed_attention, to_cache  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """calibrate() keeps its measurements under the user cache dir: a temporary one here."""
    monkeypatch.setenv("CACHEGEN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


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
    model = tiny_qwen2(["sliding_attention", "full_attention"] * 2, window=8)
    ids = torch.randint(0, 64, (1, 20))
    kv = from_cache(_prefill(model, ids))
    # Sliding layers keep window - 1 tokens, full layers all 20: [batch, kv_heads, tokens, dim].
    assert [tuple(k.shape) for k, _ in kv] == [(1, 2, 7, 8), (1, 2, 20, 8)] * 2
    assert all(k.shape == v.shape for k, v in kv)


@pytest.mark.parametrize("window", [8, 32])  # window exceeded / not reached by 20 tokens
def test_round_trip_mixed_sliding_gives_identical_logits(window: int) -> None:
    model = tiny_qwen2(["sliding_attention", "full_attention"] * 2, window=window)
    ids = torch.randint(0, 64, (1, 26))
    original = _prefill(model, ids[:, :20])
    rebuilt = to_cache(_copy(from_cache(original)), model.config)
    assert rebuilt.get_seq_length() == 20
    assert torch.equal(
        _continue(model, rebuilt, ids[:, 20:]), _continue(model, original, ids[:, 20:])
    )


def test_generate_continues_from_rebuilt_cache() -> None:
    model = tiny_qwen2(["sliding_attention", "full_attention"] * 2, window=8)
    ids = torch.randint(0, 64, (1, 20))
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    # As with any cache handed to generate(), it covers all but the last prompt token.
    rebuilt = to_cache(_copy(from_cache(_prefill(model, ids[:, :19]))), model.config)
    assert torch.equal(
        model.generate(ids, cache=rebuilt, max_new_tokens=6, do_sample=False), expected
    )


def test_decoded_cache_feeds_the_model() -> None:
    cachegen = pytest.importorskip("cachegen")
    model = tiny_qwen2(["sliding_attention", "full_attention"] * 2, window=8)
    ids = torch.randint(0, 64, (1, 26))
    kv = from_cache(_prefill(model, ids[:, :20]))
    decoded = cachegen.decode(cachegen.encode(kv, level=max(cachegen.LEVELS)))
    assert [(k.shape, v.shape, k.dtype) for k, v in decoded] == [
        (k.shape, v.shape, k.dtype) for k, v in kv
    ]
    logits = _continue(model, to_cache(decoded, model.config), ids[:, 20:])
    assert logits.shape == (1, 6, 64) and torch.isfinite(logits).all()


def _by_hand_caches(model: Any, texts: list[torch.Tensor]) -> list:
    return [[(k.float(), v.float()) for k, v in from_cache(_prefill(model, x))] for x in texts]


def test_learned_model_transform_codes_the_models_cache() -> None:
    """learn_model_transform prefills the texts and learns with the config's RoPE and the
    keys weighted by their queries' energy: the same transform as learning on those caches by
    hand; a blob coded with it decodes (sliding layers included) into a cache the model
    continues from like the exact one."""
    import cachegen
    from cachegen.hf import learn_model_transform, query_energy
    from cachegen.transform import Rope, channel_weights, learn_transform

    model = sharpened(tiny_qwen2(["sliding_attention", "full_attention"] * 2, window=16))
    torch.manual_seed(1)
    texts = [torch.randint(0, 64, (1, 48)) for _ in range(2)]
    t = learn_model_transform(model, texts)
    by_hand = _by_hand_caches(model, texts)
    energy = [a + b for a, b in zip(*(query_energy(model, x) for x in texts), strict=True)]
    weights = channel_weights([(2, 8)] * 4, energy)
    rope = Rope.from_config(model.config)
    assert t.digest() == learn_transform(by_hand, rope, weights=weights).digest()
    plain = learn_model_transform(model, texts, query_weights=False)
    assert plain.digest() == learn_transform(by_hand, rope).digest() != t.digest()
    ids = torch.randint(0, 64, (1, 40))
    kv = from_cache(_prefill(model, ids[:, :34]))
    decoded = cachegen.decode(cachegen.encode(kv, 40, transform=t), transforms=t)
    assert [k.shape for k, _ in decoded] == [k.shape for k, _ in kv]
    exact = _continue(model, to_cache(_copy(kv), model.config), ids[:, 34:])
    coded = _continue(model, to_cache(decoded, model.config), ids[:, 34:])
    kl = (exact.softmax(-1) * (exact.log_softmax(-1) - coded.log_softmax(-1))).sum(-1).mean()
    assert float(kl) < 1e-2


def test_learned_model_transform_with_a_profile_takes_its_weights() -> None:
    """With a profile the channels take its weights per head and key band, not the queries'."""
    import cachegen
    from cachegen.hf import learn_model_transform
    from cachegen.transform import Rope, channel_weights, learn_transform

    model = tiny_qwen2(["full_attention"] * 2)
    texts = [torch.randint(0, 64, (1, 40))]
    profile = cachegen.ModelProfile(
        model="tiny",
        key_weights=((1.0, 2.0), (0.5, 1.0)),
        value_weights=((1.0, 1.0), (3.0, 1.0)),
        key_bands=(2.0, 0.5),
    )
    t = learn_model_transform(model, texts, profile=profile)
    caches, rope = _by_hand_caches(model, texts), Rope.from_config(model.config)
    weights = channel_weights([(2, 8)] * 2, None, profile)
    assert t.digest() == learn_transform(caches, rope, weights=weights).digest()
    assert t.digest() != learn_transform(caches, rope).digest()
    np.testing.assert_allclose(t.values[1].weights, np.repeat([np.sqrt(3), 1 / np.sqrt(3)], 8))


def _queries_by_hand(model: Any, ids: torch.Tensor) -> list[np.ndarray]:
    """Per layer, each query head's channels `[tokens, heads, head_dim]` over `ids`, from the
    layer's input (the model's hidden states) through its norm, query projection and query
    norm."""
    c = model.config
    with torch.inference_mode():
        hidden = model(ids, output_hidden_states=True).hidden_states
        out = []
        for layer, h in zip(model.model.layers, hidden, strict=False):
            a = layer.self_attn
            q = a.q_proj(layer.input_layernorm(h))[0].view(ids.shape[1], c.num_attention_heads, -1)
            out.append((a.q_norm(q) if hasattr(a, "q_norm") else q).double().numpy())
    return out


@pytest.mark.parametrize("make", [lambda: tiny_qwen2(["full_attention"] * 2), tiny_qwen3])
def test_query_energy_is_the_squared_queries_per_key_pair(make: Any) -> None:
    """Per key RoPE pair: the squared query pair of the heads that read its key head, summed
    over tokens but the first (after the query norm where there is one)."""
    from cachegen.hf import query_energy

    model = make()
    ids = torch.randint(0, 64, (1, 30))
    energy = query_energy(model, ids)
    for e, q in zip(energy, _queries_by_hand(model, ids), strict=True):
        per_head = (q[1:] ** 2).sum(0)  # [4 query heads, 8]
        per_key = per_head.reshape(2, 2, 8).sum(1)
        pairs = per_key[:, :4] + per_key[:, 4:]
        np.testing.assert_allclose(e, pairs.reshape(-1), rtol=1e-9)
    if hasattr(model.model.layers[0].self_attn, "q_norm"):  # pair (1, 5) of every head is zeroed
        assert np.all(energy[0].reshape(2, 4)[:, 1] == 0)


@pytest.mark.parametrize("make", [lambda: tiny_qwen2(["full_attention"] * 2), tiny_qwen3])
def test_query_directions_are_those_of_the_last_queries(make: Any) -> None:
    """`hf.query_directions` reads the last `window` queries (after the query norm, before
    RoPE) at their positions, as `shaping.query_directions` takes them."""
    from cachegen.hf import query_directions
    from cachegen.shaping import query_directions as from_queries
    from cachegen.transform import Rope

    model = make()
    ids = torch.randint(0, 64, (1, 30))
    got = query_directions(model, ids, window=8)
    by_hand = [q[-8:].astype(np.float32) for q in _queries_by_hand(model, ids)]
    want = from_queries(by_hand, Rope.from_config(model.config), np.arange(22, 30))
    for g, w in zip(got.directions + got.residual, want.directions + want.residual, strict=True):
        np.testing.assert_allclose(np.abs(g), np.abs(w), rtol=1e-3, atol=1e-4)


def test_query_energy_needs_query_projections() -> None:
    from cachegen.hf import learn_model_transform, query_directions, query_energy

    model = tiny_qwen2(["full_attention"] * 2)
    model.model.layers[1].self_attn.q_proj = None
    ids = torch.randint(0, 64, (1, 12))
    with pytest.raises(ValueError, match="q_proj"):
        query_energy(model, ids)
    with pytest.raises(ValueError, match="q_proj"):
        learn_model_transform(model, [ids])
    with pytest.raises(ValueError, match="q_proj"):
        query_directions(model, ids)


def test_all_sliding_needs_seq_length() -> None:
    model = tiny_qwen2(["sliding_attention"] * 2, window=8)
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
    model = tiny_qwen2(["full_attention"] * 2)
    with pytest.raises(ValueError, match="layer 0"):
        from_cache(transformers.DynamicCache(config=model.config))


def test_to_cache_rejects_bad_input() -> None:
    config = tiny_qwen2(["full_attention"] * 2).config
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
    from lib.kvquality import continue_logits, load_document, load_model

    lm = load_model()
    ids = lm.tokenizer(load_document("Apache-2.0").text, return_tensors="pt")["input_ids"][:, :96]
    original = _prefill(lm.model, ids[:, :64])
    kv = from_cache(original)
    assert len(kv) == 30 and tuple(kv[0][0].shape) == (1, 3, 64, 64)
    expected = _continue(lm.model, original, ids[:, 64:])[0]
    assert torch.equal(continue_logits(lm, _copy(kv), ids[:, 64:]), expected)


def test_calibrate_profile_on_a_tiny_model() -> None:
    """calibrate(): one KL measurement per (layer, K/V, head), turned into clipped step weights
    that encode() accepts; strength 0 gives all-ones weights."""
    import cachegen
    from cachegen.calibrate import MEASURE_CONFIG, _group_shapes, _sensitivity

    model = sharpened(tiny_qwen2(["full_attention"] * 4))
    texts = [
        torch.randint(0, 64, (1, 100), generator=torch.Generator().manual_seed(s)) for s in (1, 2)
    ]
    prof = cachegen.calibrate(model, texts, name="tiny", continuation=16, bound=2.0)
    assert prof.num_layers == 4 and all(len(w) == 2 for w in prof.key_weights + prof.value_weights)
    # The weights are the measured sensitivities, normalized per text, to the power -0.35.
    config = MEASURE_CONFIG
    shapes = _group_shapes(model, texts[0], torch)
    assert shapes == [(2, 8)] * 8  # (kv heads, head_dim) of K0, V0, K1, ...
    run = lambda name, measure: measure()  # noqa: E731
    measured = [_sensitivity(model, t, config, 16, 4, shapes, run, torch) for t in texts]
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
    the sink and the recency tail) draws from the continuation, against its key features: the
    RoPE pair magnitudes, then the keys rotated back to position 0 (the profile records the
    model's RoPE bases for those)."""
    import cachegen
    from cachegen.calibrate import _attention_mass
    from cachegen.importance import fit
    from cachegen.transform import rope_thetas

    model = tiny_qwen2(["full_attention"] * 4)
    text = torch.randint(0, 64, (1, 120), generator=torch.Generator().manual_seed(3))
    prof = cachegen.calibrate(model, [text], name="tiny", continuation=16)
    thetas = tuple(rope_thetas(model.config)[0])
    assert prof.rope_thetas == thetas and len(thetas) == 4
    assert [len(row) for row in prof.importance] == [2 * 4 + 2 * 8] * 4  # magnitudes, signed
    features, mass = _attention_mass(model, text, 16, torch)
    assert model.config._attn_implementation != "eager"  # restored
    for layer, (f, m) in enumerate(zip(features, mass, strict=True)):
        assert f.shape == (120 - 16 - 1 - 64, 24) and m.shape == (len(f),)
        assert np.all(m > 0) and np.all(m < 1)  # mean attention weights
        np.testing.assert_allclose(prof.importance[layer], fit([f], [m]))
    again = cachegen.ModelProfile.from_json(prof.to_json())
    assert again.importance == tuple(
        tuple(float(f"{x:.5g}") for x in row) for row in prof.importance
    )


def _texts(n: int, seeds: tuple[int, ...]) -> list[torch.Tensor]:
    return [torch.randint(0, 64, (1, n), generator=torch.Generator().manual_seed(s)) for s in seeds]


SLIDING = ["sliding_attention", "full_attention"] * 2


def test_attention_mass_on_sliding_layers_is_aligned_by_position() -> None:
    """A sliding layer keeps its last window - 1 prefix tokens: its features and mass cover
    those (the sink long gone), each token's mass averaged over the continuation queries that
    see it, as one uncached pass over the whole text shows at the same absolute positions."""
    from cachegen.calibrate import _attention_mass

    model = tiny_qwen2(SLIDING, window=96, positions=256)
    text, n, cont = _texts(200, (4,))[0], 184, 16
    features, mass = _attention_mass(model, text, cont, torch)
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        whole = model(text, output_attentions=True).attentions
    for layer, (f, m) in enumerate(zip(features, mass, strict=True)):
        first = n - 95 if layer % 2 == 0 else 1  # sliding: positions 89..183; full: 1..183
        positions = np.arange(first, n - 64)
        assert f.shape == (len(positions), 8 + 16) and m.shape == (len(positions),)
        att = whole[layer][0, :, n:, positions].double()  # [heads, queries, kept positions]
        seen = (att[0] > 0).sum(0).numpy()
        if layer % 2 == 0:
            assert seen.min() < cont  # the window hides the oldest kept tokens from late queries
        want = att.sum((0, 1)).numpy() / (att.shape[0] * seen)
        np.testing.assert_allclose(m, want, rtol=1e-4)


@pytest.mark.parametrize("window", [1, 24])
def test_observed_attention_is_what_the_last_queries_paid(window: int) -> None:
    """Per layer and kept token: the attention the last `window` queries paid it, averaged over
    query heads and the queries that see it (a sliding window hides old tokens from late ones),
    as one eager pass over the whole text shows; the cache is the plain prefill's."""
    model = tiny_qwen2(SLIDING, window=16, positions=128)
    ids = _texts(60, (5,))[0]
    before = model.config._attn_implementation
    kv, attention = observed_attention(model, ids, window)
    assert model.config._attn_implementation == before  # the model's own attention is back
    want_kv = from_cache(_prefill(model, ids))
    model.set_attn_implementation("eager")
    with torch.inference_mode():
        whole = model(ids, output_attentions=True).attentions
    for (k, v), (wk, wv), a, att in zip(kv, want_kv, attention, whole, strict=True):
        torch.testing.assert_close((k, v), (wk, wv), rtol=1e-4, atol=1e-5)
        kept = k.shape[2]
        paid = att[0, :, -window:, -kept:].double()
        seen = (paid[0] > 0).sum(0).numpy()
        assert a.shape == (kept,) and seen.min() >= 1
        np.testing.assert_allclose(a, paid.sum((0, 1)).numpy() / (paid.shape[0] * seen), rtol=1e-4)


def test_observed_attention_checks() -> None:
    model = tiny_qwen2(SLIDING, window=16)
    ids = _texts(20, (1,))[0]
    for bad_ids, window in ((ids, 20), (ids, 0), (ids[0], 4), (torch.cat([ids, ids]), 4)):
        with pytest.raises(ValueError, match="window"):
            observed_attention(model, bad_ids, window)


def test_signed_key_features_are_the_keys_before_rope() -> None:
    """The signed features of every kept prefix token, sliding layers included, are its key
    projection before RoPE: the rotation is undone at the token's own context position."""
    from cachegen.calibrate import _attention_mass

    model = tiny_qwen2(SLIDING, window=96, positions=256)
    text, n, cont = _texts(200, (4,))[0], 184, 16
    projected: dict[int, torch.Tensor] = {}

    def keep(i: int) -> Any:
        def hook(_module: Any, _inputs: Any, out: torch.Tensor) -> None:
            projected.setdefault(i, out[0].detach())  # the prefix pass, the first call

        return hook

    hooks = [
        layer.self_attn.k_proj.register_forward_hook(keep(i))
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        features, _ = _attention_mass(model, text, cont, torch)
    finally:
        for h in hooks:
            h.remove()
    for layer, f in enumerate(features):
        first = n - 95 if layer % 2 == 0 else 1  # as in the test above
        want = projected[layer][first : n - 64].numpy()  # [tokens, heads * head_dim]
        np.testing.assert_allclose(f[:, 8:], want, atol=1e-5)


def test_refit_importance_fits_what_calibrate_fits() -> None:
    """A profile whose importance reads magnitudes only, refitted on the calibration text, has
    calibrate's importance (signed features, RoPE bases) and keeps its measured weights."""
    import dataclasses

    import cachegen

    model = tiny_qwen2(["full_attention"] * 4)
    text = _texts(120, (3,))
    prof = cachegen.calibrate(model, text, name="tiny", continuation=16, progress=False)
    old = dataclasses.replace(
        prof, importance=tuple(row[:8] for row in prof.importance), rope_thetas=()
    )
    assert cachegen.refit_importance(model, text, old, continuation=16) == prof


def test_calibrate_sliding_window_model_longer_prefix() -> None:
    """A prefix longer than the window: calibration finishes and its profile codes the model's
    cache (layers of different token counts), whole and as a chunk that starts later."""
    import cachegen

    model = sharpened(tiny_qwen2(SLIDING, window=96, positions=256))
    texts = _texts(200, (5, 6))
    prof = cachegen.calibrate(model, texts, name="sliding", continuation=16, progress=False)
    assert prof.num_layers == 4 and len(prof.importance) == 4
    assert all(any(c != 0 for c in row) for row in prof.importance)
    kv = from_cache(_prefill(model, texts[0][:, :184]))
    assert [k.shape[2] for k, _ in kv] == [95, 184] * 2
    blob = cachegen.encode(kv, level=20, profile=prof)
    assert blob != cachegen.encode(kv, level=20)
    decoded = cachegen.decode(blob)
    assert [k.shape for k, _ in decoded] == [k.shape for k, _ in kv]
    logits = _continue(model, to_cache(decoded, model.config), texts[0][:, 184:])
    want = _continue(model, to_cache(_copy(kv), model.config), texts[0][:, 184:])
    assert torch.allclose(logits, want, atol=0.05 * want.abs().max().item())
    # Context positions 80..183: 104 tokens in full layers, the 95 kept in sliding ones.
    chunk = [(k[:, :, -104:], v[:, :, -104:]) for k, v in kv]
    part = cachegen.decode(cachegen.encode(chunk, level=20, profile=prof, position=80))
    for (k, v), (k2, v2) in zip(chunk, part, strict=True):
        assert k2.shape == k.shape and v2.shape == v.shape
        assert (k2 - k).abs().max() < 0.2 * k.abs().max() and (v2 - v).abs().max() < v.abs().max()


def test_calibrate_resumes_after_a_failure(
    _cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measurements are kept as they are made: a run that fails after some passes is resumed by
    the next, which runs only the missing passes and gives the profile of an uninterrupted run;
    a bar of passes goes to stderr."""
    import cachegen

    model = tiny_qwen2(SLIDING, window=96, positions=256)
    texts = _texts(200, (7, 8))
    calls = {"n": 0, "fail_at": 0}

    def count(*_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("interrupted")

    model.register_forward_hook(count)
    options = {"name": "tiny", "continuation": 16, "key_bands": 2}
    want = cachegen.calibrate(model, texts, **options, resume=False, progress=False)
    full, calls["n"] = calls["n"], 0
    assert not _cache_dir.exists() and capsys.readouterr().err == ""
    # Per text: the attention pass, 4 layers x K/V x 2 heads, 2 key bands.
    passes = 2 * (1 + 4 * 2 * 2 + 2)
    # Shape probe; per text 2 prefills, the reference and its layer replay check.
    assert full == 1 + 2 * (5 + passes // 2 - 1)

    # Forwards: 1 shape probe, 2-3 the attention pass (stored), 4 prefill, 5 reference, 6 the
    # replay check, 7-10 four sensitivity passes (stored), 11 fails.
    calls["fail_at"] = 11
    with pytest.raises(RuntimeError, match="interrupted"):
        cachegen.calibrate(model, texts, **options)
    assert len(list((_cache_dir / "calibrate").iterdir())) == 1
    calls.update(n=0, fail_at=0)
    capsys.readouterr()
    again = cachegen.calibrate(model, texts, **options)
    # The attention pass's 2 forwards and the 4 stored passes are not run again.
    assert calls["n"] == full - 6
    assert again == want
    assert f"{passes}/{passes}" in capsys.readouterr().err
    assert list((_cache_dir / "calibrate").iterdir()) == []  # removed once done


def test_run_digest_follows_weights_texts_and_settings() -> None:
    from cachegen.measurements import run_digest

    model = tiny_qwen2(["full_attention"] * 2)
    texts = _texts(40, (1,))
    base = run_digest(model, texts, {"continuation": 16})
    assert base == run_digest(model, [t.clone() for t in texts], {"continuation": 16})
    assert base != run_digest(model, _texts(40, (2,)), {"continuation": 16})
    assert base != run_digest(model, texts, {"continuation": 8})
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert base != run_digest(model, texts, {"continuation": 16})


@pytest.mark.parametrize("layer_types", [SLIDING, ["sliding_attention"] * 4])
def test_sensitivity_reference_matches_one_uncached_pass(layer_types: list[str]) -> None:
    """The continuation every sensitivity pass is compared with runs on the rebuilt prefix
    cache at the true positions, also when every layer slides (no layer tells the length)."""
    from cachegen.calibrate import MEASURE_CONFIG, _Coded

    model = tiny_qwen2(layer_types, window=96, positions=256)
    text = _texts(200, (9,))[0]
    ref = _Coded.of(model, text, MEASURE_CONFIG, 16, torch).ref
    with torch.inference_mode():
        whole = torch.log_softmax(model(text).logits[0, 184:].double(), dim=-1)
    torch.testing.assert_close(ref, whole, atol=1e-5, rtol=1e-5)


def test_calibrate_measures_again_what_a_damaged_checkpoint_lost(_cache_dir: Path) -> None:
    """Damaged saved measurements (a truncated file) are measured again, not trusted."""
    import cachegen

    model = tiny_qwen2(["full_attention"] * 2, positions=256)
    texts = _texts(120, (3,))
    options = {"name": "tiny", "continuation": 16, "key_bands": 2, "progress": False}
    calls = {"n": 0}

    def count(*_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 12:  # after the attention pass and a few sensitivity passes
            raise RuntimeError("interrupted")

    hook = model.register_forward_hook(count)
    with pytest.raises(RuntimeError):
        cachegen.calibrate(model, texts, **options)
    hook.remove()
    (folder,) = (_cache_dir / "calibrate").iterdir()
    for path in folder.iterdir():
        path.write_bytes(path.read_bytes()[:10])
    again = cachegen.calibrate(model, texts, **options)
    assert again == cachegen.calibrate(model, texts, **options, resume=False)
