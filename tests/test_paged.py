"""Paged KV caches: encode_paged / decode_paged against a plain numpy gather / scatter of each
engine layout, over dtypes and random block tables; bad block ids, shapes and dtypes raise typed
errors before anything is written."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from kvgen import synthetic_kv

import cachegen
from cachegen import _core, paged
from cachegen.config import CodecConfig
from cachegen.importance import token_scores
from cachegen.tensors import GroupView, Paging
from cachegen.transform import Rope

LAYERS, HEADS, DIM, BLOCK, BLOCKS = 3, 2, 16, 16, 12
GEOMETRY = (BLOCKS, HEADS, BLOCK, DIM)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def empty_cache(
    layout: str,
    dtype: torch.dtype,
    seed: int,
    shape: tuple[int, int, int, int] = GEOMETRY,
    offset: int = 0,
) -> torch.Tensor:
    """A layer cache of logical shape [blocks, heads, block, 2 * dim] (`shape` gives blocks,
    heads, block, dim) in the layout's physical order, filled with noise (what other requests
    left there), starting `offset` elements into its memory (torch aligns it to 64 bytes)."""
    blocks, heads, block, dim = shape
    g = torch.Generator().manual_seed(seed)
    nhd = layout == "flash-nhd"
    physical = (blocks, block, heads, 2 * dim) if nhd else (blocks, heads, block, 2 * dim)
    x = torch.randn(physical, generator=g).to(dtype)
    memory = torch.empty(x.numel() + offset, dtype=dtype)[offset:].view(physical)
    memory.copy_(x)
    return memory.permute(0, 2, 1, 3) if nhd else memory


def split(layout: str, cache: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Reference K and V of every slot, [blocks, heads, block, dim] views of the cache (fp32
    numpy views keep the cache's memory: writes through them reach it)."""
    blocks, heads, block, width = cache.shape
    dim = width // 2
    if layout == "vllm-cpu":  # each (block, head) page: K as [dim, block], then V [block, dim]
        page = cache.reshape(blocks, heads, 2 * block * dim)
        k = page[:, :, : block * dim].reshape(blocks, heads, dim, block).transpose(2, 3)
        v = page[:, :, block * dim :].reshape(blocks, heads, block, dim)
        return k, v
    return cache[..., :dim], cache[..., dim:]


