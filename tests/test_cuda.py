"""GPU codec: blobs encoded on the GPU equal the CPU encoder's bytes, GPU decodes equal CPU
decodes bit for bit, over shapes, dtypes, layouts and levels; hostile blobs raise FormatError.
The GPU tests skip cleanly without a CUDA build and device."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from blobcraft import reseal
from exact import assert_same_bits
from gpu import requires_cuda
from kvgen import synthetic_kv

import cachegen

# Levels with centered keys (key_center) have no GPU encoder yet: see the test below.
GPU_LEVELS = [n for n in cachegen.LEVELS if not cachegen.CodecConfig.from_level(n).key_center]
CONFIGS = (
    [cachegen.CodecConfig.from_level(n) for n in GPU_LEVELS]
    + [cachegen.CodecConfig.cachegen_reference(n) for n in (1, 2, 3)]
    # Every quantizer on keys and values, one table and many.
    + [
        cachegen.CodecConfig(
            key_quantizer=q,
            value_quantizer=q,
            key_param=0.5,
            value_param=0.7,
            max_tables=t,
            name=f"{q}-{t}",
        )
        for q in cachegen.config.QUANTIZERS
        if q not in ("token-absmax", "lossless")  # lossless: no GPU encoder (see below)
        for t in (1, 8)
    ]
    # Past the GPU table fit's limits (tables fitted on the host instead): same bytes.
    + [cachegen.CodecConfig(max_tables=64, name="tables-64")]
)
SHAPES = [(1, 1, 1, 1), (2, 1, 1, 64), (3, 17, 1, 7), (2, 333, 3, 65), (2, 700, 8, 128)]


def torch_or_skip():
    return pytest.importorskip("torch")


def to_cuda(kv):
    torch = torch_or_skip()
    if isinstance(kv, list):
        return [tuple(to_cuda(t) for t in pair) for pair in kv]
    return (kv if torch.is_tensor(kv) else torch.from_numpy(kv)).cuda()


def torch_cpu(kv):
    """The CPU reference input: torch tensors, so the blob's torch-source flag matches."""
    torch = torch_or_skip()
    if isinstance(kv, list):
        return [tuple(torch_cpu(t) for t in pair) for pair in kv]
    return kv if torch.is_tensor(kv) else torch.from_numpy(kv)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gpu_bytes_and_decodes_equal_cpu(shape, dtype):
    kv = synthetic_kv(*shape, dtype=dtype)
    config = cachegen.CodecConfig(segment_symbols=1024)
    blob = cachegen.encode(torch_cpu(kv), config=config)
    assert cachegen.encode(to_cuda(kv), config=config) == blob
    on_gpu = cachegen.decode(blob, device="cuda")
    on_cpu = cachegen.decode(blob, framework="torch")
    assert on_gpu.is_cuda and on_gpu.dtype == on_cpu.dtype
    assert_same_bits(on_gpu, on_cpu)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_profile", [False, True])
