"""Hostile blobs: truncated, bit-flipped, random, and mutated-then-resealed (valid checksum, bad
fields) inputs raise FormatError only: never a crash, a hang or an oversized allocation."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from blobcraft import decode_or_format_error, reseal
from kvgen import synthetic_kv

import cachegen
from cachegen import FormatError

KV = synthetic_kv(2, 70, 2, 16, layout="pairs")


@pytest.fixture(scope="module")
def blob() -> bytes:
    """Every section present: step codes, tables, several segments, a raw (sink) row."""
    config = cachegen.CodecConfig(segment_symbols=1024, max_tables=4, sink_tokens=1)
    return cachegen.encode(KV, config=config)


def test_valid_blob_is_accepted(blob):
    assert cachegen.inspect(blob).version == 4  # the lowest version that holds it
    assert cachegen.entropy_stats(blob)["symbols"] == cachegen.inspect(blob).elements


def test_every_truncation_is_rejected(blob):
    for n in range(len(blob)):
        with pytest.raises(FormatError):
            cachegen.decode(blob[:n])


def test_bit_flips_are_rejected(blob):
    rng = np.random.default_rng(1)
    for _ in range(2000):
        b = bytearray(blob)
        b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
        with pytest.raises(FormatError):
            cachegen.decode(bytes(b))


def test_random_bytes_are_rejected():
    rng = np.random.default_rng(2)
    for _ in range(1000):
        data = rng.integers(0, 256, size=int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        if rng.random() < 0.5:
            data = b"CGKV\x01\x00" + data
        with pytest.raises(FormatError):
            cachegen.decode(data)


def test_resealed_mutations_never_crash(blob, cpu_path):
    """Byte mutations with a valid checksum: decode may succeed or raise FormatError only."""
    rng = np.random.default_rng(3)
    header_and_side = cachegen.inspect(blob).total_bytes - cachegen.inspect(blob).payload_bytes
    for i in range(3000):
        b = bytearray(blob)
        # Mostly the header, descriptors and tables, where every field is a potential hazard.
        hi = header_and_side if i % 4 else len(b) - 4
        for _ in range(int(rng.integers(1, 4))):
            b[rng.integers(4, hi)] = int(rng.integers(256))
        decode_or_format_error(reseal(b))


def test_resealed_field_extremes_are_rejected(blob):
    """Header/descriptor fields set to extreme values (counts, offsets, shapes), checksum
    valid: every one is caught by the field checks."""
    for offset in [16, 20, 21, 23, 24, 28, 32, 40, 48, 64, 68, 70, 72, 76, 79, 84, 92, 100]:
        for value in (0, 0xFF, 0xFFFF, 0xFFFFFFFF):
            b = bytearray(blob)
            b[offset : offset + 4] = struct.pack("<I", value)
            if bytes(b) == blob:
                continue
            with pytest.raises(FormatError):
                cachegen.decode(reseal(b), framework="numpy", max_output_bytes=1 << 24)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (0, "unsupported format version 0"),
        (cachegen.FORMAT_VERSION + 1, f"unsupported format version {cachegen.FORMAT_VERSION + 1}"),
        (1, "scale codes in a version 1"),  # version 1 had no step codes
        (2, "raw rows in a version 2"),  # version 2 had no raw rows
    ],
)
def test_version_field_is_checked(blob, version, message):
    b = bytearray(blob)
    b[4:6] = struct.pack("<H", version)
    with pytest.raises(FormatError, match=message):
        cachegen.inspect(reseal(b))


@pytest.mark.parametrize("qflags", [8, 16, 1 | 16, 32, 64, 128])
def test_scale_code_flags_need_their_scales(blob, qflags):
    """Group 0's qflags (descriptor byte 13) claiming codes, raw rows or an overflow list for
    scales it lacks or in a version before it, or unknown."""
    b = bytearray(blob)
    b[64 + 13] = qflags
    match = "scale codes without|raw rows without|overflow list in a version|unknown quantizer"
    with pytest.raises(FormatError, match=match):
        cachegen.inspect(reseal(b))


def raw_count_offset(blob: bytes) -> int:
    """Where group 0's raw row count sits: just before its sink row's fp16 bytes."""
    row = np.ascontiguousarray(KV[0][0][0, :, 0, :]).astype(np.float16).tobytes()
    at = blob.find(struct.pack("<I", 1) + row)
    assert at > 0
    return at


@pytest.mark.parametrize("count", [0, 2, 70, 71, 0xFFFFFFFF])
def test_bad_raw_row_counts_are_rejected(blob, count):
    """0 or more rows than tokens: out of range; 2 or 70: more bytes than the side data has."""
    b = bytearray(blob)
    struct.pack_into("<I", b, raw_count_offset(blob), count)
    with pytest.raises(FormatError, match="raw row|truncated|trailing|table"):
        cachegen.decode(reseal(b), framework="numpy")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({2: 16}, "Rice parameter"),  # k beyond 15
        ({2: 15}, "scale codes"),  # 16 bits a code: truncated, or off the grid
        ({0: 0xFF, 1: 0x7F}, "out of range"),  # center 32767: every code off the grid
        ({2: 0, **{i: 0xFF for i in range(3, 120)}}, "scale codes"),  # endless unary run
    ],
)
def test_corrupt_step_codes_are_rejected(blob, patch, message):
    """The first group's token step codes (center i16, Rice k u8, bits), checksum valid; the
    blob (token-step quantizers) carries them."""
    side = struct.unpack_from("<Q", blob, 32)[0]
    b = bytearray(blob)
    for offset, value in patch.items():
        b[side + offset] = value
    with pytest.raises(FormatError, match=message):
        cachegen.decode(reseal(b), framework="numpy")


def test_huge_declared_output_is_refused_before_allocation():
    kv = np.zeros((1, 2, 4096, 8, 128), np.float16)
    blob = cachegen.encode(kv)
    assert len(blob) < 40_000
    with pytest.raises(FormatError, match="max_output_bytes"):
        cachegen.decode(blob, max_output_bytes=1 << 20)
    assert cachegen.decode(blob).shape == kv.shape


@pytest.mark.parametrize("bad", [None, 3, "CGKV", [1, 2]])
def test_non_bytes_blob_is_a_type_error(bad):
    with pytest.raises(TypeError):
        cachegen.decode(bad)
