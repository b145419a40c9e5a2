"""The SGLang HiCache storage plug-in (cachegen.sglang) in the real sglang 0.5.23, in its own
environment: SGLang's backend factory creates it from the dynamic config, and pages of every
MHA and MLA host layout round trip through it on a file store, a moto S3 server and a
redis-server (bit-exact at LOSSLESS). One driver process runs every case."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from plugin_data import HEAD_DIM, write_chunk
from store_servers import MotoServer, RedisServer

LEVELS = [15, "lossless"]
PAGE = 64


@pytest.fixture(scope="module")
def store_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    s3 = MotoServer()
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    folder = tmp_path_factory.mktemp("sglang-store")
    yield {"file": f"file://{folder}", "s3": s3.url(s3.bucket()), "redis": f"{redis.url}/2"}
    redis.stop()
    s3.stop()


@pytest.fixture(scope="module")
def results(
    sglang_setup: Any, tmp_path_factory: pytest.TempPathFactory, store_urls: dict[str, str]
) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("sglang")
    plan = {
        "kv": str(write_chunk(work / "kv.npy")),
        "head_dim": HEAD_DIM,
        "page_size": PAGE,
        "levels": LEVELS,
        "stores": store_urls,
    }
    return sglang_setup.run(plan, work, timeout_s=600)


def test_pages_round_trip_on_every_store_layout_and_level(results: dict[str, Any]) -> None:
    assert len(results) == 3 * len(LEVELS) * (4 + 3) * 2  # stores x levels x layouts x dtypes
    for name, r in results.items():
        assert r["absent_before"] and r["stored"] and r["exists"], name
        assert r["returned_targets"] and r["missing_is_none"], name
        if "/lossless/" in name:
            assert r["exact"], name
        else:
            assert not r["exact"] and r["rel_rms"] < 0.2, (name, r["rel_rms"])


def test_stores_agree(results: dict[str, Any]) -> None:
    """The store only moves bytes: the same page decodes the same from each."""
    for name, r in results.items():
        if name.startswith("file/"):
            for other in ("s3", "redis"):
                assert results[other + name[4:]]["rel_rms"] == r["rel_rms"], name


def test_bad_pages_fail_clearly(results: dict[str, Any]) -> None:
    errors = [r["errors"] for r in results.values() if "errors" in r]
    assert errors
    for e in errors:
        assert e["bad_dtype"].startswith("TypeError: cachegen backend: page must be a torch.")
        assert e["bad_size"].startswith("ValueError: cachegen backend: page has")
