"""Public API surface: options, errors for bad tensors/options, inspect, torch adapters."""

from __future__ import annotations

import numpy as np
import pytest
from kvgen import synthetic_kv

import cachegen


def test_inspect_reports_header_facts():
    kv = synthetic_kv(3, 50, 2, 16)
    blob = cachegen.encode(kv, level=2)
    info = cachegen.inspect(blob)
    assert (info.num_layers, info.layout, info.dtype, info.level) == (3, "stacked", "float16", 2)
    assert info.total_bytes == len(blob) and info.elements == kv.size
    assert info.keys[0].quantizer == "token" and info.values[0].quantizer == "token"
    assert info.bits_per_element == pytest.approx(8 * len(blob) / kv.size)


def test_reference_config_is_recorded():
    info = cachegen.inspect(
        cachegen.encode(
            synthetic_kv(32, 8, 1, 8), config=cachegen.CodecConfig.cachegen_reference(1)
        )
    )
    assert {g.quantizer for g in info.keys + info.values} == {"token-absmax"}
    # Level 1: keys 16/16/12 bins over thirds of depth (cut at 10/32, 20/32), values 16/12.
    assert [g.param for g in info.keys][9:11] == [16.0, 16.0]
    assert info.keys[20].param == 12.0 and info.values[1].param == 16.0
    assert info.values[2].param == 12.0


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"level": 0}, ValueError),
        ({"level": 99}, ValueError),
        ({"level": 2, "config": cachegen.CodecConfig()}, ValueError),
        ({"config": "fast"}, TypeError),
        ({"threads": -1}, ValueError),
    ],
)
def test_bad_options(kwargs, error):
    with pytest.raises(error):
        cachegen.encode(synthetic_kv(1, 4, 1, 4), **kwargs)


@pytest.mark.parametrize(
    "kv, error, match",
    [
        (np.zeros((2, 3, 4, 1, 4), np.float16), ValueError, "layers, 2, tokens"),
        (np.zeros((2, 2, 0, 1, 4), np.float16), ValueError, ">= 1 token"),
        (np.zeros((1, 2, 4, 1, 4), np.int8), TypeError, "unsupported dtype"),
        ([], TypeError, "kv must be"),
        ("kv", TypeError, "kv must be"),
        ([(np.zeros((1, 1, 4, 4), np.float16),)], ValueError, r"\(K, V\) pair"),
        ([(np.zeros((2, 1, 4, 4), np.float16),) * 2], ValueError, r"\[1, kv_heads"),
        (
            [(np.zeros((1, 1, 4, 4), np.float16), np.zeros((1, 1, 4, 4), np.float32))],
            TypeError,
            "one dtype",
        ),
    ],
)
def test_bad_tensors(kv, error, match):
    with pytest.raises(error, match=match):
        cachegen.encode(kv)


def test_nan_and_inf_are_rejected():
    kv = synthetic_kv(1, 8, 1, 8)
    for bad in (np.nan, np.inf):
        x = kv.copy()
        x[0, 1, 3, 0, 2] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            cachegen.encode(x)


def test_bad_config_values():
    with pytest.raises(ValueError):
        cachegen.CodecConfig(key_quantizer="magic")
    with pytest.raises(ValueError):
        cachegen.CodecConfig(max_tables=0)
    with pytest.raises(ValueError, match="> 0"):
        cachegen.encode(synthetic_kv(1, 4, 1, 4), config=cachegen.CodecConfig(key_param=0.0))
    with pytest.raises(ValueError, match="bins"):
        cfg = cachegen.CodecConfig(key_quantizer="token-absmax", key_param=2.5)
        cachegen.encode(synthetic_kv(1, 4, 1, 4), config=cfg)


def test_out_buffer_checks():
    kv = synthetic_kv(2, 10, 1, 8)
    blob = cachegen.encode(kv)
    with pytest.raises(ValueError, match="does not match"):
        cachegen.decode(blob, out=np.empty((2, 2, 11, 1, 8), np.float16))
    ro = np.empty_like(kv)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        cachegen.decode(blob, out=ro)
    with pytest.raises(ValueError, match="framework"):
        cachegen.decode(blob, framework="jax")


def test_torch_roundtrip_returns_torch():
    torch = pytest.importorskip("torch")
    kv = synthetic_kv(2, 30, 2, 16, dtype="bfloat16", layout="pairs")
    blob = cachegen.encode(kv)
    assert cachegen.inspect(blob).from_torch and cachegen.inspect(blob).dtype == "bfloat16"
    out = cachegen.decode(blob)
    assert isinstance(out[0][0], torch.Tensor) and out[0][0].dtype == torch.bfloat16
    as_numpy = cachegen.decode(blob, framework="numpy", dtype="float32")
    assert torch.equal(torch.from_numpy(as_numpy[1][1]).to(torch.bfloat16), out[1][1])
    # Non-contiguous tensors (a transposed view) code the same bytes as contiguous ones.
    k = kv[0][0]
    t = k.transpose(2, 3).contiguous().transpose(2, 3)
    assert cachegen.encode([(t, kv[0][1])]) == cachegen.encode([(k, kv[0][1])])


def test_torch_tensor_requiring_grad_and_numpy_bf16_error():
    torch = pytest.importorskip("torch")
    kv = torch.randn(1, 2, 8, 1, 8, requires_grad=True)
    blob = cachegen.encode(kv.detach())
    assert cachegen.decode(blob).shape == kv.shape
    bf = cachegen.encode(kv.detach().to(torch.bfloat16))
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        with pytest.raises(TypeError, match="ml_dtypes"):
            cachegen.decode(bf, framework="numpy")
    else:
        as_numpy = cachegen.decode(bf, framework="numpy")
        assert as_numpy.dtype.name == "bfloat16"
        np.testing.assert_array_equal(
            as_numpy.view(np.uint16), cachegen.decode(bf).view(torch.int16).numpy().view(np.uint16)
        )


@pytest.mark.skipif(cachegen.build_info()["cuda_available"], reason="the path without a GPU")
def test_a_gpu_decode_without_a_gpu_names_the_cause() -> None:
    """build_info's CUDA facts agree with what a device request meets: without kernels the error
    says how to build them, with kernels but no device it says so."""
    info = cachegen.build_info()
    cause = "no usable CUDA device" if info["cuda_compiled"] else "CACHEGEN_CUDA=ON"
    blob = cachegen.encode(np.zeros((1, 2, 4, 1, 8), np.float16))
    with pytest.raises(RuntimeError, match=cause):
        cachegen.decode(blob, device="cuda")


def test_build_info():
    info = cachegen.build_info()
    assert info["format_version"] == cachegen.FORMAT_VERSION == 6
    assert info["crc32c"] in ("sse4.2", "table") and info["convert"] in ("f16c", "scalar")
