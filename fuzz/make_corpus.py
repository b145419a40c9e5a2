"""Write the fuzz targets' seed corpora (fuzz/corpus/<target>/, files named by content hash):
small valid blobs of every format version (the golden blobs, fresh encodes of every quantizer,
dtype and layout, lossless, overflow lists, and spec-written blobs from tests/blobcraft.py),
probability tables and step-code streams written from docs/FORMAT.md.

    PYTHONPATH=python python fuzz/make_corpus.py
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the spec-written blobs

import blobcraft as bc  # noqa: E402
from kvgen import synthetic_kv  # noqa: E402

import cachegen  # noqa: E402

MAX_SEED_BYTES = 16384


def encoded_blobs() -> list[bytes]:
    blobs = []
    for dtype in ("float16", "bfloat16", "float32"):
        for layout in ("stacked", "pairs"):
            kv = synthetic_kv(2, 12, 2, 8, dtype=dtype, layout=layout, seed=len(blobs))
            blobs.append(cachegen.encode(kv, level=cachegen.DEFAULT_LEVEL))
            blobs.append(cachegen.encode(kv, config=cachegen.CodecConfig.lossless()))
    kv = synthetic_kv(2, 40, 2, 16, layout="pairs")
    for quantizer, param in (("token", 0.5), ("channel", 0.5), ("layer", 0.5), ("token-absmax", 8)):
        token = quantizer == "token"
        config = cachegen.CodecConfig(
            key_quantizer=quantizer,
            value_quantizer=quantizer,
            key_param=param,
            value_param=param,
            segment_symbols=1024,
            max_tables=4,
            sink_tokens=int(token),
            recency=0.5 if token else 0.0,
        )
        blobs.append(cachegen.encode(kv, config=config))
    blobs.append(cachegen.encode(kv, config=cachegen.CodecConfig.cachegen_reference(2)))
    fine = cachegen.CodecConfig(key_param=0.01, value_param=0.01, overflow=True)
    blobs.append(cachegen.encode(synthetic_kv(1, 20, 1, 16), config=fine))
    return blobs


OVERFLOW = [(1, 2, 300), (4, 0, -200), (4, 3, 32767)]


def crafted_blobs() -> list[bytes]:
    one = struct.pack("<e", 1.0)
    return [
        bc.blob(bc.layers(2, bc.zero_group(5, 2, 8))),
        bc.blob(bc.layers(1, bc.zero_group(9, 1, 4, tables=3, raw_rows=2, raw_value=one))),
        bc.blob(bc.layers(1, bc.zero_group(64, 1, 16, seg_tokens=8))),
        bc.blob([bc.scaled_group(4, 8, struct.pack("<e", 0.5), bc.CHANNEL_OFFSET)] * 2),
        bc.blob([bc.scaled_group(4, 8, struct.pack("<e", 0.5), bc.TOKEN_SCALE)] * 2, layout=0),
        bc.blob(
            bc.layers(1, bc.zero_group(6, 1, 4, raw_rows=1, raw_value=one, overflow=OVERFLOW)),
            version=6,
        ),
    ]


def blob_seeds() -> list[bytes]:
    golden = [p.read_bytes() for p in sorted((ROOT / "tests" / "data").glob("*.cgkv"))]
    return [b for b in golden + encoded_blobs() + crafted_blobs() if len(b) <= MAX_SEED_BYTES]


def exp_golomb_table(freqs: dict[int, int]) -> bytes:
    """A v3 table: lo, n - 1, then Exp-Golomb codes of adaptive order (docs/FORMAT.md)."""
    lo, hi = min(freqs), max(freqs)
    bits, prev = bc.Bits(), 0
    for i in range(lo, hi + 1):
        f = freqs.get(i, 0)
        k = max(prev.bit_length() - 2, 0)
        u = (f >> k) + 1
        m = u.bit_length() - 1
        bits.ones(m)
        bits.zeros(1)
        bits.put(u, m)
        bits.put(f, k)
        prev = f
    return bytes([lo, hi - lo]) + bits.bytes()


def varint_table(freqs: dict[int, int]) -> bytes:
    """A v1/v2 table: lo, n - 1, then LEB128 frequencies."""
    lo, hi = min(freqs), max(freqs)
    return bytes([lo, hi - lo]) + b"".join(bc.varint(freqs.get(i, 0)) for i in range(lo, hi + 1))


def laplace_freqs(width: float, center: int = 128, lo: int = 1) -> dict[int, int]:
    """Frequencies summing to 4096 of a discrete Laplacian, every index in range at least 1."""
    idx = np.arange(max(lo, center - 40), min(256, center + 41))
    p = np.exp(-np.abs(idx - center) / width)
    f = np.maximum(1, np.floor(p / p.sum() * 4096)).astype(int)
    f[np.argmax(f)] += 4096 - f.sum()
    return {int(i): int(v) for i, v in zip(idx, f, strict=True)}


def table_seeds() -> list[bytes]:
    shapes = [{128: 4096}, {0: 4096}, laplace_freqs(0.7), laplace_freqs(3.0), laplace_freqs(9.0)]
    shapes.append(laplace_freqs(2.0, center=40, lo=0))  # a lossless byte plane's spread
    seeds = []
    for mode, write in ((1, exp_golomb_table), (0, varint_table)):
        for full in (0, 2):
            usable = [f for f in shapes if full or min(f) >= 1]
            seeds.append(bytes([mode | full]) + b"".join(write(f) for f in usable))
    return seeds


def rice_codes(codes: list[int], k: int) -> bytes:
    center = int(np.median(codes))
    bits = bc.Bits()
    for c in codes:
        d = c - center
        z = 2 * d if d >= 0 else -2 * d - 1
        bits.ones(z >> k)
        bits.zeros(1)
        bits.put(z, k)
    return struct.pack("<hB", center, k) + bits.bytes()


def step_code_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    seeds = []
    for count, spread, k in ((1, 0, 0), (16, 2, 1), (200, 6, 2), (64, 40, 4), (8, 150, 7)):
        codes = np.clip(rng.integers(-spread, spread + 1, count) - 20, -192, 127).tolist()
        seeds.append(struct.pack("<H", count) + rice_codes(codes, k))
    return seeds


def write(target: str, seeds: list[bytes]) -> None:
    folder = ROOT / "fuzz" / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for s in seeds:
        (folder / hashlib.sha1(s).hexdigest()).write_bytes(s)
    total = sum(len(s) for s in seeds)
    print(f"{target}: {len(seeds)} seeds, {total} bytes")


def main() -> None:
    blobs = blob_seeds()
    write("head", blobs)
    write("decode", blobs)
    write("tables", table_seeds())
    write("step_codes", step_code_seeds())


if __name__ == "__main__":
    main()
