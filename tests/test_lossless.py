"""The lossless level: bit-exact round trips of fp16, bf16 and fp32 caches (plain, strided and
paged), its refusals (NaN/Inf, another output dtype, a quantization stage), and hostile lossless
blobs, which raise FormatError only."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from blobcraft import decode_or_format_error, reseal
from exact import bits
from kvgen import synthetic_kv

import cachegen
from cachegen import FormatError, paged

LOSSLESS = cachegen.CodecConfig.lossless()


def special_values(dtype: torch.dtype) -> torch.Tensor:
    """Every bit pattern class: zeros of both signs, subnormals, the extremes, and noise."""
    info = torch.finfo(dtype)
    edge = [0.0, -0.0, info.tiny, -info.tiny, info.smallest_normal / 4, info.max, -info.max]
    noise = torch.randn(2 * 2 * 33 * 2 * 8 - len(edge), generator=torch.Generator().manual_seed(1))
    return torch.cat([torch.tensor(edge), noise * 3]).to(dtype).reshape(2, 2, 33, 2, 8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_round_trip_is_bit_exact(dtype):
    kv = special_values(dtype)
    blob = cachegen.encode(kv, level=cachegen.LOSSLESS)
    info = cachegen.inspect(blob)
    assert info.version == 4 and info.level == cachegen.LOSSLESS
    assert {g.quantizer for g in info.keys + info.values} == {"lossless"}
    assert np.array_equal(bits(cachegen.decode(blob)), bits(kv))
    assert cachegen.entropy_stats(blob)["symbols"] == info.elements * kv.element_size()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_strided_pairs_round_trip(dtype):
    kv = synthetic_kv(3, 70, 2, 16, dtype, layout="pairs")
    strided = [(k.transpose(0, 2, 1, 3).copy().transpose(0, 2, 1, 3), v) for k, v in kv]
    blob = cachegen.encode(strided, config=LOSSLESS)
    assert blob == cachegen.encode(kv, config=LOSSLESS)
    for (k, v), (k2, v2) in zip(kv, cachegen.decode(blob), strict=True):
        assert np.array_equal(bits(k), bits(k2)) and np.array_equal(bits(v), bits(v2))


def test_level_and_config():
    assert cachegen.CodecConfig.from_level(cachegen.LOSSLESS) == LOSSLESS
    assert cachegen.LOSSLESS > max(cachegen.LEVELS) and cachegen.LOSSLESS not in cachegen.LEVELS
    with pytest.raises(ValueError, match="LOSSLESS"):
        cachegen.CodecConfig.from_level(99)


def test_refusals():
    kv = synthetic_kv(2, 20, 2, 8)
    for bad in (np.nan, np.inf, -np.inf):
        x = kv.copy()
        x[1, 0, 3, 1, 2] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            cachegen.encode(x, config=LOSSLESS)
    blob = cachegen.encode(kv, config=LOSSLESS)
    with pytest.raises(ValueError, match="own dtype"):
        cachegen.decode(blob, dtype="float32")
    with pytest.raises(ValueError, match="no quantization stage"):
        cachegen.quantize(kv, config=LOSSLESS)


@pytest.mark.parametrize("layout", sorted(paged.LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_paged_round_trip(layout, dtype):
    blocks, heads, block, dim, tokens = 9, 2, 16, 8, 4 * 16 + 3
    shape = (blocks, block, heads, 2 * dim) if layout == "flash-nhd" else None
    g = torch.Generator().manual_seed(2)
    caches = []
    for _ in range(3):
        x = torch.randn(shape or (blocks, heads, block, 2 * dim), generator=g).to(dtype)
        caches.append(x.permute(0, 2, 1, 3) if shape else x)
    ids = [7, 2, 5, 0, 8]
    blob = paged.encode_paged(caches, layout, ids, tokens, level=cachegen.LOSSLESS)
    out = [torch.zeros_like(c) for c in caches]
    paged.decode_paged(blob, out, layout, ids)
    mirror = paged.paged_views(out, layout, ids, tokens)
    original = paged.paged_views(caches, layout, ids, tokens)
    for layer in range(3):
        assert np.array_equal(bits(mirror.layer_keys(layer)), bits(original.layer_keys(layer)))
    # Decoding again through the contiguous path gives the same values bit for bit.
    again = paged.encode_paged(out, layout, ids, tokens, level=cachegen.LOSSLESS)
    assert again == blob


@pytest.fixture(scope="module")
def blob() -> bytes:
    """Several segments and tables in every group."""
    kv = synthetic_kv(2, 70, 2, 16, layout="pairs")
    config = cachegen.CodecConfig(
        "lossless", "lossless", 1.0, 1.0, max_tables=4, segment_symbols=1024
    )
    return cachegen.encode(kv, config=config)


def test_hostile_truncations_and_flips(blob):
    for n in range(0, len(blob), 7):
        with pytest.raises(FormatError):
            cachegen.decode(blob[:n])
    rng = np.random.default_rng(4)
    for _ in range(500):
        b = bytearray(blob)
        b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
        with pytest.raises(FormatError):
            cachegen.decode(bytes(b))


def test_hostile_resealed_mutations(blob):
    rng = np.random.default_rng(5)
    info = cachegen.inspect(blob)
    head = info.total_bytes - info.payload_bytes
    for i in range(1500):
        b = bytearray(blob)
        hi = head if i % 4 else len(b) - 4
        for _ in range(int(rng.integers(1, 4))):
            b[rng.integers(4, hi)] = int(rng.integers(256))
        decode_or_format_error(reseal(b))


def test_lossless_needs_version_4_and_no_flags(blob):
    b = bytearray(blob)
    b[4:6] = struct.pack("<H", 3)
    with pytest.raises(FormatError, match="lossless group in a version 3"):
        cachegen.inspect(reseal(b))
    b = bytearray(blob)
    b[64 + 13] = 1  # group 0's quantizer flags
    with pytest.raises(FormatError, match="lossless group with quantizer flags"):
        cachegen.inspect(reseal(b))


def test_full_alphabet_tables_only_in_lossless_groups():
    """Symbol index 0 (byte 0x80) occurs in a lossless table; in a quantized group's table it
    is invalid: the same side data under a lossy quantizer id fails on the table."""
    kv = synthetic_kv(1, 40, 2, 16)
    one_table = cachegen.CodecConfig("lossless", "lossless", 1.0, 1.0, max_tables=1)
    b = bytearray(cachegen.encode(kv, config=one_table))
    cachegen.inspect(bytes(b))
    b[64 + 12] = 2  # group 0's quantizer id: channel step (no flags, one table, no map)
    with pytest.raises(FormatError, match="symbol range invalid"):
        cachegen.inspect(reseal(b))
