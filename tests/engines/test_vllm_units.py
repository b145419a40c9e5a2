"""Unit tests of the vLLM connector's parts that need no vLLM: config, identity, the
scheduler-side decision, the paged-layout adapter (against numpy), the loader engine over
blocks, the deadline store and the background saver."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import cachegen
from cachegen.context import Context, open_context, save_context
from cachegen.paged import PagedKV
from cachegen.store import ContextMissing, MemoryStore, StoreUnavailable
from cachegen.stream import BandwidthEstimator, CostModel, Loader, fixed
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


def test_config_refuses_packed_cpu_pages() -> None:
    """vLLM's AMX attention packs its CPU pages; plain ones (and GPUs: None) are read as is."""
    for isa in (None, "vec", "vec16"):
        ConnectorConfig.check_cpu_attention(isa)
    with pytest.raises(ConfigError, match="'amx' kernels.*dtype float16 or float32"):
        ConnectorConfig.check_cpu_attention("amx")


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
    # 80 kbit/s: recomputing all 2,100 tokens beats waiting, but a plan that never loads
    # never measures the link again: the first chunk is loaded as a probe.
    assert slow == 256
    assert relaxed == 0  # recomputing (exact) fits a 10 s SLO: nothing lossy is loaded


def test_tokens_to_load_takes_all_while_unmeasured_or_fixed(stored_prefix: Context) -> None:
    per_token = 30 * 2 * 3 * 64
    slow = _estimator(1e4)
    assert tokens_to_load(stored_prefix, None, slow, 1.0, per_token, 2100, None) == 2048
    costs = CostModel(5e8, 1000.0)
    assert tokens_to_load(stored_prefix, costs, slow, 1.0, per_token, 2100, 9) == 2048
    assert tokens_to_load(stored_prefix, costs, slow, 1.0, per_token, 2100, 27) == 0


# -- the loader's engine over vLLM's CPU blocks ----------------------------------------------
LAYERS, HEADS, DIM, BLOCK, NBLOCKS = 2, 3, 8, 16, 9


def _cpu_caches() -> list[torch.Tensor]:
    """Per-layer caches as vLLM's CPU backend registers them: [blocks, heads, block, 2*dim]."""
    return [torch.zeros((NBLOCKS, HEADS, BLOCK, 2 * DIM), dtype=torch.float16) for _ in range(2)]


def _read_cpu_blocks(cache: torch.Tensor, block_ids: list[int]) -> np.ndarray:
    """Reference reader of the CPU page: per (block, head), K as [dim, block] then V as
    [block, dim] (vLLM's cpu_attn_reshape_and_cache), into [2, tokens, heads, dim]."""
    flat = cache.numpy().reshape(NBLOCKS, HEADS, 2 * BLOCK * DIM)
    out = np.empty((2, len(block_ids) * BLOCK, HEADS, DIM), np.float16)
    for i, b in enumerate(block_ids):
        for h in range(HEADS):
            page = flat[b, h]
            out[0, i * BLOCK : (i + 1) * BLOCK, h] = page[: BLOCK * DIM].reshape(DIM, BLOCK).T
            out[1, i * BLOCK : (i + 1) * BLOCK, h] = page[BLOCK * DIM :].reshape(BLOCK, DIM)
    return out


def _engine(caches: list[torch.Tensor]) -> VllmEngine:
    return VllmEngine("test", caches, "vllm-cpu", BLOCK, LAYERS * 2 * HEADS * DIM, 1e4)


