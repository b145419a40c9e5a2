"""The transformers adapter on the real model (SmolLM2): a streamed cache the model generates
from, text chunks recomputed on top of loaded KV chunks."""

from __future__ import annotations

import numpy as np
import pytest

import cachegen
from cachegen.context import save_context
from cachegen.store import MemoryStore
from cachegen.stream import TEXT, CostModel, HFEngine, Loader
from cachegen.stream.sim import fixed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("transformers")
    from cachegen.demo import load_model

    return load_model()


def test_loaded_cache_matches_prefill(model) -> None:
    import torch

    from cachegen.hf import from_cache

    lm, tok = model
    text = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()
    ids = tok(text, return_tensors="pt")["input_ids"][0, :192]
    with torch.inference_mode():
        out = lm(ids[None], use_cache=True)
    kv = [(k.clone(), v.clone()) for k, v in from_cache(out.cache)]
    store = MemoryStore()
    save_context(store, "smol", ids.numpy(), kv, levels=(9,), chunk_tokens=64)
    engine = HFEngine(lm, name="smol")
    costs = CostModel(1e8, 500.0)
    probe = ids[None, :1] * 0 + int(ids[-1])

    def next_logits(cache):
        with torch.inference_mode():
            return lm(probe, cache=cache, use_cache=True).logits[0, -1].double()

    ref = next_logits(_copy(kv, lm))
    # Alternate text and KV: text chunks are recomputed on top of decoded KV chunks.
    plan = iter([TEXT, 9, TEXT])
    loader = Loader(store, engine, costs, 10.0, policy=lambda step: next(plan))
    result = loader.load("smol", ids.numpy(), chunk_tokens=64)
    assert result.report.choices == [TEXT, 9, TEXT]
    assert result.cache.get_seq_length() == 192
    got = next_logits(result.cache)
    kl = float((ref.softmax(-1) * (ref.log_softmax(-1) - got.log_softmax(-1))).sum())
    assert kl < 0.05 and int(got.argmax()) == int(ref.argmax())

    all_text = Loader(store, engine, costs, 10.0, policy=fixed(TEXT)).load(
        "smol", ids.numpy(), chunk_tokens=64
    )
    np.testing.assert_allclose(next_logits(all_text.cache), ref, atol=1e-3)


def _copy(kv, lm):
    from cachegen.hf import to_cache

    return to_cache([(k.clone(), v.clone()) for k, v in kv], lm.config)


def test_bad_blob_leaves_the_cache_unchanged(model) -> None:
    lm, _ = model
    engine = HFEngine(lm, name="smol")
    engine.begin()
    wrong = np.zeros((2, 2, 8, 3, 64), np.float16)  # 2 layers, the model has 30
    with pytest.raises(ValueError):
        engine.append_kv(cachegen.encode(wrong, level=1))
    with pytest.raises(cachegen.FormatError):
        engine.append_kv(b"not a blob")
    assert engine.finish().get_seq_length() == 0


def test_prefill_calibrated_at_positions(model) -> None:
    lm, _ = model
    engine = HFEngine(lm, name="smol")
    assert engine.recompute == "chunk"
    speeds = engine.measure_prefill([512, 0])  # any order; each at its own position
    assert len(speeds) == 2 and all(s > 0 for s in speeds)
    costs = CostModel.fit(1e8, [512, 0], speeds)
    assert costs.recompute_time(256, 512) >= costs.recompute_time(256, 0)
    with pytest.raises(RuntimeError):
        engine.finish()  # the calibration cache is not left behind


def test_transform_coded_context_streams_with_its_transform(model) -> None:
    """A context saved with a per-model transform loads through the engine when it is given the
    store's transforms; without them each KV chunk fails to load and is recomputed."""
    import torch

    from cachegen.hf import from_cache
    from cachegen.transform import Rope, learn_transform, stored_transforms

    lm, tok = model

    def prefill(path: str, n: int):
        ids = tok(open(path, encoding="utf-8").read(), return_tensors="pt")["input_ids"][0, :n]
        with torch.inference_mode():
            out = lm(ids[None], use_cache=True)
        return ids, [(k.clone(), v.clone()) for k, v in from_cache(out.cache)]

    _, fit = prefill("/usr/share/common-licenses/GPL-2", 256)
    t = learn_transform([fit], Rope.from_config(lm.config))
    ids, kv = prefill("/usr/share/common-licenses/GPL-3", 128)
    store = MemoryStore()
    save_context(store, "smol", ids.numpy(), kv, levels=(20,), chunk_tokens=64, transform=t)
    costs = CostModel(1e8, 500.0)
    policy = fixed(20)
    probe = ids[None, :1] * 0 + int(ids[-1])

    def next_logits(cache):
        with torch.inference_mode():
            return lm(probe, cache=cache, use_cache=True).logits[0, -1].double()

    ref = next_logits(_copy(kv, lm))
    engine = HFEngine(lm, name="smol", transforms=stored_transforms(store))
    result = Loader(store, engine, costs, 10.0, policy=policy).load(
        "smol", ids.numpy(), chunk_tokens=64
    )
    assert result.report.choices == [20, 20]
    got = next_logits(result.cache)
    kl = float((ref.softmax(-1) * (ref.log_softmax(-1) - got.log_softmax(-1))).sum())
    assert kl < 0.05
    bare = Loader(store, HFEngine(lm, name="smol"), costs, 10.0, policy=policy).load(
        "smol", ids.numpy(), chunk_tokens=64
    )
    assert bare.report.choices == [TEXT, TEXT] and bare.report.fallbacks == 2
    assert "transform" in bare.report.chunks[0].fallback
    assert bare.cache.get_seq_length() == 128
