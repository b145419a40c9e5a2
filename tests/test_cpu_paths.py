"""CPU code paths: CACHEGEN_CPU_PATH forces each one the CPU has, build_info reports the one in
effect, and every path decodes every output kind to the scalar path's bits and encodes to its
bytes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from kvgen import synthetic_kv

import cachegen
from cachegen import _core
from cachegen.importance import pair_magnitudes
from cachegen.tensors import array_group


def test_build_info_reports_the_widest_path_by_default(monkeypatch):
    monkeypatch.delenv("CACHEGEN_CPU_PATH", raising=False)
    info = cachegen.build_info()
    assert info["cpu_paths"][0] == "scalar"
    assert info["cpu_decode"] == info["cpu_paths"][-1]


def test_environment_forces_each_path(cpu_path):
    assert cachegen.build_info()["cpu_decode"] == cpu_path


@pytest.mark.parametrize(("value", "match"), [("sse9", "unknown path"), ("AVX2", "unknown path")])
def test_unknown_path_is_a_clear_error(monkeypatch, value, match):
    blob = cachegen.encode(synthetic_kv(1, 8, 1, 8))
    monkeypatch.setenv("CACHEGEN_CPU_PATH", value)
    with pytest.raises(ValueError, match=match):
        cachegen.decode(blob)


def test_missing_path_is_a_clear_error(monkeypatch):
    missing = [p for p in ("avx2", "avx512") if p not in cachegen.build_info()["cpu_paths"]]
    if not missing:
        pytest.skip("this CPU has every path")
    blob = cachegen.encode(synthetic_kv(1, 8, 1, 8))
    monkeypatch.setenv("CACHEGEN_CPU_PATH", missing[0])
    with pytest.raises(ValueError, match="lacks it"):
        cachegen.decode(blob)


def decode_with(monkeypatch, path: str, blob: bytes, **kwargs):
    monkeypatch.setenv("CACHEGEN_CPU_PATH", path)
    return cachegen.decode(blob, **kwargs)


# Per-token steps with sink rows (the levels), per-channel and per-layer steps, the CacheGen
# reference; small segments so that tiles and segments end mid-step.
CONFIGS = [
    cachegen.CodecConfig.from_level(1),
    cachegen.CodecConfig.from_level(cachegen.DEFAULT_LEVEL),
    cachegen.CodecConfig(key_quantizer="channel", value_quantizer="layer", segment_symbols=4000),
    cachegen.CodecConfig.cachegen_reference(2),
]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("shape", [(2, 300, 3, 64), (1, 77, 1, 5), (1, 40, 2, 8)])
def test_every_path_decodes_the_scalar_bits(monkeypatch, cpu_path, config, dtype, shape):
    kv = synthetic_kv(*shape)
    blob = cachegen.encode(kv, config=config)
    want = decode_with(monkeypatch, "scalar", blob, framework="torch", dtype=dtype)
    got = decode_with(monkeypatch, cpu_path, blob, framework="torch", dtype=dtype)
    assert torch.equal(bits(got), bits(want))


def test_strided_output_matches_dense(monkeypatch, cpu_path):
    """A token-strided output (not dense rows) takes the unfused path and gets the same bits."""
    kv = synthetic_kv(2, 120, 2, 16)
    blob = cachegen.encode(kv)
    dense = decode_with(monkeypatch, cpu_path, blob)
    backing = np.zeros(kv.shape[:-1] + (kv.shape[-1] * 2,), kv.dtype)
    monkeypatch.setenv("CACHEGEN_CPU_PATH", cpu_path)
    cachegen.decode(blob, out=backing[..., ::2])
    np.testing.assert_array_equal(backing[..., ::2], dense)
    assert not backing[..., 1::2].any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("offset", [0, 1], ids=["whole-lines", "unaligned"])
def test_heads_major_output_matches_dense(monkeypatch, cpu_path, dtype, offset):
    """Heads apart in memory (each head's tokens together, as attention kernels keep them): rows
    go head by head, past the caches where every head's rows are whole aligned lines."""
    kv = synthetic_kv(2, 300, 3, 64)
    blob = cachegen.encode(kv)
    want = decode_with(monkeypatch, "scalar", blob, framework="torch", dtype=dtype)
    shape = (2, 2, 3, 300, 64)
    backing = torch.zeros(int(np.prod(shape)) + offset, dtype=dtype)
    out = backing[offset:].view(shape).permute(0, 1, 3, 2, 4)
    got = decode_with(monkeypatch, cpu_path, blob, out=out)
    assert torch.equal(bits(got), bits(want))
    assert not backing[:offset].any()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("shape", [(2, 300, 3, 64), (1, 77, 1, 5), (1, 40, 2, 8)])
def test_every_path_encodes_the_scalar_bytes(monkeypatch, cpu_path, config, shape):
    kv = synthetic_kv(*shape)
    monkeypatch.setenv("CACHEGEN_CPU_PATH", "scalar")
    want = cachegen.encode(kv, config=config)
    monkeypatch.setenv("CACHEGEN_CPU_PATH", cpu_path)
    assert cachegen.encode(kv, config=config) == want


# The encoder's vector kernels on what their fast cases leave out: channel counts that end
# mid-register (100 = 64 + 36 = 3 * 32 + 4), more rows than one block of 8-bit counters, symbols
# far outside the counters' window (the finest level; an extreme outlier channel), many tables.
WIDE = [
    cachegen.CodecConfig.from_level(39),
    dataclasses.replace(cachegen.CodecConfig.from_level(39), max_tables=128),
    cachegen.CodecConfig(key_quantizer="channel", value_quantizer="layer", key_param=0.01),
    cachegen.CodecConfig(key_param=0.004, value_param=0.004, overflow=True, name="overflow"),
]


@pytest.mark.parametrize("config", WIDE, ids=lambda c: c.name)
def test_every_path_encodes_the_scalar_bytes_of_wide_symbols(monkeypatch, cpu_path, config):
    kv = synthetic_kv(1, 700, 5, 20, seed=3)
    kv[0, :, :, 2, 7] *= 300  # symbols up to the quantizer's limit
    monkeypatch.setenv("CACHEGEN_CPU_PATH", "scalar")
    want = cachegen.encode(kv, config=config)
    monkeypatch.setenv("CACHEGEN_CPU_PATH", cpu_path)
    assert cachegen.encode(kv, config=config) == want


@pytest.mark.parametrize("skip", [0, 3, 500])
def test_every_path_gives_the_key_statistics_bits(monkeypatch, cpu_path, skip):
    keys = synthetic_kv(1, 300, 3, 50, seed=4)[0, 0]  # 25 pairs per head: a vector and a tail
    monkeypatch.setenv("CACHEGEN_CPU_PATH", "scalar")
    want = pair_magnitudes(keys, threads=2)
    monkeypatch.setenv("CACHEGEN_CPU_PATH", cpu_path)
    got = pair_magnitudes(keys, threads=2)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # The core's blocked sums (importance.hpp key_pair_square_sums), written out in numpy.
    squares = np.square(want[skip:] if skip < len(want) else want, dtype=np.float64)
    blocks = np.stack([squares[i : i + 256].sum(axis=0) for i in range(0, len(squares), 256)])
    core = np.frombuffer(_core.key_square_sums(array_group(keys).native(), skip, 2), np.float64)
    np.testing.assert_array_equal(core.view(np.uint64), blocks.sum(axis=0).view(np.uint64))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("channel", [0, 9, 99])  # a register's first lane, its middle, the tail
@pytest.mark.parametrize("side", [0, 1])  # keys (with channel scales) and values
def test_every_path_rejects_non_finite_values(cpu_path, bad, channel, side):
    kv = synthetic_kv(1, 50, 5, 20, seed=6)
    kv.reshape(1, 2, 50, 100)[0, side, 30, channel] = bad
    with pytest.raises(ValueError, match="(?i)nan or inf"):
        cachegen.encode(kv)
    with pytest.raises(ValueError, match="(?i)nan or inf"):
        cachegen.encode(kv, config=cachegen.CodecConfig(key_spread=0.0))
