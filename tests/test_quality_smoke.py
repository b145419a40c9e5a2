"""The quality harness (bench/lib/kvquality): baselines and metrics, then a smoke run on SmolLM2."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lib.kvquality import compare, load_documents, make_methods, run_quality  # noqa: E402
from lib.kvquality.metrics import log_probs  # noqa: E402

# Odd sizes: int4 packs two codes a byte and must pad; 3 heads x 7 dims per token row.
SHAPES = [(1, 3, 5, 7), (1, 3, 9, 7)]


def _kv() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(s) * 3, torch.randn(s)) for s in SHAPES]


def _elements(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(k.numel() + v.numel() for k, v in kv)


@pytest.mark.parametrize("key", ["fp32", "fp16", "zstd3"])
def test_lossless_baselines(key: str) -> None:
    (method,) = make_methods([key])
    kv = _kv()
    out = method.decode(method.encode(kv), kv)
    dtype = torch.float32 if key == "fp32" else torch.float16
    for (k, v), (k2, v2) in zip(kv, out, strict=True):
        assert torch.equal(k2, k.to(dtype).float()) and torch.equal(v2, v.to(dtype).float())


@pytest.mark.parametrize("bits", [8, 4])
def test_int_baselines_error_and_size(bits: int) -> None:
    (method,) = make_methods([f"int{bits}"])
    kv = _kv()
    blob = method.encode(kv)
    tokens = sum(2 * s[2] for s in SHAPES)
    code_bytes = sum(2 * ((s[1] * s[2] * s[3] * bits + 7) // 8) for s in SHAPES)
    assert len(blob) == code_bytes + 2 * tokens  # codes + one fp16 scale per token
    qmax = 2 ** (bits - 1) - 1
    for (k, v), (k2, v2) in zip(kv, method.decode(blob, kv), strict=True):
        for x, y in ((k, k2), (v, v2)):
            # Per-token rows: error at most half a step, plus fp16 rounding of the scale.
            step = x.abs().amax(dim=(1, 3), keepdim=True) / qmax
            assert ((y - x).abs() <= step * 0.5 * 1.002 + 1e-6).all()


def test_metrics_of_identical_runs() -> None:
    logits = torch.randn(6, 50)
    m = compare(log_probs(logits), logits.clone(), torch.arange(6))
    assert m.kl_sum == 0.0 and m.top1_agree == 6 and m.positions == 6


@pytest.mark.slow
def test_smoke_default_level_on_smollm2() -> None:
    methods = make_methods(["fp32", "cg", "int4"])
    docs = load_documents(("Apache-2.0",))
    exact, default, int4 = run_quality(methods, docs, prefix=256, cont=128)
    # The uncompressed round trip reproduces the reference run bit for bit.
    assert exact.kl_mean == 0.0 and exact.top1_agreement == 1.0
    assert exact.ppl == exact.ppl_ref
    # The default level (its pooled figures: bench/results/quality.md) must beat plain int4 in
    # both size and KL, with margin left for ladder retuning.
    assert default.bits_per_element < int4.bits_per_element
    assert default.kl_mean < min(0.05, int4.kl_mean)
    assert default.top1_agreement > 0.85
