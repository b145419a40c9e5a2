"""Unit tests of the vLLM connector's parts that need no vLLM: config, identity, the
scheduler-side decision, the paged-layout adapter (against numpy), the loader engine over
blocks, the deadline store and the background saver."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import cachegen
from cachegen.context import Context, open_context, save_context
from cachegen.store import ContextMissing, MemoryStore, StoreUnavailable
from cachegen.stream import BandwidthEstimator, CostModel, Loader
from cachegen.vllm import blocks
from cachegen.vllm.config import ConfigError, ConnectorConfig
from cachegen.vllm.deadline import DeadlineStore, call_with_deadline
from cachegen.vllm.engine import VllmEngine
from cachegen.vllm.identity import Identity, model_name
from cachegen.vllm.planning import loadable_tokens, tokens_to_load
from cachegen.vllm.saver import SaveJob, Saver


# -- config ----------------------------------------------------------------------------------
def test_config_defaults_and_keys() -> None:
    cfg = ConnectorConfig.from_extra(
        {"store": "file:///tmp/x", "levels": [15, 9], "load_level": 9, "chunk_tokens": 512}
    )
    assert cfg.levels == (9, 15) and cfg.load_level == 9 and cfg.chunk_tokens == 512
    cfg.check_block_size(128)
    with pytest.raises(ConfigError, match="multiple of the block size"):
        cfg.check_block_size(96)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({}, "needs 'store'"),
        ({"store": "file:///x", "level": 3}, "unknown CacheGenConnector keys"),
        ({"store": "file:///x", "levels": [0]}, "unknown levels"),
        ({"store": "file:///x", "levels": "15"}, "list of ints"),
        ({"store": "file:///x", "levels": [15], "load_level": 9}, "not one of levels"),
        ({"store": "file:///x", "slo_s": 0}, "slo_s must be a positive"),
        ({"store": "file:///x", "chunk_tokens": -256}, "chunk_tokens must be"),
        ({"store": "s3://b/p?secret_access_key=abc"}, "environment"),
        ({"store": "redis://user:hunter2@host:6379/0"}, "password"),
        ({"store": "file:///x", "aws_secret": "abc"}, "credentials"),
    ],
)
def test_config_refuses(extra: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ConnectorConfig.from_extra(extra)


def test_config_store_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ConnectorConfig.from_extra({"store": "env:CG_TEST_STORE"})
    with pytest.raises(ConfigError, match="not set"):
        cfg.store_url()
    monkeypatch.setenv("CG_TEST_STORE", "redis://:pw@host:6379/0")
    assert cfg.store_url() == "redis://:pw@host:6379/0"


# -- identity --------------------------------------------------------------------------------
def _identity(**changes: object) -> Identity:
    base = dict(
        model="m@1", dtype="bfloat16", layers=30, kv_heads=3, head_dim=64, tp_rank=0, tp_size=1
    )
    return Identity(**(base | changes))


def test_identity_separates_models_dtypes_geometry_and_ranks() -> None:
    ids = {
        _identity().model_id,
        _identity(model="other@1").model_id,
        _identity(dtype="float16").model_id,
        _identity(kv_heads=1, tp_rank=0, tp_size=3).model_id,
        _identity(kv_heads=1, tp_rank=1, tp_size=3).model_id,
        _identity(layers=29).model_id,
    }
    assert len(ids) == 6
    assert _identity().kv_elements_per_token == 30 * 2 * 3 * 64
    with pytest.raises(ValueError, match="rank"):
        _identity(tp_rank=2, tp_size=2)


def test_model_name_digests_the_config_unless_set() -> None:
    a = model_name("smollm2", '{"rms_norm_eps": 1e-5}')
    assert a.startswith("smollm2@") and a == model_name("smollm2", '{"rms_norm_eps": 1e-5}')
    assert a != model_name("smollm2", '{"rms_norm_eps": 2e-5}')
    assert model_name("smollm2", "{}", override="team/model-v3") == "team/model-v3"


def test_ranks_never_load_each_others_chunks() -> None:
    """Tensor-parallel ranks hold different head shards: one rank's chunks miss for another
    (a 2-core CPU vLLM cannot run TP, so this is checked here, on the keys themselves)."""
    store = MemoryStore()
    ids = np.arange(512)
    kv = np.ones((2, 2, 512, 1, 8), np.float16)
    rank0 = _identity(kv_heads=1, tp_size=2).model_id
    rank1 = _identity(kv_heads=1, tp_rank=1, tp_size=2).model_id
    save_context(store, rank0, ids, kv, levels=[15], chunk_tokens=256)

    assert open_context(store, rank0, ids, chunk_tokens=256).prefix_tokens == 512
    with pytest.raises(ContextMissing):
        open_context(store, rank1, ids, chunk_tokens=256)


# -- scheduler-side decision -----------------------------------------------------------------
def test_loadable_tokens_leaves_one_token_to_compute() -> None:
    assert loadable_tokens(2048, 256) == 1792
    assert loadable_tokens(2049, 256) == 2048
    assert loadable_tokens(255, 256) == 0


@pytest.fixture
def stored_prefix() -> Context:
    """A 2,048-token context of a 30-layer, 3-head model stored at levels 9 and 15."""
    store = MemoryStore()
    kv = np.random.default_rng(0).standard_normal((30, 2, 2048, 3, 64)).astype(np.float16)
    save_context(store, "m", np.arange(2048), kv, levels=[9, 15], chunk_tokens=256)
    return open_context(store, "m", np.arange(2048), chunk_tokens=256)


def _estimator(bps: float) -> BandwidthEstimator:
    est = BandwidthEstimator()
    for _ in range(4):
        est.add(int(bps), 1.0)
    return est


def test_tokens_to_load_follows_link_and_engine(stored_prefix: Context) -> None:
    per_token = 30 * 2 * 3 * 64
    costs = CostModel(decode_eps=5e8, prefill_tps=1000.0)
    args = (stored_prefix, costs)
    fast = tokens_to_load(*args, _estimator(125e6), 1.0, per_token, 2100, None)
    slow = tokens_to_load(*args, _estimator(1e4), 1.0, per_token, 2100, None)
    relaxed = tokens_to_load(*args, _estimator(125e6), 10.0, per_token, 2100, None)
    # 1 Gbit/s: only loading meets the 1 s SLO, and only as much as it needs (each chunk is lossy)
    assert 0 < fast <= 2048 and fast % 256 == 0
    assert slow == 0  # 80 kbit/s: recomputing all 2,100 tokens beats waiting
    assert relaxed == 0  # recomputing (exact) fits a 10 s SLO: nothing lossy is loaded


def test_tokens_to_load_takes_all_while_unmeasured_or_fixed(stored_prefix: Context) -> None:
    per_token = 30 * 2 * 3 * 64
    slow = _estimator(1e4)
    assert tokens_to_load(stored_prefix, None, slow, 1.0, per_token, 2100, None) == 2048
    costs = CostModel(5e8, 1000.0)
    assert tokens_to_load(stored_prefix, costs, slow, 1.0, per_token, 2100, 9) == 2048
    assert tokens_to_load(stored_prefix, costs, slow, 1.0, per_token, 2100, 27) == 0


# -- paged layouts against a numpy reference -------------------------------------------------
def _numpy_blocks(layout: str, cache: np.ndarray, block_ids: list[int]) -> np.ndarray:
    """Reference: KV [2, tokens, heads, dim] of `block_ids`, read element by element."""
    if layout == "vllm-cpu":
        nb, heads, bs, two_dim = cache.shape
        dim = two_dim // 2
        page = cache.reshape(nb, heads, 2 * bs, dim)  # K rows, then V rows per (block, head)
        out = np.empty((2, len(block_ids) * bs, heads, dim), cache.dtype)
        for i, b in enumerate(block_ids):
            for h in range(heads):
                for t in range(bs):
                    out[0, i * bs + t, h] = page[b, h, t]
                    out[1, i * bs + t, h] = page[b, h, bs + t]
        return out
    if layout == "flash-nhd":
        _, nb, bs, heads, dim = cache.shape
        return cache[:, block_ids].reshape(2, -1, heads, dim)
    _, nb, heads, bs, dim = cache.shape  # flash-hnd
    return cache[:, block_ids].transpose(0, 1, 3, 2, 4).reshape(2, -1, heads, dim)


_SHAPES = {
    "vllm-cpu": (9, 3, 16, 2 * 8),
    "flash-nhd": (2, 9, 16, 3, 8),
    "flash-hnd": (2, 9, 3, 16, 8),
}


@pytest.mark.parametrize("layout", blocks.LAYOUTS)
def test_gather_matches_numpy_reference(layout: str) -> None:
    rng = np.random.default_rng(1)
    caches = [rng.standard_normal(_SHAPES[layout]).astype(np.float32) for _ in range(2)]
    ids = [7, 2, 5]
    got = blocks.gather([torch.from_numpy(c) for c in caches], layout, ids).numpy()
    ref = np.stack([_numpy_blocks(layout, c, ids) for c in caches])
    np.testing.assert_array_equal(got, ref)
    assert blocks.kv_geometry(torch.from_numpy(caches[0]), layout) == (9, 16, 3, 8)


@pytest.mark.parametrize("layout", blocks.LAYOUTS)
def test_decode_blocks_writes_only_its_blocks(layout: str) -> None:
    rng = np.random.default_rng(2)
    caches = [
        torch.from_numpy(rng.standard_normal(_SHAPES[layout]).astype(np.float16)) for _ in range(2)
    ]
    before = [c.clone() for c in caches]
    kv = rng.standard_normal((2, 2, 32, 3, 8)).astype(np.float16)
    blob = cachegen.encode(kv, level=27)
    assert blocks.decode_blocks(blob, caches, layout, [4, 1]) == 32
    expect = cachegen.decode(blob)
    for layer, cache in enumerate(caches):
        np.testing.assert_array_equal(_numpy_blocks(layout, cache.numpy(), [4, 1]), expect[layer])
        untouched = [b for b in range(9) if b not in (4, 1)]
        assert torch.equal(
            blocks.gather([cache], layout, untouched),
            blocks.gather([before[layer]], layout, untouched),
        )


def test_decode_blocks_refuses_misfits_before_writing() -> None:
    caches = [torch.zeros(_SHAPES["vllm-cpu"], dtype=torch.float16) for _ in range(2)]
    blob = cachegen.encode(np.ones((2, 2, 32, 3, 8), np.float16), level=15)
    with pytest.raises(ValueError, match="these blocks take"):
        blocks.decode_blocks(blob, caches, "vllm-cpu", [1, 2, 3])  # 48 slots for 32 tokens
    with pytest.raises(ValueError, match="block ids"):
        blocks.decode_blocks(blob, caches, "vllm-cpu", [1, 9])
    with pytest.raises(cachegen.FormatError):
        blocks.decode_blocks(blob[:-10], caches, "vllm-cpu", [1, 2])
    assert all(not c.any() for c in caches)
    with pytest.raises(ValueError, match="unknown KV layout"):
        blocks.gather(caches, "paged-xyz", [0])


# -- the loader's engine over blocks ---------------------------------------------------------
def _engine(caches: list[torch.Tensor]) -> VllmEngine:
    return VllmEngine("test", caches, "vllm-cpu", 16, 2 * 2 * 3 * 8, 1e4)


def test_engine_loads_a_stored_prefix_into_blocks() -> None:
    rng = np.random.default_rng(3)
    kv = rng.standard_normal((2, 2, 96, 3, 8)).astype(np.float16)
    ids = np.arange(96)
    store = MemoryStore()
    save_context(store, "m", ids, kv, levels=[15, 27], chunk_tokens=32)
    caches = [torch.zeros(_SHAPES["vllm-cpu"], dtype=torch.float16) for _ in range(2)]
    engine = _engine(caches)
    engine.bind([8, 0, 3, 5, 6, 7])
    loader = Loader(store, engine, CostModel(1e9, 1e4), 1.0, policy=lambda step: 27)
    result = loader.load("m", ids, chunk_tokens=32)
    assert result.cache == 96 and result.report.choices == [27, 27, 27]
    got = blocks.gather(caches, "vllm-cpu", [8, 0, 3, 5, 6, 7]).numpy()
    ref = np.concatenate(
        [
            cachegen.decode(
                cachegen.encode(kv[:, :, i : i + 32], level=27, position=i, context_end=96)
            )
            for i in (0, 32, 64)
        ],
        axis=2,
    )
    np.testing.assert_array_equal(got, ref)


def test_engine_prefix_ends_at_the_first_missing_chunk() -> None:
    kv = np.ones((2, 2, 96, 3, 8), np.float16)
    store = MemoryStore()
    ctx = save_context(store, "m", np.arange(96), kv, levels=[15], chunk_tokens=32)
    store.delete(ctx.chunks[1].levels[15].key)  # the middle chunk's blob is gone
    caches = [torch.zeros(_SHAPES["vllm-cpu"], dtype=torch.float16) for _ in range(2)]
    engine = _engine(caches)
    engine.bind(range(6))
    result = Loader(store, engine, CostModel(1e9, 1e4), 1.0, policy=lambda s: 15).load(
        "m", np.arange(96), chunk_tokens=32
    )
    assert result.cache == 32  # chunk 2 arrived but lies past the gap: not taken
    assert not caches[0][2:].any()


# -- deadline store and saver ----------------------------------------------------------------
class _Silent(MemoryStore):
    """A store that never answers reads (a server that accepts and then says nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def _get(self, key: str) -> bytes:
        self.release.wait()
        return super()._get(key)


def test_deadline_store_gives_up_on_a_silent_store() -> None:
    inner = _Silent()
    inner.put("k", b"v")
    store = DeadlineStore(inner, 0.2)
    with pytest.raises(StoreUnavailable, match="no answer within 0.2 s"):
        store.get("k")
    inner.release.set()
    assert store.get("k") == b"v"
    with pytest.raises(KeyError):
        call_with_deadline(lambda: {}["x"], 1.0, "lookup")  # errors pass through


def test_saver_runs_jobs_in_order_and_drops_when_full() -> None:
    done: list[str] = []
    gate = threading.Event()

    def save(job: SaveJob) -> None:
        gate.wait()
        if job.request_id == "bad":
            raise RuntimeError("store down")
        done.append(job.request_id)

    saver = Saver(save)
    jobs = [SaveJob(str(i), [1], None, None) for i in range(8)] + [SaveJob("bad", [], None, None)]
    accepted = [saver.submit(j) for j in jobs]
    assert not all(accepted) and saver.dropped == accepted.count(False)
    gate.set()
    assert saver.flush(10.0)
    kept = [j.request_id for j, ok in zip(jobs, accepted, strict=True) if ok]
    assert done == [r for r in kept if r != "bad"]
    saver.close(1.0)