def test_step_weights_equal_cpu(shape, dtype, with_profile):
    """Sink and recency token weights (both statistics kernels), profile channel scales and
    token importance (its key features computed from a host copy of the device keys)."""
    kv = synthetic_kv(*shape, dtype=dtype)
    rng = np.random.default_rng(2)
    rows = lambda: tuple(tuple(rng.uniform(0.3, 3.0, shape[2]).tolist()) for _ in range(shape[0]))  # noqa: E731
    pairs = shape[2] * (shape[3] // 2)
    importance = tuple(tuple(rng.normal(size=pairs).tolist()) for _ in range(shape[0]))
    profile = None
    if with_profile:
        profile = cachegen.ModelProfile("test", rows(), rows())
    if with_profile and shape[3] % 2 == 0 and shape[3] >= 8:  # RoPE-shaped heads
        profile = dataclasses.replace(profile, importance=importance, key_bands=(1.5, 1, 0.8, 0.83))
    for where in ({}, {"position": 7, "context_end": 7 + shape[1] + 20}):
        options = {"level": 3, "profile": profile, **where}
        blob = cachegen.encode(torch_cpu(kv), **options)
        assert cachegen.encode(to_cuda(kv), **options) == blob
        assert_same_bits(cachegen.decode(blob, device="cuda"), cachegen.decode(blob))


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_levels_equal_cpu(config):
    kv = synthetic_kv(4, 300, 4, 32)
    blob = cachegen.encode(torch_cpu(kv), config=config)
    assert cachegen.encode(to_cuda(kv), config=config) == blob
    assert_same_bits(cachegen.decode(blob, device="cuda"), cachegen.decode(blob))


@pytest.mark.gpu
@requires_cuda
def test_pairs_mixed_shapes_and_out_buffer():
    torch = torch_or_skip()
    kv = [
        synthetic_kv(1, 90, 4, 16, layout="pairs")[0],
        synthetic_kv(1, 32, 2, 8, seed=1, layout="pairs")[0],
        synthetic_kv(1, 90, 1, 24, seed=2, layout="pairs")[0],
    ]
    blob = cachegen.encode(torch_cpu(kv))
    assert cachegen.encode(to_cuda(kv)) == blob
    out = [tuple(torch.empty(t.shape, dtype=torch.float32, device="cuda") for t in p) for p in kv]
    assert cachegen.decode(blob, out=out) is out
    assert_same_bits(out, cachegen.decode(blob, dtype="float32", framework="torch"))


@pytest.mark.gpu
@requires_cuda
def test_strided_device_input_and_side_stream():
    torch = torch_or_skip()
    kv = to_cuda(synthetic_kv(2, 500, 2, 64))
    strided = torch.empty(*kv.shape[:-1], 2 * kv.shape[-1], dtype=kv.dtype, device="cuda")[..., ::2]
    strided.copy_(kv)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        blob = cachegen.encode(strided)
        decoded = cachegen.decode(blob, device="cuda")
    assert blob == cachegen.encode(kv.cpu())
    assert_same_bits(decoded, cachegen.decode(blob))


def assert_cupy_decode_equals_host(decoded, blob):
    import cupy

    assert isinstance(decoded, cupy.ndarray)
    np.testing.assert_array_equal(
        cupy.asnumpy(decoded).view(np.int16), cachegen.decode(blob).view(np.int16)
    )


@pytest.mark.gpu
@requires_cuda
def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    kv = synthetic_kv(2, 200, 2, 32)
    blob = cachegen.encode(kv)
    assert cachegen.encode(cupy.asarray(kv)) == blob
    assert_cupy_decode_equals_host(cachegen.decode(blob, device="cuda", framework="cupy"), blob)


@pytest.mark.gpu
@requires_cuda
def test_nan_on_gpu_is_an_input_error():
    kv = synthetic_kv(2, 64, 2, 16)
    for layer, kind in ((0, 0), (1, 1)):  # a channel-quantized key, a token-quantized value
        bad = kv.copy()
        bad[layer, kind, 5, 1, 3] = np.nan
        with pytest.raises(ValueError, match="(?i)nan"):
            cachegen.encode(to_cuda(bad))


@pytest.mark.gpu
@requires_cuda
def test_bad_checksum_raises_on_gpu():
    """The GPU path checks the CRC on the device: a flipped payload byte is a FormatError."""
    torch = torch_or_skip()
    kv = synthetic_kv(2, 3000, 4, 64)  # > 2 MiB of payload: several CRC blocks
    blob = bytearray(cachegen.encode(kv))
    for at in (len(blob) - 5, len(blob) // 2, 200):
        bad = bytearray(blob)
        bad[at] ^= 1
        with pytest.raises(cachegen.FormatError, match="checksum"):
            cachegen.decode(bytes(bad), device="cuda")
    out = torch.empty(kv.shape, dtype=torch.float16, device="cuda")
    assert_same_bits(cachegen.decode(bytes(blob), out=out), cachegen.decode(bytes(blob)))


@pytest.mark.gpu
@requires_cuda
def test_large_gpu_blob_crc_and_bytes():
    """Several CRC blocks and transfer chunks: GPU bytes equal CPU bytes, CRC included."""
    kv = synthetic_kv(2, 9000, 8, 128)
    blob = cachegen.encode(torch_cpu(kv))
    assert len(blob) > 8 << 20
    assert cachegen.encode(to_cuda(kv)) == blob
    assert cachegen.encode(to_cuda(kv), level=max(cachegen.LEVELS)) == cachegen.encode(
        torch_cpu(kv), level=max(cachegen.LEVELS)
    )


@pytest.mark.gpu
@requires_cuda
def test_hostile_payloads_raise_format_error_on_gpu():
    kv = synthetic_kv(2, 400, 2, 32)
    blob = cachegen.encode(kv, config=cachegen.CodecConfig(segment_symbols=2048))
    payload_at = len(blob) - cachegen.inspect(blob).payload_bytes - 4
    rng = np.random.default_rng(0)
    for _ in range(40):
        mutated = bytearray(blob)
        for i in rng.integers(payload_at, len(blob) - 4, size=int(rng.integers(1, 8))):
            mutated[i] ^= int(rng.integers(1, 256))
        data = reseal(mutated)
        try:
            want = cachegen.decode(data)
        except cachegen.FormatError:
            with pytest.raises(cachegen.FormatError):
                cachegen.decode(data, device="cuda")
            continue
        assert_same_bits(cachegen.decode(data, device="cuda"), want)
    assert_same_bits(cachegen.decode(blob, device="cuda"), cachegen.decode(blob))  # still healthy


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("shape", SHAPES)
def test_device_blob_equals_host_blob_and_decodes_in_place(shape):
    """encode(..., device="cuda") keeps the blob on the GPU: the same bytes as the host blob
    (payloads that start 8 but not 16 bytes aligned included); decode takes it as is."""
    torch = torch_or_skip()
    kv = synthetic_kv(*shape)
    config = cachegen.CodecConfig(segment_symbols=1024)
    blob = cachegen.encode(torch_cpu(kv), config=config)
    gpu_kv = to_cuda(kv)
    on_device = cachegen.encode(gpu_kv, config=config, device="cuda")
    assert on_device.is_cuda and on_device.dtype == torch.uint8 and on_device.dim() == 1
    assert bytes(on_device.cpu().numpy()) == blob
    assert cachegen.inspect(on_device) == cachegen.inspect(blob)
    decoded = cachegen.decode(on_device)
    assert decoded.is_cuda
    assert_same_bits(decoded, cachegen.decode(blob, framework="torch"))
    out = torch.empty(kv.shape, dtype=torch.float32, device="cuda")
    assert cachegen.decode(on_device, out=out) is out
    assert_same_bits(out, cachegen.decode(blob, dtype="float32", framework="torch"))
    assert_same_bits(cachegen.decode(on_device, device="cpu"), cachegen.decode(blob))


@pytest.mark.gpu
@requires_cuda
def test_device_blob_default_level_large_and_side_stream():
    torch = torch_or_skip()
    kv = synthetic_kv(2, 9000, 8, 128)
    blob = cachegen.encode(torch_cpu(kv))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        on_device = cachegen.encode(to_cuda(kv), device="cuda:0")
        decoded = cachegen.decode(on_device)
    stream.synchronize()
    assert bytes(on_device.cpu().numpy()) == blob
    assert_same_bits(decoded, cachegen.decode(blob))


@pytest.mark.gpu
@requires_cuda
def test_corrupt_device_blob_raises_format_error():
    torch = torch_or_skip()
    kv = synthetic_kv(2, 3000, 4, 64)
    on_device = cachegen.encode(to_cuda(kv), device="cuda")
    n = on_device.numel()
    for at in (n - 5, n // 2, n - 1):
        bad = on_device.clone()
        bad[at] ^= 1
        with pytest.raises(cachegen.FormatError):
            cachegen.decode(bad)
    with pytest.raises(cachegen.FormatError):
        cachegen.decode(on_device[:100].clone())
    with pytest.raises(TypeError):
        cachegen.decode(torch.zeros(16, dtype=torch.int32, device="cuda"))
    with pytest.raises(ValueError):
        cachegen.encode(kv, device="cuda")  # host KV: device output needs it on the GPU
    assert_same_bits(cachegen.decode(on_device), cachegen.decode(bytes(on_device.cpu().numpy())))


@pytest.mark.gpu
@requires_cuda
def test_cupy_device_blob():
    cupy = pytest.importorskip("cupy")
    kv = synthetic_kv(2, 200, 2, 32)
    blob = cachegen.encode(kv)
    on_device = cachegen.encode(cupy.asarray(kv), device="cuda")
    assert isinstance(on_device, cupy.ndarray) and on_device.dtype == np.uint8
    assert cupy.asnumpy(on_device).tobytes() == blob
    assert_cupy_decode_equals_host(cachegen.decode(on_device), blob)


@pytest.mark.gpu
@requires_cuda
def test_device_blob_checksum_checked_alongside_kernels():
    """A device blob's CRC runs on a side stream with the decode kernels and is checked before
    decode returns: a flipped payload byte is a checksum FormatError (the output buffer may have
    been written). The host image of the head is reused between calls: decodes of blobs with a
    smaller, then larger head than the last one stay exact."""
    torch = torch_or_skip()
    big = cachegen.encode(to_cuda(synthetic_kv(2, 3000, 4, 64)), device="cuda")
    small = cachegen.encode(to_cuda(synthetic_kv(1, 100, 2, 32)), device="cuda")
    bad = big.clone()
    bad[big.numel() // 2] ^= 1
    out = torch.empty((2, 2, 3000, 4, 64), dtype=torch.float16, device="cuda")
    with pytest.raises(cachegen.FormatError, match="checksum"):
        cachegen.decode(bad, out=out)
    for blob in (small, big, small, big):
        assert_same_bits(cachegen.decode(blob), cachegen.decode(bytes(blob.cpu().numpy())))


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("layout", sorted(cachegen.paged.LAYOUTS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_paged_gpu_equals_cpu(layout, dtype):
    """Paged encode and decode on the GPU (block table uploaded with the views): the CPU's
    bytes, and the whole caches after a decode equal the CPU's bit for bit (only the slots of
    the block table written); lossless decodes on the GPU too, its encode is refused there."""
    import test_paged as tp

    torch = torch_or_skip()
    dt = getattr(torch, dtype)
    tokens = 5 * tp.BLOCK + 7
    ids = tp.random_table(11, tokens)
    host = tp.filled(layout, dt, ids, tokens)
    gpu = [c.cuda() for c in host]
    assert [c.stride() for c in gpu] == [c.stride() for c in host]
    paged = cachegen.paged
    for level in (1, cachegen.DEFAULT_LEVEL):
        blob = paged.encode_paged(host, layout, ids, tokens, level=level)
        assert paged.encode_paged(gpu, layout, ids, tokens, level=level) == blob
    targets = tp.random_table(12, tokens)
    for level in (cachegen.DEFAULT_LEVEL, cachegen.LOSSLESS):
        blob = paged.encode_paged(host, layout, ids, tokens, level=level)
        on_cpu = [tp.empty_cache(layout, dt, seed=20 + i) for i in range(tp.LAYERS)]
        on_gpu = [c.cuda() for c in on_cpu]
        paged.decode_paged(blob, on_cpu, layout, targets)
        paged.decode_paged(blob, on_gpu, layout, targets)
        torch.cuda.synchronize()
        for a, b in zip(on_gpu, on_cpu, strict=True):
            assert_same_bits(a, b)
    with pytest.raises(ValueError, match="no GPU encoder"):
        paged.encode_paged(gpu, layout, ids, tokens, level=cachegen.LOSSLESS)
    before = [c.clone() for c in gpu]
    with pytest.raises(ValueError, match="out of range"):
        paged.decode_paged(blob, gpu, layout, [*targets[:-1], tp.BLOCKS])
    for a, b in zip(gpu, before, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_lossless_decodes_on_gpu(dtype):
    kv = torch_cpu(synthetic_kv(3, 333, 3, 64, dtype=dtype))
    blob = cachegen.encode(kv, level=cachegen.LOSSLESS)
    assert_same_bits(cachegen.decode(blob, device="cuda"), kv)
    with pytest.raises(ValueError, match="lossless level has no GPU encoder"):
        cachegen.encode(kv.cuda(), level=cachegen.LOSSLESS)
    with pytest.raises(ValueError, match="own dtype"):
        cachegen.decode(blob, device="cuda", dtype="float32" if dtype != "float32" else "float16")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_key_square_sums_on_gpu_equal_host(dtype):
    """The key spread's statistic, computed on the device, is the host's float64 bit for bit."""
    from cachegen.importance import key_square_sums
    from cachegen.tensors import views

    kv = torch_cpu(synthetic_kv(2, 1000, 3, 64, dtype=dtype))
    on_gpu = kv.cuda()  # alive while the views are read
    for layer, skip in ((0, 4), (1, 0), (1, 2000)):
        want = key_square_sums(views(kv), layer, skip, threads=2)
        got = key_square_sums(views(on_gpu), layer, skip, threads=2)
        assert got[1] == want[1] and got[0].tobytes() == want[0].tobytes()
    bad = kv.clone()
    bad[0, 0, 9, 1, 5] = float("nan")
    bad = bad.cuda()
    with pytest.raises(ValueError, match="nan"):
        key_square_sums(views(bad), 0, 0, threads=2)


@pytest.mark.gpu
@requires_cuda
def test_centered_key_levels_decode_on_gpu_and_refuse_gpu_encode():
    """The top levels' centered keys: a clear error from the GPU encoder, and their blobs (encoded
    on the host) decode on the GPU to the CPU's bits."""
    kv = torch_cpu(synthetic_kv(2, 333, 3, 64, dtype="float16"))
    top = max(cachegen.LEVELS)
    assert cachegen.CodecConfig.from_level(top).key_center
    with pytest.raises(ValueError, match="no GPU encoder"):
        cachegen.encode(kv.cuda(), level=top)
    blob = cachegen.encode(kv, level=top)
    assert_same_bits(cachegen.decode(blob, device="cuda"), cachegen.decode(blob, framework="torch"))