def _kv(tokens: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((LAYERS, 2, tokens, HEADS, DIM)).astype(np.float16)


def test_engine_decodes_a_stored_prefix_into_blocks_exactly() -> None:
    kv, ids = _kv(96), np.arange(96)
    store = MemoryStore()
    save_context(store, "m", ids, kv, levels=[15, cachegen.LOSSLESS], chunk_tokens=32)
    caches = _cpu_caches()
    engine = _engine(caches)
    blocks = [8, 0, 3, 5, 6, 7]
    engine.bind(blocks)
    loader = Loader(store, engine, CostModel(1e9, 1e4), 1.0, policy=fixed(cachegen.LOSSLESS))
    result = loader.load("m", ids, chunk_tokens=32)
    assert result.cache == 96 and result.report.loaded_tokens == 96
    for layer, cache in enumerate(caches):
        np.testing.assert_array_equal(_read_cpu_blocks(cache, blocks), kv[layer])
    assert not caches[0][[1, 2, 4]].any()  # blocks outside the request untouched


def test_engine_prefix_ends_at_the_first_missing_chunk() -> None:
    store = MemoryStore()
    ctx = save_context(store, "m", np.arange(96), _kv(96), levels=[15], chunk_tokens=32)
    store.delete(ctx.chunks[1].levels[15].key)  # the middle chunk's blob is gone
    caches = _cpu_caches()
    engine = _engine(caches)
    engine.bind(range(6))
    result = Loader(store, engine, CostModel(1e9, 1e4), 1.0, policy=fixed(15)).load(
        "m", np.arange(96), chunk_tokens=32, prefix_tokens=96
    )
    assert result.cache == 32 and result.report.prefix_end == "missing"
    assert not caches[0][2:].any()  # chunk 2 is not written past the gap


def test_engine_refuses_a_chunk_past_its_blocks() -> None:
    engine = _engine(_cpu_caches())
    engine.bind([0])
    engine.begin()
    with pytest.raises(ValueError, match="does not fit"):
        engine.append_kv(cachegen.encode(_kv(32), level=15))
    with pytest.raises(RuntimeError, match="prefix engine"):
        engine.append_text(np.arange(4))


def test_save_from_paged_blocks_stores_the_same_chunks_as_contiguous() -> None:
    """What the connector saves (chunks encoded in place from a copy of the blocks) is what
    `save_context` stores from the gathered cache: same keys, same bytes."""
    kv, ids = _kv(64, seed=4), np.arange(64)
    caches = _cpu_caches()
    blocks = [5, 2, 7, 0]
    engine = _engine(caches)
    engine.bind(blocks)
    engine.begin()
    for start in (0, 32):
        engine.append_kv(cachegen.encode(kv[:, :, start : start + 32], level=cachegen.LOSSLESS))
    paged, flat = MemoryStore(), MemoryStore()
    save_context(
        paged,
        "m",
        ids,
        PagedKV(caches, "vllm-cpu", blocks, 64),
        levels=[9],
        chunk_tokens=32,
        salt="tenant",
    )
    flat_kv = torch.from_numpy(kv)  # a torch source, as the paged one is
    save_context(flat, "m", ids, flat_kv, levels=[9], chunk_tokens=32, salt="tenant")
    assert paged.list() == flat.list()
    assert all(paged.get(k) == flat.get(k) for k in flat.list() if k.endswith(".cg"))


def test_cache_salt_separates_tenants() -> None:
    store = MemoryStore()
    save_context(store, "m", np.arange(64), _kv(64), levels=[9], chunk_tokens=32, salt="a")
    assert open_context(store, "m", np.arange(64), chunk_tokens=32, salt="a").prefix_tokens == 64
    with pytest.raises(ContextMissing):
        open_context(store, "m", np.arange(64), chunk_tokens=32, salt="b")


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


def test_cachegen_never_imports_vllm_itself() -> None:
    code = (
        "import sys, cachegen, cachegen.vllm, cachegen.vllm.config, cachegen.vllm.engine; "
        "assert 'vllm' not in sys.modules, 'vllm imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_saver_waits_for_an_idle_engine() -> None:
    busy = threading.Event()
    busy.set()
    saved = threading.Event()
    saver = Saver(lambda job: saved.set(), idle=lambda: not busy.is_set())
    saver.submit(SaveJob("r", [1], None, None))
    assert not saved.wait(0.3)  # the engine is busy: the job waits
    busy.clear()
    assert saved.wait(5.0)
    saver.close(1.0)
