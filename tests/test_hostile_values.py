"""Non-finite values: encode refuses NaN/Inf anywhere in the KV (every dtype, layout and
quantizer, sink rows included); decode refuses blobs whose stored scales, offsets or verbatim
rows are not finite (CRC-valid blobs written from the spec, tests/blobcraft.py)."""

from __future__ import annotations

import struct

import blobcraft as bc
import numpy as np
import pytest
from kvgen import synthetic_kv

import cachegen
from cachegen import FormatError

F16_INF, F16_NAN = b"\x00\x7c", b"\x00\x7e"


@pytest.mark.parametrize("value", [F16_INF, b"\x00\xfc", F16_NAN])
@pytest.mark.parametrize(
    ("what", "name"),
    [
        (bc.TOKEN_SCALE, "token scales"),
        (bc.CHANNEL_SCALE, "channel scales"),
        (bc.CHANNEL_OFFSET, "channel offsets"),
    ],
)
def test_non_finite_scales_are_refused(what, name, value):
    good = bc.blob([bc.scaled_group(4, 8, struct.pack("<e", 0.5), what)] * 2)
    assert cachegen.decode(good, framework="numpy")[0][0].shape == (1, 1, 4, 8)
    bad = bc.blob([bc.scaled_group(4, 8, value, what)] * 2)
    with pytest.raises(FormatError, match=f"{name} are not finite"):
        cachegen.inspect(bad)
    with pytest.raises(FormatError, match=f"{name} are not finite"):
        cachegen.decode(bad)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (1, F16_INF),
        (1, F16_NAN),
        (2, b"\x80\x7f"),  # bf16 inf
        (2, b"\xc0\xff"),  # bf16 nan
        (3, struct.pack("<f", float("inf"))),
        (3, struct.pack("<f", float("nan"))),
    ],
)
def test_non_finite_raw_rows_are_refused(dtype, value):
    size = bc.DTYPE_SIZES[dtype]
    one = struct.pack("<e", 1.0) if size == 2 else struct.pack("<f", 1.0)
    if dtype == 2:
        one = b"\x80\x3f"
    good = bc.blob(bc.layers(1, bc.zero_group(3, 1, 4, raw_rows=2, raw_value=one)), dtype=dtype)
    decoded = cachegen.decode(good, framework="torch")
    assert float(decoded[0][0][0, 0, 1, 3]) == 1.0
    bad = bc.blob(bc.layers(1, bc.zero_group(3, 1, 4, raw_rows=2, raw_value=value)), dtype=dtype)
    with pytest.raises(FormatError, match="raw rows are not finite"):
        cachegen.inspect(bad)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("quantizer", ["token", "channel", "layer", "token-absmax"])
@pytest.mark.parametrize("token", [0, 5])  # 0: a sink row, kept verbatim
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_refuses_non_finite_kv(dtype, quantizer, token, bad):
    torch = pytest.importorskip("torch")
    kv = torch.from_numpy(synthetic_kv(2, 8, 2, 8, dtype="float32")).to(getattr(torch, dtype))
    kv[1, 1, token, 1, 3] = bad
    param = 8.0 if quantizer == "token-absmax" else 0.5
    sinks = int(quantizer == "token")  # verbatim sink rows: the token quantizer's
    config = cachegen.CodecConfig(
        key_quantizer=quantizer,
        value_quantizer=quantizer,
        key_param=param,
        value_param=param,
        sink_tokens=sinks,
        recency=0.0,
    )
    with pytest.raises(ValueError, match="NaN or Inf"):
        cachegen.encode(kv, config=config)
    pairs = [(kv[i, 0].permute(1, 0, 2)[None], kv[i, 1].permute(1, 0, 2)[None]) for i in range(2)]
    with pytest.raises(ValueError, match="NaN or Inf"):
        cachegen.encode(pairs, config=config)


@pytest.mark.parametrize("quantizer", ["channel", "layer"])
def test_means_beyond_fp16_still_decode_finite(quantizer):
    """fp32 channels whose mean is past fp16's range: the stored offset is clamped (as steps
    are) instead of becoming Inf, so the blob decodes to finite values."""
    kv = np.full((1, 2, 6, 1, 4), 1.0e5, np.float32)
    config = cachegen.CodecConfig(
        key_quantizer=quantizer, value_quantizer=quantizer, sink_tokens=0, recency=0.0
    )
    out = cachegen.decode(cachegen.encode(kv, config=config))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, kv, rtol=0.1)
