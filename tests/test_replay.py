"""cachegen.replay: calibration passes that start at the first changed layer measure what full
passes measure, on SmolLM2 and on tiny random models with sliding-window layers."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiny_lm import sharpened, tiny_qwen2  # noqa: E402

from cachegen.calibrate import MEASURE_CONFIG, _Coded  # noqa: E402
from cachegen.replay import LayerReplay, decoder_layers  # noqa: E402


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEGEN_CACHE_DIR", str(tmp_path / "cache"))


def _text(n: int, seed: int, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def _parts(layers: int, heads: int, head_dim: int) -> list[dict]:
    """One head of a K or V group per layer, and a key channel set across every layer."""
    one = [{(layer, layer % 2): (slice(None), layer % heads)} for layer in range(layers)]
    band = torch.arange(head_dim) % 4 == 1
    return [*one, {(layer, 0): (..., band) for layer in range(layers)}]


def _same_passes(model: transformers.PreTrainedModel, text: torch.Tensor, cont: int) -> None:
    fast = _Coded.of(model, text, MEASURE_CONFIG, cont, torch)
    full = _Coded.of(model, text, MEASURE_CONFIG, cont, torch, replay=False)
    assert fast.replay.outputs and not full.replay.outputs
    _, heads, _, head_dim = fast.kv[0][0].shape
    for parts in _parts(len(fast.kv), heads, head_dim):
        kl = fast.kl(parts)
        assert kl == full.kl(parts) and kl > 1e-9


@pytest.mark.slow
def test_replayed_passes_equal_full_passes_on_smollm2() -> None:
    from lib.kvquality import load_document, load_model

    lm = load_model()
    ids = lm.tokenizer(load_document("GPL-2").text, return_tensors="pt")["input_ids"][:, :112]
    fast = _Coded.of(lm.model, ids, MEASURE_CONFIG, 16, torch)
    full = _Coded.of(lm.model, ids, MEASURE_CONFIG, 16, torch, replay=False)
    assert len(fast.replay.outputs) == 30 and torch.equal(fast.ref, full.ref)
    band = torch.zeros(64, dtype=torch.bool)
    band[8:24] = True
    for parts in (
        {(0, 0): (slice(None), 1)},
        {(14, 1): (slice(None), 2)},
        {(29, 0): (slice(None), 0)},
        {(layer, 0): (..., band) for layer in range(30)},
    ):
        kl = fast.kl(parts)
        assert kl == full.kl(parts) and kl > 1e-9


@pytest.mark.parametrize(
    "layer_types", [["full_attention"] * 4, ["sliding_attention", "full_attention"] * 2]
)
def test_replayed_passes_equal_full_passes_on_tiny_models(layer_types: list[str]) -> None:
    """Sliding-window layers too, with a prefix longer than their window."""
    _same_passes(sharpened(tiny_qwen2(layer_types, window=24)), _text(110, 3), 16)


def test_replay_skips_the_layers_below_the_first_changed_one() -> None:
    model = sharpened(tiny_qwen2(["full_attention"] * 4, window=24))
    ran: list[int] = []
    for i, layer in enumerate(model.model.layers):
        layer.mlp.register_forward_hook(lambda *_args, i=i: ran.append(i))
    coded = _Coded.of(model, _text(60, 4), MEASURE_CONFIG, 16, torch)
    ran.clear()
    coded.kl({(2, 1): (slice(None), 0)})
    assert ran == [2, 3]
    ran.clear()
    coded.kl({(3, 0): (slice(None), 1), (1, 1): (slice(None), 0)})
    assert ran == [1, 2, 3]
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)  # restored


def test_replay_falls_back_to_full_passes_when_it_does_not_reproduce_the_run() -> None:
    model = sharpened(tiny_qwen2(["full_attention"] * 3, window=24))
    replay = LayerReplay(decoder_layers(model, 3))
    text = _text(20, 5)

    def logits() -> torch.Tensor:
        with torch.inference_mode():
            return model(text).logits

    want = replay.record(logits, lambda a, b: False)
    assert replay.outputs == [] and torch.equal(want, logits())
    with replay.starting_at(3):  # nothing recorded: a full pass
        assert torch.equal(logits(), want)
    kept = replay.record(logits, torch.equal)
    assert len(replay.outputs) == 3 and torch.equal(kept, want)


def test_decoder_layers_not_found_means_no_replay() -> None:
    model = sharpened(tiny_qwen2(["full_attention"] * 2, window=24))
    assert len(decoder_layers(model, 2)) == 2
    assert decoder_layers(model, 3) == []  # not one layer per cache layer
    assert decoder_layers(torch.nn.Linear(2, 2), 2) == []


def test_calibrate_with_and_without_replay_gives_the_same_profile() -> None:
    import cachegen

    model = sharpened(tiny_qwen2(["sliding_attention", "full_attention"] * 2, window=24))
    texts = [_text(110, s) for s in (6, 7)]
    options = {"name": "tiny", "continuation": 16, "progress": False, "resume": False}
    assert cachegen.calibrate(model, texts, **options) == cachegen.calibrate(
        model, texts, **options, replay=False
    )
