"""Latent (MLA) KV layers through the codec, and the position-unaware chunk coding of the
engine plug-ins (cachegen.latent, cachegen.chunks). MLA-shaped tensors only: no MLA model is
installed here."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from kvgen import synthetic_kv

import cachegen
from cachegen import chunks, latent


def mla_latent(layers: int = 3, tokens: int = 96, dtype: torch.dtype = torch.bfloat16):
    """[layers, tokens, 576] from synthetic K/V rows (real-LLM-like statistics)."""
    kv = synthetic_kv(layers, tokens, 9, 64, dtype="float32")  # [L, 2, T, 9, 64]
    rows = torch.from_numpy(kv).permute(0, 2, 1, 3, 4).reshape(layers, tokens, 2 * 576)
    return rows[..., :576].contiguous().to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_latent_lossless_is_bit_exact(dtype: torch.dtype) -> None:
    x = mla_latent(dtype=dtype)
    blob = latent.encode_latent(x, level=cachegen.LOSSLESS)
    y = latent.decode_latent(blob)
    assert y.dtype == dtype and torch.equal(x.view(torch.int16), y.view(torch.int16))


def test_latent_levels_bound_error_and_code_both_parts_as_keys() -> None:
    x = mla_latent().float()
    errors = []
    for level in (1, 15, max(cachegen.LEVELS)):
        blob = latent.encode_latent(x, level=level)
        info = cachegen.inspect(blob)
        assert [g.head_dim for g in info.keys + info.values] == [512] * 3 + [64] * 3
        assert {g.param for g in info.values} == {g.param for g in info.keys}
        y = latent.decode_latent(blob)
        errors.append(float((y - x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.05


def test_latent_numpy_and_out() -> None:
    x = mla_latent().float().numpy()
    blob = latent.encode_latent(x, level=20, split=448)
    out = np.zeros_like(x)
    assert latent.decode_latent(blob, out=out) is out
    assert np.abs(out - x).max() > 0 and isinstance(latent.decode_latent(blob), np.ndarray)


def test_latent_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[layers, tokens, width\]"):
        latent.encode_latent(torch.zeros(2, 3, 4, 5), level=5)
    with pytest.raises(ValueError, match="width > split=512"):
        latent.encode_latent(torch.zeros(2, 3, 512), level=5)
    kv_blob = cachegen.encode(synthetic_kv(2, 16, 2, 8), level=5)
    with pytest.raises(ValueError, match="not a latent KV cache"):
        latent.decode_latent(kv_blob)
    blob = latent.encode_latent(mla_latent(), level=5)
    with pytest.raises(ValueError, match="out= must be"):
        latent.decode_latent(blob, out=torch.zeros(3, 95, 576, dtype=torch.bfloat16))


def test_chunk_config_assumes_no_position() -> None:
    for level in (1, 15, max(cachegen.LEVELS)):
        config = chunks.chunk_config(level)
        assert config.sink_tokens == 0 and config.recency == 0.0
        assert config.key_param == cachegen.CodecConfig.from_level(level).key_param
    assert chunks.chunk_config(cachegen.LOSSLESS) == cachegen.CodecConfig.lossless()
    assert chunks.parse_level("lossless") == cachegen.LOSSLESS and chunks.parse_level("7") == 7
    with pytest.raises(ValueError):
        chunks.parse_level(0)


def test_chunk_blob_has_no_sink_rows_and_reads_from_a_larger_buffer() -> None:
    kv = torch.from_numpy(synthetic_kv(2, 64, 2, 16, dtype="float32"))
    pairs = [(kv[i, 0].permute(1, 0, 2)[None], kv[i, 1].permute(1, 0, 2)[None]) for i in range(2)]
    codec = chunks.ChunkCodec(level=15)
    blob = codec.encode_pairs(pairs)
    assert all(g.raw_rows == 0 for g in cachegen.inspect(blob).keys)
    assert len(blob) <= chunks.max_blob_bytes(kv.numel() * 4, 4)
    padded = memoryview(blob + bytes(1000))
    assert chunks.blob_length(padded) == len(blob)
    out = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in pairs]
    codec.decode_into(padded, out)
    assert torch.equal(out[0][0], cachegen.decode(blob)[0][0])
    with pytest.raises(cachegen.FormatError, match="header says"):
        chunks.blob_length(memoryview(blob[:-1]))


def test_import_cachegen_imports_no_engine() -> None:
    engines = "('lmcache', 'sglang', 'vllm')"
    code = f"import cachegen, sys; print([m for m in {engines} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
