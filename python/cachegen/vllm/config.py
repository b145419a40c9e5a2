"""The connector's settings: the keys of vLLM's ``kv_connector_extra_config``.

vLLM logs its whole configuration, so secrets never belong here and a config that carries one
is refused. S3 credentials come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``; a URL that
must hold a secret (a Redis password) is given as ``"env:VARIABLE"``, naming the environment
variable that holds it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import cachegen

#: Query keys and config keys that would put a secret into vLLM's logged config.
_SECRET_WORDS = re.compile(
    r"(^|_)(secret|password|passwd|token|credentials?|api_key|access_key(_id)?)($|_)", re.I
)


class ConfigError(ValueError):
    """A ``kv_connector_extra_config`` that cannot be used."""


@dataclass(frozen=True)
class ConnectorConfig:
    """Settings of `CacheGenConnector` (all keys optional except ``store``).

    Attributes:
        store: store URL (``s3://bucket/prefix?endpoint=...``, ``redis://host:6379/0``,
            ``file:///path``) without credentials, or ``env:VARIABLE`` to read it from the
            environment.
        levels: codec levels each saved chunk is stored at (`cachegen.LEVELS`, or
            `cachegen.LOSSLESS` for bit-exact KV once available).
        load_level: load every chunk at this stored level instead of letting the controller
            choose per chunk (None: the controller chooses among ``levels``).
        slo_s: target seconds for loading a request's stored prefix; the controller takes
            the prefix and levels that meet it, recomputing the rest.
        chunk_tokens: tokens per stored chunk; a multiple of vLLM's block size.
        model_id: the identity stored contexts are filed under (None: the served model name
            plus a digest of its config).
        timeout_s: seconds a store lookup or object fetch may take before the request goes
            on without it (vLLM then recomputes those tokens).
        save: store the whole chunks of each prompt after its prefill.
        load: load stored prefixes of new prompts.
        profile: a model profile (path to its JSON, or a name in `cachegen.profiles`) that
            makes every level smaller at equal quality.
        prefill_tps: recompute speed assumed before the connector has measured vLLM's own
            (tokens/s); None: a cached calibration, else a conservative guess.
        threads: codec threads for saving (the background encoder shares the CPU with the
            engine's forward passes).
        stats_file: append one JSON line per load (request id, tokens loaded, levels, bytes,
            why the prefix ended, whether it was a probe, seconds) to this file; the same
            figures come back in the request's ``kv_transfer_params["cachegen"]`` when it outlives
            its first step.
    """

    store: str
    levels: tuple[int, ...] = (cachegen.DEFAULT_LEVEL,)
    load_level: int | None = None
    slo_s: float = 1.0
    chunk_tokens: int = 256
    model_id: str | None = None
    timeout_s: float = 2.0
    save: bool = True
    load: bool = True
    profile: str | None = None
    prefill_tps: float | None = None
    threads: int | None = 1
    stats_file: str | None = None

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None) -> ConnectorConfig:
        """Parse and check ``kv_connector_extra_config``; `ConfigError` on any bad key."""
        extra = dict(extra or {})
        names = {f.name for f in dataclasses.fields(cls)}
        secret = [k for k in extra if _SECRET_WORDS.search(k)]
        if secret:
            raise ConfigError(f"keys {secret} look like credentials: use environment variables")
        unknown = sorted(set(extra) - names)
        if unknown:
            raise ConfigError(f"unknown CacheGenConnector keys {unknown}; known: {sorted(names)}")
        if "store" not in extra or not isinstance(extra["store"], str) or not extra["store"]:
            raise ConfigError("kv_connector_extra_config needs 'store': a store URL")
        if not extra["store"].startswith("env:"):
            _check_url(extra["store"])
        if "levels" in extra:
            extra["levels"] = _levels(extra["levels"])
        cfg = cls(**extra)
        cfg._check()
        return cfg

    def _check(self) -> None:
        if not self.levels:
            raise ConfigError("levels must name at least one level")
        if self.load_level is not None and self.load_level not in self.levels:
            raise ConfigError(f"load_level {self.load_level} is not one of levels {self.levels}")
        for name in ("slo_s", "timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.chunk_tokens, int) or self.chunk_tokens <= 0:
            raise ConfigError(f"chunk_tokens must be a positive int, got {self.chunk_tokens!r}")
        if self.prefill_tps is not None and not self.prefill_tps > 0:
            raise ConfigError(f"prefill_tps must be positive, got {self.prefill_tps!r}")

    def store_url(self) -> str:
        """The store URL, read from the environment for ``env:VARIABLE``."""
        if not self.store.startswith("env:"):
            return self.store
        name = self.store[4:]
        url = os.environ.get(name)
        if not url:
            raise ConfigError(f"store is {self.store!r} but ${name} is not set")
        return url

    def check_block_size(self, block_size: int) -> None:
        """Chunks must be whole blocks: vLLM loads and recomputes at block granularity."""
        if self.chunk_tokens % block_size:
            raise ConfigError(
                f"chunk_tokens {self.chunk_tokens} is not a multiple of the block size {block_size}"
            )

    @staticmethod
    def check_cpu_attention(isa: str | None) -> None:
        """The connector reads and writes vLLM's CPU pages as plain rows of keys and values;
        the AMX kernels (bf16 on a CPU with AMX tiles) pack them in their own tile order, which
        plain rows would silently garble (wrong answers, stored garbage): refused."""
        if isa in PACKED_CPU_ATTENTION:
            raise ConfigError(
                f"vLLM's CPU attention runs its {isa!r} kernels here, which pack the KV pages "
                "in their own order; the connector reads and writes plain pages only: serve "
                "with dtype float16 or float32"
            )


#: vLLM CPU attention kernels whose KV pages are not plain rows (`cachegen.paged`'s "vllm-cpu").
PACKED_CPU_ATTENTION = ("amx",)


def _levels(value: Any) -> tuple[int, ...]:
    if isinstance(value, int):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, int) for v in value):
        raise ConfigError(f"levels must be a list of ints, got {value!r}")
    valid = set(cachegen.LEVELS) | {getattr(cachegen, "LOSSLESS", None)} - {None}
    bad = sorted(set(value) - valid)
    if bad:
        raise ConfigError(f"unknown levels {bad}; valid: {sorted(valid)}")
    return tuple(sorted(set(value)))


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.password:
        raise ConfigError("the store URL carries a password: pass it through the environment")
    secret = [k for k, _ in parse_qsl(parts.query) if _SECRET_WORDS.search(k)]
    if secret:
        raise ConfigError(f"the store URL carries {secret}: use environment variables")