def gather(layout: str, caches: list[torch.Tensor], ids: list[int], tokens: int) -> torch.Tensor:
    """Tokens [0, tokens) of blocks `ids` as a stacked [layers, 2, tokens, heads, dim] cache."""
    out = []
    for cache in caches:
        _, heads, _, width = cache.shape
        kv = [
            x[ids].transpose(1, 2).reshape(-1, heads, width // 2)[:tokens]
            for x in split(layout, cache)
        ]
        out.append(torch.stack(kv))
    return torch.stack(out)


def scatter(layout: str, caches: list[torch.Tensor], ids: list[int], kv: torch.Tensor) -> None:
    for cache, layer in zip(caches, kv, strict=True):
        for x, src in zip(split(layout, cache), layer, strict=True):
            block = cache.shape[2]
            for t in range(src.shape[0]):
                x[ids[t // block], :, t % block] = src[t]


def filled(layout: str, dtype: torch.dtype, ids: list[int], tokens: int) -> list[torch.Tensor]:
    caches = [empty_cache(layout, dtype, seed=i) for i in range(LAYERS)]
    kv = torch.from_numpy(synthetic_kv(LAYERS, tokens, HEADS, DIM, "float32", seed=7)).to(dtype)
    scatter(layout, caches, ids, kv)
    return caches


def random_table(seed: int, tokens: int) -> list[int]:
    """Distinct, shuffled, non-contiguous block ids for `tokens` tokens."""
    rng = np.random.default_rng(seed)
    return [int(b) for b in rng.permutation(BLOCKS)[: -(-tokens // BLOCK)]]


CASES = [(lay, dt) for lay in paged.LAYOUTS for dt in DTYPES]


@pytest.mark.parametrize(("layout", "dtype"), CASES)
@pytest.mark.parametrize("tokens", [1, BLOCK, 5 * BLOCK + 7])
def test_encode_paged_equals_encode_of_gathered(layout, dtype, tokens):
    ids = random_table(tokens, tokens)
    caches = filled(layout, dtype, ids, tokens)
    contiguous = gather(layout, caches, ids, tokens)
    for level in (1, cachegen.DEFAULT_LEVEL):
        blob = paged.encode_paged(caches, layout, ids, tokens, level=level, position=3)
        assert blob == cachegen.encode(contiguous, level=level, position=3)


@pytest.mark.parametrize(("layout", "dtype"), CASES)
def test_decode_paged_writes_exactly_the_slots(layout, dtype, cpu_path):
    tokens = 6 * BLOCK + 5
    ids = random_table(1, tokens)
    blob = paged.encode_paged(filled(layout, dtype, ids, tokens), layout, ids, tokens)
    target_ids = random_table(2, tokens)  # decode into other blocks than were encoded
    caches = [empty_cache(layout, dtype, seed=10 + i) for i in range(LAYERS)]
    before = [c.clone() for c in caches]
    paged.decode_paged(blob, caches, layout, target_ids)
    assert torch.equal(gather(layout, caches, target_ids, tokens), cachegen.decode(blob))
    # Everything but the written slots is unchanged: write the old values back, compare.
    scatter(layout, caches, target_ids, gather(layout, before, target_ids, tokens))
    for c, b in zip(caches, before, strict=True):
        assert torch.equal(c, b)


@pytest.mark.parametrize("offset", [0, 8])
@pytest.mark.parametrize(("layout", "dtype"), CASES)
def test_decode_paged_over_many_tiles_and_segments(layout, dtype, offset, cpu_path):
    """Segments that start off a 32-token boundary and decode in several tiles each (the vector
    paths cut the tiles of transposed key pages to 32-token bounds), after verbatim sink rows,
    in caches whose head runs and key-page rows are whole cache lines (written with
    non-temporal stores) or, 8 elements in, are not: every slot holds what `decode` gives."""
    blocks, heads, block, dim, tokens = 48, 3, 32, 32, 700
    kv = torch.from_numpy(synthetic_kv(2, tokens, heads, dim, "float32", seed=11)).to(dtype)
    # 209-token segments; a tile is 85 rows of these 96 channels.
    config = dataclasses.replace(
        CodecConfig.from_level(cachegen.DEFAULT_LEVEL),
        segment_symbols=209 * heads * dim,
        sink_tokens=4,
    )
    blob = cachegen.encode(kv, config=config)
    ids = [int(b) for b in np.random.default_rng(5).permutation(blocks)[: -(-tokens // block)]]
    shape = (blocks, heads, block, dim)
    caches = [empty_cache(layout, dtype, 20 + i, shape, offset) for i in range(2)]
    paged.decode_paged(blob, caches, layout, ids)
    assert torch.equal(gather(layout, caches, ids, tokens), cachegen.decode(blob))


def test_numpy_caches_and_numpy_ids():
    tokens = 2 * BLOCK + 3
    ids = np.array(random_table(3, tokens), dtype=np.int64)
    caches = [c.numpy() for c in filled("flash-hnd", torch.float16, list(ids), tokens)]
    blob = paged.encode_paged(caches, "flash-hnd", ids, tokens, level=5)
    contiguous = gather("flash-hnd", [torch.from_numpy(c) for c in caches], list(ids), tokens)
    assert blob == cachegen.encode(contiguous.numpy(), level=5)
    out = [np.zeros_like(c) for c in caches]
    paged.decode_paged(blob, out, "flash-hnd", ids)
    got = gather("flash-hnd", [torch.from_numpy(c) for c in out], list(ids), tokens)
    assert np.array_equal(got.numpy(), cachegen.decode(blob))


@pytest.mark.parametrize(("layout", "dtype"), CASES)
def test_paged_layers_read_once_decode_many(layout, dtype):
    """An engine's PagedLayers: caches read once, each blob's head read once (its token count
    picks the blocks), and chunk after chunk lands in its blocks as decode_paged puts it."""
    chunk, chunks = 2 * BLOCK, 3
    tokens = chunk * chunks
    ids = random_table(6, tokens)
    kv = gather(layout, filled(layout, dtype, ids, tokens), ids, tokens)
    blobs = [cachegen.encode(kv[:, :, i : i + chunk]) for i in range(0, tokens, chunk)]
    caches = [empty_cache(layout, dtype, seed=30 + i) for i in range(LAYERS)]
    want = [c.clone() for c in caches]
    layers = paged.PagedLayers.of(caches, layout)
    for n, blob in enumerate(blobs):
        head = layers.read(blob)
        assert head.tokens == chunk and head.info.num_layers == LAYERS
        blocks = ids[n * chunk // BLOCK : (n + 1) * chunk // BLOCK]
        layers.decode(head, blocks)
        paged.decode_paged(blob, want, layout, blocks)
    for c, w in zip(caches, want, strict=True):
        assert torch.equal(c, w)


def test_paged_layers_checks_each_blob():
    """What decode_paged refuses, PagedLayers refuses too: blobs of another shape, layer
    count or dtype, and block ids that do not fit, before anything is written."""
    tokens = 2 * BLOCK
    ids = random_table(7, tokens)
    caches = [empty_cache("flash-hnd", torch.float16, seed=40 + i) for i in range(LAYERS)]
    before = [c.clone() for c in caches]
    layers = paged.PagedLayers.of(caches, "flash-hnd")
    kv = torch.from_numpy(synthetic_kv(LAYERS, tokens, HEADS, DIM, "float32", seed=3))
    with pytest.raises(ValueError, match="layers"):
        layers.decode(cachegen.encode(kv[:2].half()), ids)
    with pytest.raises(ValueError, match="dtype"):
        layers.decode(cachegen.encode(kv), ids)
    with pytest.raises(ValueError, match="heads"):
        layers.decode(cachegen.encode(kv[..., : DIM // 2].half()), ids)
    with pytest.raises(ValueError, match="block ids"):
        layers.decode(layers.read(cachegen.encode(kv.half())), ids[:1])
    with pytest.raises(cachegen.FormatError):
        layers.read(b"not a blob")
    for c, b in zip(caches, before, strict=True):
        assert torch.equal(c, b)
    caches[1].set_(caches[1].clone())  # its memory moved: the views read at `of` are stale
    with pytest.raises(ValueError, match="moved"):
        layers.decode(cachegen.encode(kv.half()), ids)


def setup_blob(layout="flash-hnd", dtype=torch.float16):
    tokens = 3 * BLOCK + 1
    ids = random_table(4, tokens)
    caches = filled(layout, dtype, ids, tokens)
    return paged.encode_paged(caches, layout, ids, tokens), ids, caches


BAD_IDS = [
    ([0, 1, 2, -1], "range"),
    ([0, 1, 2, BLOCKS], "range"),
    ([0, 1, 2, 1], "distinct"),
    ([0, 1, 2], "need 4 block ids"),
    ([0, 1, 2, 3, 4], "need 4 block ids"),
    ([[0, 1, 2, 3]], "1-D"),
    ([0.0, 1.0, 2.0, 3.0], "integers"),
]


@pytest.mark.parametrize(("ids", "match"), BAD_IDS)
def test_bad_block_ids_raise_before_writing(ids, match):
    blob, _, caches = setup_blob()
    before = [c.clone() for c in caches]
    with pytest.raises(ValueError, match=match):
        paged.decode_paged(blob, caches, "flash-hnd", ids)
    with pytest.raises(ValueError, match=match):
        paged.encode_paged(caches, "flash-hnd", ids, 3 * BLOCK + 1)
    assert all(torch.equal(c, b) for c, b in zip(caches, before, strict=True))


def test_core_checks_block_ids_itself():
    """A paged view handed to the core directly: an id outside [0, num_blocks) is an error
    before anything is written, not an out-of-bounds write."""
    blob, _, caches = setup_blob()
    cache = caches[0]
    for bad in (-1, BLOCKS, 1 << 30):
        table = np.array([0, 1, 2, bad], dtype=np.int32)
        paging = Paging(table.ctypes.data, BLOCK, BLOCKS, cache.stride(0))
        strides = (cache.stride(2), cache.stride(1), 1)
        views = [
            GroupView(cache.data_ptr(), "float16", 3 * BLOCK + 1, HEADS, DIM, strides, paging)
        ] * (2 * LAYERS)
        before = cache.clone()
        with pytest.raises(ValueError, match="block id"):
            _core.Blob(blob).decode_into([v.native() for v in views])
        with pytest.raises(ValueError, match="block id"):
            _core.key_magnitudes(views[0].native())
        assert torch.equal(cache, before)


def test_wrong_caches_raise_before_writing():
    blob, ids, caches = setup_blob()
    other = [empty_cache("flash-hnd", torch.float16, 0)[:, :1] for _ in range(LAYERS)]
    wrong = {
        "heads": other,
        "dtype": [c.float() for c in caches],
        "layers": caches[:-1],
        "flash-hnd order": [empty_cache("flash-nhd", torch.float16, 0) for _ in range(LAYERS)],
        "2 \\* head_size": [c[..., :-1] for c in caches],
    }
    for match, bad in wrong.items():
        before = [c.clone() for c in bad]
        with pytest.raises(ValueError, match=match):
            paged.decode_paged(blob, bad, "flash-hnd", ids)
        assert all(torch.equal(c, b) for c, b in zip(bad, before, strict=True))
    with pytest.raises(ValueError, match="unknown paged layout"):
        paged.decode_paged(blob, caches, "flash", ids)
    with pytest.raises(ValueError, match="contiguous"):
        paged.encode_paged([c.transpose(2, 3) for c in caches], "vllm-cpu", ids, 3 * BLOCK + 1)


def test_corrupt_blob_is_a_format_error_before_writing():
    blob, ids, caches = setup_blob()
    before = [c.clone() for c in caches]
    for bad in (blob[:-9], blob[:100] + bytes([blob[100] ^ 1]) + blob[101:]):
        with pytest.raises(cachegen.FormatError):
            paged.decode_paged(bad, caches, "flash-hnd", ids)
    assert all(torch.equal(c, b) for c, b in zip(caches, before, strict=True))


def test_read_only_caches_are_refused():
    blob, ids, caches = setup_blob()
    arrays = [c.numpy() for c in caches]
    arrays[1].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        paged.decode_paged(blob, arrays, "flash-hnd", ids)


def test_importance_reads_gathered_keys_on_the_gpu_path():
    """A profile's token importance from paged keys: the host path (core, paged view) and the
    GPU path (keys gathered from a `PagedCache` or a `PagedKV`) give the same scores."""
    tokens = 2 * BLOCK + 9
    ids = random_table(6, tokens)
    caches = filled("vllm-cpu", torch.float16, ids, tokens)
    cache = paged.paged_views(caches, "vllm-cpu", ids, tokens)
    gpu_views = dataclasses.replace(cache.views, device=0)
    magnitudes = np.linspace(-1, 1, HEADS * DIM // 2)
    signed = np.linspace(1, -1, HEADS * DIM // 2 + HEADS * DIM)
    rope = Rope.from_thetas([1e4] * LAYERS, DIM)
    for coefficients, options in ((magnitudes, ()), (signed, (rope, 3))):
        for layer in range(LAYERS):
            host = token_scores(cache, cache.views, layer, coefficients, 1, *options)
            for source in (cache, paged.PagedKV(caches, "vllm-cpu", ids, tokens)):
                got = token_scores(source, gpu_views, layer, coefficients, 1, *options)
                assert np.array_equal(got, host)


def test_encode_reads_a_paged_kv_in_place():
    """`cachegen.encode` and `quantize` take a `PagedKV` as they take the gathered cache (a
    profile's importance read from the paged keys); decode points to `decode_paged`."""
    tokens = 3 * BLOCK + 5
    ids = random_table(7, tokens)
    caches = filled("flash-nhd", torch.float16, ids, tokens)
    kv = paged.PagedKV(caches, "flash-nhd", ids, tokens)
    contiguous = gather("flash-nhd", caches, ids, tokens)
    ones = ((1.0,) * HEADS,) * LAYERS
    row = tuple(np.linspace(-1, 1, HEADS * DIM // 2))
    profile = cachegen.ModelProfile("t", ones, ((2.0, 0.5),) * LAYERS, importance=(row,) * LAYERS)
    signed = dataclasses.replace(
        profile,
        importance=(row + tuple(np.linspace(1, -1, HEADS * DIM)),) * LAYERS,
        rope_thetas=(1e4,) * LAYERS,
    )
    for options in (
        {"level": 5},
        {"profile": profile, "position": 2, "context_end": 90},
        {"profile": signed, "position": 2, "context_end": 90},
    ):
        assert cachegen.encode(kv, **options) == cachegen.encode(contiguous, **options)
        paged_q, gathered_q = (
            cachegen.quantize(kv, **options),
            cachegen.quantize(contiguous, **options),
        )
        for a, b in zip(paged_q, gathered_q, strict=True):
            assert np.array_equal(a.symbols, b.symbols) and np.array_equal(a.a, b.a)
    with pytest.raises(TypeError, match="decode_paged"):
        cachegen.decode(cachegen.encode(kv), out=kv)


def test_layer_keys_gathers_the_keys():
    """The keys a profile's importance reads on a GPU cache (gathered with torch)."""
    tokens = 2 * BLOCK + 9
    ids = random_table(5, tokens)
    for layout in paged.LAYOUTS:
        caches = filled(layout, torch.bfloat16, ids, tokens)
        cache = paged.paged_views(caches, layout, ids, tokens)
        for layer in range(LAYERS):
            expected = gather(layout, caches, ids, tokens)[layer, 0]
            assert torch.equal(cache.layer_keys(layer), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("dim", "block", "tokens"), [(12, 16, 37), (20, 32, 75), (3, 8, 13)])
def test_transposed_key_pages_take_any_head_dim_and_token_count(dtype, dim, block, tokens):
    """vllm-cpu keys go in [head_dim, block_size] per page: eight channels and eight tokens at
    a time where they fit, the rest one by one; all of it lands where a numpy scatter puts it."""
    layers, heads, blocks = 2, 3, 2 * -(-tokens // block)
    kv = torch.from_numpy(synthetic_kv(layers, tokens, heads, dim, "float32", seed=3)).to(dtype)
    blob = cachegen.encode(kv, level=cachegen.DEFAULT_LEVEL)
    ids = [int(b) for b in np.random.default_rng(tokens).permutation(blocks)[: -(-tokens // block)]]
    caches = [torch.zeros(blocks, heads, block, 2 * dim, dtype=dtype) for _ in range(layers)]
    paged.decode_paged(blob, caches, "vllm-cpu", ids)
    want = cachegen.decode(blob)
    for layer, cache in enumerate(caches):
        page = cache.reshape(blocks, heads, 2 * block * dim)
        k = page[:, :, : block * dim].reshape(blocks, heads, dim, block).transpose(2, 3)
        v = page[:, :, block * dim :].reshape(blocks, heads, block, dim)
        for side, x in enumerate((k, v)):
            got = x[ids].transpose(1, 2).reshape(-1, heads, dim)[:tokens]
            assert torch.equal(got, want[layer, side])


def test_transform_blob_is_refused_before_writing():
    """A transform-coded blob holds coefficients, not a cache: paged decode refuses it."""
    from cachegen.transform import Rope, learn_transform

    tokens = 2 * BLOCK + 3
    ids = random_table(3, tokens)
    caches = [c.numpy() for c in filled("flash-hnd", torch.float16, ids, tokens)]
    kv = gather("flash-hnd", [torch.from_numpy(c) for c in caches], ids, tokens).numpy()
    t = learn_transform([kv.astype(np.float32)], Rope.from_thetas([1e4] * LAYERS, DIM))
    blob = cachegen.encode(kv, level=5, transform=t)
    out = [np.full_like(c, 3) for c in caches]
    with pytest.raises(cachegen.FormatError, match="transform"):
        paged.decode_paged(blob, out, "flash-hnd", ids)
    assert all((o == 3).all() for o in out)
