"""The LMCache serde plug-in (cachegen.lmcache) in the real lmcache 0.5.6, in its own
environment: memory objects of K/V and MLA layouts round trip through LMCache's serde factory
and async processor at every level tested (bit-exact at LOSSLESS), and bad input fails
clearly. One driver process (tests/engines/lmcache_driver.py) runs every case."""

from __future__ import annotations

from typing import Any

import pytest
from plugin_data import HEAD_DIM, write_chunk

import cachegen

LEVELS = [1, 15, max(cachegen.LEVELS), cachegen.LOSSLESS]
#: Relative RMS error a lossy level may reach on this chunk (level 1, the coarsest: ~0.46).
LOSSY_BOUND = {1: 0.6, 15: 0.2, max(cachegen.LEVELS): 0.07}
#: Fixed slots (fractions of the raw chunk) for LMCache's fs adapter, per level.
FS_SLOTS = {"15": 0.25, str(cachegen.LOSSLESS): 0.9}


@pytest.fixture(scope="module")
def results(lmcache_setup: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("lmcache")
    plan = {
        "kv": str(write_chunk(work / "kv.npy")),
        "head_dim": HEAD_DIM,
        "levels": LEVELS,
        "fs_slots": FS_SLOTS,
        "work": str(work),
    }
    return lmcache_setup.run(plan, work, timeout_s=600)


def cases(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in results.items() if k.count("/") == 2}


def test_registered_by_import(results: dict[str, Any]) -> None:
    assert results["registered"]


def test_every_layout_dtype_and_level_round_trips(results: dict[str, Any]) -> None:
    got = cases(results)
    assert len(got) == 2 * 3 * len(LEVELS)  # bf16/fp16 x kv/mla/mla4 x levels
    for name, r in got.items():
        assert r["serialize_ok"] and r["deserialize_ok"], name
        assert 0 < r["bytes"] <= r["estimate"], name
        level = int(name.rsplit("/", 1)[1])
        if level == cachegen.LOSSLESS:
            assert r["exact"], name
        else:
            assert r["rel_rms"] < LOSSY_BOUND[level], (name, r["rel_rms"])
            assert r["bytes"] < r["raw"] / 2, name


def test_finer_levels_are_larger_and_closer(results: dict[str, Any]) -> None:
    for prefix in ("bfloat16/kv", "float16/mla"):
        lossy = [results[f"{prefix}/{lv}"] for lv in LEVELS[:-1]]
        assert [r["bytes"] for r in lossy] == sorted(r["bytes"] for r in lossy)
        assert [r["rel_rms"] for r in lossy] == sorted((r["rel_rms"] for r in lossy), reverse=True)


def test_bad_input_fails_clearly(results: dict[str, Any]) -> None:
    e = results["errors"]
    assert e["bad_shape"].startswith("ValueError: unsupported KV shape")
    assert e["bad_dtype"].startswith("TypeError: cachegen serde takes float16/bfloat16/float32")
    assert e["bad_heads"].startswith("ValueError: a row of 191 values is not whole heads")
    assert e["small_buffer"].startswith("ValueError: blob of")
    assert e["not_a_blob"].startswith("FormatError: buffer does not start with a cachegen blob")
    assert e["wrong_dst"].startswith("ValueError: out= does not match")


def test_through_lmcache_fs_adapter_in_fixed_slots(results: dict[str, Any]) -> None:
    """LMCache's serde L2 wrapper over its fs adapter stores one file per chunk of the slot's
    size and loads it back."""
    for level, slot in FS_SLOTS.items():
        r = results[f"fs/{level}"]
        assert r["stored"] and r["loaded"], level
        assert len(r["file_bytes"]) == 1 and r["file_bytes"][0] <= slot * r["raw"] + 4096, r
        if int(level) == cachegen.LOSSLESS:
            assert r["exact"]
        else:
            assert r["rel_rms"] < LOSSY_BOUND[int(level)]
