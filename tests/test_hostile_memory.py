"""Memory bounded by input: CRC-valid blobs written from the spec (tests/support/blobcraft.py) with
extreme counts of layers, channels, tables, segments, tokens and raw rows. Each is inspected and
decoded in a fresh process; the peak RSS growth over the process's baseline must stay under
C x (blob bytes + output bytes) + FIXED, where the output is what decode returned (0 when it
refused). C is the parser's metadata budget per blob byte (src/format.cpp, kMetaPerBlobByte);
FIXED covers the parser's fixed allowance (4 MiB), the per-thread decode scratch and Python's
own objects for the blob's facts."""

from __future__ import annotations

from pathlib import Path

import blobcraft as bc
import pytest
from memory_probe import BLOBS, FIXED, C, measure


@pytest.fixture(scope="module")
def blob_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile_memory")
    files = {}
    for i, (name, (groups, _, _)) in enumerate(BLOBS.items()):
        files[name] = root / f"{i}.cgkv"
        files[name].write_bytes(bc.blob(groups()))
    return files


def check(blob_files: dict[str, Path], name: str, op: str, expected: str) -> None:
    path = blob_files[name]
    m = measure(path, op)
    assert m["result"].startswith(expected), m["result"]
    bound = C * (path.stat().st_size + m["out_bytes"]) + FIXED
    assert m["growth"] <= bound, (name, op, m, bound)


@pytest.mark.parametrize("name", list(BLOBS))
def test_inspect_memory_is_bounded_by_the_blob(blob_files, name):
    check(blob_files, name, "inspect", BLOBS[name][1])


@pytest.mark.parametrize("name", list(BLOBS))
def test_decode_memory_is_bounded_by_blob_and_output(blob_files, name):
    check(blob_files, name, "decode", BLOBS[name][2])


def test_entropy_stats_memory_is_bounded_by_the_blob(blob_files):
    """Counting symbols per channel cost 1 KiB per channel: 256 MiB for this 2 KB blob."""
    check(blob_files, "1 layer x 2^18 channels x 255 tables", "stats", "ok")
