"""`CacheGenConnector`: vLLM's KV connector interface over cachegen's store and controller.

Scheduler side: for each new request, look up how much of its prompt is stored (whole chunks,
under this instance's identity and the request's ``cache_salt``), choose the cut point from
the measured link and engine speeds (`cachegen.stream.plan_prefix`), and tell vLLM that many tokens
come from outside. It also follows each prompt's prefill to hand the worker the blocks to save.

Worker side: before the forward pass, load each request's chunks through the streaming
controller (`cachegen.stream.Loader`, per-chunk level, re-planned as it measures), decoding
straight into the request's blocks. A chunk that is missing, corrupted, slow or undecodable ends
the prefix: its blocks and all after it are reported as load errors and vLLM recomputes them
(``kv_load_failure_policy: "recompute"``). After the forward pass, a finished prompt's whole
chunks are copied out of the blocks and saved by a background thread (`saver.Saver`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)
from vllm.platforms import current_platform

import cachegen
import cachegen.store
from cachegen import profiles
from cachegen.context import open_context, save_context
from cachegen.paged import PagedKV
from cachegen.store import StoreError
from cachegen.stream import CostModel, Loader, estimator_for, fixed, measure_decode_eps
from cachegen.stream.costs import default_cache_file, read_json

from .config import ConfigError, ConnectorConfig
from .deadline import DeadlineStore, call_with_deadline
from .engine import VllmEngine
from .identity import Identity, model_name
from .planning import loadable_tokens, tokens_to_load
from .saver import SaveJob, Saver

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

log = logging.getLogger("cachegen.vllm")

#: Seconds `shutdown` waits for queued saves.
_SHUTDOWN_SAVE_S = 30.0
#: Prefill steps shorter than this are not timed: fixed per-step costs would dominate.
_MIN_TIMED_PREFILL = 256
#: Quiet time after a forward pass that counts as an idle engine, for the saver.
_IDLE_GAP_S = 0.05
#: Recompute speed a fixed-level load is reported with before vLLM's own was measured.
_UNMEASURED_TPS = 1000.0


@dataclass
class LoadSpec:
    """Load the stored KV of `token_ids` into `block_ids` (scheduler -> worker)."""

    request_id: str
    token_ids: list[int]
    block_ids: list[int]
    salt: str | None
    #: Load every chunk at this level (None: the controller chooses per chunk).
    level: int | None


@dataclass
class SaveSpec:
    """Save the whole chunks `token_ids` whose KV lies in `block_ids` (scheduler -> worker)."""

    request_id: str
    token_ids: list[int]
    block_ids: list[int]
    salt: str | None


@dataclass
class CacheGenMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)
    #: The step's longest prefill: (tokens computed, tokens of context before them), to time
    #: vLLM's own recompute speed.
    prefill: tuple[int, int] = (0, 0)


@dataclass
class CacheGenWorkerMetadata(KVConnectorWorkerMetadata):
    """Per-request load outcomes and measured speeds (worker -> scheduler)."""

    pid: int = 0
    loads: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Transfers (bytes, seconds, whether a probe), for the scheduler's bandwidth estimate.
    samples: list[tuple[int, float, bool]] = field(default_factory=list)
    #: The worker's corrected `CostModel` fields, when they changed.
    costs: dict[str, float] | None = None

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        assert isinstance(other, CacheGenWorkerMetadata)
        loads = dict(self.loads)
        for rid, stats in other.loads.items():
            # Tensor-parallel ranks load their own shards: the request has what all have.
            if rid not in loads or stats["loaded_tokens"] < loads[rid]["loaded_tokens"]:
                loads[rid] = stats
        return CacheGenWorkerMetadata(
            self.pid, loads, self.samples + other.samples, self.costs or other.costs
        )


@dataclass
class _Track:
    """A prompt being prefilled whose whole chunks are saved once its prefill ends."""

    token_ids: list[int]
    block_ids: list[int]
    salt: str | None


def _layer_index(name: str) -> int:
    found = re.findall(r"\d+", name)
    if not found:
        raise ConfigError(f"cannot order KV cache layer {name!r}: no layer number in its name")
    return int(found[-1])


def _request_level(request: Request, default: int | None, levels: tuple[int, ...]) -> int | None:
    """The request's own ``kv_transfer_params={"cachegen": {"load_level": n}}``, else `default`."""
    params = (request.kv_transfer_params or {}).get("cachegen") or {}
    level = params.get("load_level", default)
    if level is not None and level not in levels:
        log.warning("cachegen: request %s asks for unsaved level %s", request.request_id, level)
        return default
    return level


