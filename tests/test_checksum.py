"""The blob checksum (CRC32C): parallel chunks combine to the reference value, and a parse that
defers the check (as a GPU decode does) still checks before a host decode."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from blobcraft import crc32c
from kvgen import synthetic_kv

import cachegen


def test_parallel_crc_of_large_blob_matches_reference():
    """Blobs over 2 MiB are checksummed in parallel chunks combined with crc_combine."""
    kv = synthetic_kv(2, 5000, 4, 64)
    blob = cachegen.encode(kv, level=max(cachegen.LEVELS))
    assert len(blob) > 2 << 20
    assert struct.unpack("<I", blob[-4:])[0] == crc32c(blob[:-4])


def test_deferred_checksum_is_checked_before_a_host_decode():
    """A blob parsed without its CRC (as a GPU decode does) is still checked on the host path,
    and a structural error in a corrupted blob reports the checksum, as a verifying parse does."""
    kv = synthetic_kv(2, 100, 2, 16)
    blob = bytearray(cachegen.encode(kv))
    blob[len(blob) // 2] ^= 0x5A
    parsed = cachegen._core.Blob(bytes(blob), False)
    out = np.empty_like(kv)
    with pytest.raises(cachegen.FormatError, match="checksum"):
        parsed.decode_into([g.native() for g in cachegen.tensors.views(out).groups])
    header_hit = bytearray(cachegen.encode(kv))
    header_hit[70] ^= 0xFF  # a group descriptor
    with pytest.raises(cachegen.FormatError, match="checksum"):
        cachegen._core.Blob(bytes(header_hit), False)
