"""Overflow lists (format v6, `CodecConfig.overflow`): a token keeps the step it asked for even
where its largest value needs more than the 8-bit symbols hold; those few symbols travel in the
group's side data, and every decoder either applies them or refuses the blob."""

from __future__ import annotations

import dataclasses

import blobcraft as bc
import numpy as np
import pytest
from gpu import requires_cuda
from kvgen import synthetic_kv

import cachegen
from cachegen import FormatError

# Steps far finer than any level's: most rows' range needs more than 127 of them.
FINE = cachegen.CodecConfig(key_param=0.004, value_param=0.004, name="fine")


def spiky_kv() -> np.ndarray:
    """fp32 KV whose keys hold a few tokens with one value far beyond the rest of their row
    (as a transform's leading coefficient is in an important token)."""
    kv = synthetic_kv(2, 200, 2, 32, dtype="float32", seed=5)
    kv[:, 0, 40:200:16, 1, 3] = 300.0
    return kv


def coded(kv: np.ndarray, overflow: bool, config: cachegen.CodecConfig = FINE) -> bytes:
    return cachegen.encode(kv, config=dataclasses.replace(config, overflow=overflow))


def test_overflow_keeps_the_tokens_asked_for_step():
    kv = spiky_kv()
    clamped, kept = (coded(kv, o) for o in (False, True))
    info = cachegen.inspect(kept)
    assert info.version == 6 and cachegen.inspect(clamped).version == 4
    assert all(g.overflow > 0 for g in info.keys)
    err = {n: np.abs(cachegen.decode(b) - kv)[:, 0] for n, b in (("c", clamped), ("k", kept))}
    # Clamped, each row's step was coarsened to its range / 127.
    assert err["k"].max() < err["c"].max() / 4


def test_without_overflowing_symbols_the_blob_is_unchanged():
    kv = synthetic_kv(2, 100, 2, 16, dtype="float32")
    level = cachegen.CodecConfig.from_level(1)
    assert coded(kv, True, level) == coded(kv, False, level)


def test_quantize_shows_what_decode_gives():
    kv = spiky_kv()
    blob = coded(kv, True)
    out = cachegen.decode(blob)
    groups = cachegen.quantize(kv, config=dataclasses.replace(FINE, overflow=True))
    assert sum(len(g.overflow) for g in groups) == sum(
        g.overflow for g in cachegen.inspect(blob).keys + cachegen.inspect(blob).values
    )
    for i, g in enumerate(groups):
        assert (np.abs(g.full_symbols()[tuple(g.overflow[:, :2].T)]) > 127).all()
        np.testing.assert_array_equal(g.dequantize(), out[i // 2, i % 2].reshape(200, -1))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_every_cpu_path_applies_the_list(monkeypatch, cpu_path, dtype):
    blob = coded(spiky_kv(), True)
    monkeypatch.setenv("CACHEGEN_CPU_PATH", "scalar")
    want = cachegen.decode(blob, dtype=dtype, framework="torch")
    monkeypatch.setenv("CACHEGEN_CPU_PATH", cpu_path)
    assert (cachegen.decode(blob, dtype=dtype, framework="torch") == want).all()


def test_overflow_needs_a_token_quantizer():
    with pytest.raises(ValueError, match="overflow"):
        cachegen.CodecConfig(key_quantizer="channel", value_quantizer="layer", overflow=True)


def test_a_crafted_list_decodes_to_its_values():
    """From docs/FORMAT.md alone: zero symbols, every step 1.0, so an entry's value is its
    symbol."""
    entries = [(0, 1, 200), (2, 0, -128), (2, 3, 32767)]
    blob = bc.blob(
        bc.layers(1, bc.zero_group(3, 1, 4, overflow=entries)), dtype=3, layout=0, version=6
    )
    out = cachegen.decode(blob, framework="numpy")[0, 0, :, 0]
    want = np.zeros((3, 4), np.float32)
    for t, c, s in entries:
        want[t, c] = s
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize(
    ("entries", "count", "raw_rows", "match"),
    [
        ([], None, 0, "overflow count out of range"),
        ([(0, 0, 200)], 13, 0, "overflow count out of range"),  # 3 x 4 elements
        ([(0, 0, 200), (1, 0, 200), (2, 0, 200), (2, 1, 200)], 12, 0, "truncated overflow list"),
        ([(3, 0, 200)], None, 0, "overflow entry out of range"),
        ([(0, 4, 200)], None, 0, "overflow entry out of range"),
        ([(0, 0, 200)], None, 1, "overflow entry out of range"),  # a raw row
        ([(1, 3, 200), (1, 4, 200)], None, 0, "overflow entry out of range"),
        ([(1, 0, 32768)], None, 0, "overflow symbol out of range"),
        (b"\x00\x00\xff\xff\xff\xff\x7f", 1, 0, "malformed varint"),  # over 32 bits
        (b"\x00\x00\x80\x80\x80\x80\x80\x01", 1, 0, "malformed varint"),  # over 5 bytes
    ],
)
def test_a_bad_list_is_refused(entries, count, raw_rows, match):
    group = bc.zero_group(3, 1, 4, overflow=entries, overflow_count=count, raw_rows=raw_rows)
    with pytest.raises(FormatError, match=match):
        cachegen.decode(bc.blob(bc.layers(1, group), version=6))


def test_a_list_in_an_older_version_is_refused():
    group = bc.zero_group(3, 1, 4, overflow=[(0, 0, 200)])
    with pytest.raises(FormatError, match="overflow list in a version 5 blob"):
        cachegen.decode(bc.blob(bc.layers(1, group), version=5))


@requires_cuda
def test_the_gpu_decoder_refuses_the_list_before_writing():
    torch = pytest.importorskip("torch")
    blob = coded(spiky_kv(), True)
    out = torch.full((2, 2, 200, 2, 32), 7.0, device="cuda")
    with pytest.raises(FormatError, match="decode on the host|decode it there"):
        cachegen.decode(blob, out=out)
    assert (out == 7).all()


@requires_cuda
def test_the_gpu_encoder_refuses_overflow():
    torch = pytest.importorskip("torch")
    kv = torch.from_numpy(spiky_kv()).cuda()
    with pytest.raises(ValueError, match="encode on the CPU"):
        cachegen.encode(kv, config=dataclasses.replace(FINE, overflow=True), device="cuda")
