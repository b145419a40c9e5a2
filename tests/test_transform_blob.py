"""Transform-coded blobs (format version 5): the blob names its transform by digest and position,
decode finds it (a transform, a mapping, a store) or raises TransformMissing before writing
anything, older-version and hostile headers are refused, and transforms round-trip through
their canonical bytes and a store."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct

import numpy as np
import pytest
from blobcraft import reseal
from gpu import requires_cuda
from kvgen import low_rank_kv

import cachegen
from cachegen import FormatError
from cachegen.store import MemoryStore
from cachegen.store.errors import ObjectCorrupted
from cachegen.transform import (
    STORE_PREFIX,
    Rope,
    Transform,
    TransformError,
    TransformMissing,
    forward,
    inverse,
    learn_transform,
    put_transform,
    stored_transforms,
)

LAYERS, HEADS, DIM = 2, 2, 16


def cache(seed: int, tokens: int) -> np.ndarray:
    return low_rank_kv(seed, tokens, LAYERS, HEADS, DIM)


@pytest.fixture(scope="module")
def transform() -> Transform:
    return learn_transform([cache(1, 400)], Rope.from_thetas([1e4, 1e5], DIM))


@pytest.fixture(scope="module")
def kv() -> np.ndarray:
    return cache(2, 200).astype(np.float16)


@pytest.fixture(scope="module")
def blob(transform: Transform, kv: np.ndarray) -> bytes:
    return cachegen.encode(kv, 20, transform=transform, position=37)


def test_blob_names_the_transform_and_position(blob: bytes, transform: Transform) -> None:
    info = cachegen.inspect(blob)
    assert info.version == 5
    assert info.transform is not None
    assert info.transform.digest == transform.digest()
    assert info.transform.position == 37


def test_plain_blobs_stay_version_4(kv: np.ndarray) -> None:
    info = cachegen.inspect(cachegen.encode(kv, 20))
    assert info.version == 4 and info.transform is None


def test_decode_inverts_the_coefficients(blob: bytes, transform: Transform, kv) -> None:
    out = cachegen.decode(blob, transforms=transform)
    assert out.dtype == np.float16 and out.shape == kv.shape
    # The same as decoding the coefficients by hand and inverting them.
    coefficients = forward(kv, transform, 37)
    plain = cachegen.encode(
        coefficients,
        config=cachegen.transform.coefficient_config(cachegen.CodecConfig.from_level(20)),
        position=37,
    )
    by_hand = inverse(cachegen.decode(plain, dtype="float32"), transform, 37)
    np.testing.assert_array_equal(out, by_hand.astype(np.float16))
    rms = np.sqrt(np.mean(np.square(out.astype(np.float32) - kv)) / np.mean(np.square(kv)))
    assert 0 < rms < 0.2


def test_transforms_by_mapping_and_function(blob: bytes, transform: Transform) -> None:
    a = cachegen.decode(blob, transforms={transform.digest(): transform})
    b = cachegen.decode(blob, transforms=lambda d: transform if d == transform.digest() else None)
    np.testing.assert_array_equal(a, b)


def test_output_dtype_framework_and_out(blob: bytes, transform: Transform, kv) -> None:
    f32 = cachegen.decode(blob, transforms=transform, dtype="float32")
    out = np.full(kv.shape, 7, np.float32)
    assert cachegen.decode(blob, out=out, transforms=transform) is out
    np.testing.assert_array_equal(out, f32)
    torch = pytest.importorskip("torch")
    t = cachegen.decode(blob, transforms=transform, framework="torch", dtype="bfloat16")
    assert t.dtype == torch.bfloat16
    np.testing.assert_array_equal(t.float().numpy(), torch.from_numpy(f32).bfloat16().float())


def test_pairs_layout_round_trips(transform: Transform, kv: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    pairs = [
        tuple(
            torch.from_numpy(np.ascontiguousarray(kv[layer, side].transpose(1, 0, 2)[None]))
            for side in (0, 1)
        )
        for layer in range(LAYERS)
    ]
    blob = cachegen.encode(pairs, 20, transform=transform)
    out = cachegen.decode(blob, transforms=transform)
    assert isinstance(out[0][0], torch.Tensor) and out[1][1].shape == pairs[1][1].shape
    stacked = cachegen.decode(cachegen.encode(kv, 20, transform=transform), transforms=transform)
    np.testing.assert_array_equal(out[1][1][0].numpy().transpose(1, 0, 2), stacked[1, 1])


@pytest.mark.parametrize("given", ["none", "other", "mapping", "function", "liar"])
def test_missing_transform_is_typed_and_writes_nothing(blob, transform, kv, given) -> None:
    other = learn_transform([cache(3, 400)], Rope.from_thetas([1e4, 1e5], DIM))
    transforms = {
        "none": None,
        "other": other,
        "mapping": {other.digest(): other},
        "function": lambda d: None,
        "liar": lambda d: other,  # found something, but not what the blob names
    }[given]
    out = np.full(kv.shape, 3, np.float16)
    with pytest.raises(TransformMissing, match=transform.digest()) as e:
        cachegen.decode(blob, out=out, transforms=transforms)
    assert isinstance(e.value, FormatError) and e.value.digest == transform.digest()
    assert (out == 3).all()


def test_transform_lossless_or_on_a_gpu_is_refused(transform, kv) -> None:
    with pytest.raises(ValueError, match="host"):
        cachegen.encode(kv, 20, transform=transform, device="cuda")
    with pytest.raises(ValueError, match="lossless"):
        cachegen.encode(kv, cachegen.LOSSLESS, transform=transform)


def profile_of(heads: tuple[float, ...], bands: tuple[float, ...] = (), seed: int = 0):
    """A profile with these head weights in every layer, K and V, and an importance model."""
    rng = np.random.default_rng(seed)
    importance = tuple(tuple(rng.normal(0, 0.5, HEADS * DIM // 2)) for _ in range(LAYERS))
    w = (heads,) * LAYERS
    return cachegen.ModelProfile("test", w, w, importance=importance, key_bands=bands)


def test_transform_takes_a_profile_by_layer_not_by_head_or_band(transform, kv) -> None:
    # Head weights 1 and 4 (geometric mean 2) and any key bands code like 2 in every head.
    flat = cachegen.encode(kv, 20, transform=transform, profile=profile_of((2.0, 2.0)))
    spread = profile_of((1.0, 4.0), bands=(0.5, 2.0))
    assert cachegen.encode(kv, 20, transform=transform, profile=spread) == flat
    assert flat != cachegen.encode(kv, 20, transform=transform, profile=profile_of((1.0, 1.0)))
    out = cachegen.decode(flat, transforms=transform, dtype="float32")
    rms = np.sqrt(np.mean(np.square(out - kv)) / np.mean(np.square(kv)))
    assert 0 < rms < 0.4


def test_transform_encode_reads_importance_on_raw_keys(transform, kv, monkeypatch) -> None:
    import cachegen.plan

    seen = []
    scores = cachegen.plan.token_scores
    monkeypatch.setattr(
        cachegen.plan, "token_scores", lambda src, *a: seen.append(src) or scores(src, *a)
    )
    cachegen.encode(kv, 20, transform=transform, profile=profile_of((1.0, 1.0)))
    assert len(seen) == LAYERS and all(src is kv for src in seen)


def test_transform_plan_reads_importance_on_raw_keys(transform, kv) -> None:
    from cachegen.plan import plan_encode
    from cachegen.tensors import views
    from cachegen.transform import coefficient_config, coefficient_profile

    profile = profile_of((1.0, 4.0), bands=(0.5, 2.0))
    config = coefficient_config(cachegen.CodecConfig.from_level(20))
    coefficients = forward(kv, transform)
    raw = plan_encode(kv, views(kv), config, profile)
    coded = plan_encode(
        coefficients,
        views(coefficients),
        config,
        coefficient_profile(profile),
        keys=(kv, views(kv)),
    )
    on_coefficients = plan_encode(
        coefficients, views(coefficients), config, coefficient_profile(profile)
    )
    for r, c, wrong in zip(raw.groups, coded.groups, on_coefficients.groups, strict=True):
        np.testing.assert_array_equal(c.token_weights, r.token_weights)
        assert c.param == pytest.approx(r.param, rel=1e-12)
        assert (c.channel_weights == 1).all() and not (r.channel_weights == 1).all()
        assert not np.array_equal(wrong.token_weights, r.token_weights)


def test_coefficient_config_of_a_level_and_of_a_custom_config() -> None:
    from cachegen.transform import (
        COEFFICIENT_IMPORTANCE,
        COEFFICIENT_RECENCY,
        COEFFICIENT_VALUE_RATIO,
        OBSERVED_RECENCY,
        PROFILED_VALUE_RATIO,
        coefficient_config,
    )

    level = cachegen.CodecConfig.from_level(15)
    plain = coefficient_config(level)
    assert plain.key_spread == 0 and not plain.key_spread_auto
    assert (plain.recency, plain.importance_strength) == (level.recency, 0.15)
    assert plain.key_param == level.key_param
    assert level.value_param == pytest.approx(3 * level.key_param)
    assert plain.value_param == pytest.approx(COEFFICIENT_VALUE_RATIO * level.key_param)
    profiled = coefficient_config(level, profiled=True)
    assert (profiled.recency, profiled.importance_strength) == (
        COEFFICIENT_RECENCY,
        COEFFICIENT_IMPORTANCE,
    )
    assert profiled.value_param == pytest.approx(PROFILED_VALUE_RATIO * level.key_param)
    assert PROFILED_VALUE_RATIO != COEFFICIENT_VALUE_RATIO
    observed = coefficient_config(level, observed=True)
    assert observed.value_param == plain.value_param  # observed attention alone: no profile
    both = coefficient_config(level, profiled=True, observed=True)
    assert both == dataclasses.replace(observed, value_param=profiled.value_param)
    assert (observed.recency, observed.importance_strength) == (
        OBSERVED_RECENCY,
        COEFFICIENT_IMPORTANCE,
    )
    assert OBSERVED_RECENCY != COEFFICIENT_RECENCY
    custom = dataclasses.replace(level, recency=0.5, importance_strength=0.2)
    kept = coefficient_config(custom, profiled=True)
    assert (kept.recency, kept.importance_strength, kept.key_spread) == (0.5, 0.2, 0.0)
    assert kept.value_param == level.value_param
    # A level keeps every token's step with an overflow list; a custom config decides.
    assert plain.overflow and profiled.overflow and observed.overflow and not kept.overflow


def test_transform_that_does_not_fit_the_cache_is_typed(transform) -> None:
    wrong = np.zeros((LAYERS, 2, 10, HEADS, DIM // 2), np.float16)
    with pytest.raises(TransformError):
        cachegen.encode(wrong, 20, transform=transform)


def reheader(
    blob: bytes,
    version: int | None = None,
    flags: int | None = None,
    header_bytes: int | None = None,
) -> bytes:
    b = bytearray(blob)
    if version is not None:
        b[4:6] = struct.pack("<H", version)
    if header_bytes is not None:
        b[6:8] = struct.pack("<H", header_bytes)
    if flags is not None:
        b[28:32] = struct.pack("<I", flags)
    return reseal(b)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 4}, "transform record in a version 4 blob"),
        ({"version": 7}, "unsupported format version 7"),
        ({"flags": 0}, "bad header size"),  # the record's bytes left without the flag
        ({"header_bytes": 64}, "bad header size"),
    ],
)
def test_hostile_transform_headers(blob: bytes, change: dict, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        cachegen.inspect(reheader(blob, **change))


def test_plain_blob_claiming_a_transform_is_refused(kv: np.ndarray) -> None:
    plain = cachegen.encode(kv, 20)
    with pytest.raises(FormatError, match="bad header size"):
        cachegen.inspect(reheader(plain, flags=2))
    with pytest.raises(FormatError, match="transform record in a version 4"):
        cachegen.inspect(reheader(plain, flags=2, header_bytes=104))


def test_every_truncation_and_flip_of_the_record_is_caught(blob: bytes, transform) -> None:
    for n in range(0, len(blob), 37):
        with pytest.raises(FormatError):
            cachegen.decode(blob[:n], transforms=transform)
    for i in range(64, 104):  # the record: a flipped digest or position fails the checksum
        b = bytearray(blob)
        b[i] ^= 1
        with pytest.raises(FormatError, match="checksum"):
            cachegen.decode(bytes(b), transforms=transform)


def test_canonical_bytes_round_trip(transform: Transform) -> None:
    data = transform.to_bytes()
    back = Transform.from_bytes(data)
    assert back.to_bytes() == data and back.digest() == transform.digest()


def test_bad_transform_bytes_are_typed(transform: Transform) -> None:
    data = transform.to_bytes()
    for n in [0, 5, 14, 18, 26, len(data) // 2, len(data) - 1]:
        with pytest.raises(TransformError):
            Transform.from_bytes(data[:n])
    with pytest.raises(TransformError, match="trailing"):
        Transform.from_bytes(data + b"\0")
    huge = bytearray(data)
    huge[14:18] = struct.pack("<I", 1 << 30)  # a layer count no bytes pay for
    with pytest.raises(TransformError):
        Transform.from_bytes(bytes(huge))
    nan = bytearray(data)
    nan[-4:] = struct.pack("<f", float("nan"))
    with pytest.raises(TransformError, match="NaN"):
        Transform.from_bytes(bytes(nan))


def test_store_keeps_transforms_beside_blobs(blob: bytes, transform: Transform) -> None:
    store = MemoryStore()
    resolver = stored_transforms(store)
    with pytest.raises(TransformMissing):
        cachegen.decode(blob, transforms=resolver)
    key = put_transform(store, transform)
    assert key == STORE_PREFIX + transform.digest()
    resolver = stored_transforms(store)
    np.testing.assert_array_equal(
        cachegen.decode(blob, transforms=resolver), cachegen.decode(blob, transforms=transform)
    )


def test_store_object_that_does_not_match_its_digest(blob: bytes, transform: Transform) -> None:
    store = MemoryStore()
    other = learn_transform([cache(4, 400)], Rope.from_thetas([1e4, 1e5], DIM))
    store.put(STORE_PREFIX + transform.digest(), other.to_bytes())
    with pytest.raises(ObjectCorrupted, match="digest"):
        cachegen.decode(blob, transforms=stored_transforms(store))
    garbage = b"not a transform at all"
    store.put(STORE_PREFIX + hashlib.sha256(garbage).hexdigest(), garbage)
    with pytest.raises(ObjectCorrupted, match="magic"):
        stored_transforms(store)(hashlib.sha256(garbage).hexdigest())


@requires_cuda
def test_device_blob_and_device_output(blob: bytes, transform: Transform) -> None:
    """A transform blob in GPU memory decodes (coefficients and inverse on the host) into a GPU
    output equal to the host decode."""
    torch = pytest.importorskip("torch")
    host = cachegen.decode(blob, transforms=transform)
    device_blob = torch.frombuffer(bytearray(blob), dtype=torch.uint8).cuda()
    out = cachegen.decode(device_blob, transforms=transform)
    assert out.is_cuda
    np.testing.assert_array_equal(out.cpu().numpy(), host)
    into = cachegen.decode(blob, transforms=transform, device="cuda")
    np.testing.assert_array_equal(into.cpu().numpy(), host)


def test_cli_inspect_names_the_transform(blob: bytes, transform: Transform, tmp_path, capsys):
    from cachegen.cli import main

    path = tmp_path / "t.cgkv"
    path.write_bytes(blob)
    assert main(["inspect", str(path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["version"] == 5
    assert facts["transform"] == {"digest": transform.digest(), "position": 37}


def test_store_resolver_finds_a_transform_stored_after_a_miss(blob, transform) -> None:
    store = MemoryStore()
    resolver = stored_transforms(store)
    assert resolver(transform.digest()) is None
    put_transform(store, transform)
    assert resolver(transform.digest()).digest() == transform.digest()
    store.delete(STORE_PREFIX + transform.digest())  # a hit is kept: fetched once
    assert resolver(transform.digest()) is not None