def _cached_costs(key: str) -> CostModel | None:
    entry = read_json(default_cache_file()).get(key)
    try:
        return CostModel(
            float(entry["decode_eps"]), float(entry["prefill_tps"]), float(entry["prefill_ctx_s"])
        )
    except (TypeError, KeyError, ValueError):
        return None


class CacheGenConnector(KVConnectorBase_V1):
    """Saves prompts' KV caches to a cachegen store and loads stored prefixes (see module doc)."""

    def __init__(
        self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        tc = self._kv_transfer_config
        self.cfg = ConnectorConfig.from_extra(tc.kv_connector_extra_config)
        self._block_size = vllm_config.cache_config.block_size
        self.cfg.check_block_size(self._block_size)
        self.cfg.check_cpu_attention(_cpu_attention(vllm_config))
        if tc.kv_load_failure_policy != "recompute":
            log.warning(
                "cachegen: kv_load_failure_policy is %r; with 'recompute' a chunk that fails "
                "to load is recomputed instead of failing the request",
                tc.kv_load_failure_policy,
            )
        self._save_enabled = self.cfg.save and tc.is_kv_producer
        self._load_enabled = self.cfg.load and tc.is_kv_consumer
        self._store = cachegen.store.open(self.cfg.store_url())
        rank = 0
        if role == KVConnectorRole.WORKER:
            from vllm.distributed import get_tensor_model_parallel_rank

            rank = get_tensor_model_parallel_rank()
        self.identity = _identity(vllm_config, self.cfg, rank)
        self._engine_key = f"vllm:{self.identity.model_id}:{current_platform.device_name}"
        self._costs = self._initial_costs()
        # scheduler side
        self._lookups: dict[str, tuple[int, int, int | None]] = {}
        self._salts: dict[str, str | None] = {}
        self._pending_loads: dict[str, tuple[int, int | None]] = {}
        self._tracks: dict[str, _Track] = {}
        self._load_stats: dict[str, dict[str, Any]] = {}
        # worker side
        self._caches: list[torch.Tensor] = []
        self._layout = ""
        self._errors: set[int] = set()
        self._worker_meta = CacheGenWorkerMetadata(os.getpid())
        self._step_start = 0.0
        self._step_load_s = 0.0
        self._in_step = False
        self._last_step_end = 0.0
        worker = role == KVConnectorRole.WORKER
        self._saver = Saver(self._save_job, self._engine_idle) if worker else None
        self._profile = profiles.resolve(self.cfg.profile) if self._saver else None
        log.info("cachegen: %s connector for %s", role.name.lower(), self.identity.model_id)

    def _initial_costs(self) -> CostModel | None:
        """Speeds an earlier instance measured, or from the config; None if never measured."""
        cached = _cached_costs(self._engine_key)
        if cached is not None:
            return cached
        if self.cfg.prefill_tps is not None:
            return CostModel(measure_decode_eps(), self.cfg.prefill_tps)
        return None

    # ==============================================================================
    # Scheduler side
    # ==============================================================================
    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        rid = request.request_id
        self._salts[rid] = request.cache_salt
        if not self._load_enabled:
            return 0, False
        if rid not in self._lookups:  # vLLM may ask again: one store lookup per request
            level = _request_level(request, self.cfg.load_level, self.cfg.levels)
            take = self._lookup(request, num_computed_tokens, level)
            self._lookups[rid] = (num_computed_tokens, take, level)
        computed, take, _ = self._lookups[rid]
        return (take, False) if computed == num_computed_tokens else (0, False)

    def _lookup(self, request: Request, num_computed_tokens: int, level: int | None) -> int:
        """Tokens past `num_computed_tokens` to load for `request` (0: none)."""
        prompt = list(request.prompt_token_ids or [])
        limit = loadable_tokens(len(prompt), self.cfg.chunk_tokens)
        # Stored prefixes load from token 0: a request with local prefix-cache hits loads none.
        if limit == 0 or num_computed_tokens:
            return 0
        store = DeadlineStore(self._store, self.cfg.timeout_s)
        try:
            ctx = call_with_deadline(
                lambda: open_context(
                    store,
                    self.identity.model_id,
                    prompt[:limit],
                    chunk_tokens=self.cfg.chunk_tokens,
                    salt=request.cache_salt,
                ),
                self.cfg.timeout_s,
                "store lookup",
            )
        except StoreError as e:
            log.info("cachegen: request %s: no stored prefix (%s)", request.request_id, e)
            return 0
        return tokens_to_load(
            ctx,
            self._costs,
            estimator_for(self._store),
            self.cfg.slo_s,
            self.identity.kv_elements_per_token,
            len(prompt),
            level,
        )

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        if num_external_tokens > 0:
            level = self._lookups.get(request.request_id, (0, 0, None))[2]
            self._pending_loads[request.request_id] = (num_external_tokens, level)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = CacheGenMetadata()
        scheduled = scheduler_output.num_scheduled_tokens
        for req in scheduler_output.scheduled_new_reqs:
            rid, prompt = req.req_id, list(req.prompt_token_ids or [])
            blocks, salt = list(req.block_ids[0]), self._salts.get(rid)
            n_load, level = self._pending_loads.pop(rid, (0, None))
            if n_load:
                ids = blocks[: n_load // self._block_size]
                meta.loads.append(LoadSpec(rid, prompt[:n_load], ids, salt, level))
            n_save = len(prompt) // self.cfg.chunk_tokens * self.cfg.chunk_tokens
            if self._save_enabled and n_save > n_load:
                self._tracks[rid] = _Track(prompt[:n_save], blocks, salt)
            start = req.num_computed_tokens
            self._note_prefill(meta, scheduled.get(rid, 0), start)
            self._maybe_save(meta, rid, start + scheduled.get(rid, 0))
        cached = scheduler_output.scheduled_cached_reqs
        for i, rid in enumerate(cached.req_ids):
            self._note_prefill(meta, scheduled.get(rid, 0), cached.num_computed_tokens[i])
            track = self._tracks.get(rid)
            if track is None:
                continue
            new_blocks = cached.new_block_ids[i]
            if new_blocks is not None:
                if rid in cached.resumed_req_ids:
                    track.block_ids = list(new_blocks[0])
                else:
                    track.block_ids.extend(new_blocks[0])
            self._maybe_save(meta, rid, cached.num_computed_tokens[i] + scheduled.get(rid, 0))
        return meta

    @staticmethod
    def _note_prefill(meta: CacheGenMetadata, tokens: int, position: int) -> None:
        if tokens > meta.prefill[0]:
            meta.prefill = (tokens, position)

    def _maybe_save(self, meta: CacheGenMetadata, rid: str, computed_after_step: int) -> None:
        track = self._tracks.get(rid)
        if track is None or computed_after_step < len(track.token_ids):
            return
        del self._tracks[rid]
        n_blocks = len(track.token_ids) // self._block_size
        meta.saves.append(SaveSpec(rid, track.token_ids, track.block_ids[:n_blocks], track.salt))

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        meta = connector_output.kv_connector_worker_meta
        if not isinstance(meta, CacheGenWorkerMetadata):
            return
        self._load_stats.update(meta.loads)
        if meta.pid != os.getpid():  # in-process workers share the estimator already
            estimator = estimator_for(self._store)
            for nbytes, seconds, probe in meta.samples:
                estimator.add(nbytes, seconds, probe=probe)
        if meta.costs is not None:
            self._costs = CostModel(**meta.costs)

    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        rid = request.request_id
        for table in (self._lookups, self._salts, self._pending_loads, self._tracks):
            table.pop(rid, None)
        stats = self._load_stats.pop(rid, None)
        return False, ({"cachegen": stats} if stats else None)

    # ==============================================================================
    # Worker side
    # ==============================================================================
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        names = sorted(kv_caches, key=_layer_index)
        self._caches = [kv_caches[n] for n in names]
        self._layout = _layout_of(self._caches[0])
        log.info("cachegen: %d layers of KV, layout %s", len(names), self._layout)

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        # Bound before every forward pass (loads, if any, come next): the step's clock starts.
        super().bind_connector_metadata(connector_metadata)
        self._step_start, self._step_load_s = time.perf_counter(), 0.0
        self._in_step = True

    def _engine_idle(self) -> bool:
        """No forward pass runs or has just ended (steps of a busy engine follow back to back)."""
        return not self._in_step and time.perf_counter() - self._last_step_end > _IDLE_GAP_S

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, CacheGenMetadata)
        t0 = time.perf_counter()
        for spec in meta.loads:
            self._load(spec)
        self._step_load_s += time.perf_counter() - t0

    def _load(self, spec: LoadSpec) -> None:
        """Load one request's prefix; blocks past what loaded go back to vLLM as errors."""
        t0 = time.perf_counter()
        level = spec.level
        if level is None and self._costs is None:
            # Nothing to plan with before vLLM's prefill was first timed: the middle level.
            level = self.cfg.levels[(len(self.cfg.levels) - 1) // 2]
        costs = self._costs or CostModel(measure_decode_eps(), _UNMEASURED_TPS)
        engine = VllmEngine(
            self._engine_key,
            self._caches,
            self._layout,
            self._block_size,
            self.identity.kv_elements_per_token,
            costs.prefill_tps,
        )
        engine.bind(spec.block_ids)
        policy = fixed(level) if level is not None else None
        loader = Loader(self._store, engine, costs, self.cfg.slo_s, policy=policy)
        try:
            result = loader.load(
                self.identity.model_id,
                spec.token_ids,
                chunk_tokens=self.cfg.chunk_tokens,
                prefix_tokens=len(spec.token_ids),
                salt=spec.salt,
            )
            loaded, report = result.cache, result.report
        except Exception as e:  # noqa: BLE001 - whatever happened, vLLM recomputes the tokens
            log.warning("cachegen: load of request %s failed: %s", spec.request_id, e)
            loaded, report = engine.finish(), None
        self._errors.update(spec.block_ids[loaded // self._block_size :])
        rows = report.chunks if report else []
        samples = [(r.nbytes, r.fetch_end - r.fetch_start, r.probe) for r in rows if r.nbytes]
        self._worker_meta.samples.extend(samples)
        stats = {
            "requested_tokens": len(spec.token_ids),
            "loaded_tokens": loaded,
            "levels": [str(r.choice) for r in rows[: loaded // self.cfg.chunk_tokens]],
            "bytes": sum(r.nbytes for r in rows),
            "prefix_end": report.prefix_end if report else "error",
            "causes": report.fallback_causes if report else {},
            "probe": any(r.probe for r in rows),
            "load_s": time.perf_counter() - t0,
        }
        self._worker_meta.loads[spec.request_id] = stats
        if self.cfg.stats_file:
            with open(self.cfg.stats_file, "a") as f:
                f.write(json.dumps({"request_id": spec.request_id, **stats}) + "\n")

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads complete in start_load_kv, before the forward pass

    def save_kv_layer(
        self,
        layer_name: str,
        kv_layer: torch.Tensor,
        attn_metadata: AttentionMetadata,
        **kwargs: Any,
    ) -> None:
        return  # whole prompts are saved after the forward pass, in wait_for_save

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, CacheGenMetadata)
        self._time_prefill(meta)
        assert self._saver is not None
        for spec in meta.saves:
            self._saver.submit(
                SaveJob(spec.request_id, spec.token_ids, self._copy(spec), spec.salt)
            )
        self._in_step, self._last_step_end = False, time.perf_counter()

    def _copy(self, spec: SaveSpec) -> PagedKV:
        """The prompt's blocks, copied whole (the one copy on the forward path: vLLM may reuse
        the blocks once the request ends); the saver encodes each chunk from them in place."""
        ids = torch.as_tensor(spec.block_ids, device=self._caches[0].device)
        copies = [cache.index_select(0, ids) for cache in self._caches]
        # A contiguous copy of the logical [blocks, heads, block_size, 2 * head_size] shape
        # keeps a CPU page whole, and on a GPU puts heads outside tokens (HND).
        layout = self._layout if self._layout == "vllm-cpu" else "flash-hnd"
        return PagedKV(copies, layout, list(range(len(spec.block_ids))), len(spec.token_ids))

    def _time_prefill(self, meta: CacheGenMetadata) -> None:
        """Correct the recompute speed with this step's forward pass (its loads excluded)."""
        tokens, position = meta.prefill
        if tokens < _MIN_TIMED_PREFILL or not self._step_start:
            return
        seconds = time.perf_counter() - self._step_start - self._step_load_s
        if self._costs is None:
            self._costs = CostModel(measure_decode_eps(), tokens / seconds)
        else:
            self._costs.observe_recompute(tokens, position, seconds)
        self._costs.save(self._engine_key)
        self._worker_meta.costs = asdict(self._costs)

    def _save_job(self, job: SaveJob) -> None:
        t0 = time.perf_counter()
        save_context(
            self._store,
            self.identity.model_id,
            job.token_ids,
            job.kv,
            levels=self.cfg.levels,
            chunk_tokens=self.cfg.chunk_tokens,
            profile=self._profile,
            threads=self.cfg.threads,
            salt=job.salt,
        )
        log.info(
            "cachegen: saved %d tokens of request %s in %.2f s",
            len(job.token_ids),
            job.request_id,
            time.perf_counter() - t0,
        )

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._errors = self._errors, set()
        return errors

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        meta = self._worker_meta
        if not meta.loads and not meta.samples and meta.costs is None:
            return None
        self._worker_meta = CacheGenWorkerMetadata(os.getpid())
        return meta

    def shutdown(self) -> None:
        if self._saver is not None:
            self._saver.close(_SHUTDOWN_SAVE_S)


def _identity(vllm_config: VllmConfig, cfg: ConnectorConfig, tp_rank: int) -> Identity:
    mc, pc = vllm_config.model_config, vllm_config.parallel_config
    cache_dtype = vllm_config.cache_config.cache_dtype
    dtype = str(mc.dtype).removeprefix("torch.") if cache_dtype == "auto" else str(cache_dtype)
    name = model_name(str(mc.served_model_name), mc.hf_config.to_json_string(), cfg.model_id)
    return Identity(
        model=name,
        dtype=dtype,
        layers=mc.get_num_layers(pc),
        kv_heads=mc.get_num_kv_heads(pc),
        head_dim=mc.get_head_size(),
        tp_rank=tp_rank,
        tp_size=pc.tensor_parallel_size,
    )


def _cpu_attention(vllm_config: VllmConfig) -> str | None:
    """The kernels vLLM's CPU attention picks for this model and cache ("vec", "amx", ...);
    None off the CPU, or where this vLLM does not say."""
    if not current_platform.is_cpu():
        return None
    try:
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa
    except ImportError:
        return None
    mc, cc = vllm_config.model_config, vllm_config.cache_config
    return _get_attn_isa(mc.dtype, cc.block_size, mc.get_head_size(), cc.cache_dtype)


def _layout_of(cache: torch.Tensor) -> str:
    """The paged layout of a registered cache (logical ``[blocks, heads, block, 2 * dim]``):
    the CPU backend's pages, or FlashAttention's, whose stride order says NHD or HND."""
    if current_platform.is_cpu():
        return "vllm-cpu"
    return "flash-nhd" if cache.stride(2) > cache.stride(1) else "flash-hnd"
