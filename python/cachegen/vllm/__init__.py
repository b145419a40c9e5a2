"""vLLM KV connector: vLLM saves prompt KV caches into a cachegen store and loads them back.

Select it with vLLM's ``kv_transfer_config``::

    {"kv_connector": "CacheGenConnector", "kv_connector_module_path": "cachegen.vllm",
     "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
     "kv_connector_extra_config": {"store": "s3://bucket/kv?endpoint=...", "levels": [12, 15]}}

The configuration keys are `cachegen.vllm.config.ConnectorConfig`'s fields. vLLM is an optional
dependency: importing `cachegen` (or the submodules here other than `connector`) never imports it;
the connector class is imported from vLLM's side on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CacheGenConnector"]


def __getattr__(name: str) -> Any:
    # vLLM looks the class up with getattr(module, "CacheGenConnector"); only then is vLLM imported.
    if name == "CacheGenConnector":
        from .connector import CacheGenConnector

        return CacheGenConnector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
